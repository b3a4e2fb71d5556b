//! The SMTP transport: how an SMTP account's requests (the MIME message the
//! adapter built, with its envelope in headers) reach the mail server.
//! `lettre`'s async client: STARTTLS, implicit TLS or none, AUTH, and a
//! pool of connections per account. The server's reply becomes a response
//! the adapter classifies (`herald_providers::smtp`): its code in
//! `x-smtp-code`, its text as the body.

use std::time::Duration;

use bytes::Bytes;
use herald_core::provider::{Outcome, VendorRequest, VendorResponse};
use herald_providers::smtp::{
    SmtpConfig, SmtpTls, ENVELOPE_FROM, ENVELOPE_TO, MESSAGE_ID, SMTP_CODE,
};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::outbound::Transport;
use crate::config::ProviderGuards;

pub struct Smtp {
    client: AsyncSmtpTransport<Tokio1Executor>,
}

impl Smtp {
    /// The account's client (it connects when it first sends).
    pub fn new(cfg: &SmtpConfig, guards: &ProviderGuards) -> anyhow::Result<Smtp> {
        let tls = match cfg.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(tls_parameters(cfg)?),
            SmtpTls::Implicit => Tls::Wrapper(tls_parameters(cfg)?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
            .port(cfg.port())
            .tls(tls)
            // Each command's bound; the whole send is bounded by the
            // request timeout (`send`).
            .timeout(Some(guards.connect_timeout.max(Duration::from_secs(1))))
            .pool_config(PoolConfig::new().max_size(cfg.pool_size));
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            b = b.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Smtp { client: b.build() })
    }
}

fn tls_parameters(cfg: &SmtpConfig) -> anyhow::Result<TlsParameters> {
    let mut b = TlsParameters::builder(cfg.host.clone());
    if let Some(path) = &cfg.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("ca_file {}: {e}", path.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("ca_file {}: {e}", path.display()))?;
        b = b.add_root_certificate(cert);
    }
    Ok(b.build_rustls()?)
}

#[async_trait::async_trait]
impl Transport for Smtp {
    async fn send(&self, req: VendorRequest, timeout: Duration) -> Result<VendorResponse, Outcome> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let from = header(ENVELOPE_FROM).parse().ok();
        let to: Result<Vec<lettre::Address>, _> = header(ENVELOPE_TO)
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::parse)
            .collect();
        let envelope = to
            .ok()
            .and_then(|to| lettre::address::Envelope::new(from, to).ok())
            .ok_or_else(|| Outcome::permanent("the message has no usable envelope"))?;
        let message_id = req.headers().get(MESSAGE_ID).cloned();
        let reply = |code: u16, text: String| {
            let mut headers = http::HeaderMap::new();
            headers.insert(SMTP_CODE, http::HeaderValue::from(code));
            if let Some(id) = &message_id {
                headers.insert(MESSAGE_ID, id.clone());
            }
            VendorResponse {
                status: http::StatusCode::OK,
                headers,
                body: Bytes::from(text),
            }
        };
        let sent = tokio::time::timeout(timeout, self.client.send_raw(&envelope, req.body())).await;
        match sent {
            Err(_) => Err(Outcome::Transient {
                reason: format!("smtp: no answer within {timeout:?}"),
                // DATA may have gone out: the server may hold the message.
                ambiguous: true,
            }),
            Ok(Ok(r)) => {
                let text = r.message().collect::<Vec<_>>().join(" ");
                let code = r.code().to_string().parse().unwrap_or(250);
                Ok(reply(code, text))
            }
            Ok(Err(e)) => match e.status() {
                Some(code) => {
                    let text = std::error::Error::source(&e)
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    Ok(reply(code.to_string().parse().unwrap_or(554), text))
                }
                None => Err(Outcome::Transient {
                    reason: format!("smtp: {e}"),
                    ambiguous: e.is_timeout(),
                }),
            },
        }
    }
}
