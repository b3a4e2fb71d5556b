//! Validation of a notification request: every rule names the field it is
//! about and says why, so the API can answer with a precise problem.

use std::net::IpAddr;

use crate::model::{Channel, Content, NotificationRequest, Recipient};

/// One broken rule: the JSON path of the field and the reason.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Size and range limits. Defaults are what a vendor would accept anyway.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_subject_chars: usize,
    pub max_text_bytes: usize,
    pub max_html_bytes: usize,
    pub max_metadata_bytes: usize,
    pub max_push_tokens: usize,
    pub max_ttl_seconds: u64,
    /// How far ahead `send_at` may be scheduled.
    pub max_schedule_seconds: i64,
    /// The most segments an SMS may take (`channels.sms.max_segments`);
    /// `None`: up to what the vendors take (1,600 characters).
    pub max_sms_segments: Option<usize>,
    /// Whether a webhook URL may name a loopback host (sandbox only).
    pub allow_loopback_webhooks: bool,
    /// Whether a webhook URL may name a private-network host.
    pub allow_private_webhooks: bool,
    /// Whether APNs is on the push route: iOS tokens' payloads are then
    /// counted as APNs counts them too (`apns_payload_bytes`).
    pub apns: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_subject_chars: 998,
            max_text_bytes: 64 * 1024,
            max_html_bytes: 256 * 1024,
            max_metadata_bytes: 8 * 1024,
            max_push_tokens: 16,
            max_ttl_seconds: 30 * 24 * 3600,
            max_schedule_seconds: 30 * 24 * 3600,
            max_sms_segments: None,
            allow_loopback_webhooks: false,
            allow_private_webhooks: false,
            apns: false,
        }
    }
}

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The most broken rules reported for one request; the rest are counted.
/// (A 2 MiB body can break a rule a quarter of a million times: the answer
/// stays small however hostile the request.)
pub const MAX_REPORTED: usize = 50;

/// What FCM and APNs each take at most for one push: the title, the body
/// and the data together.
pub const MAX_PUSH_PAYLOAD_BYTES: usize = 4096;

/// Broken rules: the first `MAX_REPORTED` kept, all counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Errors {
    pub list: Vec<FieldError>,
    pub total: usize,
}

impl Errors {
    pub fn push(&mut self, e: FieldError) {
        self.total += 1;
        if self.list.len() < MAX_REPORTED {
            self.list.push(e);
        }
    }

    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.total += 1;
        if self.list.len() < MAX_REPORTED {
            self.list.push(FieldError::new(field, reason));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn extend(&mut self, other: Errors) {
        let hidden = other.total - other.list.len();
        for e in other.list {
            self.push(e);
        }
        self.total += hidden;
    }

    /// The fields named, in order (as reported).
    pub fn fields(&self) -> Vec<&str> {
        self.list.iter().map(|e| e.field.as_str()).collect()
    }
}

impl From<FieldError> for Errors {
    fn from(e: FieldError) -> Self {
        Errors {
            list: vec![e],
            total: 1,
        }
    }
}

/// Checks every rule and returns all broken ones (empty: valid). A
/// template's rendered content is checked by `validate_rendered`.
pub fn validate(
    req: &NotificationRequest,
    limits: &Limits,
    now: chrono::DateTime<chrono::Utc>,
) -> Errors {
    let mut errs = Errors::default();
    let r = &req.recipient;

    if req.channels.is_empty() {
        errs.add("channels", "at least one channel is required");
    } else if req.channels.len() > Channel::ALL.len() {
        errs.add(
            "channels",
            format!("at most {} channels, each once", Channel::ALL.len()),
        );
    } else {
        let mut seen = [false; Channel::ALL.len()];
        for (i, c) in req.channels.iter().enumerate() {
            if std::mem::replace(&mut seen[*c as usize], true) {
                errs.add(
                    format!("channels[{i}]"),
                    format!("channel {c} is listed twice"),
                );
            }
        }
    }

    check_recipient(r, "recipient.", limits, &mut errs);

    for &c in req.channels.iter().take(Channel::ALL.len()) {
        let (present, field) = match c {
            Channel::Email => (r.email.is_some(), "recipient.email"),
            Channel::Sms => (r.phone.is_some(), "recipient.phone"),
            Channel::Push => (!r.push_tokens.is_empty(), "recipient.push_tokens"),
            Channel::Webhook => (r.webhook_url.is_some(), "recipient.webhook_url"),
            Channel::Chat => (r.chat.is_some(), "recipient.chat"),
        };
        if !present {
            errs.add(field, format!("required because channel {c} is requested"));
        }
    }

    match (&req.content, &req.template) {
        (None, None) => errs.add("content", "content or template is required"),
        (Some(_), Some(_)) => errs.add("template", "give either content or template, not both"),
        (Some(content), None) => check_content(req, content, "content", "", limits, &mut errs),
        (None, Some(t)) => {
            if t.id.is_empty() || t.id.len() > 128 {
                errs.add("template.id", "must be 1 to 128 bytes");
            }
            if t.locale.as_ref().is_some_and(|l| !is_locale(l)) {
                errs.add(
                    "template.locale",
                    "must be a language tag such as en or pt-BR",
                );
            }
        }
    }

    if req.category.as_deref().is_some_and(|c| !is_category(c)) {
        errs.add("category", CATEGORY_RULE);
    }
    if let Some(ttl) = req.ttl_seconds {
        if ttl == 0 || ttl > limits.max_ttl_seconds {
            errs.add(
                "ttl_seconds",
                format!("must be 1 to {}", limits.max_ttl_seconds),
            );
        }
    }
    if let Some(at) = req.send_at {
        if (at - now).num_seconds() > limits.max_schedule_seconds {
            errs.add(
                "send_at",
                format!(
                    "at most {} seconds in the future",
                    limits.max_schedule_seconds
                ),
            );
        }
    }
    if let Some(meta) = &req.metadata {
        let size = serde_json::to_vec(meta)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > limits.max_metadata_bytes {
            errs.add(
                "metadata",
                format!("at most {} bytes of JSON", limits.max_metadata_bytes),
            );
        } else {
            for key in meta.keys() {
                let push = req.channels.contains(&Channel::Push);
                if let Some(why) = push.then(|| reserved_push_key(key)).flatten() {
                    errs.add(format!("metadata.{key}"), why);
                } else if key.to_ascii_lowercase().starts_with("herald_") {
                    // Herald's own events use them (a tenant's callbacks).
                    errs.add(
                        format!("metadata.{key}"),
                        "keys starting with herald_ are Herald's own",
                    );
                }
            }
        }
    }
    if let Some(key) = &req.idempotency_key {
        if let Err(why) = check_idempotency_key(key) {
            errs.add("idempotency_key", why);
        }
    }
    errs
}

/// A recipient's id and addresses, each field named `{prefix}email` etc.:
/// a notification's (`recipient.`) and a stored profile's (no prefix).
pub fn check_recipient(r: &Recipient, prefix: &str, limits: &Limits, errs: &mut Errors) {
    let field = |name: &str| format!("{prefix}{name}");
    if let Some(id) = &r.id {
        if let Err(why) = crate::recipient::check_id(id) {
            errs.add(field("id"), why);
        }
    }
    if let Some(email) = &r.email {
        if let Err(why) = check_email(email) {
            errs.add(field("email"), why);
        }
    }
    if let Some(phone) = &r.phone {
        if let Err(why) = check_phone(phone) {
            errs.add(field("phone"), why);
        }
    }
    if r.push_tokens.len() > limits.max_push_tokens {
        errs.add(
            field("push_tokens"),
            format!("at most {} devices", limits.max_push_tokens),
        );
    } else {
        for (i, t) in r.push_tokens.iter().enumerate() {
            if let Err(why) = check_push_token(&t.token) {
                errs.add(field(&format!("push_tokens[{i}].token")), why);
            }
            if t.app
                .as_deref()
                .is_some_and(|a| a.is_empty() || a.len() > 255 || a.chars().any(char::is_control))
            {
                errs.add(
                    field(&format!("push_tokens[{i}].app")),
                    "must be 1 to 255 bytes without control characters",
                );
            }
        }
    }
    if let Some(u) = &r.webhook_url {
        if let Err(why) = check_webhook_url(u, limits) {
            errs.add(field("webhook_url"), why.0);
        }
    }
    if let Some(chat) = &r.chat {
        if let Err(why) = check_chat_address(chat) {
            errs.add(field("chat"), why);
        }
    }
}

/// Checks a template's rendered content by the rules inline content must
/// keep (no line break in a subject, the size limits, what each channel
/// needs, what a push can carry), each broken rule named
/// `template.<part>`: the template and the request's data made it so.
pub fn validate_rendered(req: &NotificationRequest, rendered: &Content, limits: &Limits) -> Errors {
    let mut errs = Errors::default();
    check_content(
        req,
        rendered,
        "template",
        "rendered from template.data: ",
        limits,
        &mut errs,
    );
    errs
}

/// Content rules for `content` (inline, or rendered): fields are named
/// `{prefix}.subject` etc., reasons start with `why`.
fn check_content(
    req: &NotificationRequest,
    content: &Content,
    prefix: &str,
    why: &str,
    limits: &Limits,
    errs: &mut Errors,
) {
    let field = |part: &str| format!("{prefix}.{part}");
    if let Some(s) = &content.subject {
        if s.chars().count() > limits.max_subject_chars {
            errs.add(
                field("subject"),
                format!("{why}at most {} characters", limits.max_subject_chars),
            );
        }
        if s.contains(['\r', '\n']) {
            errs.add(
                field("subject"),
                format!("{why}must not contain line breaks"),
            );
        }
    }
    let text_fits = match content.text.as_ref() {
        Some(t) if t.len() > limits.max_text_bytes => {
            errs.add(
                field("text"),
                format!("{why}at most {} bytes", limits.max_text_bytes),
            );
            false
        }
        _ => true,
    };
    if content
        .html
        .as_ref()
        .is_some_and(|t| t.len() > limits.max_html_bytes)
    {
        errs.add(
            field("html"),
            format!("{why}at most {} bytes", limits.max_html_bytes),
        );
    }
    let has_body = content.text.as_deref().is_some_and(|t| !t.is_empty())
        || content.html.as_deref().is_some_and(|t| !t.is_empty());
    if !has_body {
        errs.add(field("text"), format!("{why}text or html is required"));
    }
    for &c in req.channels.iter().take(Channel::ALL.len()) {
        match c {
            Channel::Email if content.subject.as_deref().unwrap_or("").is_empty() => errs.add(
                field("subject"),
                format!("{why}required because channel email is requested"),
            ),
            Channel::Sms | Channel::Push | Channel::Chat
                if content.text.as_deref().unwrap_or("").is_empty() =>
            {
                errs.add(
                    field("text"),
                    format!("{why}required because channel {c} is requested"),
                )
            }
            _ => {}
        }
    }
    if let Some(text) = content.text.as_deref() {
        let chat = text_fits && req.channels.contains(&Channel::Chat);
        // The subject, when given, heads the message (`*subject*`).
        let chars = text.chars().count()
            + content
                .subject
                .as_deref()
                .map_or(0, |s| s.chars().count() + 3);
        if chat && chars > SLACK_MAX_TEXT_CHARS {
            errs.add(
                field("text"),
                format!("{why}a chat message is at most {SLACK_MAX_TEXT_CHARS} characters with its subject (Slack's limit); this one has {chars}"),
            );
        }
    }
    let sms = text_fits && req.channels.contains(&Channel::Sms);
    if let Some(text) = content.text.as_deref().filter(|_| sms) {
        check_sms_length(text, &field("text"), why, limits, errs);
    }
    if req.channels.contains(&Channel::Push) {
        let ios = req
            .recipient
            .push_tokens
            .iter()
            .any(|t| t.platform == crate::model::PushPlatform::Ios);
        // The larger of FCM's count and, for iOS tokens APNs takes, the
        // exact size of the payload APNs gets.
        let mut size = push_payload_bytes(content, req.metadata.as_ref());
        if limits.apns && ios {
            size = size.max(apns_payload_bytes(content, req.metadata.as_ref()));
        }
        if size > MAX_PUSH_PAYLOAD_BYTES {
            let at = if req.metadata.as_ref().is_some_and(|m| !m.is_empty()) {
                "metadata".to_owned()
            } else {
                field("text")
            };
            errs.add(
                at,
                format!(
                    "{why}a push carries at most {MAX_PUSH_PAYLOAD_BYTES} bytes of title, body and data together (FCM and APNs); this one has {size}"
                ),
            );
        }
    }
}

/// An SMS text the vendors would refuse (over 1,600 characters), or longer
/// than the configured segments: the client hears it now, not as a failed
/// delivery later. (Bounded work: the text is at most `max_text_bytes`.)
fn check_sms_length(text: &str, field: &str, why: &str, limits: &Limits, errs: &mut Errors) {
    let chars = text.chars().count();
    if chars > crate::sms::VENDOR_MAX_CHARS {
        errs.add(
            field,
            format!(
                "{why}an SMS is at most {} characters (Twilio and Amazon SNS refuse longer); this one has {chars}",
                crate::sms::VENDOR_MAX_CHARS
            ),
        );
        return;
    }
    let Some(max) = limits.max_sms_segments else {
        return;
    };
    let len = crate::sms::length(text);
    if len.segments > max {
        let per = match len.encoding {
            crate::sms::Encoding::Gsm7 => "160 GSM-7 characters, or 153 each when split",
            crate::sms::Encoding::Ucs2 => {
                "70 UCS-2 characters (any character outside GSM-7, an emoji counting two), or 67 each when split"
            }
        };
        errs.add(
            field,
            format!(
                "{why}an SMS is at most {max} segments here (channels.sms.max_segments); this one needs {} in {} ({} units; a segment holds {per})",
                len.segments,
                len.encoding.as_str(),
                len.units
            ),
        );
    }
}

/// Herald's own data keys on every push, as JSON.
const HERALD_PUSH_DATA_BYTES: usize = r#"{"herald_delivery_key":"00000000-0000-0000-0000-000000000000","herald_notification_id":"00000000-0000-0000-0000-000000000000"}"#.len();

/// The bytes a push spends of its 4 KiB: title and body, and the data map
/// as JSON (metadata values become strings), Herald's own keys included.
pub fn push_payload_bytes(
    content: &Content,
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> usize {
    let text = |s: &Option<String>| s.as_deref().map_or(0, str::len);
    let mut size = text(&content.subject) + text(&content.text) + HERALD_PUSH_DATA_BYTES;
    for (k, v) in metadata.into_iter().flatten() {
        let v = match v {
            serde_json::Value::String(s) => serde_json::to_string(s).map_or(0, |s| s.len()),
            other => serde_json::to_string(&other.to_string()).map_or(0, |s| s.len()),
        };
        size += serde_json::to_string(k).map_or(0, |k| k.len()) + 1 + v + 1;
    }
    size
}

/// The size of the payload APNs gets (`herald_providers::apns`): `aps` with
/// the alert's title and body, Herald's delivery key and the metadata, as
/// JSON.
pub fn apns_payload_bytes(
    content: &Content,
    metadata: Option<&serde_json::Map<String, serde_json::Value>>,
) -> usize {
    let mut payload = metadata.cloned().unwrap_or_default();
    payload.remove("aps");
    payload.insert(
        "herald_delivery_key".into(),
        serde_json::Value::String("00000000-0000-0000-0000-000000000000".into()),
    );
    let mut alert = serde_json::Map::new();
    if let Some(t) = &content.subject {
        alert.insert("title".into(), serde_json::Value::String(t.clone()));
    }
    if let Some(b) = &content.text {
        alert.insert("body".into(), serde_json::Value::String(b.clone()));
    }
    payload.insert("aps".into(), serde_json::json!({ "alert": alert }));
    serde_json::to_vec(&payload).map_or(usize::MAX, |v| v.len())
}

/// Why a metadata key cannot go into a push's data, if it cannot: FCM
/// reserves `from`, `message_type`, `notification` and every key starting
/// with `google` or `gcm`, and refuses the whole message over one; Herald
/// puts its own `herald_*` keys there.
pub fn reserved_push_key(key: &str) -> Option<&'static str> {
    let k = key.to_ascii_lowercase();
    if matches!(
        k.as_str(),
        "from" | "message_type" | "notification" | "collapse_key"
    ) || k.starts_with("google")
        || k.starts_with("gcm")
    {
        Some("a reserved key in a push's data (FCM refuses the message): rename it")
    } else if k == "aps" {
        Some("APNs' own dictionary in a push's payload: rename it")
    } else if k.starts_with("herald_") {
        Some("keys starting with herald_ are Herald's own in a push's data")
    } else {
        None
    }
}

pub fn check_idempotency_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err("must be 1 to 255 characters");
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("must be printable ASCII without spaces");
    }
    Ok(())
}

/// A phone number a notification may send to.
pub fn check_phone(s: &str) -> Result<(), &'static str> {
    if is_e164(s) {
        Ok(())
    } else {
        Err("must be an E.164 number: '+', country code, subscriber number, 8 to 15 digits in all")
    }
}

/// A push token a notification may send to.
pub fn check_push_token(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 4096 || s.chars().any(char::is_control) {
        Err("must be 1 to 4096 bytes without control characters")
    } else {
        Ok(())
    }
}

/// Where Slack's incoming webhooks live; a chat address that is a URL must
/// be one of them (Herald never posts chat messages anywhere else).
pub const SLACK_HOOKS_PREFIX: &str = "https://hooks.slack.com/services/";

/// The longest chat message Slack takes (`text`, in characters).
pub const SLACK_MAX_TEXT_CHARS: usize = 40_000;

/// A chat address: a Slack conversation id (`C`, `G`, `D`, `U` or `W`
/// then upper-case letters and digits) or an incoming webhook URL
/// (`https://hooks.slack.com/services/T…/B…/…`).
pub fn check_chat_address(s: &str) -> Result<(), &'static str> {
    if let Some(path) = s.strip_prefix(SLACK_HOOKS_PREFIX) {
        let parts: Vec<&str> = path.split('/').collect();
        let ok = s.len() <= 256
            && parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
        return if ok {
            Ok(())
        } else {
            Err("a Slack incoming webhook URL is https://hooks.slack.com/services/T…/B…/… (three parts of letters and digits)")
        };
    }
    let id_like = (5..=32).contains(&s.len())
        && s.starts_with(['C', 'G', 'D', 'U', 'W'])
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if id_like {
        Ok(())
    } else {
        Err("must be a Slack conversation or user id (C…, G…, D…, U…, W…) or a Slack incoming webhook URL (https://hooks.slack.com/services/…)")
    }
}

/// E.164: '+', then 8 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Address syntax as a mail server would accept it (RFC 5321 sizes; UTF-8
/// allowed as in RFC 6531). Whether the mailbox exists is the vendor's call.
pub fn check_email(s: &str) -> Result<(), &'static str> {
    if s.len() > 254 {
        return Err("at most 254 bytes");
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return Err("must contain '@'");
    };
    if local.is_empty() || local.len() > 64 {
        return Err("the part before '@' must be 1 to 64 bytes");
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c))
        || local.contains('@')
    {
        return Err("contains a character not allowed in an address");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("misplaced '.' before '@'");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("the domain must have a dot, as in example.com");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-') {
            return Err("the domain is not a valid host name");
        }
        if !l.chars().all(|c| c.is_alphanumeric() || c == '-') {
            return Err("the domain is not a valid host name");
        }
    }
    Ok(())
}

/// A notification category's rule, in words.
pub const CATEGORY_RULE: &str = "1 to 64 characters from a-z, A-Z, 0-9, '_', '-', '.'";

/// A notification category (`category`, and the preferences and caps
/// keyed by it).
pub fn is_category(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

pub fn is_locale(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 35
        && s.split(['-', '_'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Why a webhook URL is refused, in words for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlRefused(pub String);

/// Syntax and, for literal addresses, the private/loopback policy. Host names
/// are checked again against what they resolve to at send time.
pub fn check_webhook_url(s: &str, limits: &Limits) -> Result<(), UrlRefused> {
    let refuse = |why: &str| Err(UrlRefused(why.to_owned()));
    if s.len() > 2048 {
        return refuse("at most 2048 bytes");
    }
    let url = url::Url::parse(s).map_err(|e| UrlRefused(format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return refuse("must be http or https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("must not carry credentials");
    }
    let host = match url.host() {
        Some(h) => h,
        None => return refuse("must name a host"),
    };
    let ip = match host {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(d)
            if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") =>
        {
            Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        }
        url::Host::Domain(_) => None,
    };
    match ip {
        Some(ip) => address_allowed(ip, limits).map_err(|why| UrlRefused(why.to_owned())),
        None => Ok(()),
    }
}

/// Whether a webhook may be sent to this address under the policy.
///
/// An IPv6 address that carries an IPv4 one — IPv4-mapped and -compatible,
/// NAT64 (`64:ff9b::/96`), 6to4 (`2002::/16`), Teredo (`2001::/32`) — is
/// judged by the IPv4 address it reaches. Loopback is allowed only with
/// `allow_loopback_webhooks`, private networks only with
/// `allow_private_webhooks`, and addresses that are nobody's host
/// (unspecified, `0.0.0.0/8`, multicast, broadcast, reserved, benchmarking,
/// documentation) never.
pub fn address_allowed(ip: IpAddr, limits: &Limits) -> Result<(), &'static str> {
    match classify(ip) {
        Reach::Public => Ok(()),
        Reach::Loopback if limits.allow_loopback_webhooks => Ok(()),
        Reach::Loopback => Err("loopback addresses are not allowed"),
        Reach::Private if limits.allow_private_webhooks => Ok(()),
        Reach::Private => Err("private network addresses are not allowed"),
        Reach::Nowhere => {
            Err("not a host's address (unspecified, multicast, reserved or documentation range)")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Public,
    Loopback,
    Private,
    Nowhere,
}

fn classify(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 one stands for, if it stands for one.
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let seg = v6.segments();
    let o = v6.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4); // ::ffff:a.b.c.d
    }
    if seg[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        return Some(last32); // ::a.b.c.d, IPv4-compatible (deprecated)
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(last32); // NAT64, RFC 6052
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])); // 6to4, RFC 3056
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo, RFC 4380: the client's address, obfuscated.
        return Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    None
}

fn classify_v4(v4: std::net::Ipv4Addr) -> Reach {
    let [a, b, c, _] = v4.octets();
    if v4.is_loopback() {
        Reach::Loopback
    } else if a == 0 // "this network", 0.0.0.0/8
        || v4.is_broadcast()
        || v4.is_multicast() // 224.0.0.0/4
        || a >= 240 // reserved, 240.0.0.0/4
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        Reach::Nowhere
    } else if v4.is_private() // 10/8, 172.16/12, 192.168/16
        || v4.is_link_local() // 169.254/16, cloud metadata
        || (a == 100 && (b & 0xc0) == 64) // CGNAT, 100.64.0.0/10
        || (a == 192 && b == 88 && c == 99)
    // 6to4 relay anycast
    {
        Reach::Private
    } else {
        Reach::Public
    }
}

fn classify_v6(v6: std::net::Ipv6Addr) -> Reach {
    let seg = v6.segments();
    if v6.is_loopback() {
        Reach::Loopback
    } else if v6.is_unspecified()
        || v6.is_multicast() // ff00::/8
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0])
    // discard, 100::/64
    {
        Reach::Nowhere
    } else if (seg[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link local, fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site local, fec0::/10 (deprecated)
        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1)
    // local-use NAT64, 64:ff9b:1::/48
    {
        Reach::Private
    } else {
        Reach::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn base() -> NotificationRequest {
        serde_json::from_value(serde_json::json!({
            "recipient": {"email": "ada@example.com", "phone": "+14155550100"},
            "channels": ["email", "sms"],
            "content": {"subject": "Hi", "text": "Hello"}
        }))
        .expect("valid fixture")
    }

    fn fields(req: &NotificationRequest) -> Vec<String> {
        validate(req, &Limits::default(), chrono::Utc::now())
            .list
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_request_passes() {
        assert!(fields(&base()).is_empty());
    }

    #[test]
    fn e164() {
        assert!(is_e164("+14155550100"));
        assert!(is_e164("+442071838750"));
        assert!(!is_e164("14155550100"));
        assert!(!is_e164("+0155550100"));
        assert!(!is_e164("+1415555010012345"));
        assert!(!is_e164("+1 415 555 0100"));
        assert!(
            !is_e164("+١٤١٥٥٥٥٠١٠٠"),
            "arabic-indic digits are not E.164"
        );
    }

    #[test]
    fn chat_addresses_are_slack_ids_or_slack_webhooks() {
        for good in [
            "C024BE91L",
            "G0123456789",
            "D024BE91L",
            "U024BE91L",
            "W024BE91L",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        ] {
            assert!(check_chat_address(good).is_ok(), "{good}");
        }
        for bad in [
            "#general",
            "X024BE91L",
            "C02",
            "c024be91l",
            "C024BE91L ",
            "https://hooks.slack.com/services/T0/B0/x/y",
            "https://hooks.slack.com/services/T0//x",
            "https://hooks.slack.com/workflows/T0/A0/1/x",
            "https://hooks.slack.com.evil/services/T0/B0/x",
            "https://hooks.slack.com/services/T0/B0/x%2F",
        ] {
            assert!(check_chat_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn email_syntax() {
        assert!(check_email("ada@example.com").is_ok());
        assert!(check_email("josé@exämple.de").is_ok());
        assert!(check_email("a+tag@sub.example.co.uk").is_ok());
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@localhost",
            "a b@example.com",
            "ada@exa mple.com",
            "a..b@example.com",
            "ada@-example.com",
            "ada@example..com",
            "a@b@example.com",
            "ada\n@example.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(check_email(&long).is_err());
    }

    #[test]
    fn a_channel_needs_its_address() {
        let mut r = base();
        r.recipient.phone = None;
        assert_eq!(fields(&r), vec!["recipient.phone"]);
        r.channels.push(Channel::Push);
        assert!(fields(&r).contains(&"recipient.push_tokens".to_owned()));
    }

    #[test]
    fn content_rules() {
        let mut r = base();
        r.content = None;
        assert_eq!(fields(&r), vec!["content"]);
        r.content = Some(Content {
            subject: Some("x".repeat(1000)),
            text: Some("t".into()),
            html: None,
        });
        assert_eq!(fields(&r), vec!["content.subject"]);
        r.content = Some(Content {
            subject: Some("s".into()),
            text: None,
            html: Some("<p>hi</p>".into()),
        });
        assert_eq!(fields(&r), vec!["content.text"], "sms needs text");
        r.template = Some(TemplateRef {
            id: "welcome".into(),
            data: Default::default(),
            locale: None,
        });
        assert!(fields(&r).contains(&"template".to_owned()));
    }

    #[test]
    fn duplicate_channels_and_ranges() {
        let mut r = base();
        r.channels.push(Channel::Email);
        r.ttl_seconds = Some(0);
        r.category = Some("bad category!".into());
        assert_eq!(fields(&r), vec!["channels[2]", "category", "ttl_seconds"]);
    }

    #[test]
    fn webhook_targets() {
        let strict = Limits::default();
        assert!(check_webhook_url("https://hooks.example.com/x", &strict).is_ok());
        assert!(check_webhook_url("ftp://example.com", &strict).is_err());
        assert!(check_webhook_url("http://127.0.0.1:9000/x", &strict).is_err());
        assert!(check_webhook_url("http://localhost/x", &strict).is_err());
        assert!(check_webhook_url("http://[::1]/x", &strict).is_err());
        assert!(check_webhook_url("http://[::ffff:10.0.0.1]/x", &strict).is_err());
        assert!(check_webhook_url("http://10.1.2.3/x", &strict).is_err());
        assert!(check_webhook_url("http://169.254.169.254/latest", &strict).is_err());
        assert!(check_webhook_url("http://user:pw@example.com/", &strict).is_err());
        let sandbox = Limits {
            allow_loopback_webhooks: true,
            ..Limits::default()
        };
        assert!(check_webhook_url("http://127.0.0.1:9000/x", &sandbox).is_ok());
        assert!(
            check_webhook_url("http://192.168.1.1/x", &sandbox).is_err(),
            "loopback allowance does not open private networks"
        );
    }

    #[test]
    fn idempotency_keys() {
        assert!(check_idempotency_key("order-42:v1").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("has space").is_err());
        assert!(check_idempotency_key("ключ").is_err());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
    }

    #[test]
    fn ssrf_refuses_every_spelling_of_an_inside_address() {
        let strict = Limits::default();
        let refused = [
            "http://0.0.0.0/",
            "http://0.1.2.3/",
            "http://224.0.0.1/",
            "http://239.255.255.250/",
            "http://240.0.0.1/",
            "http://255.255.255.255/",
            "http://198.18.0.1/",
            "http://198.19.255.254/",
            "http://192.0.2.1/",
            "http://100.64.0.1/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::127.0.0.1]/",
            "http://[::10.0.0.1]/",
            // NAT64 with a private or loopback IPv4 inside
            "http://[64:ff9b::10.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            // local-use NAT64, RFC 8215
            "http://[64:ff9b:1::8.8.8.8]/",
            // 6to4 of 192.168.1.1 and 127.0.0.1
            "http://[2002:c0a8:0101::1]/",
            "http://[2002:7f00:0001::]/",
            // Teredo whose client is 10.0.0.1 (obfuscated)
            "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
            "http://[fec0::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[ff02::1]/",
            "http://[2001:db8::1]/",
        ];
        for url in refused {
            assert!(
                check_webhook_url(url, &strict).is_err(),
                "{url} must be refused"
            );
        }
        for url in [
            "http://8.8.8.8/",
            "http://[2606:4700:4700::1111]/",
            "http://[64:ff9b::8.8.8.8]/",
            "http://[2002:0808:0808::1]/",
            "http://198.20.0.1/",
        ] {
            assert!(check_webhook_url(url, &strict).is_ok(), "{url} is public");
        }
        // The allowances open what they name, and no more.
        let private = Limits {
            allow_private_webhooks: true,
            ..Limits::default()
        };
        assert!(check_webhook_url("http://[64:ff9b::10.0.0.1]/", &private).is_ok());
        assert!(
            check_webhook_url("http://[2002:7f00:0001::]/", &private).is_err(),
            "loopback"
        );
        assert!(
            check_webhook_url("http://224.0.0.1/", &private).is_err(),
            "never a host"
        );
        let sandbox = Limits {
            allow_loopback_webhooks: true,
            ..Limits::default()
        };
        assert!(check_webhook_url("http://[64:ff9b::7f00:1]/", &sandbox).is_ok());
        assert!(check_webhook_url("http://0.0.0.0/", &sandbox).is_err());
    }

    #[test]
    fn a_hostile_request_gets_a_bounded_answer() {
        let mut r = base();
        r.channels = vec![Channel::Sms; 262_000];
        let errs = validate(&r, &Limits::default(), chrono::Utc::now());
        assert_eq!(errs.fields(), vec!["channels"], "one error, not 262,000");
        r.channels = vec![Channel::Email, Channel::Sms];
        r.recipient.push_tokens = vec![
            PushToken {
                platform: PushPlatform::Android,
                token: String::new(),
                app: None,
            };
            100_000
        ];
        let errs = validate(&r, &Limits::default(), chrono::Utc::now());
        assert_eq!(errs.fields(), vec!["recipient.push_tokens"]);
        // Many distinct broken rules: the first 50 named, all counted.
        let mut errs = Errors::default();
        for i in 0..1_000 {
            errs.add(format!("f{i}"), "bad");
        }
        assert_eq!((errs.list.len(), errs.total), (MAX_REPORTED, 1_000));
    }

    #[test]
    fn an_sms_keeps_to_what_the_vendors_take_and_to_its_segments() {
        let mut r = base();
        let text = |t: String| {
            Some(Content {
                subject: Some("s".into()),
                text: Some(t),
                html: None,
            })
        };
        let check =
            |r: &NotificationRequest, limits: &Limits| validate(r, limits, chrono::Utc::now());
        r.content = text("x".repeat(1_600));
        assert!(fields(&r).is_empty(), "1,600 characters go");
        r.content = text("字".repeat(1_601));
        let errs = check(&r, &Limits::default());
        assert_eq!(errs.fields(), vec!["content.text"]);
        assert!(errs.list[0].reason.contains("1601"), "{:?}", errs.list);
        // A configured cap counts segments by encoding.
        let capped = Limits {
            max_sms_segments: Some(2),
            ..Limits::default()
        };
        r.content = text("a".repeat(306));
        assert!(check(&r, &capped).is_empty(), "2 GSM-7 segments");
        r.content = text("a".repeat(307));
        assert_eq!(check(&r, &capped).fields(), vec!["content.text"]);
        r.content = text(format!("{}🔐", "a".repeat(135)));
        let errs = check(&r, &capped);
        assert!(
            errs.list[0].reason.contains("3 in UCS-2 (137 units"),
            "{:?}",
            errs.list
        );
        // Only for SMS: an email may be long.
        r.channels = vec![Channel::Email];
        r.content = text("a".repeat(5_000));
        assert!(check(&r, &capped).is_empty());
    }

    #[test]
    fn a_push_keeps_to_what_fcm_takes() {
        let mut r = base();
        r.channels = vec![Channel::Push];
        r.recipient.push_tokens = vec![PushToken {
            platform: PushPlatform::Android,
            token: "t".into(),
            app: None,
        }];
        assert!(fields(&r).is_empty());
        for key in [
            "from",
            "google.c.a.e",
            "gcm.notification.title",
            "message_type",
            "notification",
            "Google_x",
            "herald_delivery_key",
        ] {
            r.metadata =
                Some(serde_json::from_value(serde_json::json!({ key: "v" })).expect("map"));
            assert_eq!(fields(&r), vec![format!("metadata.{key}")], "{key}");
        }
        r.metadata = Some(
            serde_json::from_value(serde_json::json!({"order": "42", "from_city": "Lisbon"}))
                .expect("map"),
        );
        assert!(fields(&r).is_empty(), "keys that only look alike are fine");
        // Over 4 KiB of data with the title and body: refused for push…
        r.metadata = Some(
            serde_json::from_value(serde_json::json!({"blob": "x".repeat(4_000)})).expect("map"),
        );
        assert_eq!(fields(&r), vec!["metadata"]);
        // …but not for a channel that carries it whole.
        r.channels = vec![Channel::Email];
        assert!(fields(&r).is_empty());
        // A body too big for a push on its own.
        r.channels = vec![Channel::Push];
        r.metadata = None;
        r.content = Some(Content {
            subject: None,
            text: Some("é".repeat(2_100)),
            html: None,
        });
        assert_eq!(fields(&r), vec!["content.text"]);
    }

    #[test]
    fn rendered_content_keeps_the_rules_of_inline_content() {
        let mut r = base();
        r.content = None;
        r.template = Some(TemplateRef {
            id: "welcome".into(),
            data: Default::default(),
            locale: None,
        });
        let rendered = Content {
            subject: Some("Hello\r\nBcc: victim@example.com".into()),
            text: Some("x".repeat(200 * 1024)),
            html: None,
        };
        let errs = validate_rendered(&r, &rendered, &Limits::default());
        assert_eq!(errs.fields(), vec!["template.subject", "template.text"]);
        assert!(errs.list[0].reason.contains("line breaks"), "{errs:?}");
        let fine = Content {
            subject: Some("Hello".into()),
            text: Some("Welcome".into()),
            html: None,
        };
        assert!(validate_rendered(&r, &fine, &Limits::default()).is_empty());
    }

    /// A body of quotes fits FCM's count (raw lengths) but not APNs' 4 KiB
    /// once escaped in its JSON: refused for an iOS token when APNs is on
    /// the route, and only then.
    #[test]
    fn an_ios_push_is_counted_as_apns_counts_it() {
        let push = |platform: &str| -> NotificationRequest {
            serde_json::from_value(serde_json::json!({
                "recipient": {"push_tokens": [{"platform": platform, "token": "t"}]},
                "channels": ["push"],
                "content": {"subject": "s", "text": "\"".repeat(2_500)}
            }))
            .expect("valid fixture")
        };
        let with_apns = Limits {
            apns: true,
            ..Limits::default()
        };
        let now = chrono::Utc::now();
        let refused = validate(&push("ios"), &with_apns, now);
        assert_eq!(refused.fields(), vec!["content.text"], "{refused:?}");
        assert!(refused.list[0].reason.contains("4096"), "{refused:?}");
        assert!(validate(&push("android"), &with_apns, now).is_empty());
        assert!(validate(&push("ios"), &Limits::default(), now).is_empty());
        let c = Content {
            subject: Some("Hi".into()),
            text: Some("Hello".into()),
            html: None,
        };
        assert_eq!(
            apns_payload_bytes(&c, None),
            r#"{"aps":{"alert":{"body":"Hello","title":"Hi"}},"herald_delivery_key":"00000000-0000-0000-0000-000000000000"}"#.len()
        );
    }
}
