//! Dead letters, as the API and the CLI show and take them: the JSON view,
//! the page cursor, the filter's time values, and `herald dlq list|replay`.

use base64::Engine as _;
use herald_core::model::Channel;
use herald_core::store::{
    DeadLetter, DeadLetterCursor, DeadLetterFilter, DeadLetters, ReplayOutcome, Tenants,
};

/// Most dead letters one page holds, and one bulk replay moves.
pub const MAX_PAGE: usize = 1_000;
pub const DEFAULT_PAGE: usize = 100;

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an RFC 3339 time such as 2026-11-21T10:00:00Z ({0})")]
pub struct BadTime(#[source] chrono::ParseError);

/// An RFC 3339 time as Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, BadTime> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(BadTime)
}

/// The opaque cursor for the page after `d`.
pub fn cursor_after(d: &DeadLetter) -> String {
    let raw = format!("{}.{}", d.dead_at_ms, d.id.simple());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub fn parse_cursor(s: &str) -> Option<DeadLetterCursor> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (at, id) = raw.split_once('.')?;
    Some(DeadLetterCursor {
        dead_at_ms: at.parse().ok()?,
        id: uuid::Uuid::parse_str(id).ok()?,
    })
}

/// `herald dlq` filters.
#[derive(clap::Args, Clone, Debug)]
pub struct FilterArgs {
    /// Only this tenant's (by name).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this channel's (email, sms, push, webhook).
    #[arg(long)]
    pub channel: Option<String>,
    /// Only those whose last attempt went to this provider.
    #[arg(long)]
    pub provider: Option<String>,
    /// Died at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Died before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
}

impl FilterArgs {
    /// The store filter, with the tenant's name looked up.
    pub async fn resolve(&self, tenants: &dyn Tenants) -> anyhow::Result<DeadLetterFilter> {
        let tenant_id = match &self.tenant {
            Some(name) => Some(
                tenants
                    .tenant_id(name)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("--tenant: no tenant is named {name:?}"))?,
            ),
            None => None,
        };
        let raw = RawFilter {
            channel: self.channel.as_deref(),
            provider: self.provider.as_deref(),
            since: self.since.as_deref(),
            until: self.until.as_deref(),
        };
        raw.parse(tenant_id, |_| true).map_err(|errors| {
            let all: Vec<String> = errors
                .iter()
                .map(|(f, why)| format!("--{f}: {why}"))
                .collect();
            anyhow::anyhow!("{}", all.join("; "))
        })
    }
}

/// A dead-letter filter as text, from a query string, a JSON body or flags.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawFilter<'a> {
    pub channel: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
}

impl RawFilter<'_> {
    /// The store filter, or every field that is wrong and why. `usable`
    /// says which channels may be named (the API: the enabled ones).
    pub fn parse(
        &self,
        tenant_id: Option<String>,
        usable: impl Fn(Channel) -> bool,
    ) -> Result<DeadLetterFilter, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let channel = self.channel.and_then(|c| match c.parse::<Channel>() {
            Ok(ch) if usable(ch) => Some(ch),
            Ok(_) => {
                errors.push(("channel", format!("{c:?} is not an enabled channel")));
                None
            }
            Err(_) => {
                let why = format!("{c:?} is not one of email, sms, push, webhook");
                errors.push(("channel", why));
                None
            }
        });
        let mut time = |field: &'static str, v: Option<&str>| {
            v.and_then(|s| match parse_time(s) {
                Ok(ms) => Some(ms),
                Err(why) => {
                    errors.push((field, why.to_string()));
                    None
                }
            })
        };
        let since_ms = time("since", self.since);
        let until_ms = time("until", self.until);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(DeadLetterFilter {
            tenant_id,
            channel,
            provider: self.provider.map(str::to_owned),
            since_ms,
            until_ms,
        })
    }
}

/// Prints dead letters as a table, or as JSON lines.
pub fn print(page: &[DeadLetter], json_lines: bool) {
    if json_lines {
        for d in page {
            let out = crate::api::types::DeadLetterOut::from(d);
            println!("{}", serde_json::to_string(&out).unwrap_or_default());
        }
        return;
    }
    println!(
        "{:<36}  {:<7}  {:<8}  {:<10}  {:>8}  {:<24}  last error",
        "id", "channel", "lane", "provider", "attempts", "dead at"
    );
    for d in page {
        println!(
            "{:<36}  {:<7}  {:<8}  {:<10}  {:>8}  {:<24}  {}",
            d.id,
            d.channel.as_str(),
            d.priority.as_str(),
            d.provider.as_deref().unwrap_or("-"),
            d.attempts,
            rfc3339(d.dead_at_ms),
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    eprintln!("{} dead letters", page.len());
}

pub async fn replay_one(
    store: &dyn DeadLetters,
    tenant_id: Option<&str>,
    id: uuid::Uuid,
) -> anyhow::Result<std::process::ExitCode> {
    match store.replay_dead_letter(tenant_id, id).await? {
        ReplayOutcome::Replayed => {
            println!("replayed {id}: queued again");
            Ok(std::process::ExitCode::SUCCESS)
        }
        ReplayOutcome::NotFound => anyhow::bail!("no delivery {id}"),
        ReplayOutcome::NotDead(s) => anyhow::bail!("delivery {id} is {s}, not dead"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let d = DeadLetter {
            id: uuid::Uuid::now_v7(),
            notification_id: uuid::Uuid::now_v7(),
            tenant_id: "t".into(),
            channel: herald_core::Channel::Sms,
            target: 0,
            priority: herald_core::Priority::High,
            provider: None,
            attempts: 5,
            last_error: None,
            dead_at_ms: 1_700_000_000_123,
            accepted_at_ms: 0,
        };
        let c = parse_cursor(&cursor_after(&d)).expect("round trip");
        assert_eq!((c.dead_at_ms, c.id), (d.dead_at_ms, d.id));
        assert_eq!(parse_cursor("not a cursor"), None);
        assert_eq!(parse_cursor(""), None);
        assert_eq!(parse_time("2026-11-21T10:00:00Z"), Ok(1_795_255_200_000));
        assert!(parse_time("yesterday").is_err());
    }
}
