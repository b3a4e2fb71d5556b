//! Slack, the `chat` channel. A recipient's chat address is either a
//! conversation id (`C…` channel, `G…` private channel, `D…` direct
//! message, `U…`/`W…` a user: Slack opens the DM), posted to with the Web
//! API's `chat.postMessage` and the account's bot token (`xoxb-…`, scope
//! `chat:write`), or an incoming webhook URL
//! (`https://hooks.slack.com/services/…`), which names its own channel
//! and needs no token.
//!
//! Success: the Web API answers `{"ok": true, "ts": …}` (the `ts` is the
//! message's id in the conversation, kept as the vendor id); a webhook
//! answers `200 ok`. The Web API reports errors as `{"ok": false,
//! "error": code}` with HTTP 200; a webhook as a status and the code as
//! plain text. Both rate-limit with `429` and `Retry-After`.
//!
//! Slack has no idempotency key: the delivery key goes in
//! `Idempotency-Key` and in the message's metadata
//! (`herald_notification`), but Slack does not deduplicate on it, so a
//! retry after a timeout can post twice (docs/providers.md).

pub mod wire;

use herald_core::provider::{
    classify_status, retry_after, Address, BuildError, OutboundMessage, Outcome, Provider,
    VendorRequest, VendorResponse,
};
use herald_core::secret::Secret;
use herald_core::suppression::SuppressionReason;
use herald_core::validate::SLACK_HOOKS_PREFIX;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// A bot token (`xoxb-…`) with `chat:write`, for conversation ids.
    /// Without one, the account takes incoming-webhook addresses only.
    #[serde(default)]
    pub bot_token: Option<Secret>,
    /// The Web API's origin.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Where incoming webhooks are posted: the address's path under it
    /// (Slack's own host; the simulator's in the sandbox).
    #[serde(default = "default_hooks_url")]
    pub hooks_url: String,
}

fn default_base_url() -> String {
    "https://slack.com".into()
}

fn default_hooks_url() -> String {
    "https://hooks.slack.com".into()
}

/// The Web API's error codes by what they mean for the message.
/// <https://api.slack.com/methods/chat.postMessage#errors>
const RATE_LIMITED: &[&str] = &["ratelimited", "rate_limited", "message_limit_exceeded"];
const ACCOUNT: &[&str] = &[
    "not_authed",
    "invalid_auth",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "not_allowed_token_type",
    "access_denied",
    "ekm_access_denied",
    "team_access_not_granted",
    "org_login_required",
    "enterprise_is_restricted",
    "team_added_to_org",
];
const PERMANENT: &[&str] = &[
    "channel_not_found",
    "not_in_channel",
    "user_not_found",
    "user_disabled",
    "msg_too_long",
    "no_text",
    "too_many_attachments",
    "invalid_blocks",
    "invalid_blocks_format",
    "invalid_metadata_format",
    "invalid_metadata_schema",
    "metadata_too_large",
    "restricted_action",
    "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel",
    "messages_tab_disabled",
    "cannot_reply_to_message",
    "invalid_arguments",
    "invalid_array_arg",
    "invalid_charset",
    "invalid_form_data",
    "invalid_post_type",
    "missing_post_type",
    "invalid_json",
    "json_not_object",
];
/// The conversation is archived: it takes no message again until someone
/// unarchives it, so the address is listed (`gone`).
const GONE: &[&str] = &["is_archived", "channel_is_archived"];
/// An incoming webhook's answers that say the webhook itself is dead
/// (removed, its app uninstalled, its workspace gone).
const HOOK_GONE: &[&str] = &[
    "channel_is_archived",
    "no_service",
    "no_team",
    "team_disabled",
    "invalid_token",
];

#[derive(Debug)]
pub struct Slack {
    name: String,
    post_message: String,
    hooks: String,
    auth: Option<String>,
}

impl Slack {
    /// The adapter for account `name`, or what is wrong with its settings.
    pub fn new(name: &str, cfg: SlackConfig) -> Result<Self, crate::ConfigError> {
        Self::checked(name, cfg).map_err(|reason| crate::ConfigError::new(name, reason))
    }

    fn checked(name: &str, cfg: SlackConfig) -> Result<Self, String> {
        let auth = match cfg.bot_token.filter(|t| !t.is_empty()) {
            Some(t) if t.expose().starts_with("xoxb-") || t.expose().starts_with("xoxp-") => {
                Some(format!("Bearer {}", t.expose()))
            }
            Some(_) => return Err("bot_token must be a Slack bot token (xoxb-…)".into()),
            None => None,
        };
        Ok(Self {
            name: name.to_owned(),
            post_message: format!("{}/api/chat.postMessage", crate::base_url(&cfg.base_url)?),
            hooks: crate::base_url(&cfg.hooks_url)?,
            auth,
        })
    }

    /// The message's text: the subject, when given, as a bold first line
    /// (escaped, as Slack asks of `&`, `<` and `>`), then the text as the
    /// caller wrote it (Slack's mrkdwn: links, mentions, formatting).
    fn text(msg: &OutboundMessage) -> Result<String, BuildError> {
        let text = msg
            .content
            .text
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or(BuildError::MissingContent("text"))?;
        Ok(
            match msg.content.subject.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => format!("*{}*\n{text}", escape(s)),
                None => text.to_owned(),
            },
        )
    }
}

/// Slack's three control characters, escaped as its docs ask.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Provider for Slack {
    fn name(&self) -> &str {
        &self.name
    }

    fn vendor(&self) -> &'static str {
        "slack"
    }

    /// Incoming webhooks always; conversation ids with a bot token.
    fn takes(&self, address: &Address) -> bool {
        match address {
            Address::Chat(a) => a.starts_with(SLACK_HOOKS_PREFIX) || self.auth.is_some(),
            _ => false,
        }
    }

    fn build(&self, msg: &OutboundMessage) -> Result<VendorRequest, BuildError> {
        let Address::Chat(to) = &msg.address else {
            return Err(BuildError::WrongAddress("a non-chat address"));
        };
        let text = Self::text(msg)?;
        if let Some(path) = to.strip_prefix(SLACK_HOOKS_PREFIX) {
            let url = format!("{}/services/{path}", self.hooks);
            let body = crate::json(&wire::HookMessage { text })?;
            return crate::post(&url, "application/json", &msg.delivery_key, &[], body);
        }
        let auth = self.auth.as_deref().ok_or_else(|| {
            BuildError::Invalid("posting to a conversation id needs the account's bot_token".into())
        })?;
        let body = wire::PostMessage {
            channel: to.clone(),
            text,
            metadata: wire::Metadata {
                event_type: "herald_notification".into(),
                event_payload: serde_json::json!({
                    "delivery_key": msg.delivery_key,
                    "notification_id": msg.notification_id,
                }),
            },
        };
        crate::post(
            &self.post_message,
            "application/json; charset=utf-8",
            &msg.delivery_key,
            &[("authorization", auth)],
            crate::json(&body)?,
        )
    }

    fn classify(&self, resp: &VendorResponse) -> Outcome {
        match serde_json::from_slice::<wire::Answer>(&resp.body) {
            Ok(answer) => classify_api(resp, answer),
            Err(_) => classify_hook(resp),
        }
    }
}

/// A Web API answer.
fn classify_api(resp: &VendorResponse, answer: wire::Answer) -> Outcome {
    if answer.ok && resp.status.is_success() {
        return Outcome::Accepted {
            vendor_id: answer.ts,
        };
    }
    let code = answer
        .error
        .unwrap_or_else(|| format!("HTTP {}", resp.status.as_u16()));
    let reason = crate::clip(&format!("slack {}: {code}", resp.status.as_u16()));
    let is = |table: &[&str]| table.contains(&code.as_str());
    if resp.status == http::StatusCode::TOO_MANY_REQUESTS || is(RATE_LIMITED) {
        Outcome::RateLimited {
            retry_after: retry_after(&resp.headers),
            reason,
        }
    } else if is(ACCOUNT) {
        Outcome::Account { reason }
    } else if is(GONE) {
        Outcome::Permanent {
            reason,
            gone: Some(SuppressionReason::Gone),
        }
    } else if is(PERMANENT) {
        Outcome::permanent(reason)
    } else {
        // `internal_error`, `fatal_error` ("the message may have been
        // posted"), `service_unavailable`, `request_timeout`, and codes
        // Slack adds later: tried again rather than lost.
        Outcome::Transient {
            reason,
            ambiguous: code == "fatal_error",
        }
    }
}

/// An incoming webhook's answer: a status and its code as plain text.
/// The webhook URL is the recipient's address, not the account's
/// credential: a dead one is listed (`gone`), a refusal (`403`) fails the
/// message, and neither is the account's; the rest as any vendor's.
fn classify_hook(resp: &VendorResponse) -> Outcome {
    let s = resp.status;
    if s.is_success() {
        return Outcome::Accepted { vendor_id: None };
    }
    let code = String::from_utf8_lossy(&resp.body).trim().to_owned();
    let reason = crate::clip(&format!("slack webhook {}: {code}", s.as_u16()));
    if HOOK_GONE.contains(&code.as_str()) || s == http::StatusCode::GONE {
        Outcome::Permanent {
            reason,
            gone: Some(SuppressionReason::Gone),
        }
    } else if s == http::StatusCode::UNAUTHORIZED || s == http::StatusCode::FORBIDDEN {
        Outcome::permanent(reason)
    } else {
        classify_status(resp, reason)
    }
}

#[cfg(test)]
mod tests {
    use herald_core::model::Channel;

    use super::*;
    use crate::testing::{message, response};

    const HOOK: &str = "https://hooks.slack.com/services/T000/B000/XXXXXXXX";

    fn adapter(token: Option<&str>) -> Slack {
        Slack::new(
            "slack",
            SlackConfig {
                bot_token: token.map(Secret::new),
                base_url: "https://slack.example/".into(),
                hooks_url: "https://hooks.slack.example".into(),
            },
        )
        .expect("valid config")
    }

    #[test]
    fn posts_to_a_conversation_with_the_bot_token_and_the_delivery_in_metadata() {
        let m = message(Channel::Chat, Address::Chat("C024BE91L".into()));
        let req = adapter(Some("xoxb-1-2-abc")).build(&m).expect("builds");
        assert_eq!(req.uri(), "https://slack.example/api/chat.postMessage");
        assert_eq!(req.headers()["authorization"], "Bearer xoxb-1-2-abc");
        assert_eq!(
            req.headers()["content-type"],
            "application/json; charset=utf-8"
        );
        assert_eq!(req.headers()["idempotency-key"], m.delivery_key.as_str());
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(body["channel"], "C024BE91L");
        assert_eq!(
            body["text"],
            "*Your code*\nCode: 123456 — ne le partagez pas 🔐"
        );
        assert_eq!(body["metadata"]["event_type"], "herald_notification");
        assert_eq!(
            body["metadata"]["event_payload"]["delivery_key"],
            m.delivery_key.as_str()
        );
    }

    #[test]
    fn posts_to_an_incoming_webhook_without_a_token() {
        let slack = adapter(None);
        let hook = Address::Chat(HOOK.into());
        assert!(slack.takes(&hook));
        assert!(
            !slack.takes(&Address::Chat("C024BE91L".into())),
            "a conversation id needs a bot token"
        );
        let mut m = message(Channel::Chat, hook);
        m.content.subject = Some("a <b> & c".into());
        let req = slack.build(&m).expect("builds");
        assert_eq!(
            req.uri(),
            "https://hooks.slack.example/services/T000/B000/XXXXXXXX"
        );
        assert!(req.headers().get("authorization").is_none());
        let body: serde_json::Value = serde_json::from_slice(req.body()).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"text": "*a &lt;b&gt; &amp; c*\nCode: 123456 — ne le partagez pas 🔐"})
        );
        m.content.text = None;
        assert_eq!(
            slack.build(&m).err(),
            Some(BuildError::MissingContent("text"))
        );
    }

    #[test]
    fn a_token_that_is_not_a_slack_token_is_refused_at_start() {
        let err = Slack::new(
            "slack",
            SlackConfig {
                bot_token: Some(Secret::new("hunter2")),
                base_url: default_base_url(),
                hooks_url: default_hooks_url(),
            },
        )
        .expect_err("refused");
        assert!(err.to_string().contains("xoxb-"), "{err}");
    }

    #[test]
    fn web_api_answers_classify() {
        let slack = adapter(Some("xoxb-1"));
        let api = |status: u16, body: &str| slack.classify(&response(status, &[], body));
        assert_eq!(
            api(
                200,
                r#"{"ok":true,"channel":"C1","ts":"1503435956.000247"}"#
            ),
            Outcome::Accepted {
                vendor_id: Some("1503435956.000247".into())
            }
        );
        assert_eq!(
            api(200, r#"{"ok":false,"error":"invalid_auth"}"#).label(),
            "account"
        );
        assert_eq!(
            api(200, r#"{"ok":false,"error":"token_revoked"}"#).label(),
            "account"
        );
        assert_eq!(
            api(200, r#"{"ok":false,"error":"channel_not_found"}"#).label(),
            "permanent"
        );
        assert!(matches!(
            api(200, r#"{"ok":false,"error":"is_archived"}"#),
            Outcome::Permanent {
                gone: Some(SuppressionReason::Gone),
                ..
            }
        ));
        assert_eq!(
            slack.classify(&response(
                429,
                &[("retry-after", "30")],
                r#"{"ok":false,"error":"ratelimited"}"#
            )),
            Outcome::RateLimited {
                retry_after: Some(std::time::Duration::from_secs(30)),
                reason: "slack 429: ratelimited".into()
            }
        );
        assert!(matches!(
            api(200, r#"{"ok":false,"error":"fatal_error"}"#),
            Outcome::Transient {
                ambiguous: true,
                ..
            }
        ));
        assert_eq!(
            api(200, r#"{"ok":false,"error":"something_new"}"#).label(),
            "transient",
            "an unknown code is retried, not lost"
        );
    }

    #[test]
    fn webhook_answers_classify() {
        let slack = adapter(None);
        let hook = |status: u16, body: &str| slack.classify(&response(status, &[], body));
        assert_eq!(hook(200, "ok"), Outcome::Accepted { vendor_id: None });
        assert_eq!(hook(400, "invalid_payload").label(), "permanent");
        for dead in [
            (404, "no_service"),
            (410, "channel_is_archived"),
            (403, "invalid_token"),
        ] {
            assert!(
                matches!(
                    hook(dead.0, dead.1),
                    Outcome::Permanent {
                        gone: Some(SuppressionReason::Gone),
                        ..
                    }
                ),
                "{dead:?}"
            );
        }
        assert_eq!(
            hook(403, "action_prohibited").label(),
            "permanent",
            "a webhook's 403 is about that webhook, not the account"
        );
        assert_eq!(hook(429, "rate_limited").label(), "rate_limited");
        assert_eq!(hook(503, "").label(), "transient");
    }
}
