//! The console: web pages served by API nodes at `/console`, for the people
//! who run Herald. Server-rendered (minijinja, templates compiled into the
//! binary) with one small script that refreshes the Now page; every action
//! is a plain HTML form, so it works without JavaScript.
//!
//! - **Now**: this node's accepted/s, delivered/s and accept-to-vendor
//!   p50/p99 per channel and lane (from the metrics Prometheus scrapes),
//!   queue depth from the store, every provider's circuit.
//! - **Find**: a notification by id, idempotency key or recipient address,
//!   with its timeline; cancel what has not gone out.
//! - **Dead letters**: filtered, replayed one by one or by filter (after a
//!   confirmation page).
//! - **Providers**: hold a circuit open or close it by hand, with who and why.
//!
//! Signing in takes an API key with the `admin` scope and a name (kept with
//! what is done here). The session is a cookie holding the key: HttpOnly,
//! SameSite=Strict, scoped to `/console`, 8 hours, Secure when the node's
//! public URL is HTTPS; each form carries a token derived from the key, and
//! a POST from another origin is refused.

mod metrics;

use std::sync::{Arc, OnceLock};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use herald_core::model::{Channel, DeliveryState};
use herald_core::store::{DeadLetterFilter, ReplayOutcome, Scopes};
use minijinja::{context, Environment, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use metrics::Sampler;

use crate::api::problem::ApiError;
use crate::api::types::{DeadLetterOut, NotificationOut, ProviderOut};
use crate::api::AppState;

type St = State<Arc<AppState>>;

/// The session cookie's name.
const COOKIE: &str = "herald_console";
/// How long a sign-in lasts.
const SESSION_SECONDS: u64 = 8 * 3600;
/// How many of the tenant's latest notifications an address search reads.
const SCAN: usize = 20_000;
/// Most results a search lists.
const MAX_RESULTS: usize = 50;
/// Most dead letters a page lists, and a bulk replay puts back.
const PAGE: usize = 100;
const MAX_REPLAY: usize = 1_000;

/// The console's routes (on API nodes).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/now", get(now))
        .route("/console/find", get(find))
        .route("/console/notifications/{id}", get(notification))
        .route("/console/notifications/{id}/cancel", post(cancel))
        .route("/console/dead-letters", get(dead_letters))
        .route(
            "/console/dead-letters/replay",
            get(confirm_replay).post(replay_many),
        )
        .route("/console/dead-letters/{id}/replay", post(replay_one))
        .route("/console/providers", get(providers))
        .route("/console/providers/{name}/hold", post(hold))
        .route("/console/providers/{name}/close", post(close))
        .route("/console/assets/{file}", get(asset))
}

/// A signed-in operator: the admin key's tenant, the name they gave, and
/// the token their forms carry.
struct Operator {
    tenant: String,
    who: String,
    csrf: String,
}

impl Operator {
    /// Who did it, as kept with a hold and in the logs.
    fn signature(&self) -> String {
        format!("{} (console, tenant {})", self.who, self.tenant)
    }
}

/// What a page answers when it cannot go on.
enum Refusal {
    /// Not signed in (or the key no longer has `admin`): to the sign-in page.
    SignIn,
    /// A POST without the session's token, or from another origin.
    Forged,
    /// A page with an error, and its status.
    Page(StatusCode, String),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unauthorized | ApiError::Forbidden(_) => Refusal::SignIn,
            ApiError::NotFound => Refusal::Page(StatusCode::NOT_FOUND, "Not found.".into()),
            ApiError::Invalid(errs) => Refusal::Page(
                StatusCode::UNPROCESSABLE_ENTITY,
                errs.list
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.reason))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            other => Refusal::Page(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{other}. Try again in a moment."),
            ),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn => Redirect::to("/console/sign-in").into_response(),
            Refusal::Forged => error_page(
                StatusCode::FORBIDDEN,
                "This form did not come from this console's page. Reload the page and try again.",
            ),
            Refusal::Page(status, message) => error_page(status, &message),
        }
    }
}

type PageResult = Result<Response, Refusal>;

/// A posted form; one that cannot be read is a page saying so (400), not
/// the framework's plain-text refusal.
struct Posted<T>(T);

impl<T, S> axum::extract::FromRequest<S> for Posted<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        match Form::<T>::from_request(req, state).await {
            Ok(Form(v)) => Ok(Posted(v)),
            Err(e) => Err(error_page(
                StatusCode::BAD_REQUEST,
                &format!("This form could not be read: {}.", e.body_text()),
            )),
        }
    }
}

/// The session's key and name, from the cookie.
fn session(headers: &HeaderMap) -> Option<(String, String)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| {
            let (key, who) = value.split_once('.')?;
            let who = String::from_utf8(B64.decode(who).ok()?).ok()?;
            Some((key.to_owned(), who))
        })
}

/// The token a signed-in operator's forms carry: bound to the key, so a
/// page of another origin cannot know it.
fn csrf_token(key: &str) -> String {
    let digest = Sha256::digest(format!("herald-console-csrf:{key}").as_bytes());
    hex::encode(&digest[..16])
}

/// The operator behind a request, when signed in with a key that still
/// has `admin`.
async fn operator(state: &AppState, headers: &HeaderMap) -> Result<Operator, Refusal> {
    let (key, who) = session(headers).ok_or(Refusal::SignIn)?;
    let tenant = state
        .keys
        .authorize(state.tenants.as_ref(), &key, Scopes::ADMIN)
        .await?;
    Ok(Operator {
        tenant,
        who,
        csrf: csrf_token(&key),
    })
}

/// The operator behind a form: signed in, the form's token the session's,
/// and the request from this origin.
async fn acting(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<Operator, Refusal> {
    if !same_origin(headers) {
        return Err(Refusal::Forged);
    }
    let op = operator(state, headers).await?;
    if !constant_time_eq(op.csrf.as_bytes(), csrf.as_bytes()) {
        return Err(Refusal::Forged);
    }
    Ok(op)
}

/// A browser's request from this origin (or one that does not say).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("templates/layout.html")),
            ("sign_in.html", include_str!("templates/sign_in.html")),
            ("now.html", include_str!("templates/now.html")),
            ("now_part.html", include_str!("templates/now_part.html")),
            (
                "circuits_table.html",
                include_str!("templates/circuits_table.html"),
            ),
            ("find.html", include_str!("templates/find.html")),
            (
                "notification.html",
                include_str!("templates/notification.html"),
            ),
            (
                "dead_letters.html",
                include_str!("templates/dead_letters.html"),
            ),
            (
                "confirm_replay.html",
                include_str!("templates/confirm_replay.html"),
            ),
            ("providers.html", include_str!("templates/providers.html")),
            ("error.html", ERROR_TEMPLATE),
        ] {
            // Compiled into the binary and covered by the tests: a broken
            // template is a build-time bug.
            #[allow(clippy::expect_used)]
            env.add_template(name, source).expect("console template");
        }
        env.add_filter("rate", |v: Option<f64>| match v {
            Some(r) if r >= 100.0 => format!("{r:.0}"),
            Some(r) => format!("{r:.1}"),
            None => "—".to_owned(),
        });
        env.add_filter("ms", |v: Option<f64>| match v {
            Some(ms) if ms >= 100.0 => format!("{ms:.0} ms"),
            Some(ms) => format!("{ms:.1} ms"),
            None => "—".to_owned(),
        });
        env
    })
}

const ERROR_TEMPLATE: &str = r#"{% extends "layout.html" %}{% block content %}<h1>{{ title }}</h1><p>{{ message }}</p><p><a href="/console/now">Back to the console</a></p>{% endblock %}"#;

/// A rendered page with the console's headers: no caching, no framing, no
/// script or style from anywhere else.
fn render(status: StatusCode, name: &str, ctx: Value) -> Response {
    let html = match templates().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(template = name, error = %e, "console page failed to render");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response();
        }
    };
    let mut resp = (status, Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it a browser sends `Origin: null` on the
    // console's own forms, and the origin check could not tell them apart.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    render(status, "error.html", context! { title, message })
}

/// What every page's layout needs, with the page's own values.
fn page(state: &AppState, op: Option<&Operator>, title: &str, nav: &str, own: Value) -> Value {
    let base = context! {
        title,
        nav,
        sandbox => state.sandbox.clone(),
        who => op.map(|o| o.who.clone()),
        tenant => op.map(|o| o.tenant.clone()),
        csrf => op.map(|o| o.csrf.clone()),
    };
    context! { ..own, ..base }
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

async fn home(State(state): St, headers: HeaderMap) -> Response {
    match operator(&state, &headers).await {
        Ok(_) => see_other("/console/now"),
        Err(_) => see_other("/console/sign-in"),
    }
}

async fn sign_in_page(State(state): St) -> Response {
    render(
        StatusCode::OK,
        "sign_in.html",
        page(&state, None, "Sign in", "", context! {}),
    )
}

#[derive(Deserialize)]
struct SignIn {
    key: String,
    who: String,
}

async fn sign_in(State(state): St, headers: HeaderMap, Posted(form): Posted<SignIn>) -> Response {
    let refuse = |message: &str| {
        render(
            StatusCode::UNAUTHORIZED,
            "sign_in.html",
            page(&state, None, "Sign in", "", context! { error => message }),
        )
    };
    if !same_origin(&headers) {
        return Refusal::Forged.into_response();
    }
    let key = form.key.trim();
    let who = form.who.trim();
    if who.is_empty() || who.chars().count() > 100 || who.chars().any(char::is_control) {
        return refuse("Give your name (1 to 100 characters): it is kept with what you do here.");
    }
    if key.is_empty()
        || key.len() > 256
        || !key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'.')
    {
        return refuse("That is not an API key.");
    }
    match state
        .keys
        .authorize(state.tenants.as_ref(), key, Scopes::ADMIN)
        .await
    {
        Ok(tenant) => {
            tracing::info!(who, tenant = %tenant, "console sign-in");
            let secure = state
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"));
            let cookie = format!(
                "{COOKIE}={key}.{}; Path=/console; Max-Age={SESSION_SECONDS}; HttpOnly; SameSite=Strict{}",
                B64.encode(who.as_bytes()),
                if secure { "; Secure" } else { "" }
            );
            let mut resp = see_other("/console/now");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(ApiError::Forbidden(_)) => {
            refuse("This key does not have the admin scope the console needs.")
        }
        Err(ApiError::Unauthorized) => refuse("No such API key."),
        Err(e) => Refusal::from(e).into_response(),
    }
}

#[derive(Deserialize)]
struct Csrf {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(State(state): St, headers: HeaderMap, Posted(form): Posted<Csrf>) -> PageResult {
    acting(&state, &headers, &form.csrf).await?;
    let mut resp = see_other("/console/sign-in");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "herald_console=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict",
        ),
    );
    Ok(resp)
}

#[derive(Deserialize)]
struct NowArgs {
    #[serde(default)]
    part: Option<String>,
}

async fn now(State(state): St, headers: HeaderMap, Query(args): Query<NowArgs>) -> PageResult {
    let op = operator(&state, &headers).await?;
    state.console.look();
    let mut channels: Vec<Channel> = state.channels.iter().copied().collect();
    channels.sort_by_key(|c| c.index());
    let mut figures = state.console.now(&channels);
    // Queue depth is the store's, for the whole fleet; a store that does
    // not answer leaves it blank rather than failing the page.
    if let Ok(depths) = state.depths.queue_depths().await {
        for row in &mut figures.lanes {
            row.queued = Some(
                depths
                    .iter()
                    .filter(|d| d.channel == row.channel && d.priority == row.lane)
                    .map(|d| d.pending)
                    .sum(),
            );
        }
    }
    let providers = provider_views(&state, &op.tenant);
    let own = context! { now => figures, providers };
    let name = if args.part.is_some() {
        "now_part.html"
    } else {
        "now.html"
    };
    Ok(render(
        StatusCode::OK,
        name,
        page(&state, Some(&op), "Now", "now", own),
    ))
}

fn provider_views(state: &AppState, tenant: &str) -> Vec<ProviderOut> {
    state
        .providers
        .views(herald_core::now_ms(), Some(tenant))
        .into_iter()
        .map(ProviderOut::from)
        .collect()
}

#[derive(Deserialize)]
struct FindArgs {
    #[serde(default)]
    q: Option<String>,
}

async fn find(State(state): St, headers: HeaderMap, Query(args): Query<FindArgs>) -> PageResult {
    let op = operator(&state, &headers).await?;
    let q = args.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let Some(q) = q else {
        let own = context! {};
        return Ok(render(
            StatusCode::OK,
            "find.html",
            page(&state, Some(&op), "Find", "find", own),
        ));
    };
    if q.chars().count() > 512 {
        return Err(Refusal::Page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Search for at most 512 characters.".into(),
        ));
    }
    // An id, then an idempotency key: each names one notification.
    let by_id = match uuid::Uuid::parse_str(q) {
        Ok(id) => state
            .intake
            .notification(&op.tenant, id)
            .await
            .map_err(ApiError::from)?,
        Err(_) => None,
    };
    let by_key = match by_id {
        Some(_) => None,
        None => state
            .intake
            .notification_for_key(&op.tenant, q)
            .await
            .map_err(ApiError::from)?,
    };
    if let Some(id) = by_id.map(|v| v.id).or(by_key) {
        return Ok(see_other(&format!("/console/notifications/{id}")));
    }
    let ids = state
        .intake
        .notifications_to(&op.tenant, q, SCAN, MAX_RESULTS)
        .await
        .map_err(ApiError::from)?;
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(v) = state
            .intake
            .notification(&op.tenant, id)
            .await
            .map_err(ApiError::from)?
        {
            results.push(NotificationOut::from(&v));
        }
    }
    let own = context! { q, results, by_address => true, scan => SCAN };
    Ok(render(
        StatusCode::OK,
        "find.html",
        page(&state, Some(&op), "Find", "find", own),
    ))
}

/// One line of a notification's timeline.
#[derive(Serialize)]
struct Event {
    at: String,
    channel: Channel,
    device: Option<u32>,
    what: String,
}

fn timeline(n: &NotificationOut) -> Vec<Event> {
    let mut events = Vec::new();
    for d in &n.channels {
        for a in &d.attempts {
            let mut what = format!(
                "attempt {} through {}: {}",
                a.attempt,
                a.provider.as_deref().unwrap_or("no provider"),
                a.outcome
            );
            if let Some(code) = a.status_code {
                what.push_str(&format!(" (HTTP {code})"));
            }
            what.push_str(&format!(", {} ms", a.latency_ms));
            if let Some(e) = &a.error {
                what.push_str(&format!(": {e}"));
            }
            events.push(Event {
                at: a.at.clone(),
                channel: d.channel,
                device: d.device,
                what,
            });
        }
        for r in &d.receipts {
            let mut what = format!("receipt from {}: {}", r.provider, r.kind.as_str());
            if let Some(reason) = &r.reason {
                what.push_str(&format!(" ({reason})"));
            }
            events.push(Event {
                at: r.at.clone(),
                channel: d.channel,
                device: d.device,
                what,
            });
        }
        if d.state.is_terminal() && d.attempts.is_empty() {
            let why = d.last_error.as_deref().unwrap_or("");
            events.push(Event {
                at: d.updated_at.clone(),
                channel: d.channel,
                device: d.device,
                what: format!(
                    "{}{}{why}",
                    d.state.as_str(),
                    if why.is_empty() { "" } else { ": " }
                ),
            });
        }
    }
    // RFC 3339 in UTC with milliseconds: text order is time order.
    events.sort_by(|a, b| a.at.cmp(&b.at));
    events
}

/// The id in a page's path (`what` names it in the 404: a notification, a
/// dead letter).
fn id_in(id: Result<Path<String>, PathRejection>, what: &str) -> Result<uuid::Uuid, Refusal> {
    id.ok()
        .and_then(|Path(id)| uuid::Uuid::parse_str(&id).ok())
        .ok_or_else(|| Refusal::Page(StatusCode::NOT_FOUND, format!("No such {what}.")))
}

#[derive(Deserialize)]
struct Flash {
    #[serde(default)]
    done: Option<String>,
}

async fn notification(
    State(state): St,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    Query(flash): Query<Flash>,
) -> PageResult {
    let op = operator(&state, &headers).await?;
    let id = id_in(id, "notification")?;
    let view = state
        .intake
        .notification(&op.tenant, id)
        .await
        .map_err(ApiError::from)?
        .ok_or(Refusal::Page(
            StatusCode::NOT_FOUND,
            "No such notification for this tenant.".into(),
        ))?;
    let n = NotificationOut::from(&view);
    let cancellable = n.channels.iter().any(|d| {
        matches!(
            d.state,
            DeliveryState::Queued | DeliveryState::RetryScheduled
        )
    });
    let events = timeline(&n);
    let own = context! {
        n, cancellable, timeline => events,
        flash => flash.done.map(|n| format!("Cancelled {n} deliveries.")),
    };
    Ok(render(
        StatusCode::OK,
        "notification.html",
        page(&state, Some(&op), "Notification", "find", own),
    ))
}

async fn cancel(
    State(state): St,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    Posted(form): Posted<Csrf>,
) -> PageResult {
    let op = acting(&state, &headers, &form.csrf).await?;
    let id = id_in(id, "notification")?;
    let out = crate::api::notifications::cancelled(&state, &op.tenant, id).await?;
    tracing::info!(who = %op.who, notification_id = %id, cancelled = out.cancelled, "cancelled from the console");
    Ok(see_other(&format!(
        "/console/notifications/{id}?done={}",
        out.cancelled
    )))
}

/// The dead-letter filter as the forms carry it.
#[derive(Debug, Default, Deserialize, Serialize)]
struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(default, skip_serializing)]
    csrf: String,
    #[serde(default, skip_serializing)]
    replayed: Option<String>,
}

impl Filter {
    fn from_query(q: Option<&str>) -> Result<Filter, Refusal> {
        serde_urlencoded::from_str(q.unwrap_or(""))
            .map_err(|e| Refusal::Page(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    }

    /// The store's filter for `tenant`, or what is wrong with a field.
    fn for_tenant(&self, tenant: &str) -> Result<DeadLetterFilter, Refusal> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let bad = |what: String| Refusal::Page(StatusCode::UNPROCESSABLE_ENTITY, what);
        let time = |field: &str, v: &Option<String>| {
            given(v)
                .map(|t| crate::dlq::parse_time(&t).map_err(|e| bad(format!("{field}: {e}"))))
                .transpose()
        };
        Ok(DeadLetterFilter {
            tenant_id: Some(tenant.to_owned()),
            channel: given(&self.channel)
                .map(|c| {
                    c.parse::<Channel>()
                        .map_err(|_| bad(format!("channel: no channel {c:?}")))
                })
                .transpose()?,
            provider: given(&self.provider),
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
        })
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in [
            ("channel", &self.channel),
            ("provider", &self.provider),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
                parts.push(format!("{name} {v}"));
            }
        }
        parts.join(", ")
    }
}

async fn dead_letters(State(state): St, headers: HeaderMap, RawQuery(q): RawQuery) -> PageResult {
    let op = operator(&state, &headers).await?;
    let filter = Filter::from_query(q.as_deref())?;
    let store_filter = filter.for_tenant(&op.tenant)?;
    let mut letters = state
        .dead_letters
        .dead_letters(&store_filter, None, PAGE + 1)
        .await
        .map_err(ApiError::from)?;
    let more = letters.len() > PAGE;
    letters.truncate(PAGE);
    let letters: Vec<DeadLetterOut> = letters.iter().map(DeadLetterOut::from).collect();
    let mut provider_names: Vec<String> = provider_views(&state, &op.tenant)
        .into_iter()
        .map(|p| p.name)
        .collect();
    provider_names.sort();
    let channels: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
    let flash = filter
        .replayed
        .as_ref()
        .map(|n| format!("Replayed {n}: back in the queue."));
    let own = context! { letters, more, filter, provider_names, channels, flash };
    Ok(render(
        StatusCode::OK,
        "dead_letters.html",
        page(&state, Some(&op), "Dead letters", "dead", own),
    ))
}

async fn confirm_replay(State(state): St, headers: HeaderMap, RawQuery(q): RawQuery) -> PageResult {
    let op = operator(&state, &headers).await?;
    let filter = Filter::from_query(q.as_deref())?;
    let store_filter = filter.for_tenant(&op.tenant)?;
    let found = state
        .dead_letters
        .dead_letters(&store_filter, None, MAX_REPLAY + 1)
        .await
        .map_err(ApiError::from)?;
    let more = found.len() > MAX_REPLAY;
    let count = found.len().min(MAX_REPLAY);
    let own = context! { count, more, max => MAX_REPLAY, described => filter.describe(), filter };
    Ok(render(
        StatusCode::OK,
        "confirm_replay.html",
        page(&state, Some(&op), "Replay dead letters", "dead", own),
    ))
}

async fn replay_many(
    State(state): St,
    headers: HeaderMap,
    Posted(filter): Posted<Filter>,
) -> PageResult {
    let op = acting(&state, &headers, &filter.csrf).await?;
    let store_filter = filter.for_tenant(&op.tenant)?;
    let n = state
        .dead_letters
        .replay_dead_letters(&store_filter, MAX_REPLAY)
        .await
        .map_err(ApiError::from)?;
    if n > 0 {
        state.bus.announce_all();
    }
    tracing::info!(who = %op.who, tenant = %op.tenant, replayed = n, filter = %filter.describe(), "dead letters replayed from the console");
    Ok(see_other(&format!("/console/dead-letters?replayed={n}")))
}

async fn replay_one(
    State(state): St,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    Posted(form): Posted<Csrf>,
) -> PageResult {
    let op = acting(&state, &headers, &form.csrf).await?;
    let id = id_in(id, "dead letter")?;
    match state
        .dead_letters
        .replay_dead_letter(Some(&op.tenant), id)
        .await
        .map_err(ApiError::from)?
    {
        ReplayOutcome::Replayed => {
            state.bus.announce_all();
            tracing::info!(who = %op.who, delivery_id = %id, "dead letter replayed from the console");
            Ok(see_other("/console/dead-letters?replayed=1"))
        }
        ReplayOutcome::NotFound => Err(Refusal::Page(
            StatusCode::NOT_FOUND,
            "No such dead letter.".into(),
        )),
        ReplayOutcome::NotDead(s) => Err(Refusal::Page(
            StatusCode::CONFLICT,
            format!(
                "That delivery is {}, not dead: it was replayed already.",
                s.as_str()
            ),
        )),
    }
}

async fn providers(State(state): St, headers: HeaderMap, Query(flash): Query<Flash>) -> PageResult {
    let op = operator(&state, &headers).await?;
    let providers = provider_views(&state, &op.tenant);
    let own = context! { providers, flash => flash.done };
    Ok(render(
        StatusCode::OK,
        "providers.html",
        page(&state, Some(&op), "Providers", "providers", own),
    ))
}

#[derive(Deserialize)]
struct HoldForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

fn provider_name(name: Result<Path<String>, PathRejection>) -> Result<String, Refusal> {
    name.map(|Path(n)| n)
        .map_err(|_| Refusal::Page(StatusCode::NOT_FOUND, "No such provider.".into()))
}

async fn hold(
    State(state): St,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    Posted(form): Posted<HoldForm>,
) -> PageResult {
    let op = acting(&state, &headers, &form.csrf).await?;
    let name = provider_name(name)?;
    crate::api::circuits::hold(&state, &name, &op.signature(), &form.reason).await?;
    Ok(providers_saying(&format!("{name}'s circuit is held open.")))
}

async fn close(
    State(state): St,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    Posted(form): Posted<Csrf>,
) -> PageResult {
    let op = acting(&state, &headers, &form.csrf).await?;
    let name = provider_name(name)?;
    crate::api::circuits::release(&state, &name, &op.signature()).await?;
    Ok(providers_saying(&format!("{name}'s circuit is closed.")))
}

/// Back to the providers page, saying what was done.
fn providers_saying(done: &str) -> Response {
    let query = serde_urlencoded::to_string([("done", done)]).unwrap_or_default();
    see_other(&format!("/console/providers?{query}"))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (
            include_str!("assets/console.css"),
            "text/css; charset=utf-8",
        ),
        "console.js" => (
            include_str!("assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "favicon.svg" => (include_str!("assets/favicon.svg"), "image/svg+xml"),
        _ => return error_page(StatusCode::NOT_FOUND, "No such file."),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for name in [
            "layout.html",
            "sign_in.html",
            "now.html",
            "find.html",
            "notification.html",
            "dead_letters.html",
            "confirm_replay.html",
            "providers.html",
            "error.html",
        ] {
            assert!(templates().get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn the_session_cookie_holds_the_key_and_the_name() {
        let mut h = HeaderMap::new();
        let cookie = format!(
            "a=b; {COOKIE}=hrld_k-1_x.{}; c=d",
            B64.encode("Ada Lovelace")
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&cookie).expect("ascii"),
        );
        assert_eq!(
            session(&h),
            Some(("hrld_k-1_x".into(), "Ada Lovelace".into()))
        );
        assert_eq!(session(&HeaderMap::new()), None);
    }

    #[test]
    fn forms_from_another_origin_are_refused() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&h(&[
            ("host", "herald:8080"),
            ("origin", "http://herald:8080")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "herald:8080"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(same_origin(&h(&[])), "a client that does not say (curl)");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let html = templates()
            .get_template("error.html")
            .and_then(|t| {
                t.render(context! { title => "x", message => "<script>alert(1)</script>" })
            })
            .expect("renders");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }
}
