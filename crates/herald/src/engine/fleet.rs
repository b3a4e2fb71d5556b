//! Fleet-wide state in Redis, optional (`[redis] url`): every node's calls
//! to a vendor draw on one shared send rate (so twenty workers together keep
//! to Twilio's rate), and a circuit one node opens is open on all of them.
//!
//! Redis is a helper, never a dependency: until it answers, or whenever it
//! stops, each node falls back to its own limits and breakers and logs a
//! warning (at most every 30 s), and picks Redis up again when it is back.
//! Every call is bounded by `CALL_TIMEOUT`, far below any vendor call, and
//! after a failure Redis is left alone for `REST` (callers fall back at
//! once) before one call tries it again; so an unreachable, hanging or
//! restarting Redis costs a delivery tens of milliseconds at most, never a
//! wait that could outlive its lease. The connection manager's own
//! reconnection is cut short for the same reason: its back-off would
//! otherwise hold every call that awaits it.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::accounts::Accounts;
use crate::config::RedisConfig;

/// A send-rate bucket shared by the fleet (GCRA), on Redis's own clock so
/// nodes' clocks need not agree. Times are microseconds, written as integers
/// (`%.0f`) because Lua would print large numbers in exponent form.
const TAKE: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allowed_at = new_tat - tolerance
if allowed_at > now then
  return math.ceil(allowed_at - now)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(tolerance / 1000) + 1000)
return 0
";

/// The longest any call to Redis may take before the node uses its own
/// state instead.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(50);
/// After a failed or slow call, how long the node keeps to its own state
/// before trying Redis again.
const REST: Duration = Duration::from_secs(1);
const WARN_EVERY_MS: i64 = 30_000;

pub struct Fleet {
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    take: redis::Script,
    warned_at_ms: AtomicI64,
    /// Until when (Unix ms) Redis is left alone after a failure.
    resting_until_ms: AtomicI64,
}

impl Fleet {
    /// `None` without a URL. Otherwise connects in the background (retrying
    /// every few seconds); until then callers fall back to local state.
    pub fn start(
        cfg: &RedisConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<Arc<Fleet>>> {
        if cfg.url.is_empty() {
            return Ok(None);
        }
        let client =
            redis::Client::open(cfg.url.expose()).map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        let fleet = Arc::new(Fleet {
            conn: OnceCell::new(),
            prefix: cfg.key_prefix.clone(),
            take: redis::Script::new(TAKE),
            warned_at_ms: AtomicI64::new(0),
            resting_until_ms: AtomicI64::new(0),
        });
        let f = fleet.clone();
        tokio::spawn(async move {
            // One reconnection try per failed call, at most REST apart (the
            // callers' rest spaces them), instead of the manager's default
            // six with exponential back-off that calls would wait out.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(CALL_TIMEOUT * 4)
                .set_response_timeout(CALL_TIMEOUT)
                .set_number_of_retries(0)
                .set_max_delay(u64::try_from(REST.as_millis()).unwrap_or(1_000));
            loop {
                let connected = tokio::select! {
                    c = ConnectionManager::new_with_config(client.clone(), config.clone()) => c,
                    _ = shutdown.cancelled() => return,
                };
                match connected {
                    Ok(conn) => {
                        let _ = f.conn.set(conn);
                        tracing::info!("redis connected: send rates and open circuits are shared with the fleet");
                        return;
                    }
                    Err(e) => f.warn(&e),
                }
                tokio::select! {
                    _ = tokio::time::sleep(REST) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Some(fleet))
    }

    fn warn(&self, e: &redis::RedisError) {
        let now = herald_core::now_ms();
        let last = self.warned_at_ms.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY_MS
            && self
                .warned_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, "redis unavailable: using this node's own send rates and breakers");
        }
    }

    /// The connection, unless there is none yet or Redis is resting.
    fn conn(&self) -> Option<ConnectionManager> {
        if herald_core::now_ms() < self.resting_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        self.conn.get().cloned()
    }

    /// Runs one call to Redis within `CALL_TIMEOUT`. A failure or a timeout
    /// is logged (now and then) and rests Redis for `REST`: `None`, and the
    /// caller uses its own state.
    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        let failed = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => e,
            Err(_) => redis::RedisError::from((
                redis::ErrorKind::IoError,
                "no answer in time",
                format!("{} ms", CALL_TIMEOUT.as_millis()),
            )),
        };
        self.resting_until_ms.store(
            herald_core::now_ms() + herald_core::ms(REST),
            Ordering::Relaxed,
        );
        self.warn(&failed);
        None
    }

    /// Takes a token from the fleet's bucket for `provider`: `Ok` to go,
    /// `Err(wait)` when the fleet has used the rate up. `None` when Redis
    /// cannot say (the caller uses its own bucket).
    pub async fn take(
        &self,
        provider: &str,
        rate: u32,
        burst: u32,
    ) -> Option<Result<(), Duration>> {
        let mut conn = self.conn()?;
        let interval_us = 1_000_000.0 / f64::from(rate.max(1));
        let tolerance_us = interval_us * f64::from(burst.max(1));
        let mut invocation = self.take.key(format!("{}:rate:{provider}", self.prefix));
        invocation.arg(interval_us).arg(tolerance_us);
        let waited: u64 = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Some(match waited {
            0 => Ok(()),
            us => Err(Duration::from_micros(us)),
        })
    }

    /// Tells the fleet this node opened `provider`'s circuit at
    /// `opened_at_ms` for `open_ms`.
    pub async fn opened(&self, provider: &str, opened_at_ms: i64, open_ms: i64) {
        let Some(mut conn) = self.conn() else { return };
        let ttl = u64::try_from(opened_at_ms + open_ms - herald_core::now_ms()).unwrap_or(0);
        if ttl == 0 {
            return;
        }
        let mut set = redis::cmd("SET");
        set.arg(self.circuit_key(provider))
            .arg(opened_at_ms)
            .arg("PX")
            .arg(ttl);
        let _: Option<()> = self.bounded(set.query_async(&mut conn)).await;
    }

    fn circuit_key(&self, provider: &str) -> String {
        format!("{}:circuit:{provider}", self.prefix)
    }

    /// When each of `providers`' circuits was opened somewhere in the fleet
    /// and is still open; `None` when Redis cannot say.
    async fn open_circuits(&self, providers: &[&str]) -> Option<Vec<Option<i64>>> {
        let mut conn = self.conn()?;
        if providers.is_empty() {
            return Some(Vec::new());
        }
        let keys: Vec<String> = providers.iter().map(|p| self.circuit_key(p)).collect();
        let mut mget = redis::cmd("MGET");
        mget.arg(&keys);
        self.bounded(mget.query_async(&mut conn)).await
    }
}

/// Every `every`, opens here the circuits other nodes opened.
pub async fn follow_circuits(
    fleet: Arc<Fleet>,
    accounts: Arc<Accounts>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let names: Vec<String> = accounts.names();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let Some(opened) = fleet.open_circuits(&refs).await else {
            continue;
        };
        for (name, at) in names.iter().zip(opened) {
            if let Some(at) = at {
                accounts.opened_elsewhere(name, at);
            }
        }
    }
}
