//! The delivery engine: one worker pool per channel, fed by the bus.

mod deliver;
mod dispatch;
pub mod outbound;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::bus::Bus;
use herald_core::store::Store;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::render::Templates;
pub use deliver::Shared;
use dispatch::Dispatcher;
use outbound::Outbound;

pub struct Engine {
    pools: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Engine {
    /// Builds the providers from config and starts a pool per enabled channel.
    pub fn start(
        cfg: &Config,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        templates: Arc<Templates>,
    ) -> anyhow::Result<Engine> {
        let mut routes = BTreeMap::new();
        for ch in cfg.enabled_channels() {
            let mut providers = Vec::new();
            for name in &cfg.channels[&ch].providers {
                let pc = &cfg.providers[name];
                providers.push(herald_providers::from_config(name, pc)?);
            }
            routes.insert(ch, providers);
        }
        let shared = Arc::new(Shared {
            store,
            routes,
            outbound: Outbound::new(&cfg.http, cfg.limits())?,
            retry: cfg.retry_policy(),
            templates,
        });
        let shutdown = CancellationToken::new();
        let mut pools = JoinSet::new();
        for ch in cfg.enabled_channels() {
            let Some(policy) = cfg.lane_policy(ch) else {
                continue;
            };
            let d = Dispatcher {
                channel: ch,
                policy,
                claim_batch: cfg.engine.claim_batch,
                poll: Duration::from_millis(cfg.engine.poll_interval_ms),
                grace: Duration::from_secs(cfg.engine.shutdown_grace_seconds),
                bus: bus.clone(),
                shared: shared.clone(),
            };
            pools.spawn(d.run(shutdown.child_token()));
        }
        Ok(Engine { pools, shutdown })
    }

    /// Stops claiming, finishes or releases in-flight work, and returns.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.pools.join_next().await.is_some() {}
    }
}
