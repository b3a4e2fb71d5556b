//! Twilio's message status callbacks: a form POST to the message's
//! `StatusCallback` URL, signed in `X-Twilio-Signature`: base64 of
//! HMAC-SHA1, keyed with the account's auth token, over the full URL Twilio
//! called followed by every form parameter's name and value, sorted by
//! name. As Twilio's own validators do, the URL is tried with and without
//! its scheme's default port.
//! <https://www.twilio.com/docs/usage/webhooks/webhooks-security>
//!
//! Herald's callback URL carries `delivery=<delivery id>`, so the callback
//! names its delivery even before the send's answer is recorded.

use base64::Engine as _;
use herald_core::receipt::{InboundRequest, ReceiptError, ReceiptKind, VendorReceipt};
use herald_core::suppression::SuppressionReason;
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const SIGNATURE: &str = "x-twilio-signature";
/// The callback URL's parameter naming the delivery.
pub const DELIVERY_PARAM: &str = "delivery";

/// The signature Twilio puts on a request to `url` with `params`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC keys may be any length"));
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `url` as given, without its default port, and with it.
fn url_forms(url: &str) -> Vec<String> {
    let mut forms = vec![url.to_owned()];
    // (`Url` drops a default port it is given: the text is edited instead.)
    let Ok(u) = url::Url::parse(url) else {
        return forms;
    };
    let (Some(host), None, Some(default)) = (u.host_str(), u.port(), u.port_or_known_default())
    else {
        return forms; // a port of its own: only as given
    };
    let with_port = format!("{host}:{default}");
    if url.contains(&with_port) {
        forms.push(url.replacen(&with_port, host, 1));
    } else {
        forms.push(url.replacen(host, &with_port, 1));
    }
    forms
}

/// Constant-time comparison of two signatures.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn receipts(
    auth_token: &str,
    req: &InboundRequest<'_>,
) -> Result<Vec<VendorReceipt>, ReceiptError> {
    let given = req
        .headers
        .get(SIGNATURE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ReceiptError::Unverified(format!("no {SIGNATURE} header")))?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(req.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let verified = url_forms(req.url)
        .iter()
        .any(|u| same(&signature(auth_token, u, &params), given.trim()));
    if !verified {
        return Err(ReceiptError::Unverified(
            "X-Twilio-Signature does not match this URL and body".into(),
        ));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(delivery_id) = url::Url::parse(req.url).ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| k == DELIVERY_PARAM)
            .and_then(|(_, v)| uuid::Uuid::parse_str(&v).ok())
    }) else {
        // Not a message Herald sent with its callback: nothing to change.
        return Ok(Vec::new());
    };
    let status = param("MessageStatus").or_else(|| param("SmsStatus"));
    let kind = match status {
        Some("delivered") => ReceiptKind::Delivered,
        Some("undelivered" | "failed") => ReceiptKind::Undelivered,
        // queued, sending, sent, accepted, read...: on its way.
        _ => return Ok(Vec::new()),
    };
    let code = param("ErrorCode").filter(|c| !c.is_empty());
    let reason = match code {
        Some(c) => format!("twilio {} (code {c})", status.unwrap_or_default()),
        None => format!("twilio {}", status.unwrap_or_default()),
    };
    // The recipient texted STOP: not to be sent to again.
    let suppress = (code == Some("21610"))
        .then(|| param("To").map(|to| (to.to_owned(), SuppressionReason::Unsubscribed)))
        .flatten();
    Ok(vec![VendorReceipt {
        delivery_id,
        kind: Some(kind),
        // Twilio's callbacks carry no time of their own.
        at_ms: req.now_ms,
        reason: Some(reason),
        suppress,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Twilio's webhook security documentation (and of its
    /// helper libraries' tests).
    #[test]
    fn signs_as_twilios_documentation_shows() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn a_url_is_tried_with_and_without_its_default_port() {
        assert_eq!(
            url_forms("https://h.example/r?d=1"),
            ["https://h.example/r?d=1", "https://h.example:443/r?d=1"]
        );
        assert_eq!(
            url_forms("https://h.example:443/r"),
            ["https://h.example:443/r", "https://h.example/r"]
        );
        assert_eq!(
            url_forms("http://h.example:8080/r"),
            ["http://h.example:8080/r"]
        );
    }
}
