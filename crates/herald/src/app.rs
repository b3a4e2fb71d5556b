//! Wiring: store, bus, engine and HTTP server, started and stopped together.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_bus::kafka::{KafkaBus, KafkaOptions, KafkaProbe, Relay};
use herald_bus::LocalBus;
use herald_core::bus::Bus;
use herald_core::status::{BusHealth, Throughput};
use herald_core::store::{Reports, Scopes, Store, Tenants};
use herald_store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, Role, StoreKind};
use crate::engine::accounts::Accounts;
use crate::engine::fleet::{self, Fleet};
use crate::engine::outbound::Outbound;
use crate::engine::suppressions::SuppressionList;
use crate::engine::{self, Engine};
use crate::render::Templates;

/// How often a node reads the circuits held by hand (a hold made on
/// another node takes at most this long to reach this one).
const HOLDS_REFRESH: Duration = Duration::from_secs(2);

/// The tenant that owns the sandbox's development key.
pub const SANDBOX_TENANT: &str = "sandbox";

/// A running Herald: API, engine and store.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    /// Tooling's reads of the same store (the demo's report).
    pub reports: Arc<dyn Reports>,
    state: Arc<AppState>,
    bus: Arc<dyn Bus>,
    /// Only on nodes with the worker role.
    engine: Option<Engine>,
    /// Ends the Redis connection attempts and the circuit follower.
    stop_fleet: CancellationToken,
    stop_http: CancellationToken,
    /// Where `http` runs; dropped after it ends.
    http: tokio::task::JoinHandle<()>,
    api_runtime: api::server::ApiRuntime,
}

/// What the factory opens: a store in all its roles, and its reads for
/// tooling.
pub trait Backend: Store + Reports {}

impl<T: Store + Reports> Backend for T {}

/// The one factory for the store backend named in config.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    match cfg.store.kind {
        StoreKind::Sqlite => {
            let path = cfg.sqlite_path();
            let store = SqliteStore::open(&SqliteOptions {
                path: path.clone(),
                max_batch: cfg.store.group_commit_max_batch,
                read_connections: cfg.store.read_connections,
                outbox: cfg.kafka.enabled(),
                timeout: Duration::from_millis(cfg.store.timeout_ms),
            })
            .await
            .with_context(|| format!("opening the SQLite store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
        StoreKind::Postgres => {
            let store = PostgresStore::open(&PostgresOptions {
                url: cfg.store.url.expose().to_owned(),
                max_connections: cfg.store.max_connections,
                writers: cfg.store.writers,
                max_batch: cfg.store.group_commit_max_batch,
                outbox: cfg.kafka.enabled(),
                timeout: Duration::from_millis(cfg.store.timeout_ms),
                gather: Duration::from_millis(cfg.store.gather_ms),
            })
            .await
            .context("opening the PostgreSQL store (store.url)")?;
            Ok(Arc::new(store))
        }
    }
}

/// The store named in config, which must exist already: for the commands
/// that read or change a running Herald's store (`keys`, `dlq`), where a
/// mistyped `--data-dir` or URL must not quietly make a new, empty one
/// (a key created there would be unknown to the server).
pub async fn open_existing_store(cfg: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    match cfg.store.kind {
        StoreKind::Sqlite => {
            let path = cfg.sqlite_path();
            if !path.is_file() {
                anyhow::bail!(
                    "no Herald store at {}: give the --data-dir (or --config) that `herald serve` uses",
                    path.display()
                );
            }
        }
        StoreKind::Postgres => {
            let has = herald_store::postgres::has_schema(
                cfg.store.url.expose(),
                Duration::from_millis(cfg.store.timeout_ms),
            )
            .await
            .context("connecting to PostgreSQL (store.url)")?;
            if !has {
                anyhow::bail!(
                    "no Herald store in the database at store.url (it has no Herald tables): give the URL `herald serve` uses"
                );
            }
        }
    }
    open_store(cfg).await
}

fn kafka_options(cfg: &Config) -> KafkaOptions {
    KafkaOptions {
        brokers: cfg.kafka.brokers.clone(),
        topic_prefix: cfg.kafka.topic_prefix.clone(),
        group_prefix: cfg.kafka.group_prefix.clone(),
    }
}

/// The local bus, or Kafka when `[kafka] brokers` is set (its consumers
/// only on worker nodes, for their channels; they stop with `stop`).
fn bus(
    cfg: &Config,
    store: &Arc<dyn Store>,
    lease: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<Arc<dyn Bus>> {
    if !cfg.kafka.enabled() {
        let poll = Duration::from_millis(cfg.engine.poll_interval_ms);
        let bus = LocalBus::new(store.clone(), lease, poll);
        if !cfg.engine.handoff {
            return Ok(Arc::new(bus));
        }
        return Ok(Arc::new(
            bus.handing_off(&cfg.worker_channels(), cfg.engine.claim_batch),
        ));
    }
    let bus = KafkaBus::start(
        store.clone(),
        &kafka_options(cfg),
        &cfg.worker_channels(),
        lease,
        Duration::from_millis(cfg.kafka.sweep_interval_ms),
        stop.clone(),
    )?;
    Ok(Arc::new(bus))
}

/// Adds an API key with `scopes` for a tenant (creating the tenant if
/// needed).
pub async fn add_key(
    tenants: &dyn Tenants,
    tenant: &str,
    key: &str,
    label: &str,
    scopes: Scopes,
) -> anyhow::Result<String> {
    Ok(tenants
        .add_api_key(tenant, &api::hash_key(key), label, scopes)
        .await?)
}

/// Where one-click unsubscribe links point and what signs them: with keys
/// and `server.public_url` (the sandbox: its own address), else none, and
/// emails carry no link.
fn unsubscribe_links(
    cfg: &Config,
    local: std::net::SocketAddr,
) -> anyhow::Result<Option<Arc<api::unsubscribe::Links>>> {
    let keys = api::unsubscribe::Keys::parse(&cfg.unsubscribe.keys).map_err(anyhow::Error::msg)?;
    let public = cfg.server.public_url.trim_end_matches('/');
    let base = if !public.is_empty() {
        public.to_owned()
    } else if cfg.sandbox.is_some() {
        format!("http://{local}")
    } else {
        if !keys.is_empty() {
            tracing::warn!("unsubscribe.keys is set but server.public_url is not: emails carry no unsubscribe link");
        }
        return Ok(None);
    };
    if keys.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(api::unsubscribe::Links { base, keys })))
}

/// The accounts on the enabled channels' routes by name, for the receipts
/// endpoint (adapters are pure values: the API keeps its own). An account
/// on no route is not built, as the engine does not build it: its settings
/// may be left empty.
fn receipt_accounts(
    cfg: &Config,
) -> anyhow::Result<std::collections::HashMap<String, Arc<dyn herald_core::provider::Provider>>> {
    let mut accounts = std::collections::HashMap::new();
    for route in cfg.account_settings().routes.values() {
        for a in route {
            if !accounts.contains_key(&a.name) {
                let provider = herald_providers::from_config(&a.name, &a.account)?;
                accounts.insert(a.name.clone(), provider);
            }
        }
    }
    Ok(accounts)
}

impl Running {
    /// Starts everything on `listener`. `dev_key`, if given, is registered for
    /// the sandbox tenant.
    pub async fn start(
        cfg: Config,
        listener: TcpListener,
        dev_key: Option<&str>,
    ) -> anyhow::Result<Running> {
        let backend = open_store(&cfg).await?;
        let reports: Arc<dyn Reports> = backend.clone();
        let store: Arc<dyn Store> = backend;
        if let Some(k) = dev_key {
            add_key(store.as_ref(), SANDBOX_TENANT, k, "sandbox", Scopes::ALL).await?;
        }
        let lease = Duration::from_secs(cfg.engine.lease_seconds);
        let stop_fleet = CancellationToken::new();
        let bus = bus(&cfg, &store, lease, &stop_fleet)?;
        let templates = Arc::new(Templates::new(&cfg.templates)?);
        let outbound = Outbound::new(&cfg.http, cfg.limits());
        let fleet = Fleet::start(&cfg.redis, stop_fleet.clone())?;
        let accounts = Arc::new(Accounts::over_http(
            &cfg.account_settings(),
            &outbound,
            fleet.clone(),
        )?);
        if let (Some(fleet), true) = (fleet, cfg.has_role(Role::Worker)) {
            tokio::spawn(fleet::follow_circuits(
                fleet,
                accounts.clone(),
                Duration::from_millis(cfg.redis.sync_interval_ms),
                stop_fleet.clone(),
            ));
        }
        // Circuits held by hand, fleet-wide through the store.
        tokio::spawn(crate::engine::accounts::follow_holds(
            store.clone(),
            accounts.clone(),
            HOLDS_REFRESH,
            stop_fleet.clone(),
        ));
        // What this node's engine finishes, per lane: the rate admission
        // control judges lanes by on a node that also delivers.
        let throughput = Arc::new(Throughput::default());
        // The worker's copy of the suppression lists; the API on the same
        // node writes its changes into it at once.
        let suppression_list = Arc::new(SuppressionList::default());
        // Tenants' callbacks: events from the engine and from receipts.
        let callbacks = Arc::new(crate::engine::callbacks::Callbacks::new(
            store.clone(),
            store.clone(),
            bus.clone(),
        ));
        let engine = if cfg.has_role(Role::Worker) {
            let parts = engine::Parts {
                queue: store.clone(),
                upkeep: store.clone(),
                bus: bus.clone(),
                accounts: accounts.clone(),
                outbound,
                templates: templates.clone(),
                throughput: throughput.clone(),
                suppressions: store.clone(),
                recipients: store.clone(),
                suppression_list: suppression_list.clone(),
                callbacks: Some(callbacks.clone()),
            };
            Some(Engine::start(&cfg.engine_settings(), parts)?)
        } else {
            None
        };
        if cfg.has_role(Role::Relay) {
            if cfg.kafka.enabled() {
                let relay = Relay {
                    store: store.clone(),
                    producer: herald_bus::kafka::producer(&kafka_options(&cfg))?,
                    topic_prefix: cfg.kafka.topic_prefix.clone(),
                    holder: format!("relay-{}", uuid::Uuid::now_v7()),
                    // Big enough to keep up with a fleet's intake (a batch
                    // costs a read and a write whatever its size), small
                    // enough that a critical event waits one batch at most.
                    batch: 5_000,
                    lease: Duration::from_secs(10),
                    idle: Duration::from_millis(cfg.engine.poll_interval_ms.min(50)),
                    traced: crate::telemetry::tracing_on()
                        .then_some(crate::telemetry::kafka_publish as herald_bus::kafka::Traced),
                };
                tokio::spawn(relay.run(stop_fleet.clone()));
            } else if cfg.node.roles.len() == 1 {
                tracing::info!(
                    "relay role: the local bus has nothing to relay (the store's rows are the queue)"
                );
            }
        }
        // API nodes only write the outbox (in the store); workers and relays
        // need the cluster itself to be useful.
        let bus_health =
            if cfg.kafka.enabled() && (cfg.has_role(Role::Worker) || cfg.has_role(Role::Relay)) {
                Some(Arc::new(KafkaProbe::new(&kafka_options(&cfg))?) as Arc<dyn BusHealth>)
            } else {
                None
            };
        let parts = api::Parts {
            store: store.clone(),
            bus: bus.clone(),
            providers: accounts,
            templates,
            bus_health,
            local_suppressions: cfg.has_role(Role::Worker).then_some(suppression_list),
            accounts: receipt_accounts(&cfg)?,
            callbacks: Some(callbacks),
        };
        let mut state = AppState::new(cfg.api_settings(), parts);
        state.unsubscribe = unsubscribe_links(&cfg, listener.local_addr()?)?;
        let state = Arc::new(state);
        if cfg.server.admission && cfg.has_role(Role::Api) {
            tokio::spawn(api::admission::keep_judging(
                state.admission.clone(),
                store.clone(),
                cfg.enabled_channels(),
                cfg.lane_objectives(),
                cfg.has_role(Role::Worker).then(|| throughput.clone()),
                Duration::from_millis(cfg.server.admission_refresh_ms.max(10)),
                stop_fleet.clone(),
            ));
        }
        for (lane, objective) in cfg.lane_objectives().iter() {
            if let Some(within) = objective.within {
                metrics::gauge!(crate::telemetry::LANE_OBJECTIVE_SECONDS, "lane" => lane.as_str())
                    .set(within.as_secs_f64());
            }
        }
        let app = api::router(
            state.clone(),
            Duration::from_millis(cfg.server.request_timeout_ms),
            cfg.has_role(Role::Api),
        );
        let addr = listener.local_addr()?;
        let stop_http = CancellationToken::new();
        let limits = api::server::ConnectionLimits {
            max_connections: connection_cap(cfg.server.max_connections),
            header_read_timeout: Duration::from_millis(cfg.server.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.server.idle_timeout_ms),
        };
        let threads = cfg.threads(crate::config::cores()).api;
        let api_runtime = api::server::ApiRuntime::start(threads, cfg.server.nice)
            .context("starting the API's threads")?;
        let http = api_runtime.handle().spawn(api::server::serve(
            listener,
            app,
            limits,
            stop_http.clone(),
            Duration::from_secs(cfg.engine.shutdown_grace_seconds),
        ));
        Ok(Running {
            addr,
            store,
            reports,
            state,
            bus,
            engine,
            stop_http,
            stop_fleet,
            http,
            api_runtime,
        })
    }

    /// Graceful stop, bounded by `engine.shutdown_grace_seconds`:
    /// readiness drops; at once and side by side, the API stops accepting
    /// and lets requests in progress finish (then cuts the rest), and the
    /// bus stops taking in work (Kafka consumers leave their groups) while
    /// workers finish or release in-flight deliveries.
    pub async fn shutdown(self) {
        self.state.draining.store(true, Ordering::Relaxed);
        self.stop_http.cancel();
        let http = async {
            if let Err(e) = self.http.await {
                tracing::error!(error = %e, "HTTP server task failed");
            }
        };
        let engine = async {
            self.bus.close().await;
            if let Some(engine) = self.engine {
                engine.shutdown().await;
            }
        };
        tokio::join!(http, engine);
        drop(self.api_runtime);
        self.stop_fleet.cancel();
        tracing::info!("herald stopped");
    }
}

/// What the process may hold open for clients: `wanted`, kept under the
/// open-file limit with room for everything else (the store, vendor
/// connection pools, logs). The soft limit is raised to the hard one first,
/// as servers do.
fn connection_cap(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            return wanted;
        }
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let room = limit.saturating_sub((limit / 4).max(256));
    if wanted > room {
        tracing::warn!(
            wanted,
            open_file_limit = limit,
            capped_at = room,
            "server.max_connections is more than the open-file limit leaves room for; capping it"
        );
    }
    wanted.min(room).max(1)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
