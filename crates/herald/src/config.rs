//! Configuration: the embedded defaults (`config/herald.example.toml`), then
//! the file given with `--config`, then `HERALD__SECTION__KEY` environment
//! variables. Validated once at start-up and shared as `Arc<Config>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use herald_core::lanes::LanePolicy;
use herald_core::model::Channel;
use herald_core::retry::RetryPolicy;
use herald_core::secret::Secret;
use herald_core::validate::Limits;
use herald_providers::ProviderConfig;
use serde::Deserialize;

/// The documented defaults, compiled in.
pub const DEFAULTS: &str = include_str!("../../../config/herald.example.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub engine: EngineConfig,
    pub http: HttpConfig,
    pub webhooks: WebhookPolicy,
    pub channels: BTreeMap<Channel, ChannelConfig>,
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_batch_items: usize,
    pub request_timeout_ms: u64,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub data_dir: PathBuf,
    pub group_commit_max_batch: usize,
    pub read_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub lease_seconds: u64,
    pub poll_interval_ms: u64,
    pub claim_batch: usize,
    pub shutdown_grace_seconds: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub providers: Vec<String>,
    pub concurrency: usize,
    pub reserved_critical: usize,
    pub low_max_share: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    #[serde(default)]
    pub locales: BTreeMap<String, TemplateConfig>,
}

impl Config {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Toml::string(DEFAULTS));
        if let Some(f) = file {
            if !f.exists() {
                bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("HERALD__").split("__"));
        let cfg: Config = fig.extract().map_err(|e| {
            // figment names the key path; keep every error it found.
            let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration: {}", all.join("; "))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The sandbox: every provider pointed at the simulator with sandbox
    /// credentials, and webhooks allowed to reach loopback.
    pub fn into_sandbox(mut self, sim_base_url: &str) -> Config {
        for p in self.providers.values_mut() {
            match p {
                ProviderConfig::Sendgrid(c) => {
                    c.base_url = sim_base_url.into();
                    c.api_key = Secret::new("SG.sandbox");
                }
                ProviderConfig::Twilio(c) => {
                    c.base_url = sim_base_url.into();
                    c.account_sid = "ACsandbox".into();
                    c.auth_token = Secret::new("sandbox");
                }
                ProviderConfig::Fcm(c) => {
                    c.base_url = sim_base_url.into();
                    c.project_id = "herald-sandbox".into();
                    c.access_token = Secret::new("sandbox");
                }
                ProviderConfig::Webhook(c) => {
                    if c.signing_secret.is_empty() {
                        c.signing_secret = Secret::new(SANDBOX_WEBHOOK_SECRET);
                    }
                }
            }
        }
        self.webhooks.allow_loopback = true;
        self
    }

    fn validate(&self) -> anyhow::Result<()> {
        let e = &self.engine;
        let positive = [
            ("server.max_body_bytes", self.server.max_body_bytes as u64),
            ("server.max_batch_items", self.server.max_batch_items as u64),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            (
                "store.group_commit_max_batch",
                self.store.group_commit_max_batch as u64,
            ),
            (
                "store.read_connections",
                u64::from(self.store.read_connections),
            ),
            ("engine.lease_seconds", e.lease_seconds),
            ("engine.poll_interval_ms", e.poll_interval_ms),
            ("engine.claim_batch", e.claim_batch as u64),
            ("engine.max_attempts", u64::from(e.max_attempts)),
            ("engine.retry_base_ms", e.retry_base_ms),
            ("http.connect_timeout_ms", self.http.connect_timeout_ms),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                bail!("{key}: must be greater than 0");
            }
        }
        let s = &self.server;
        if s.rate_limit_per_second > 0 && (s.rate_limit_burst as usize) < s.max_batch_items {
            bail!("server.rate_limit_burst: must be at least server.max_batch_items, or a full batch could never be accepted");
        }
        if e.retry_cap_ms < e.retry_base_ms {
            bail!("engine.retry_cap_ms: must be at least engine.retry_base_ms");
        }
        if e.lease_seconds * 1000 <= self.http.request_timeout_ms {
            bail!("engine.lease_seconds: must outlast http.request_timeout_ms, or a slow vendor call's lease expires while it runs");
        }
        for (ch, c) in &self.channels {
            if c.providers.is_empty() {
                continue;
            }
            if c.concurrency == 0 {
                bail!("channels.{ch}.concurrency: must be greater than 0");
            }
            if c.reserved_critical >= c.concurrency {
                bail!("channels.{ch}.reserved_critical: must be less than concurrency");
            }
            if !(c.low_max_share > 0.0 && c.low_max_share <= 1.0) {
                bail!("channels.{ch}.low_max_share: must be in (0, 1]");
            }
            for name in &c.providers {
                let Some(p) = self.providers.get(name) else {
                    bail!("channels.{ch}.providers: no [providers.{name}] is configured");
                };
                let pc = p.channel();
                if pc != *ch {
                    bail!("channels.{ch}.providers: {name} serves {pc}, not {ch}");
                }
            }
        }
        Ok(())
    }

    pub fn lane_policy(&self, channel: Channel) -> Option<LanePolicy> {
        let c = self
            .channels
            .get(&channel)
            .filter(|c| !c.providers.is_empty())?;
        Some(LanePolicy {
            concurrency: c.concurrency,
            reserved_critical: c.reserved_critical,
            low_max_share: c.low_max_share,
        })
    }

    /// Channels with at least one provider.
    pub fn enabled_channels(&self) -> Vec<Channel> {
        self.channels
            .iter()
            .filter(|(_, c)| !c.providers.is_empty())
            .map(|(ch, _)| *ch)
            .collect()
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.engine.max_attempts,
            base: Duration::from_millis(self.engine.retry_base_ms),
            cap: Duration::from_millis(self.engine.retry_cap_ms),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            allow_loopback_webhooks: self.webhooks.allow_loopback,
            allow_private_webhooks: self.webhooks.allow_private,
            ..Limits::default()
        }
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.store.data_dir.join("herald.db")
    }
}

/// The sandbox's webhook signing secret (documented; never for production).
pub const SANDBOX_WEBHOOK_SECRET: &str = "whsec_aGVyYWxkLXNhbmRib3gtd2ViaG9vay1zZWNyZXQhIQ==";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_sandbox_validates() {
        let cfg = Config::load(None).expect("defaults load");
        assert_eq!(cfg.enabled_channels().len(), 4);
        let sandbox = cfg.into_sandbox("http://127.0.0.1:1");
        for (name, p) in &sandbox.providers {
            herald_providers::from_config(name, p).expect("sandbox providers build");
        }
        assert!(sandbox.webhooks.allow_loopback);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "[engine]\nmax_attempts = 0\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("must fail");
        assert!(e.to_string().contains("engine.max_attempts"), "{e}");

        std::fs::write(&f, "[server]\nlisten = \"not an address\"\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("must fail");
        assert!(e.to_string().contains("listen"), "{e}");

        std::fs::write(&f, "[channels.sms]\nproviders = [\"sendgrid\"]\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("must fail");
        assert!(e.to_string().contains("channels.sms.providers"), "{e}");

        std::fs::write(&f, "[server]\nlisten_port = 1\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("unknown keys are refused");
        assert!(e.to_string().contains("listen_port"), "{e}");
    }
}
