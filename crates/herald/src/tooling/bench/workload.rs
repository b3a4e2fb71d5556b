//! What the bench sends. Every notification has a number `n`, and its one
//! recipient address encodes it, so each request a simulated vendor accepted
//! maps back to the notification it came from: its lane, its channel and
//! when Herald acknowledged it. The body is a function of `n` and its kind
//! alone, so a resubmission (after a crash) is the same request.

use herald_core::model::{Channel, Priority};
use serde_json::{json, Value};

/// A notification's lane and its one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    pub lane: Priority,
    pub channel: Channel,
}

impl Kind {
    pub const fn new(lane: Priority, channel: Channel) -> Kind {
        Kind { lane, channel }
    }
}

/// The everyday mix, by share of notifications (percent): 2FA codes by SMS,
/// password resets by email, order updates by push and webhook, and
/// newsletters and marketing SMS in the low lane.
const MIX: [(u64, Kind); 6] = [
    (8, Kind::new(Priority::Critical, Channel::Sms)),
    (2, Kind::new(Priority::Low, Channel::Sms)),
    (20, Kind::new(Priority::High, Channel::Email)),
    (35, Kind::new(Priority::Normal, Channel::Push)),
    (5, Kind::new(Priority::Normal, Channel::Webhook)),
    (30, Kind::new(Priority::Low, Channel::Email)),
];

/// The kind of notification `n` in the everyday mix (a fixed function of
/// `n` and the seed).
pub fn mixed(n: u64, seed: u64) -> Kind {
    let mut roll = splitmix64(n ^ seed.rotate_left(32)) % 100;
    for (share, kind) in MIX {
        if roll < share {
            return kind;
        }
        roll -= share;
    }
    MIX[MIX.len() - 1].1
}

/// A newsletter: the flood and the backlog.
pub const NEWSLETTER: Kind = Kind::new(Priority::Low, Channel::Email);
/// A 2FA code: the flood's trickle.
pub const TWO_FACTOR: Kind = Kind::new(Priority::Critical, Channel::Sms);

/// The request body for notification `n` of `kind`. `hooks` is the base URL
/// webhook deliveries go to (the simulator's).
pub fn body(n: u64, kind: Kind, hooks: &str) -> Value {
    let key = format!("bench-{n}");
    let lane = kind.lane.as_str();
    match (kind.channel, kind.lane) {
        (Channel::Sms, Priority::Critical) => json!({
            "idempotency_key": key, "priority": lane, "category": "2fa", "channels": ["sms"],
            "recipient": {"id": format!("u{}", n % 100_000), "phone": phone(n)},
            "template": {"id": "otp", "data": {"code": format!("{:06}", n % 1_000_000)}},
            "ttl_seconds": 300}),
        (Channel::Sms, _) => json!({
            "idempotency_key": key, "priority": lane, "category": "marketing", "channels": ["sms"],
            "recipient": {"phone": phone(n)},
            "content": {"text": "Flash sale: 20% off today only. Reply STOP to opt out."}}),
        (Channel::Email, Priority::Critical | Priority::High) => json!({
            "idempotency_key": key, "priority": lane, "category": "password-reset", "channels": ["email"],
            "recipient": {"id": format!("u{}", n % 100_000), "email": email(n)},
            "template": {"id": "password-reset", "locale": if n.is_multiple_of(4) { "pt-BR" } else { "en" },
                "data": {"name": "Zoë", "link": format!("https://app.example.com/reset/{n}")}}}),
        (Channel::Email, _) => json!({
            "idempotency_key": key, "priority": lane, "category": "newsletter", "channels": ["email"],
            "recipient": {"email": email(n)},
            "content": {"subject": "This week at Example — nouveautés 🎉",
                "text": "Our favourite things this week, and what is coming next.",
                "html": "<h1>This week</h1><p>Our favourite things this week.</p>"}}),
        (Channel::Push, _) => json!({
            "idempotency_key": key, "priority": lane, "category": "order-update", "channels": ["push"],
            "recipient": {"push_tokens": [{"platform": if n.is_multiple_of(3) { "ios" } else { "android" }, "token": token(n)}]},
            "template": {"id": "order-update", "data": {"order_id": format!("A-{n}"), "status": "shipped"}},
            "metadata": {"order_id": format!("A-{n}")}}),
        (Channel::Webhook, _) => json!({
            "idempotency_key": key, "priority": lane, "category": "order-update", "channels": ["webhook"],
            "recipient": {"webhook_url": format!("{hooks}/hooks/bench/{n}")},
            "content": {"subject": "order.shipped", "text": format!("Order A-{n} shipped")}}),
        (Channel::Chat, _) => json!({
            "idempotency_key": key, "priority": lane, "category": "alert", "channels": ["chat"],
            "recipient": {"chat": conversation(n)},
            "content": {"subject": "Deploy finished", "text": format!("Build {n} is live :rocket:")}}),
    }
}

/// Every category the workloads send (`--rules` caps each).
pub const CATEGORIES: [&str; 6] = [
    "2fa",
    "alert",
    "marketing",
    "newsletter",
    "order-update",
    "password-reset",
];

/// The id the bench stores notification `n`'s recipient under.
pub fn recipient_id(n: u64) -> String {
    format!("r{n}")
}

/// The stored profile of notification `n`'s recipient: every address any
/// kind of notification `n` goes to, so one addressed by id alone reaches
/// exactly where its inline twin would.
pub fn profile(n: u64, hooks: &str) -> Value {
    let platform = if n.is_multiple_of(3) {
        "ios"
    } else {
        "android"
    };
    json!({
        "email": email(n), "phone": phone(n),
        "push_tokens": [{"platform": platform, "token": token(n)}],
        "webhook_url": format!("{hooks}/hooks/bench/{n}"),
        "chat": conversation(n),
        "locale": "en", "timezone": "Europe/Lisbon",
        "data": {"name": "Zoë"}
    })
}

fn email(n: u64) -> String {
    format!("b{n}@bench.example")
}

fn phone(n: u64) -> String {
    // "+1" and 13 digits: a valid E.164 number that never collides with the
    // simulator's magic test numbers (10 digits after the "1").
    format!("+1{n:013}")
}

fn conversation(n: u64) -> String {
    format!("CBENCH{n}")
}

fn token(n: u64) -> String {
    format!("bench-{n}")
}

/// The notification a vendor's recipient belongs to, if it is the bench's.
pub fn number_of(vendor: &str, recipient: &str) -> Option<u64> {
    let digits = match vendor {
        "sendgrid" => recipient
            .strip_prefix('b')?
            .strip_suffix("@bench.example")?,
        "twilio" | "sns" => recipient.strip_prefix("+1")?,
        "fcm" => recipient.strip_prefix("bench-")?,
        "webhook" => recipient.strip_prefix("/hooks/bench/")?,
        "slack" => recipient.strip_prefix("CBENCH")?,
        _ => return None,
    };
    digits.parse().ok()
}

/// The channel a simulated vendor serves.
pub fn channel_of(vendor: &str) -> Option<Channel> {
    match vendor {
        "sendgrid" => Some(Channel::Email),
        "twilio" | "sns" => Some(Channel::Sms),
        "fcm" => Some(Channel::Push),
        "webhook" => Some(Channel::Webhook),
        "slack" => Some(Channel::Chat),
        _ => None,
    }
}

/// A well-mixed hash (SplitMix64's finaliser), so consecutive numbers get
/// unrelated kinds.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipient_maps_back_to_its_number() {
        let hooks = "http://127.0.0.1:9";
        for n in [0, 7, 123_456, 9_000_000_001] {
            let chat = Kind::new(Priority::Normal, Channel::Chat);
            for kind in MIX.map(|(_, k)| k).into_iter().chain([chat]) {
                let b = body(n, kind, hooks);
                let r = &b["recipient"];
                let (vendor, recipient) = match kind.channel {
                    Channel::Email => ("sendgrid", r["email"].as_str().map(str::to_owned)),
                    Channel::Sms => ("sns", r["phone"].as_str().map(str::to_owned)),
                    Channel::Push => (
                        "fcm",
                        r["push_tokens"][0]["token"].as_str().map(str::to_owned),
                    ),
                    Channel::Webhook => (
                        "webhook",
                        r["webhook_url"]
                            .as_str()
                            .and_then(|u| u.strip_prefix(hooks))
                            .map(str::to_owned),
                    ),
                    Channel::Chat => ("slack", r["chat"].as_str().map(str::to_owned)),
                };
                let recipient = recipient.expect("the kind's recipient field");
                assert_eq!(
                    number_of(vendor, &recipient),
                    Some(n),
                    "{kind:?} {recipient}"
                );
            }
        }
        assert_eq!(number_of("twilio", "+15005550001"), Some(5_005_550_001));
        assert_eq!(number_of("sendgrid", "ada@example.com"), None);
    }

    #[test]
    fn the_mix_has_the_documented_shares() {
        let mut counts = std::collections::HashMap::new();
        for n in 0..100_000 {
            *counts.entry(mixed(n, 7)).or_insert(0u32) += 1;
        }
        for (share, kind) in MIX {
            let got = f64::from(counts[&kind]) / 1_000.0;
            assert!(
                (got - share as f64).abs() < 1.0,
                "{kind:?}: {got}% for {share}%"
            );
        }
    }

    #[test]
    fn bodies_pass_herald_validation() {
        for (_, kind) in MIX {
            let b = body(42, kind, "http://127.0.0.1:9");
            let req: herald_core::model::NotificationRequest =
                serde_json::from_value(b).expect("parses as a request");
            let limits = herald_core::validate::Limits {
                allow_loopback_webhooks: true,
                ..Default::default()
            };
            let errors = herald_core::validate::validate(&req, &limits, chrono::Utc::now());
            assert!(errors.is_empty(), "{kind:?}: {errors:?}");
        }
    }
}
