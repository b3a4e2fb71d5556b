//! Outbound HTTP to vendors: one keep-alive client per provider account
//! (each with its own timeouts), and for customer webhooks a client whose
//! resolver refuses loopback and private addresses (unless the config allows
//! them), so a webhook URL can never be used to reach the inside of the
//! network. None follows redirects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::provider::{Outcome, VendorRequest, VendorResponse};
use herald_core::validate::{address_allowed, Limits};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::{HttpConfig, ProviderGuards};

/// The most of a vendor's answer we read; the rest is not needed to classify.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The longest a webhook host's name may take to resolve before the check
/// gives up for this attempt.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a webhook target may not be called now.
#[derive(Debug)]
pub enum TargetError {
    /// The policy forbids it (a private or loopback address): for good.
    Refused(String),
    /// Its name does not resolve now (or not in time): perhaps later.
    Unresolved(String),
}

/// Builds the clients and checks webhook targets.
#[derive(Clone)]
pub struct Outbound {
    pool_max_idle_per_host: usize,
    limits: Arc<Limits>,
}

/// A resolver that drops addresses the webhook policy forbids.
struct GuardedResolver {
    limits: Arc<Limits>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let limits = self.limits.clone();
        Box::pin(async move {
            let host = format!("{}:0", name.as_str());
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host)
                .await?
                .filter(|a| address_allowed(a.ip(), &limits).is_ok())
                .collect();
            if addrs.is_empty() {
                return Err(format!("{} resolves to no allowed address", name.as_str()).into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl Outbound {
    pub fn new(cfg: &HttpConfig, limits: Limits) -> Self {
        Self {
            pool_max_idle_per_host: cfg.pool_max_idle_per_host,
            limits: Arc::new(limits),
        }
    }

    /// A keep-alive client with one provider's timeouts; for webhooks, with
    /// the guarded resolver; HTTP/2 only (prior knowledge) for vendors that
    /// speak nothing else (APNs).
    pub fn client(
        &self,
        guards: &ProviderGuards,
        webhook: bool,
        http2_only: bool,
    ) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(guards.connect_timeout)
            .timeout(guards.request_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
        if http2_only {
            b = b.http2_prior_knowledge();
        }
        if webhook {
            b = b.dns_resolver(Arc::new(GuardedResolver {
                limits: self.limits.clone(),
            }));
        }
        Ok(b.build()?)
    }

    /// Checks a webhook target before sending: literal addresses and what the
    /// host resolves to must be allowed. Resolving is bounded by
    /// `RESOLVE_TIMEOUT`.
    pub async fn check_webhook_target(&self, url: &str) -> Result<(), TargetError> {
        herald_core::validate::check_webhook_url(url, &self.limits)
            .map_err(|why| TargetError::Refused(why.0))?;
        let parsed = url::Url::parse(url).map_err(|e| TargetError::Refused(e.to_string()))?;
        if let Some(url::Host::Domain(d)) = parsed.host() {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((d, port)))
                .await
                .map_err(|_| TargetError::Unresolved(format!("resolving {d} timed out")))?
                .map_err(|e| TargetError::Unresolved(format!("cannot resolve {d}: {e}")))?;
            for a in addrs {
                address_allowed(a.ip(), &self.limits).map_err(|why| {
                    TargetError::Refused(format!("{d} resolves to {}: {why}", a.ip()))
                })?;
            }
        }
        Ok(())
    }
}

/// How a built vendor request reaches the vendor: over HTTP (`Http`) in
/// production, by a script in the engine's tests. The answer, or the
/// transport's failure as an outcome (a timeout after the request went out
/// is ambiguous: the vendor may have accepted it).
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, req: VendorRequest, timeout: Duration) -> Result<VendorResponse, Outcome>;
}

/// HTTP with one provider account's keep-alive client.
pub struct Http(pub reqwest::Client);

#[async_trait::async_trait]
impl Transport for Http {
    async fn send(&self, req: VendorRequest, timeout: Duration) -> Result<VendorResponse, Outcome> {
        exchange(&self.0, req, timeout).await
    }
}

async fn exchange(
    client: &reqwest::Client,
    req: VendorRequest,
    timeout: Duration,
) -> Result<VendorResponse, Outcome> {
    let mut req = reqwest::Request::try_from(req)
        .map_err(|e| Outcome::permanent(format!("request cannot be sent: {e}")))?;
    *req.timeout_mut() = Some(timeout);
    let mut resp = client.execute(req).await.map_err(transport_outcome)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_RESPONSE_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            // The status line arrived: classify on it even if the body broke off.
            Err(_) => break,
        }
    }
    Ok(VendorResponse {
        status,
        headers,
        body: Bytes::from(body),
    })
}

fn transport_outcome(e: reqwest::Error) -> Outcome {
    if e.is_connect() {
        // Never reached the vendor: safe to retry anywhere.
        Outcome::Transient {
            reason: format!("connect failed: {}", error_chain(&e)),
            ambiguous: false,
        }
    } else if e.is_timeout() {
        Outcome::Transient {
            reason: "timed out waiting for the vendor".into(),
            ambiguous: true,
        }
    } else {
        Outcome::Transient {
            reason: format!("transport error: {}", error_chain(&e)),
            ambiguous: true,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
