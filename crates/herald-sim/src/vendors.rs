//! The emulated vendor endpoints. Each checks auth and the wire shape as the
//! real vendor does, answers in the vendor's own formats, and rejects a few
//! documented test recipients as the vendor would (docs/providers.md):
//! - SendGrid: any address at `invalid.example` → 400;
//! - Twilio: `+15005550001` → 400 code 21211, `+15005550004` → 400 code
//!   21610 (the recipient texted STOP) (Twilio's own test numbers);
//! - SNS: `+15005550001` → 400 `InvalidParameter`, `+15005550004` → 400
//!   `OptedOut`;
//! - FCM: a token starting `invalid-` → 404 `UNREGISTERED`;
//! - webhook: a path ending `/gone` → 410.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A request the vendor accepted as well-formed.
pub struct Parsed {
    pub recipient: String,
    pub summary: String,
}

/// A vendor's refusal of a malformed or unauthorised request (boxed: it is
/// a whole response).
pub type Rejection = Box<Response>;

/// One emulated vendor: how it checks a request and how it answers.
pub trait Emulated: Send + Sync {
    const NAME: &'static str;
    /// The response header that carries the vendor's message id, if any.
    const MESSAGE_ID_HEADER: Option<&'static str> = None;
    /// The content type of the vendor's answers.
    const CONTENT_TYPE: &'static str = "application/json";
    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection>;
    /// The vendor's answer for an accepted message: status and body.
    fn accepted(&self, message_id: &str) -> (StatusCode, String);
    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response;
    /// The vendor's answer to a credential it no longer takes (revoked,
    /// expired or wrong), in its own words.
    fn refused_credential(&self) -> Response;
    /// The vendor's refusal of a recipient it knows to be bad.
    fn reject(&self, parsed: &Parsed) -> Option<Response>;
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn with_retry_after(mut r: Response, retry_after_s: Option<u64>) -> Response {
    if let Some(s) = retry_after_s {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
}

pub(crate) fn summary(s: &str) -> String {
    s.chars().take(80).collect()
}

pub struct SendGrid;

impl Emulated for SendGrid {
    const NAME: &'static str = "sendgrid";
    const MESSAGE_ID_HEADER: Option<&'static str> = Some("x-message-id");

    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        let err = |status: StatusCode, field: Option<&str>, msg: &str| {
            json_response(
                status,
                json!({"errors": [{"message": msg, "field": field, "help": null}]}),
            )
        };
        if bearer(headers).is_none() {
            return Err(Box::new(err(
                StatusCode::UNAUTHORIZED,
                None,
                "The provided authorization grant is invalid, expired, or revoked",
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| Box::new(err(StatusCode::BAD_REQUEST, None, "Bad Request")))?;
        let to = v["personalizations"][0]["to"][0]["email"]
            .as_str()
            .ok_or_else(|| {
                Box::new({
                    err(
                        StatusCode::BAD_REQUEST,
                        Some("personalizations"),
                        "The personalizations field is required.",
                    )
                })
            })?;
        if v["from"]["email"].as_str().is_none() {
            return Err(Box::new(err(
                StatusCode::BAD_REQUEST,
                Some("from.email"),
                "The from email does not contain a valid address.",
            )));
        }
        let subject = v["subject"].as_str().unwrap_or_default();
        let has_content = v["content"].as_array().is_some_and(|c| {
            !c.is_empty()
                && c.iter()
                    .all(|p| p["type"].is_string() && p["value"].is_string())
        });
        if !has_content {
            return Err(Box::new(err(
                StatusCode::BAD_REQUEST,
                Some("content"),
                "Unless a valid template_id is provided, the content parameter is required.",
            )));
        }
        Ok(Parsed {
            recipient: to.to_owned(),
            summary: summary(subject),
        })
    }

    fn accepted(&self, _message_id: &str) -> (StatusCode, String) {
        (StatusCode::ACCEPTED, String::new())
    }

    fn refused_credential(&self) -> Response {
        json_response(
            StatusCode::UNAUTHORIZED,
            json!({"errors": [{"message": "The provided authorization grant is invalid, expired, or revoked", "field": null, "help": null}]}),
        )
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        let msg = status.canonical_reason().unwrap_or("error");
        with_retry_after(
            json_response(
                status,
                json!({"errors": [{"message": msg, "field": null, "help": null}]}),
            ),
            retry_after_s,
        )
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        parsed.recipient.ends_with("@invalid.example").then(|| {
            json_response(
                StatusCode::BAD_REQUEST,
                json!({"errors": [{"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email", "help": null}]}),
            )
        })
    }
}

pub struct Twilio;

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    json_response(
        status,
        json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()}),
    )
}

impl Twilio {
    /// Twilio's answer to credentials it does not know (code 20003).
    pub fn authenticate() -> Response {
        twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
    }
}

impl Emulated for Twilio {
    const NAME: &'static str = "twilio";

    fn parse(&self, _headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|_| {
            Box::new(twilio_error(
                StatusCode::BAD_REQUEST,
                21601,
                "Malformed form body",
            ))
        })?;
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let to = get("To").ok_or_else(|| {
            Box::new({
                twilio_error(
                    StatusCode::BAD_REQUEST,
                    21604,
                    "A 'To' phone number is required.",
                )
            })
        })?;
        if get("From").is_none() && get("MessagingServiceSid").is_none() {
            return Err(Box::new(twilio_error(
                StatusCode::BAD_REQUEST,
                21603,
                "A 'From' phone number is required.",
            )));
        }
        let text = get("Body").unwrap_or_default();
        if text.is_empty() {
            return Err(Box::new(twilio_error(
                StatusCode::BAD_REQUEST,
                21602,
                "Message body is required.",
            )));
        }
        Ok(Parsed {
            recipient: to.to_owned(),
            summary: summary(text),
        })
    }

    fn accepted(&self, message_id: &str) -> (StatusCode, String) {
        let body = json!({"sid": message_id, "status": "queued", "api_version": "2010-04-01"});
        (StatusCode::CREATED, body.to_string())
    }

    fn refused_credential(&self) -> Response {
        twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        let (code, msg) = if status == StatusCode::TOO_MANY_REQUESTS {
            (20429, "Too Many Requests")
        } else {
            (20500, "Internal Server Error")
        };
        with_retry_after(twilio_error(status, code, msg), retry_after_s)
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        match parsed.recipient.as_str() {
            "+15005550001" => Some(twilio_error(
                StatusCode::BAD_REQUEST,
                21211,
                &format!(
                    "The 'To' number {} is not a valid phone number.",
                    parsed.recipient
                ),
            )),
            "+15005550004" => Some(twilio_error(
                StatusCode::BAD_REQUEST,
                21610,
                "Attempt to send to unsubscribed recipient",
            )),
            _ => None,
        }
    }
}

/// Amazon SNS `Action=Publish` to a phone number. Checks the SigV4
/// `Authorization` header's shape (credential scope for `sns`, signed
/// headers, a hex signature) and `X-Amz-Date`; answers in SNS's XML.
pub struct Sns;

fn sns_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>{kind}</Type>\
         <Code>{code}</Code><Message>{message}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

impl Sns {
    /// AWS's answer to a signature it does not take.
    pub fn refused_signature(why: crate::aws::Refusal) -> Response {
        match why {
            crate::aws::Refusal::UnknownKey | crate::aws::Refusal::Malformed => sns_error(
                StatusCode::FORBIDDEN,
                "Sender",
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            ),
            crate::aws::Refusal::Mismatch => sns_error(
                StatusCode::FORBIDDEN,
                "Sender",
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            ),
        }
    }
}

impl Emulated for Sns {
    const NAME: &'static str = "sns";
    const CONTENT_TYPE: &'static str = "text/xml";

    fn parse(&self, _headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        let invalid = |m: &str| {
            Box::new(sns_error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "InvalidParameter",
                m,
            ))
        };
        let form: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|_| invalid("Malformed form body"))?;
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("Action") != Some("Publish") {
            return Err(invalid("Action must be Publish"));
        }
        let to = get("PhoneNumber")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid("Invalid parameter: PhoneNumber Reason: no value"))?;
        let text = get("Message")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| invalid("Invalid parameter: Message Reason: empty"))?;
        Ok(Parsed {
            recipient: to.to_owned(),
            summary: summary(text),
        })
    }

    fn accepted(&self, message_id: &str) -> (StatusCode, String) {
        let body = format!(
            "<PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
             <MessageId>{message_id}</MessageId></PublishResult><ResponseMetadata>\
             <RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata></PublishResponse>"
        );
        (StatusCode::OK, body)
    }

    fn refused_credential(&self) -> Response {
        sns_error(
            StatusCode::FORBIDDEN,
            "Sender",
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
        )
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        let r = if status == StatusCode::TOO_MANY_REQUESTS {
            sns_error(status, "Sender", "Throttled", "Rate exceeded")
        } else if status.is_server_error() {
            sns_error(
                status,
                "Receiver",
                "InternalError",
                "Internal service error",
            )
        } else {
            sns_error(status, "Sender", "InvalidParameter", "Invalid request")
        };
        with_retry_after(r, retry_after_s)
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        match parsed.recipient.as_str() {
            "+15005550001" => Some(sns_error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "InvalidParameter",
                "Invalid parameter: PhoneNumber Reason: not a valid phone number",
            )),
            "+15005550004" => Some(sns_error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "OptedOut",
                "Phone number is opted out",
            )),
            _ => None,
        }
    }
}

pub struct Fcm;

fn fcm_error(status: StatusCode, google_status: &str, code: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"error": {"code": status.as_u16(), "message": message, "status": google_status,
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]}}),
    )
}

impl Emulated for Fcm {
    const NAME: &'static str = "fcm";

    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        if bearer(headers).is_none() {
            return Err(Box::new(json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"code": 401, "message": "Request is missing required authentication credential.", "status": "UNAUTHENTICATED"}}),
            )));
        }
        let bad = |m: &str| {
            fcm_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                m,
            )
        };
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| Box::new(bad("Invalid JSON payload received.")))?;
        let token = v["message"]["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Box::new(bad("Recipient of the message is not set.")))?;
        if let Some(data) = v["message"]["data"].as_object() {
            if data.values().any(|d| !d.is_string()) {
                return Err(Box::new(bad(
                    "Invalid value at 'message.data': values must be strings.",
                )));
            }
        }
        let title = v["message"]["notification"]["title"].as_str();
        let text = v["message"]["notification"]["body"].as_str();
        Ok(Parsed {
            recipient: token.to_owned(),
            summary: summary(title.or(text).unwrap_or_default()),
        })
    }

    fn accepted(&self, message_id: &str) -> (StatusCode, String) {
        let body = json!({"name": format!("projects/herald-sim/messages/{message_id}")});
        (StatusCode::OK, body.to_string())
    }

    fn refused_credential(&self) -> Response {
        json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "status": "UNAUTHENTICATED"}}),
        )
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        let r = if status == StatusCode::TOO_MANY_REQUESTS {
            fcm_error(
                status,
                "RESOURCE_EXHAUSTED",
                "QUOTA_EXCEEDED",
                "Quota exceeded.",
            )
        } else if status.is_server_error() {
            fcm_error(
                status,
                "UNAVAILABLE",
                "UNAVAILABLE",
                "The service is currently unavailable.",
            )
        } else {
            fcm_error(
                status,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
            )
        };
        with_retry_after(r, retry_after_s)
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        parsed.recipient.starts_with("invalid-").then(|| {
            fcm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "UNREGISTERED",
                "Requested entity was not found.",
            )
        })
    }
}

/// A webhook receiver: any path under `/hooks/`.
pub struct Webhook {
    pub path: String,
}

impl Emulated for Webhook {
    const NAME: &'static str = "webhook";

    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        for h in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            if headers.get(h).is_none() {
                return Err(Box::new(
                    (StatusCode::BAD_REQUEST, format!("missing {h}")).into_response(),
                ));
            }
        }
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| Box::new((StatusCode::BAD_REQUEST, "body is not JSON").into_response()))?;
        let data = &v["data"];
        // A notification's subject or text; for an event of Herald's own
        // (a callback), its type.
        let text = data["subject"]
            .as_str()
            .or(data["text"].as_str())
            .or(v["type"].as_str())
            .unwrap_or_default();
        Ok(Parsed {
            recipient: self.path.clone(),
            summary: summary(text),
        })
    }

    fn accepted(&self, _message_id: &str) -> (StatusCode, String) {
        (StatusCode::NO_CONTENT, String::new())
    }

    fn refused_credential(&self) -> Response {
        (StatusCode::UNAUTHORIZED, "invalid signature").into_response()
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        with_retry_after(status.into_response(), retry_after_s)
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        parsed
            .recipient
            .ends_with("/gone")
            .then(|| StatusCode::GONE.into_response())
    }
}

/// Apple Push Notification service (`POST /3/device/{token}`, HTTP/2
/// only). Checks `apns-topic`, `apns-push-type`, a bearer provider token
/// and an `aps` dictionary; answers errors as `{"reason": ...}`. The
/// provider token's signature is checked when a test trusts a key
/// (`Sim::trust_apns_key`).
pub struct Apns {
    /// The device token from the path.
    pub token: String,
}

fn apns_error(status: StatusCode, reason: &str) -> Response {
    json_response(status, json!({"reason": reason}))
}

impl Emulated for Apns {
    const NAME: &'static str = "apns";
    const MESSAGE_ID_HEADER: Option<&'static str> = Some("apns-id");

    fn parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        let reject = |status: StatusCode, reason: &str| Box::new(apns_error(status, reason));
        let has = |name: &str| headers.get(name).is_some_and(|v| !v.is_empty());
        let authorized = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("bearer ") && v.len() > 7);
        if !authorized {
            return Err(reject(StatusCode::FORBIDDEN, "MissingProviderToken"));
        }
        if !has("apns-topic") {
            return Err(reject(StatusCode::BAD_REQUEST, "MissingTopic"));
        }
        if !has("apns-push-type") {
            return Err(reject(StatusCode::BAD_REQUEST, "InvalidPushType"));
        }
        if body.len() > 4096 {
            return Err(reject(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"));
        }
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| reject(StatusCode::BAD_REQUEST, "PayloadEmpty"))?;
        let alert = &v["aps"]["alert"];
        if !v["aps"].is_object() {
            return Err(reject(StatusCode::BAD_REQUEST, "PayloadEmpty"));
        }
        let title = alert["title"].as_str().or(alert["body"].as_str());
        Ok(Parsed {
            recipient: self.token.clone(),
            summary: summary(title.unwrap_or_default()),
        })
    }

    fn accepted(&self, _message_id: &str) -> (StatusCode, String) {
        (StatusCode::OK, String::new())
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        let reason = match status {
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            StatusCode::INTERNAL_SERVER_ERROR => "InternalServerError",
            _ => "ServiceUnavailable",
        };
        with_retry_after(apns_error(status, reason), retry_after_s)
    }

    fn refused_credential(&self) -> Response {
        apns_error(StatusCode::FORBIDDEN, "InvalidProviderToken")
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        if parsed.recipient.starts_with("invalid-") {
            return Some(apns_error(StatusCode::BAD_REQUEST, "BadDeviceToken"));
        }
        parsed.recipient.starts_with("gone-").then(|| {
            json_response(
                StatusCode::GONE,
                json!({"reason": "Unregistered", "timestamp": chrono::Utc::now().timestamp_millis()}),
            )
        })
    }
}

/// Amazon SES API v2 `SendEmail` (`POST /v2/email/outbound-emails`).
/// Checks the SigV4 `Authorization` header's shape for `ses` and the JSON;
/// answers errors with `x-amzn-ErrorType` and a `message`.
pub struct Ses;

fn ses_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut r = json_response(status, json!({"message": message}));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{kind}:http://internal.amazon.com/coral/com.amazon.sesv2/"
    )) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

impl Ses {
    /// AWS's answer to a signature it does not take.
    pub fn refused_signature(why: crate::aws::Refusal) -> Response {
        match why {
            crate::aws::Refusal::UnknownKey | crate::aws::Refusal::Malformed => ses_error(
                StatusCode::FORBIDDEN,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
            crate::aws::Refusal::Mismatch => ses_error(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            ),
        }
    }
}

impl Emulated for Ses {
    const NAME: &'static str = "ses";

    fn parse(&self, _headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Rejection> {
        let bad = |m: &str| Box::new(ses_error(StatusCode::BAD_REQUEST, "BadRequestException", m));
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| bad("Malformed JSON"))?;
        let to = v["Destination"]["ToAddresses"][0]
            .as_str()
            .ok_or_else(|| bad("Destination.ToAddresses is required"))?;
        if v["FromEmailAddress"].as_str().is_none() {
            return Err(bad("FromEmailAddress is required"));
        }
        let subject = v["Content"]["Simple"]["Subject"]["Data"]
            .as_str()
            .ok_or_else(|| bad("Content.Simple.Subject is required"))?;
        Ok(Parsed {
            recipient: to.to_owned(),
            summary: summary(subject),
        })
    }

    fn accepted(&self, message_id: &str) -> (StatusCode, String) {
        (StatusCode::OK, json!({"MessageId": message_id}).to_string())
    }

    fn error(&self, status: StatusCode, retry_after_s: Option<u64>) -> Response {
        let (kind, msg) = if status == StatusCode::TOO_MANY_REQUESTS {
            ("TooManyRequestsException", "Too many requests")
        } else {
            ("InternalFailure", "An internal failure")
        };
        with_retry_after(ses_error(status, kind, msg), retry_after_s)
    }

    fn refused_credential(&self) -> Response {
        ses_error(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    }

    fn reject(&self, parsed: &Parsed) -> Option<Response> {
        parsed.recipient.ends_with("@invalid.example").then(|| {
            ses_error(
                StatusCode::BAD_REQUEST,
                "MessageRejected",
                "Email address is not verified.",
            )
        })
    }
}
