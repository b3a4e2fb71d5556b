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
use herald_core::admission::LaneObjective;
use herald_core::breaker::BreakerSettings;
use herald_core::lanes::{Failover, LaneRules, Lanes};
use herald_core::model::{Channel, Priority};
use herald_core::pool::PoolPolicy;
use herald_core::retry::RetryPolicy;
use herald_core::secret::Secret;
use herald_core::validate::Limits;
use herald_providers::ProviderConfig;
use serde::Deserialize;

use crate::api::ApiSettings;
use crate::engine::accounts::{AccountSettings, AccountsSettings};
use crate::engine::EngineSettings;

/// The documented defaults, compiled in.
pub const DEFAULTS: &str = include_str!("../../../config/herald.example.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub node: NodeConfig,
    pub store: StoreConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub engine: EngineConfig,
    pub suppression: SuppressionConfig,
    #[serde(default)]
    pub unsubscribe: UnsubscribeConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    pub http: HttpConfig,
    pub webhooks: WebhookPolicy,
    pub lanes: LanesConfig,
    pub circuit_breaker: CircuitBreakerConfig,
    pub channels: BTreeMap<Channel, ChannelConfig>,
    pub providers: BTreeMap<String, ProviderSettings>,
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateConfig>,
    /// Set by `into_sandbox`: the node runs against the simulator at this
    /// URL, and says so (a banner, a header on every response, `/readyz`,
    /// `/v1/providers`).
    #[serde(skip)]
    pub sandbox: Option<String>,
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
    /// Connections open at once; past it new ones get 503 and are closed.
    pub max_connections: usize,
    /// From a request's first byte, how long its headers may take.
    pub header_read_timeout_ms: u64,
    /// How long a connection with no request in progress may sit silent.
    pub idle_timeout_ms: u64,
    /// The API's own runtime threads; 0 for the default (`Config::threads`).
    pub threads: usize,
    /// How many nice steps below the delivery engine the API's threads run.
    pub nice: u8,
    /// Refuse notifications for lanes behind their objective.
    pub admission: bool,
    /// How often the lanes are judged.
    pub admission_refresh_ms: u64,
    /// The base URL vendors call (receipts' signatures); empty: the
    /// request's Host.
    pub public_url: String,
}

/// `[redis]`: optional fleet-wide send rates and shared open circuits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Empty: none (each node keeps its own).
    pub url: Secret,
    pub key_prefix: String,
    pub sync_interval_ms: u64,
}

/// `[kafka]`: the fleet's bus; empty brokers for the local bus.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    pub group_prefix: String,
    pub sweep_interval_ms: u64,
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }
}

/// `[node]`: this process's part in a fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub roles: Vec<Role>,
    /// Empty: every enabled channel.
    pub channels: Vec<Channel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The HTTP API.
    Api,
    /// Publishes stored notifications to the bus (nothing to do on the
    /// local bus).
    Relay,
    /// Delivers, for the node's channels.
    Worker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub data_dir: PathBuf,
    pub group_commit_max_batch: usize,
    pub read_connections: u32,
    /// 0 keeps everything.
    pub retention_hours: u64,
    /// The longest a write, a read or a connection may take.
    pub timeout_ms: u64,
    /// PostgreSQL: `postgres://user:password@host:port/database`.
    pub url: Secret,
    pub writers: usize,
    pub max_connections: u32,
    /// PostgreSQL: the longest a group commit waits for more operations.
    pub gather_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub lease_seconds: u64,
    pub poll_interval_ms: u64,
    pub claim_batch: usize,
    /// Deliveries due at once go straight to this node's workers (local
    /// bus only).
    pub handoff: bool,
    pub shutdown_grace_seconds: u64,
    /// The process runtime's threads; 0 for the default (`Config::threads`).
    pub threads: usize,
}

/// The cores this process may run on (its CPU affinity and cgroup quota
/// counted), at least one.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many threads each of a node's runtimes runs (`Config::threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// The API's runtime (`api::server::ApiRuntime`).
    pub api: usize,
    /// The process's runtime: everything else.
    pub engine: usize,
}

/// `[suppression]`: the suppression lists on the delivery path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionConfig {
    pub refresh_interval_ms: u64,
    pub critical_bypass: bool,
}

/// `[unsubscribe]`: the keys that sign one-click unsubscribe links.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// `ID:SECRET` (the secret base64, 16 bytes or more): the first signs
    /// new links, every one verifies. Rotate by putting a new key first and
    /// dropping the old one once mail that carries it is stale.
    #[serde(default)]
    pub keys: Vec<Secret>,
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `auto` (text with colour on a terminal, JSON lines otherwise),
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Where OTLP/HTTP traces go (`http://collector:4318`; `/v1/traces` is
    /// added). Empty: off, unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    pub otlp_endpoint: String,
    /// The share of new traces kept, 0 to 1 (a caller's sampled
    /// `traceparent` is followed either way).
    pub sample_ratio: f64,
    /// `service.name` on every span (`OTEL_SERVICE_NAME` overrides).
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Auto,
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
            service_name: "herald".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

/// The sandbox's unsubscribe key (documented; never for production).
pub const SANDBOX_UNSUBSCRIBE_KEY: &str = "sandbox:aGVyYWxkLXNhbmRib3gtdW5zdWJzY3JpYmU=";

/// `[lanes.*]`: routing and retries per priority lane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanesConfig {
    pub critical: LaneConfig,
    pub high: LaneConfig,
    pub normal: LaneConfig,
    pub low: LaneConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    pub failover: Failover,
    pub failover_ambiguous: bool,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Accept to vendor within this long; 0 for none (work that may wait).
    pub objective_ms: u64,
    /// The most deliveries the lane may hold waiting; 0 for no limit.
    pub backlog_cap: u64,
}

impl LanesConfig {
    pub fn get(&self, lane: Priority) -> &LaneConfig {
        match lane {
            Priority::Critical => &self.critical,
            Priority::High => &self.high,
            Priority::Normal => &self.normal,
            Priority::Low => &self.low,
        }
    }

    /// Every lane, to change them all at once.
    pub fn all_mut(&mut self) -> [&mut LaneConfig; 4] {
        [
            &mut self.critical,
            &mut self.high,
            &mut self.normal,
            &mut self.low,
        ]
    }
}

/// `[circuit_breaker]`: the defaults for every provider's breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    pub failure_threshold: u32,
    pub open_ms: u64,
    pub half_open_probes: u32,
}

/// `[providers.NAME]`: the vendor account (`kind` and its own keys) and the
/// guards around its calls. Unset guards take the `[http]` and
/// `[circuit_breaker]` defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSettings {
    #[serde(flatten)]
    pub account: ProviderConfig,
    pub connect_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    /// Requests per second this account may make (a token bucket); unset or
    /// 0 for no limit.
    pub rate_limit_per_second: Option<u32>,
    pub rate_limit_burst: Option<u32>,
    /// Requests in flight at once; unset or 0 for no limit.
    pub max_concurrency: Option<usize>,
    pub circuit_failure_threshold: Option<u32>,
    pub circuit_open_ms: Option<u64>,
    pub circuit_half_open_probes: Option<u32>,
}

impl ProviderSettings {
    /// The account with the default guards.
    pub fn new(account: ProviderConfig) -> ProviderSettings {
        ProviderSettings {
            account,
            connect_timeout_ms: None,
            request_timeout_ms: None,
            rate_limit_per_second: None,
            rate_limit_burst: None,
            max_concurrency: None,
            circuit_failure_threshold: None,
            circuit_open_ms: None,
            circuit_half_open_probes: None,
        }
    }
}

/// A provider's guards, with the defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderGuards {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Requests per second and burst.
    pub rate_limit: Option<(u32, u32)>,
    pub max_concurrency: Option<usize>,
    pub breaker: BreakerSettings,
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
    /// Webhook destinations whose guards are tracked at once.
    pub max_destinations: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub providers: Vec<String>,
    pub concurrency: usize,
    pub reserved_critical: usize,
    pub low_max_share: f64,
    /// SMS only: the most segments a text may take, refused at the API
    /// past it (unset: up to the vendors' 1,600 characters).
    #[serde(default)]
    pub max_segments: Option<usize>,
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
        Self::load_with(file, |_| {})
    }

    /// As `load`, with `overrides` (command-line flags) applied last,
    /// before the whole is validated.
    pub fn load_with(
        file: Option<&Path>,
        overrides: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Toml::string(DEFAULTS));
        if let Some(f) = file {
            if !f.exists() {
                bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("HERALD__").split("__"));
        let mut cfg: Config = fig.extract().map_err(|e| {
            // figment names the key path; keep every error it found.
            let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration: {}", all.join("; "))
        })?;
        overrides(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The sandbox: every provider pointed at the simulator with sandbox
    /// credentials, and webhooks allowed to reach loopback.
    pub fn into_sandbox(mut self, sim_base_url: &str) -> Config {
        for p in self.providers.values_mut() {
            match &mut p.account {
                ProviderConfig::Sendgrid(c) => {
                    c.base_url = sim_base_url.into();
                    c.api_key = Secret::new("SG.sandbox");
                }
                ProviderConfig::Twilio(c) => {
                    c.base_url = sim_base_url.into();
                    c.account_sid = "ACsandbox".into();
                    c.auth_token = Secret::new("sandbox");
                }
                ProviderConfig::Sns(c) => {
                    c.base_url = Some(sim_base_url.into());
                    c.access_key_id = "AKIASANDBOX".into();
                    c.secret_access_key = Secret::new("sandbox");
                }
                ProviderConfig::Fcm(c) => {
                    c.base_url = sim_base_url.into();
                    c.project_id = "herald-sandbox".into();
                    c.access_token = Some(Secret::new("sandbox"));
                    c.service_account_file = None;
                    c.service_account_json = None;
                }
                ProviderConfig::Apns(c) => {
                    c.base_url = sim_base_url.into();
                }
                ProviderConfig::Ses(c) => {
                    c.base_url = Some(sim_base_url.into());
                    c.access_key_id = "AKIASANDBOX".into();
                    c.secret_access_key = Secret::new("sandbox");
                }
                // The simulator speaks no SMTP: a mail server of the
                // user's own stays as configured.
                ProviderConfig::Smtp(_) => {}
                ProviderConfig::Webhook(c) => {
                    if c.signing_secret.is_empty() {
                        c.signing_secret = Secret::new(SANDBOX_WEBHOOK_SECRET);
                    }
                }
                ProviderConfig::Slack(c) => {
                    c.base_url = sim_base_url.into();
                    c.hooks_url = sim_base_url.into();
                    c.bot_token = Some(Secret::new(herald_sim::SANDBOX_SLACK_TOKEN));
                }
            }
        }
        self.webhooks.allow_loopback = true;
        if self.unsubscribe.keys.is_empty() {
            self.unsubscribe.keys = vec![Secret::new(SANDBOX_UNSUBSCRIBE_KEY)];
        }
        self.sandbox = Some(sim_base_url.to_owned());
        self
    }

    fn validate(&self) -> anyhow::Result<()> {
        crate::api::unsubscribe::Keys::parse(&self.unsubscribe.keys).map_err(anyhow::Error::msg)?;
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            anyhow::bail!("telemetry.sample_ratio must be between 0 and 1");
        }
        let endpoint = t.otlp_endpoint.trim();
        let http = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !http {
            anyhow::bail!(
                "telemetry.otlp_endpoint must be an http:// or https:// URL (OTLP over HTTP)"
            );
        }
        let e = &self.engine;
        let positive = [
            ("server.max_body_bytes", self.server.max_body_bytes as u64),
            ("server.max_batch_items", self.server.max_batch_items as u64),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            (
                "store.group_commit_max_batch",
                self.store.group_commit_max_batch as u64,
            ),
            (
                "store.read_connections",
                u64::from(self.store.read_connections),
            ),
            ("store.timeout_ms", self.store.timeout_ms),
            ("engine.lease_seconds", e.lease_seconds),
            ("engine.poll_interval_ms", e.poll_interval_ms),
            ("engine.claim_batch", e.claim_batch as u64),
            (
                "suppression.refresh_interval_ms",
                self.suppression.refresh_interval_ms,
            ),
            (
                "webhooks.max_destinations",
                self.webhooks.max_destinations as u64,
            ),
            ("http.connect_timeout_ms", self.http.connect_timeout_ms),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            (
                "circuit_breaker.failure_threshold",
                u64::from(self.circuit_breaker.failure_threshold),
            ),
            ("circuit_breaker.open_ms", self.circuit_breaker.open_ms),
            (
                "circuit_breaker.half_open_probes",
                u64::from(self.circuit_breaker.half_open_probes),
            ),
        ];
        for (key, v) in positive {
            if v == 0 {
                bail!("{key}: must be greater than 0");
            }
        }
        let s = &self.server;
        if s.nice > 19 {
            bail!("server.nice: must be between 0 and 19 (a Unix nice increment)");
        }
        if s.rate_limit_per_second > 0 && (s.rate_limit_burst as usize) < s.max_batch_items {
            bail!("server.rate_limit_burst: must be at least server.max_batch_items, or a full batch could never be accepted");
        }
        for lane in Priority::ALL {
            let l = self.lanes.get(lane);
            if l.max_attempts == 0 {
                bail!("lanes.{lane}.max_attempts: must be greater than 0");
            }
            if l.retry_base_ms == 0 {
                bail!("lanes.{lane}.retry_base_ms: must be greater than 0");
            }
            if l.retry_cap_ms < l.retry_base_ms {
                bail!("lanes.{lane}.retry_cap_ms: must be at least lanes.{lane}.retry_base_ms");
            }
        }
        for (name, p) in &self.providers {
            let optional = [
                ("connect_timeout_ms", p.connect_timeout_ms),
                ("request_timeout_ms", p.request_timeout_ms),
                (
                    "circuit_failure_threshold",
                    p.circuit_failure_threshold.map(u64::from),
                ),
                ("circuit_open_ms", p.circuit_open_ms),
                (
                    "circuit_half_open_probes",
                    p.circuit_half_open_probes.map(u64::from),
                ),
            ];
            for (key, v) in optional {
                if v == Some(0) {
                    bail!("providers.{name}.{key}: must be greater than 0");
                }
            }
            if p.rate_limit_burst == Some(0) {
                bail!("providers.{name}.rate_limit_burst: must be greater than 0");
            }
        }
        // Across every route: a vendor call must end before its lease does,
        // or the delivery is taken over while the call still runs.
        let slowest = self
            .providers
            .keys()
            .map(|n| self.provider_guards(n).request_timeout)
            .max()
            .unwrap_or_default();
        if Duration::from_secs(e.lease_seconds) <= slowest * 2 {
            bail!(
                "engine.lease_seconds: must be more than twice the longest provider request timeout ({} ms), \
                 or a slow call (with one failover) can outlive its lease",
                slowest.as_millis()
            );
        }
        if self.node.roles.is_empty() {
            bail!("node.roles: give at least one of \"api\", \"relay\", \"worker\"");
        }
        let enabled = self.enabled_channels();
        if let Some(ch) = self.node.channels.iter().find(|c| !enabled.contains(c)) {
            bail!(
                "node.channels: {ch} is not an enabled channel (channels.{ch}.providers is empty)"
            );
        }
        if self.store.kind == StoreKind::Postgres {
            if self.store.url.is_empty() {
                bail!("store.url: required when store.kind is \"postgres\" (HERALD__STORE__URL=postgres://user:password@host:5432/herald)");
            }
            if self.store.writers == 0 {
                bail!("store.writers: must be greater than 0");
            }
            let needed = self.store.writers as u64 + u64::from(self.store.read_connections);
            if u64::from(self.store.max_connections) < needed {
                bail!(
                    "store.max_connections: must be at least store.writers + store.read_connections ({needed})"
                );
            }
            if self.store.gather_ms > 1_000 || self.store.gather_ms >= self.store.timeout_ms {
                bail!("store.gather_ms: must be at most 1000 and less than store.timeout_ms (a write waits for its group commit within the timeout)");
            }
        }
        for (ch, c) in &self.channels {
            match c.max_segments {
                Some(_) if *ch != Channel::Sms => {
                    bail!("channels.{ch}.max_segments: only SMS is counted in segments")
                }
                Some(0) => bail!("channels.{ch}.max_segments: must be at least 1"),
                _ => {}
            }
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
                let pc = p.account.channel();
                if pc != *ch {
                    bail!("channels.{ch}.providers: {name} serves {pc}, not {ch}");
                }
            }
        }
        Ok(())
    }

    pub fn pool_policy(&self, channel: Channel) -> Option<PoolPolicy> {
        let c = self
            .channels
            .get(&channel)
            .filter(|c| !c.providers.is_empty())?;
        Some(PoolPolicy {
            concurrency: c.concurrency,
            reserved_critical: c.reserved_critical,
            low_max_share: c.low_max_share,
        })
    }

    /// The threads of the node's two runtimes on a machine of `cores`:
    /// what `server.threads` and `engine.threads` say, and where they say
    /// 0, one thread per core in all. A node with the api role gives the
    /// API half the cores (at least one) and the engine the rest (at least
    /// one); a node without it gives the API one thread (health, metrics)
    /// and the engine every core.
    ///
    /// One per core in all, not per core each: on two cores, 2 + 2 threads
    /// cost 7-12% more of Herald's CPU per delivery than 1 + 1, for the
    /// same deliveries, the same latency and the same overload behaviour
    /// (a tokio worker that finds work wakes a sibling, which on an
    /// oversubscribed machine is a context switch; docs/benchmarks.md,
    /// issue 18).
    pub fn threads(&self, cores: usize) -> Threads {
        let cores = cores.max(1);
        let api = match self.server.threads {
            0 if self.has_role(Role::Api) => (cores / 2).max(1),
            0 => 1,
            n => n,
        };
        let engine = match self.engine.threads {
            0 if self.has_role(Role::Api) => cores.saturating_sub(api).max(1),
            0 => cores,
            n => n,
        };
        Threads { api, engine }
    }

    /// Whether this node has `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.node.roles.contains(&role)
    }

    /// The channels this node delivers: its `node.channels`, or every
    /// enabled channel; none without the worker role.
    pub fn worker_channels(&self) -> Vec<Channel> {
        if !self.has_role(Role::Worker) {
            return Vec::new();
        }
        let enabled = self.enabled_channels();
        if self.node.channels.is_empty() {
            enabled
        } else {
            enabled
                .into_iter()
                .filter(|c| self.node.channels.contains(c))
                .collect()
        }
    }

    pub fn enabled_channels(&self) -> Vec<Channel> {
        self.channels
            .iter()
            .filter(|(_, c)| !c.providers.is_empty())
            .map(|(ch, _)| *ch)
            .collect()
    }

    /// Routing and retry rules per lane.
    pub fn lane_rules(&self) -> Lanes<LaneRules> {
        Lanes::from_fn(|lane| {
            let l = self.lanes.get(lane);
            LaneRules {
                failover: l.failover,
                failover_ambiguous: l.failover_ambiguous,
                retry: RetryPolicy {
                    max_attempts: l.max_attempts,
                    base: Duration::from_millis(l.retry_base_ms),
                    cap: Duration::from_millis(l.retry_cap_ms),
                },
            }
        })
    }

    /// What each lane promises, and how much it may hold.
    pub fn lane_objectives(&self) -> Lanes<LaneObjective> {
        Lanes::from_fn(|lane| {
            let l = self.lanes.get(lane);
            LaneObjective {
                within: (l.objective_ms > 0).then(|| Duration::from_millis(l.objective_ms)),
                backlog_cap: (l.backlog_cap > 0).then_some(l.backlog_cap),
            }
        })
    }

    /// A provider's guards, its own settings over the defaults. An unknown
    /// name gets the defaults.
    pub fn provider_guards(&self, name: &str) -> ProviderGuards {
        let p = self.providers.get(name);
        let get = |f: fn(&ProviderSettings) -> Option<u64>| p.and_then(f);
        let cb = &self.circuit_breaker;
        ProviderGuards {
            connect_timeout: Duration::from_millis(
                get(|p| p.connect_timeout_ms).unwrap_or(self.http.connect_timeout_ms),
            ),
            request_timeout: Duration::from_millis(
                get(|p| p.request_timeout_ms).unwrap_or(self.http.request_timeout_ms),
            ),
            rate_limit: p
                .and_then(|p| p.rate_limit_per_second)
                .filter(|r| *r > 0)
                .map(|r| (r, p.and_then(|p| p.rate_limit_burst).unwrap_or(r))),
            max_concurrency: p.and_then(|p| p.max_concurrency).filter(|c| *c > 0),
            breaker: BreakerSettings {
                failure_threshold: p
                    .and_then(|p| p.circuit_failure_threshold)
                    .unwrap_or(cb.failure_threshold),
                open_ms: i64::try_from(get(|p| p.circuit_open_ms).unwrap_or(cb.open_ms))
                    .unwrap_or(i64::MAX),
                half_open_probes: p
                    .and_then(|p| p.circuit_half_open_probes)
                    .unwrap_or(cb.half_open_probes),
            },
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_sms_segments: self
                .channels
                .get(&Channel::Sms)
                .and_then(|c| c.max_segments),
            allow_loopback_webhooks: self.webhooks.allow_loopback,
            allow_private_webhooks: self.webhooks.allow_private,
            apns: self.channels.get(&Channel::Push).is_some_and(|c| {
                c.providers.iter().any(|p| {
                    self.providers
                        .get(p)
                        .is_some_and(|s| matches!(s.account, ProviderConfig::Apns(_)))
                })
            }),
            ..Limits::default()
        }
    }

    /// The engine's slice: lanes, this node's pools, claim and poll
    /// timing, shutdown grace and retention.
    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            lanes: self.lane_rules(),
            pools: self
                .worker_channels()
                .into_iter()
                .filter_map(|ch| Some((ch, self.pool_policy(ch)?)))
                .collect(),
            claim_batch: self.engine.claim_batch,
            poll: Duration::from_millis(self.engine.poll_interval_ms),
            grace: Duration::from_secs(self.engine.shutdown_grace_seconds),
            retention: Duration::from_secs(self.store.retention_hours * 3600),
            suppression_refresh: Duration::from_millis(self.suppression.refresh_interval_ms),
            suppression_critical_bypass: self.suppression.critical_bypass,
        }
    }

    /// Each enabled channel's route of accounts, with their guards.
    pub fn account_settings(&self) -> AccountsSettings {
        let routes = self
            .enabled_channels()
            .into_iter()
            .map(|ch| {
                let route = self.channels[&ch]
                    .providers
                    .iter()
                    .filter_map(|name| {
                        Some(AccountSettings {
                            name: name.clone(),
                            account: self.providers.get(name)?.account.clone(),
                            guards: self.provider_guards(name),
                        })
                    })
                    .collect();
                (ch, route)
            })
            .collect();
        AccountsSettings {
            routes,
            max_destinations: self.webhooks.max_destinations,
        }
    }

    /// The API's slice: request limits, the enabled channels, tenants'
    /// rate limit.
    pub fn api_settings(&self) -> ApiSettings {
        ApiSettings {
            limits: self.limits(),
            channels: self.enabled_channels().into_iter().collect(),
            max_body_bytes: self.server.max_body_bytes,
            max_batch_items: self.server.max_batch_items,
            rate_limit_per_second: self.server.rate_limit_per_second,
            rate_limit_burst: self.server.rate_limit_burst,
            public_url: Some(self.server.public_url.trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty()),
            sandbox: self.sandbox.clone(),
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
    fn lanes_have_their_documented_objectives_and_low_a_backlog_cap() {
        let cfg = Config::load(None).expect("defaults");
        let o = cfg.lane_objectives();
        let secs = |lane| o[lane].within.map(|d: Duration| d.as_millis());
        assert_eq!(secs(Priority::Critical), Some(1_000));
        assert_eq!(secs(Priority::High), Some(2_000));
        assert_eq!(secs(Priority::Normal), Some(10_000));
        assert_eq!(secs(Priority::Low), None, "low may wait");
        assert_eq!(o[Priority::Low].backlog_cap, Some(10_000_000));
        assert_eq!(o[Priority::Critical].backlog_cap, None);
    }

    /// deploy/compose/herald.toml (the laptop fleet) is a valid config whose
    /// providers all build.
    #[test]
    fn the_compose_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/compose/herald.toml");
        let cfg = Config::load(Some(&path)).expect("deploy/compose/herald.toml loads");
        assert_eq!(cfg.store.kind, StoreKind::Postgres);
        assert!(cfg.kafka.enabled());
        for (name, p) in &cfg.providers {
            herald_providers::from_config(name, &p.account)
                .unwrap_or_else(|e| panic!("providers.{name}: {e}"));
        }
    }

    #[test]
    fn defaults_parse_and_sandbox_validates() {
        let cfg = Config::load(None).expect("defaults load");
        assert_eq!(
            cfg.enabled_channels().len(),
            Channel::ALL.len(),
            "every channel is on by default"
        );
        let sandbox = cfg.into_sandbox("http://127.0.0.1:1");
        for (name, p) in &sandbox.providers {
            herald_providers::from_config(name, &p.account).expect("sandbox providers build");
        }
        assert_eq!(
            sandbox.channels[&Channel::Sms].providers,
            vec!["twilio", "sns"],
            "SMS fails over from Twilio to SNS"
        );
        assert!(sandbox.webhooks.allow_loopback);
    }

    #[test]
    fn provider_guards_fall_back_to_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[providers.twilio]\nrequest_timeout_ms = 4000\nrate_limit_per_second = 100\nmax_concurrency = 8\ncircuit_open_ms = 5000\n",
        )
        .expect("write");
        let cfg = Config::load(Some(&f)).expect("loads");
        let t = cfg.provider_guards("twilio");
        assert_eq!(t.request_timeout, Duration::from_millis(4000));
        assert_eq!(
            t.connect_timeout,
            Duration::from_millis(cfg.http.connect_timeout_ms)
        );
        assert_eq!(t.rate_limit, Some((100, 100)));
        assert_eq!(t.max_concurrency, Some(8));
        assert_eq!(t.breaker.open_ms, 5000);
        assert_eq!(t.breaker.failure_threshold, 5);
        let s = cfg.provider_guards("sendgrid");
        assert_eq!(s.rate_limit, None);
        assert_eq!(s.max_concurrency, None);
        assert_eq!(s.breaker.open_ms, 60_000);
        let rules = cfg.lane_rules();
        assert_eq!(rules[Priority::Critical].failover, Failover::OnFailure);
        assert!(rules[Priority::Critical].failover_ambiguous);
        assert_eq!(rules[Priority::Low].failover, Failover::Never);
    }

    #[test]
    fn a_node_runs_one_thread_per_core_split_by_its_roles() {
        let both = Config::load(None).expect("defaults");
        assert_eq!(both.threads(2), Threads { api: 1, engine: 1 });
        assert_eq!(both.threads(8), Threads { api: 4, engine: 4 });
        assert_eq!(
            both.threads(1),
            Threads { api: 1, engine: 1 },
            "one core still runs both runtimes"
        );
        assert_eq!(both.threads(0), Threads { api: 1, engine: 1 });

        let worker = Config::load_with(None, |c| c.node.roles = vec![Role::Worker, Role::Relay])
            .expect("worker");
        assert_eq!(
            worker.threads(8),
            Threads { api: 1, engine: 8 },
            "without the api role the API serves health and metrics only"
        );

        let set = Config::load_with(None, |c| {
            c.server.threads = 3;
            c.engine.threads = 6;
        })
        .expect("set");
        assert_eq!(
            set.threads(2),
            Threads { api: 3, engine: 6 },
            "what is set wins"
        );
        let api_set = Config::load_with(None, |c| c.server.threads = 3).expect("api set");
        assert_eq!(api_set.threads(8), Threads { api: 3, engine: 5 });
    }

    #[test]
    fn a_node_does_what_its_roles_and_channels_say() {
        let all = Config::load(None).expect("defaults");
        assert!(all.has_role(Role::Api) && all.has_role(Role::Worker));
        assert_eq!(all.worker_channels(), all.enabled_channels());

        let sms = Config::load_with(None, |c| {
            c.node.roles = vec![Role::Worker];
            c.node.channels = vec![Channel::Sms];
        })
        .expect("an SMS worker");
        assert!(!sms.has_role(Role::Api));
        assert_eq!(sms.worker_channels(), vec![Channel::Sms]);

        let api = Config::load_with(None, |c| c.node.roles = vec![Role::Api]).expect("an API node");
        assert!(api.worker_channels().is_empty(), "no worker role, no pools");

        let e = Config::load_with(None, |c| c.node.roles.clear()).expect_err("no roles");
        assert!(e.to_string().contains("node.roles"), "{e}");
        let e = Config::load_with(None, |c| {
            c.channels
                .get_mut(&Channel::Push)
                .expect("push")
                .providers
                .clear();
            c.node.channels = vec![Channel::Push];
        })
        .expect_err("a disabled channel");
        assert!(e.to_string().contains("node.channels: push"), "{e}");
    }

    #[test]
    fn postgres_needs_a_url_and_enough_connections() {
        let e =
            Config::load_with(None, |c| c.store.kind = StoreKind::Postgres).expect_err("no url");
        assert!(e.to_string().contains("store.url"), "{e}");
        let e = Config::load_with(None, |c| {
            c.store.kind = StoreKind::Postgres;
            c.store.url = Secret::new("postgres://h/db");
            c.store.max_connections = 2;
        })
        .expect_err("too few connections");
        assert!(e.to_string().contains("store.max_connections"), "{e}");
        let e = Config::load_with(None, |c| {
            c.store.kind = StoreKind::Postgres;
            c.store.url = Secret::new("postgres://h/db");
            c.store.timeout_ms = 50;
            c.store.gather_ms = 50;
        })
        .expect_err("a gather as long as the timeout");
        assert!(e.to_string().contains("store.gather_ms"), "{e}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "[lanes.low]\nmax_attempts = 0\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("must fail");
        assert!(e.to_string().contains("lanes.low.max_attempts"), "{e}");

        std::fs::write(&f, "[lanes.high]\nfailover = \"sometimes\"\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("must fail");
        assert!(e.to_string().contains("failover"), "{e}");

        std::fs::write(&f, "[providers.twilio]\nrequest_timeout_ms = 0\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("must fail");
        assert!(
            e.to_string()
                .contains("providers.twilio.request_timeout_ms"),
            "{e}"
        );

        std::fs::write(&f, "[providers.twilio]\naccount_sidd = \"AC1\"\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("a misspelt vendor key is refused");
        assert!(e.to_string().contains("account_sidd"), "{e}");

        std::fs::write(&f, "[server]\nlisten = \"not an address\"\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("must fail");
        assert!(e.to_string().contains("listen"), "{e}");

        std::fs::write(&f, "[channels.sms]\nproviders = [\"sendgrid\"]\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("must fail");
        assert!(e.to_string().contains("channels.sms.providers"), "{e}");

        std::fs::write(&f, "[server]\nlisten_port = 1\n").expect("write");
        let e = Config::load(Some(&f)).expect_err("unknown keys are refused");
        assert!(e.to_string().contains("listen_port"), "{e}");

        for (toml, names) in [
            (
                "[telemetry]\nsample_ratio = 1.5\n",
                "telemetry.sample_ratio",
            ),
            (
                "[telemetry]\notlp_endpoint = \"collector:4317\"\n",
                "telemetry.otlp_endpoint",
            ),
            ("[telemetry]\nlog_format = \"xml\"\n", "log_format"),
        ] {
            std::fs::write(&f, toml).expect("write");
            let e = Config::load(Some(&f)).expect_err(toml);
            assert!(format!("{e:#}").contains(names), "{toml}: {e:#}");
        }
    }
}
