//! Slack: the Web API's `chat.postMessage` (a bot token in `Authorization:
//! Bearer`, JSON; every answer `{"ok": …}` with HTTP 200 but a rate
//! limit's 429) and incoming webhooks (`POST /services/T…/B…/…`, answers
//! `ok` or an error code as plain text). Test recipients: conversation
//! `CARCHIVED0` → `is_archived`, `CNOTFOUND0` → `channel_not_found`; a
//! webhook whose last part is `revoked` → 404 `no_service`.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::vendors::{summary, with_retry_after, Emulated, Parsed, Rejection};

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn failed(error: &str) -> Response {
    answer(StatusCode::OK, json!({"ok": false, "error": error}))
}

fn text_of(v: &serde_json::Value) -> Option<&str> {
    v["text"].as_str().filter(|t| !t.is_empty())
}

/// `chat.postMessage`. `known_token`: whether the bearer token is one the
/// workspace issued (checked by the caller, which holds the tokens).
pub struct PostMessage {
    pub known_token: bool,
}

impl Emulated for PostMessage {
    const NAME: &'static str = "slack";
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            None => return Err(Box::new(failed("not_authed"))),
            Some(_) if !self.known_token => return Err(Box::new(failed("invalid_auth"))),
            Some(_) => {}
        }
        let json_body = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"));
        if !json_body {
            return Err(Box::new(failed("invalid_post_type")));
        }
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| Box::new(failed("invalid_json")))?;
        let channel = v["channel"]
            .as_str()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Box::new(failed("channel_not_found")))?;
        let text = text_of(&v).ok_or_else(|| Box::new(failed("no_text")))?;
        if text.chars().count() > 40_000 {
            return Err(Box::new(failed("msg_too_long")));
        }
        Ok(Parsed {
            recipient: channel.to_owned(),
            summary: summary(text),
        })
    }

    fn accepted(&self, message_id: &str) -> (StatusCode, String) {
        // A `ts` is seconds and microseconds; the sequence stands in.
        let seq: u64 = message_id
            .trim_start_matches("sim")
            .parse()
            .unwrap_or_default();
        let body = json!({"ok": true, "channel": "C0SIM", "ts": format!("1700000000.{seq:06}"),
            "message": {"type": "message", "bot_id": "B0SIM"}});
        (StatusCode::OK, body.to_string())
    }

    fn refused_credential(&self) -> Response {
        failed("token_revoked")
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        if status == StatusCode::TOO_MANY_REQUESTS {
            let r = answer(status, json!({"ok": false, "error": "ratelimited"}));
            return with_retry_after(r, retry_after_s);
        }
        if status.is_server_error() {
            // Slack's servers failing answer as a gateway would.
            return with_retry_after(status.into_response(), retry_after_s);
        }
        failed("invalid_arguments")
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        match parsed.recipient.as_str() {
            "CARCHIVED0" => Some(failed("is_archived")),
            "CNOTFOUND0" => Some(failed("channel_not_found")),
            _ => None,
        }
    }
}

/// An incoming webhook; `path` is the part after `/services/`.
pub struct Hook {
    pub path: String,
}

fn hook_error(status: StatusCode, code: &str) -> Response {
    (status, [("content-type", "text/html")], code.to_owned()).into_response()
}

impl Emulated for Hook {
    const NAME: &'static str = "slack";
    const CONTENT_TYPE: &'static str = "text/html";

    fn parse(&self, _headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        let parts: Vec<&str> = self.path.split('/').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(Box::new(hook_error(StatusCode::NOT_FOUND, "no_service")));
        }
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| Box::new(hook_error(StatusCode::BAD_REQUEST, "invalid_payload")))?;
        let text =
            text_of(&v).ok_or_else(|| Box::new(hook_error(StatusCode::BAD_REQUEST, "no_text")))?;
        Ok(Parsed {
            recipient: format!("/services/{}", self.path),
            summary: summary(text),
        })
    }

    fn accepted(&self, _message_id: &str) -> (StatusCode, String) {
        (StatusCode::OK, "ok".into())
    }

    fn refused_credential(&self) -> Response {
        hook_error(StatusCode::FORBIDDEN, "invalid_token")
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        let code = if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limited"
        } else {
            "internal_error"
        };
        with_retry_after(hook_error(status, code), retry_after_s)
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        parsed
            .recipient
            .ends_with("/revoked")
            .then(|| hook_error(StatusCode::NOT_FOUND, "no_service"))
    }
}
