//! The load generator: streams of notifications posted to Herald's API at a
//! set rate (or as fast as it takes them) by a few concurrent connections,
//! as a well-behaved client would: an item without an answer (a dropped
//! connection, a 503 while Herald restarts) is sent again with the same
//! idempotency key until it is acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::workload::{body, Kind};

/// Which endpoint carries the notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/notifications/batch`, `--batch-size` items per request.
    Batch,
    /// `POST /v1/notifications`, one per request.
    Single,
}

/// Where and how to post.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
    /// Base URL of webhook targets (the simulator).
    pub hooks: String,
    /// Notifications numbered below this are addressed by `recipient.id`
    /// alone (`--recipients`: their profiles are stored).
    pub by_id_below: u64,
}

impl Client {
    /// Lists `n` addresses on the tenant's suppression list (half email,
    /// half SMS), none of them one the workloads send to: every delivery
    /// is checked against a list of that size and still goes out.
    pub async fn suppress(&self, n: u64, bar: &indicatif::ProgressBar) -> anyhow::Result<()> {
        let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (client, next, bar) = (self.clone(), next.clone(), bar.clone());
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return anyhow::Ok(());
                    }
                    let body = if i % 2 == 0 {
                        serde_json::json!({"channel": "email", "address": format!("s{i}@suppressed.example"), "reason": "bounce"})
                    } else {
                        // 14 digits after the "+": never a workload's 13.
                        serde_json::json!({"channel": "sms", "address": format!("+9{i:013}"), "reason": "unsubscribed"})
                    };
                    let resp = client
                        .http
                        .put(format!("{}/v1/suppressions", client.base))
                        .bearer_auth(&client.key)
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(
                        resp.status().is_success(),
                        "listing a suppression: {}",
                        resp.status()
                    );
                    bar.inc(1);
                }
            });
        }
        while let Some(done) = workers.join_next().await {
            done??;
        }
        bar.finish();
        Ok(())
    }
}

/// One stream of notifications: numbers `first..` of the kinds `kind_of`
/// gives, until `until` or `count` of them were sent.
pub struct Stream {
    pub name: &'static str,
    pub kind_of: fn(u64, u64) -> Kind,
    pub seed: u64,
    pub first: u64,
    /// Notifications per second; 0 for as fast as Herald takes them.
    pub rate: u64,
    pub until: Instant,
    pub count: Option<u64>,
    pub endpoint: Endpoint,
    pub batch_size: usize,
    pub connections: usize,
    /// A lane-behind refusal (admission control) is the item's answer, as
    /// the overload scenario counts it; otherwise it is tried again, as a
    /// client honouring Retry-After would.
    pub shed_is_final: bool,
}

/// A notification Herald acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub n: u64,
    pub kind: Kind,
    /// Wall-clock milliseconds when its 2xx arrived.
    pub at_ms: i64,
}

/// What one stream did.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub accepted: Vec<Accepted>,
    /// Items Herald refused for good (a 4xx other than a conflict or throttle).
    pub refused: Vec<(u64, String)>,
    /// Request round trips, milliseconds.
    pub api_ms: Vec<u32>,
    /// Requests sent again after no answer or a retryable error.
    pub resent: u64,
    /// Items admission control refused (with `shed_is_final`).
    pub shed: Vec<(u64, Kind)>,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
}

impl LoadResult {
    /// Adds another connection's or stream's results to these.
    pub fn absorb(&mut self, other: LoadResult) {
        self.accepted.extend(other.accepted);
        self.refused.extend(other.refused);
        self.api_ms.extend(other.api_ms);
        self.resent += other.resent;
        self.shed.extend(other.shed);
    }
}

/// How long an item may go unanswered before the bench gives up on Herald.
const GIVE_UP: Duration = Duration::from_secs(90);

impl Stream {
    /// Runs the stream to its end; `bar` counts acknowledged notifications.
    pub async fn run(self, client: Client, bar: ProgressBar) -> anyhow::Result<LoadResult> {
        let per_request = match self.endpoint {
            Endpoint::Batch => self.batch_size.max(1) as u64,
            Endpoint::Single => 1,
        };
        let next = Arc::new(AtomicU64::new(0));
        let stream = Arc::new(self);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..stream.connections.max(1) {
            let (stream, next, client, bar) =
                (stream.clone(), next.clone(), client.clone(), bar.clone());
            tasks.spawn(async move {
                let mut out = LoadResult::default();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let offset = k * per_request;
                    let size = match stream.count {
                        Some(c) if offset >= c => break,
                        Some(c) => per_request.min(c - offset),
                        None => per_request,
                    };
                    if stream.rate > 0 {
                        let at =
                            started + Duration::from_secs_f64(offset as f64 / stream.rate as f64);
                        if at >= stream.until {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                    } else if Instant::now() >= stream.until {
                        break;
                    }
                    let numbers: Vec<u64> = (0..size).map(|i| stream.first + offset + i).collect();
                    stream.send(&client, numbers, &mut out).await?;
                    bar.set_position(bar.position() + size);
                }
                anyhow::Ok(out)
            });
        }
        let mut all = LoadResult {
            started: Some(started),
            ..LoadResult::default()
        };
        while let Some(done) = tasks.join_next().await {
            all.absorb(done??);
        }
        all.finished = Some(Instant::now());
        Ok(all)
    }

    /// Posts `numbers` until each is acknowledged or refused for good.
    async fn send(
        &self,
        client: &Client,
        mut numbers: Vec<u64>,
        out: &mut LoadResult,
    ) -> anyhow::Result<()> {
        let since = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let kinds: Vec<Kind> = numbers
                .iter()
                .map(|&n| (self.kind_of)(n, self.seed))
                .collect();
            let sent = Instant::now();
            let answers = match self.endpoint {
                Endpoint::Batch => client.batch(&numbers, &kinds).await,
                Endpoint::Single => client.single(numbers[0], kinds[0]).await.map(|a| vec![a]),
            };
            out.api_ms
                .push(sent.elapsed().as_millis().min(u128::from(u32::MAX)) as u32);
            let mut again = Vec::new();
            match answers {
                Ok(answers) => {
                    let at_ms = herald_core::now_ms();
                    for ((n, kind), answer) in numbers.iter().zip(kinds).zip(answers) {
                        match answer {
                            Answer::Accepted => out.accepted.push(Accepted { n: *n, kind, at_ms }),
                            Answer::Shed if self.shed_is_final => out.shed.push((*n, kind)),
                            Answer::Retry | Answer::Shed => again.push(*n),
                            Answer::Refused(why) => out.refused.push((*n, why)),
                        }
                    }
                }
                Err(_) => again = numbers.clone(),
            }
            if again.is_empty() {
                return Ok(());
            }
            if since.elapsed() > GIVE_UP {
                bail!(
                    "{}: Herald left {} notifications unanswered for {GIVE_UP:?}",
                    self.name,
                    again.len()
                );
            }
            out.resent += 1;
            numbers = again;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// Herald's answer for one item.
enum Answer {
    Accepted,
    /// No decision: throttled, a key in flight, shutting down, store busy.
    Retry,
    /// Admission control refused it: its lane is behind (a 429 too).
    Shed,
    Refused(String),
}

impl Answer {
    /// From a problem's status: 409 (the key is in flight), 429 and 5xx are
    /// worth another try; any other refusal is final.
    fn from_problem(status: u64, problem: &Value) -> Answer {
        if problem["type"] == "urn:herald:problem:lane-behind" {
            Answer::Shed
        } else if status == 409 || status == 429 || status >= 500 {
            Answer::Retry
        } else {
            Answer::Refused(problem.to_string())
        }
    }
}

impl Client {
    fn body(&self, n: u64, kind: Kind) -> Value {
        let mut b = body(n, kind, &self.hooks);
        if n < self.by_id_below {
            b["recipient"] = json!({"id": super::workload::recipient_id(n)});
        }
        b
    }

    async fn batch(&self, numbers: &[u64], kinds: &[Kind]) -> anyhow::Result<Vec<Answer>> {
        let items: Vec<Value> = numbers
            .iter()
            .zip(kinds)
            .map(|(&n, &k)| self.body(n, k))
            .collect();
        let resp = self
            .http
            .post(format!("{}/v1/notifications/batch", self.base))
            .bearer_auth(&self.key)
            .json(&json!({ "notifications": items }))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or_default();
        if status != 200 {
            let answer = || Answer::from_problem(u64::from(status), &v);
            return Ok(numbers.iter().map(|_| answer()).collect());
        }
        let results = v["results"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        anyhow::ensure!(results.len() == numbers.len(), "one result per item: {v}");
        Ok(results
            .iter()
            .map(|r| match &r["error"] {
                Value::Null if r["status"] == "accepted" => Answer::Accepted,
                Value::Null => Answer::Refused(r.to_string()),
                problem => Answer::from_problem(problem["status"].as_u64().unwrap_or(500), problem),
            })
            .collect())
    }

    async fn single(&self, n: u64, kind: Kind) -> anyhow::Result<Answer> {
        let mut item = self.body(n, kind);
        let key = item
            .as_object_mut()
            .and_then(|o| o.remove("idempotency_key"))
            .and_then(|k| k.as_str().map(str::to_owned))
            .unwrap_or_default();
        let resp = self
            .http
            .post(format!("{}/v1/notifications", self.base))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", key)
            .json(&item)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or_default();
        Ok(if (200..300).contains(&status) {
            Answer::Accepted
        } else {
            Answer::from_problem(u64::from(status), &v)
        })
    }
}
