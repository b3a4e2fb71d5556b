//! Validation of a notification request: every rule names the field it is
//! about and says why, so the API can answer with a precise problem.

use std::net::IpAddr;

use crate::model::{Channel, NotificationRequest};

/// One broken rule: the JSON path of the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Size and range limits. Defaults are what a vendor would accept anyway.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_subject_chars: usize,
    pub max_text_bytes: usize,
    pub max_html_bytes: usize,
    pub max_metadata_bytes: usize,
    pub max_push_tokens: usize,
    pub max_ttl_seconds: u64,
    /// How far ahead `send_at` may be scheduled.
    pub max_schedule_seconds: i64,
    /// Whether a webhook URL may name a loopback host (sandbox only).
    pub allow_loopback_webhooks: bool,
    /// Whether a webhook URL may name a private-network host.
    pub allow_private_webhooks: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_subject_chars: 998,
            max_text_bytes: 64 * 1024,
            max_html_bytes: 256 * 1024,
            max_metadata_bytes: 8 * 1024,
            max_push_tokens: 16,
            max_ttl_seconds: 30 * 24 * 3600,
            max_schedule_seconds: 30 * 24 * 3600,
            allow_loopback_webhooks: false,
            allow_private_webhooks: false,
        }
    }
}

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Checks every rule and returns all broken ones (empty: valid).
pub fn validate(
    req: &NotificationRequest,
    limits: &Limits,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let r = &req.recipient;

    if req.channels.is_empty() {
        errs.push(FieldError::new(
            "channels",
            "at least one channel is required",
        ));
    }
    for (i, c) in req.channels.iter().enumerate() {
        if req.channels[..i].contains(c) {
            errs.push(FieldError::new(
                format!("channels[{i}]"),
                format!("channel {c} is listed twice"),
            ));
        }
    }

    if let Some(id) = &r.id {
        if id.is_empty() || id.len() > 256 {
            errs.push(FieldError::new("recipient.id", "must be 1 to 256 bytes"));
        }
    }
    if let Some(email) = &r.email {
        if let Err(why) = check_email(email) {
            errs.push(FieldError::new("recipient.email", why));
        }
    }
    if let Some(phone) = &r.phone {
        if !is_e164(phone) {
            errs.push(FieldError::new(
                "recipient.phone",
                "must be an E.164 number: '+', country code, subscriber number, 8 to 15 digits in all",
            ));
        }
    }
    if r.push_tokens.len() > limits.max_push_tokens {
        errs.push(FieldError::new(
            "recipient.push_tokens",
            format!("at most {} devices", limits.max_push_tokens),
        ));
    }
    for (i, t) in r.push_tokens.iter().enumerate() {
        if t.token.is_empty() || t.token.len() > 4096 || t.token.chars().any(char::is_control) {
            errs.push(FieldError::new(
                format!("recipient.push_tokens[{i}].token"),
                "must be 1 to 4096 bytes without control characters",
            ));
        }
    }
    if let Some(u) = &r.webhook_url {
        if let Err(why) = check_webhook_url(u, limits) {
            errs.push(FieldError::new("recipient.webhook_url", why));
        }
    }

    for &c in &req.channels {
        let (present, field) = match c {
            Channel::Email => (r.email.is_some(), "recipient.email"),
            Channel::Sms => (r.phone.is_some(), "recipient.phone"),
            Channel::Push => (!r.push_tokens.is_empty(), "recipient.push_tokens"),
            Channel::Webhook => (r.webhook_url.is_some(), "recipient.webhook_url"),
        };
        if !present {
            errs.push(FieldError::new(
                field,
                format!("required because channel {c} is requested"),
            ));
        }
    }

    match (&req.content, &req.template) {
        (None, None) => errs.push(FieldError::new(
            "content",
            "content or template is required",
        )),
        (Some(_), Some(_)) => errs.push(FieldError::new(
            "template",
            "give either content or template, not both",
        )),
        (Some(content), None) => {
            if let Some(s) = &content.subject {
                if s.chars().count() > limits.max_subject_chars {
                    errs.push(FieldError::new(
                        "content.subject",
                        format!("at most {} characters", limits.max_subject_chars),
                    ));
                }
                if s.contains(['\r', '\n']) {
                    errs.push(FieldError::new(
                        "content.subject",
                        "must not contain line breaks",
                    ));
                }
            }
            if content
                .text
                .as_ref()
                .is_some_and(|t| t.len() > limits.max_text_bytes)
            {
                errs.push(FieldError::new(
                    "content.text",
                    format!("at most {} bytes", limits.max_text_bytes),
                ));
            }
            if content
                .html
                .as_ref()
                .is_some_and(|t| t.len() > limits.max_html_bytes)
            {
                errs.push(FieldError::new(
                    "content.html",
                    format!("at most {} bytes", limits.max_html_bytes),
                ));
            }
            let has_body = content.text.as_deref().is_some_and(|t| !t.is_empty())
                || content.html.as_deref().is_some_and(|t| !t.is_empty());
            if !has_body {
                errs.push(FieldError::new("content.text", "text or html is required"));
            }
            for &c in &req.channels {
                match c {
                    Channel::Email if content.subject.as_deref().unwrap_or("").is_empty() => errs
                        .push(FieldError::new(
                            "content.subject",
                            "required because channel email is requested",
                        )),
                    Channel::Sms | Channel::Push
                        if content.text.as_deref().unwrap_or("").is_empty() =>
                    {
                        errs.push(FieldError::new(
                            "content.text",
                            format!("required because channel {c} is requested"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        (None, Some(t)) => {
            if t.id.is_empty() || t.id.len() > 128 {
                errs.push(FieldError::new("template.id", "must be 1 to 128 bytes"));
            }
            if t.locale.as_ref().is_some_and(|l| !is_locale(l)) {
                errs.push(FieldError::new(
                    "template.locale",
                    "must be a language tag such as en or pt-BR",
                ));
            }
        }
    }

    if let Some(cat) = &req.category {
        if cat.is_empty()
            || cat.len() > 64
            || !cat
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            errs.push(FieldError::new(
                "category",
                "1 to 64 characters from a-z, A-Z, 0-9, '_', '-', '.'",
            ));
        }
    }
    if let Some(ttl) = req.ttl_seconds {
        if ttl == 0 || ttl > limits.max_ttl_seconds {
            errs.push(FieldError::new(
                "ttl_seconds",
                format!("must be 1 to {}", limits.max_ttl_seconds),
            ));
        }
    }
    if let Some(at) = req.send_at {
        if (at - now).num_seconds() > limits.max_schedule_seconds {
            errs.push(FieldError::new(
                "send_at",
                format!(
                    "at most {} seconds in the future",
                    limits.max_schedule_seconds
                ),
            ));
        }
    }
    if let Some(meta) = &req.metadata {
        let size = serde_json::to_vec(meta)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > limits.max_metadata_bytes {
            errs.push(FieldError::new(
                "metadata",
                format!("at most {} bytes of JSON", limits.max_metadata_bytes),
            ));
        }
    }
    if let Some(key) = &req.idempotency_key {
        if let Err(why) = check_idempotency_key(key) {
            errs.push(FieldError::new("idempotency_key", why));
        }
    }
    errs
}

pub fn check_idempotency_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err("must be 1 to 255 characters");
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("must be printable ASCII without spaces");
    }
    Ok(())
}

/// E.164: '+', then 8 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Address syntax as a mail server would accept it (RFC 5321 sizes; UTF-8
/// allowed as in RFC 6531). Whether the mailbox exists is the vendor's call.
pub fn check_email(s: &str) -> Result<(), &'static str> {
    if s.len() > 254 {
        return Err("at most 254 bytes");
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return Err("must contain '@'");
    };
    if local.is_empty() || local.len() > 64 {
        return Err("the part before '@' must be 1 to 64 bytes");
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c))
        || local.contains('@')
    {
        return Err("contains a character not allowed in an address");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("misplaced '.' before '@'");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("the domain must have a dot, as in example.com");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-') {
            return Err("the domain is not a valid host name");
        }
        if !l.chars().all(|c| c.is_alphanumeric() || c == '-') {
            return Err("the domain is not a valid host name");
        }
    }
    Ok(())
}

fn is_locale(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 35
        && s.split(['-', '_'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Syntax and, for literal addresses, the private/loopback policy. Host names
/// are checked again against what they resolve to at send time.
pub fn check_webhook_url(s: &str, limits: &Limits) -> Result<(), String> {
    if s.len() > 2048 {
        return Err("at most 2048 bytes".into());
    }
    let url = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be http or https".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let host = match url.host() {
        Some(h) => h,
        None => return Err("must name a host".into()),
    };
    let ip = match host {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(d)
            if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") =>
        {
            Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        }
        url::Host::Domain(_) => None,
    };
    match ip {
        Some(ip) => address_allowed(ip, limits).map_err(str::to_owned),
        None => Ok(()),
    }
}

/// Whether a webhook may be sent to this address under the policy.
pub fn address_allowed(ip: IpAddr, limits: &Limits) -> Result<(), &'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if ip.is_loopback() {
        return if limits.allow_loopback_webhooks {
            Ok(())
        } else {
            Err("loopback addresses are not allowed")
        };
    }
    let private = match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]) // CGNAT
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
        }
    };
    if private && !limits.allow_private_webhooks {
        return Err("private network addresses are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn base() -> NotificationRequest {
        serde_json::from_value(serde_json::json!({
            "recipient": {"email": "ada@example.com", "phone": "+14155550100"},
            "channels": ["email", "sms"],
            "content": {"subject": "Hi", "text": "Hello"}
        }))
        .expect("valid fixture")
    }

    fn fields(req: &NotificationRequest) -> Vec<String> {
        validate(req, &Limits::default(), chrono::Utc::now())
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_request_passes() {
        assert!(fields(&base()).is_empty());
    }

    #[test]
    fn e164() {
        assert!(is_e164("+14155550100"));
        assert!(is_e164("+442071838750"));
        assert!(!is_e164("14155550100"));
        assert!(!is_e164("+0155550100"));
        assert!(!is_e164("+1415555010012345"));
        assert!(!is_e164("+1 415 555 0100"));
        assert!(
            !is_e164("+١٤١٥٥٥٥٠١٠٠"),
            "arabic-indic digits are not E.164"
        );
    }

    #[test]
    fn email_syntax() {
        assert!(check_email("ada@example.com").is_ok());
        assert!(check_email("josé@exämple.de").is_ok());
        assert!(check_email("a+tag@sub.example.co.uk").is_ok());
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@localhost",
            "a b@example.com",
            "ada@exa mple.com",
            "a..b@example.com",
            "ada@-example.com",
            "ada@example..com",
            "a@b@example.com",
            "ada\n@example.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(check_email(&long).is_err());
    }

    #[test]
    fn a_channel_needs_its_address() {
        let mut r = base();
        r.recipient.phone = None;
        assert_eq!(fields(&r), vec!["recipient.phone"]);
        r.channels.push(Channel::Push);
        assert!(fields(&r).contains(&"recipient.push_tokens".to_owned()));
    }

    #[test]
    fn content_rules() {
        let mut r = base();
        r.content = None;
        assert_eq!(fields(&r), vec!["content"]);
        r.content = Some(Content {
            subject: Some("x".repeat(1000)),
            text: Some("t".into()),
            html: None,
        });
        assert_eq!(fields(&r), vec!["content.subject"]);
        r.content = Some(Content {
            subject: Some("s".into()),
            text: None,
            html: Some("<p>hi</p>".into()),
        });
        assert_eq!(fields(&r), vec!["content.text"], "sms needs text");
        r.template = Some(TemplateRef {
            id: "welcome".into(),
            data: Default::default(),
            locale: None,
        });
        assert!(fields(&r).contains(&"template".to_owned()));
    }

    #[test]
    fn duplicate_channels_and_ranges() {
        let mut r = base();
        r.channels.push(Channel::Email);
        r.ttl_seconds = Some(0);
        r.category = Some("bad category!".into());
        assert_eq!(fields(&r), vec!["channels[2]", "category", "ttl_seconds"]);
    }

    #[test]
    fn webhook_targets() {
        let strict = Limits::default();
        assert!(check_webhook_url("https://hooks.example.com/x", &strict).is_ok());
        assert!(check_webhook_url("ftp://example.com", &strict).is_err());
        assert!(check_webhook_url("http://127.0.0.1:9000/x", &strict).is_err());
        assert!(check_webhook_url("http://localhost/x", &strict).is_err());
        assert!(check_webhook_url("http://[::1]/x", &strict).is_err());
        assert!(check_webhook_url("http://[::ffff:10.0.0.1]/x", &strict).is_err());
        assert!(check_webhook_url("http://10.1.2.3/x", &strict).is_err());
        assert!(check_webhook_url("http://169.254.169.254/latest", &strict).is_err());
        assert!(check_webhook_url("http://user:pw@example.com/", &strict).is_err());
        let sandbox = Limits {
            allow_loopback_webhooks: true,
            ..Limits::default()
        };
        assert!(check_webhook_url("http://127.0.0.1:9000/x", &sandbox).is_ok());
        assert!(
            check_webhook_url("http://192.168.1.1/x", &sandbox).is_err(),
            "loopback allowance does not open private networks"
        );
    }

    #[test]
    fn idempotency_keys() {
        assert!(check_idempotency_key("order-42:v1").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("has space").is_err());
        assert!(check_idempotency_key("ключ").is_err());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
    }
}
