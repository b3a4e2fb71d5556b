//! Recipients: the people a tenant notifies, stored under the tenant's own
//! id for each (`PUT /v1/recipients/{id}`), so a service can say "notify
//! user 42" and Herald finds the addresses, language and data.
//!
//! A notification naming `recipient.id` is resolved when it is accepted:
//! what the request says inline wins, the stored profile fills the rest,
//! and the result is stored with the notification, so a later change to
//! the profile never alters what was accepted.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Channel, NotificationRequest, PushToken, Recipient};
use crate::validate::{check_recipient, is_category, is_locale, Errors, Limits, CATEGORY_RULE};

/// The longest recipient id (the tenant's own id for the person).
pub const MAX_ID_BYTES: usize = 256;
/// The most JSON a profile's `data` may hold.
pub const MAX_DATA_BYTES: usize = 16 * 1024;

/// A stored recipient's profile: how to reach the person, and what the
/// templates may say about them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The person's devices, each with its platform (and app).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push_tokens: Vec<PushToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// A Slack conversation id or incoming webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<String>,
    /// The template locale used when a notification names none (`pt-BR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA time zone (`Europe/Lisbon`, `Asia/Kolkata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// When not to disturb (normal and low lanes wait for their end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// Values templates see (a notification's `template.data` wins over
    /// them, key by key).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// Hours in which a recipient is not disturbed: deliveries of the normal
/// and low lanes that would go out inside them wait for their end (in the
/// recipient's time zone); critical and high are never held.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Local time they begin, `HH:MM` (`22:00`).
    pub start: String,
    /// Local time they end, `HH:MM` (`08:00`; before `start`: overnight).
    pub end: String,
    /// The channels they hold (default: every channel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<Channel>,
}

impl QuietHours {
    fn times(&self) -> Result<(chrono::NaiveTime, chrono::NaiveTime), &'static str> {
        let parse = |s: &str| chrono::NaiveTime::parse_from_str(s, "%H:%M");
        match (parse(&self.start), parse(&self.end)) {
            (Ok(a), Ok(b)) if a != b => Ok((a, b)),
            (Ok(_), Ok(_)) => Err("start and end must differ"),
            _ => Err("start and end are HH:MM (00:00 to 23:59)"),
        }
    }

    /// Until when (Unix ms) a delivery on `channel` that would go out at
    /// `at_ms` is held, in `tz`; `None` when it is not inside the hours.
    /// A local end time a daylight-saving change skips is taken at the
    /// first valid moment after it; one it repeats, at the first.
    pub fn held_until(&self, channel: Channel, at_ms: i64, tz: chrono_tz::Tz) -> Option<i64> {
        use chrono::{Duration, TimeZone};
        if !self.channels.is_empty() && !self.channels.contains(&channel) {
            return None;
        }
        let (start, end) = self.times().ok()?;
        let local = chrono::DateTime::from_timestamp_millis(at_ms)?.with_timezone(&tz);
        let (date, now) = (local.date_naive(), local.time());
        let end_date = if start < end {
            (start <= now && now < end).then_some(date)?
        } else if now >= start {
            date.succ_opt()?
        } else if now < end {
            date
        } else {
            return None;
        };
        let naive = end_date.and_time(end);
        // A gap (clocks go forward) has no such local time: the first one
        // after it, within the hour or two any zone skips.
        let resolved = (0..=8)
            .map(|quarter| naive + Duration::minutes(15 * quarter))
            .find_map(|t| tz.from_local_datetime(&t).earliest())?;
        Some(resolved.timestamp_millis())
    }
}

/// Opted in (`true`) or out (`false`), per category and channel.
pub type Choices = BTreeMap<String, BTreeMap<Channel, bool>>;

/// What a recipient asked for: per notification category (the request's
/// `category`), per channel, opted in or out. What it does not say, the
/// tenant's defaults decide.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// `{"marketing": {"email": false, "sms": false}}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub categories: Choices,
}

/// A tenant's defaults: each category's choice per channel when a
/// recipient made none, and the categories no one may opt out of
/// (security codes, legal notices).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPreferences {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub categories: Choices,
    #[serde(default)]
    pub required: BTreeSet<String>,
    /// Quiet hours for recipients who set none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// Per category: at most `max` notifications to one recipient per
    /// `per_seconds`, across channels (`{"marketing": {"max": 3,
    /// "per_seconds": 86400}}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub caps: BTreeMap<String, Cap>,
}

/// A frequency cap: at most `max` per `per_seconds`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub max: u32,
    pub per_seconds: u64,
}

/// The longest a frequency cap's window may be (30 days).
pub const MAX_CAP_SECONDS: u64 = 30 * 24 * 3600;

impl TenantPreferences {
    /// Whether a notification of `category` may go to a recipient on
    /// `channel`, and if not, why. A notification without a category,
    /// and any of a required category, always may; otherwise the
    /// recipient's choice, then the tenant's default, then yes.
    pub fn allows(
        &self,
        recipient: &Preferences,
        category: Option<&str>,
        channel: Channel,
    ) -> Result<(), String> {
        let Some(category) = category else {
            return Ok(());
        };
        if self.required.contains(category) {
            return Ok(());
        }
        let choice = |c: &Choices| c.get(category).and_then(|by| by.get(&channel)).copied();
        match choice(&recipient.categories) {
            Some(false) => Err(format!(
                "preference: the recipient opted out of {category} by {channel}"
            )),
            Some(true) => Ok(()),
            None if choice(&self.categories) == Some(false) => Err(format!(
                "preference: {category} by {channel} is off unless the recipient opts in"
            )),
            None => Ok(()),
        }
    }
}

/// Every rule a recipient's preferences break against the tenant's: known
/// category names, and no opting out of a required category.
pub fn validate_preferences(p: &Preferences, tenant: &TenantPreferences) -> Errors {
    let mut errs = Errors::default();
    for (category, by_channel) in &p.categories {
        let field = format!("categories.{category}");
        if !is_category(category) {
            errs.add(field, CATEGORY_RULE);
        } else if tenant.required.contains(category) && by_channel.values().any(|on| !on) {
            errs.add(
                field,
                "a required category (the tenant's): it cannot be opted out of",
            );
        }
    }
    errs
}

/// Every rule a tenant's defaults break.
pub fn validate_tenant_preferences(p: &TenantPreferences) -> Errors {
    let mut errs = Errors::default();
    if let Some(Err(why)) = p.quiet_hours.as_ref().map(QuietHours::times) {
        errs.add("quiet_hours", why);
    }
    for (category, cap) in &p.caps {
        if cap.max == 0 || cap.per_seconds == 0 || cap.per_seconds > MAX_CAP_SECONDS {
            errs.add(
                format!("caps.{category}"),
                format!("max at least 1, per_seconds 1 to {MAX_CAP_SECONDS}"),
            );
        }
    }
    for category in p.categories.keys().chain(&p.required).chain(p.caps.keys()) {
        if !is_category(category) {
            errs.add(format!("categories.{category}"), CATEGORY_RULE);
        }
    }
    errs
}

/// A profile as stored: its id, and its version (bumped by every write, so
/// a read-modify-write can tell whether another write came between).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecipient {
    pub id: String,
    pub profile: Profile,
    pub preferences: Preferences,
    pub version: i64,
    pub updated_at_ms: i64,
}

impl Profile {
    /// The addresses, as a notification's recipient.
    pub fn contact(&self, id: Option<String>) -> Recipient {
        Recipient {
            id,
            email: self.email.clone(),
            phone: self.phone.clone(),
            push_tokens: self.push_tokens.clone(),
            webhook_url: self.webhook_url.clone(),
            chat: self.chat.clone(),
        }
    }

    /// Fills what `req` does not say from the profile: the address of
    /// each requested channel the request leaves out (push devices as a
    /// whole; the other channels' addresses are not copied, so a stored
    /// notification holds only what it is sent to), the template's locale
    /// and the template data's missing keys.
    pub fn resolve(&self, req: &mut NotificationRequest) {
        let wants = |c: Channel| req.channels.contains(&c);
        let (email, sms, push, webhook, chat) = (
            wants(Channel::Email),
            wants(Channel::Sms),
            wants(Channel::Push),
            wants(Channel::Webhook),
            wants(Channel::Chat),
        );
        let r = &mut req.recipient;
        if email {
            fill(&mut r.email, &self.email);
        }
        if sms {
            fill(&mut r.phone, &self.phone);
        }
        if webhook {
            fill(&mut r.webhook_url, &self.webhook_url);
        }
        if chat {
            fill(&mut r.chat, &self.chat);
        }
        if push && r.push_tokens.is_empty() {
            r.push_tokens.clone_from(&self.push_tokens);
        }
        if let Some(t) = &mut req.template {
            fill(&mut t.locale, &self.locale);
            for (k, v) in &self.data {
                t.data.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }

    /// What erasing the profile removes, field by field.
    pub fn erased(&self) -> Erased {
        Erased {
            email: self.email.is_some(),
            phone: self.phone.is_some(),
            push_tokens: self.push_tokens.len(),
            webhook_url: self.webhook_url.is_some(),
            chat: self.chat.is_some(),
            locale: self.locale.is_some(),
            timezone: self.timezone.is_some(),
            data_keys: self.data.len(),
            preferences: 0,
        }
    }
}

fn fill(slot: &mut Option<String>, from: &Option<String>) {
    if slot.is_none() {
        slot.clone_from(from);
    }
}

/// What an erasure removed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erased {
    pub email: bool,
    pub phone: bool,
    /// How many devices.
    pub push_tokens: usize,
    pub webhook_url: bool,
    pub chat: bool,
    pub locale: bool,
    pub timezone: bool,
    /// How many keys of template data.
    pub data_keys: usize,
    /// How many categories the recipient had a preference about.
    pub preferences: usize,
}

/// A recipient id: 1 to 256 bytes, no control characters.
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        Err("must be 1 to 256 bytes without control characters")
    } else {
        Ok(())
    }
}

/// Every rule a profile breaks: addresses as strictly as a notification's
/// recipient, a language tag, a time zone the IANA database knows, and
/// template data within its size.
pub fn validate_profile(p: &Profile, limits: &Limits) -> Errors {
    let mut errs = Errors::default();
    check_recipient(&p.contact(None), "", limits, &mut errs);
    if p.locale.as_deref().is_some_and(|l| !is_locale(l)) {
        errs.add("locale", "must be a language tag such as en or pt-BR");
    }
    if let Some(tz) = &p.timezone {
        if tz.parse::<chrono_tz::Tz>().is_err() {
            errs.add(
                "timezone",
                "must be an IANA time zone such as Europe/Lisbon or Asia/Kolkata",
            );
        }
    }
    if let Some(Err(why)) = p.quiet_hours.as_ref().map(QuietHours::times) {
        errs.add("quiet_hours", why);
    }
    let size = serde_json::to_vec(&p.data).map_or(usize::MAX, |v| v.len());
    if size > MAX_DATA_BYTES {
        errs.add("data", format!("at most {MAX_DATA_BYTES} bytes of JSON"));
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::PushPlatform;

    fn profile() -> Profile {
        serde_json::from_value(json!({
            "email": "ada@example.com", "phone": "+14155550100",
            "push_tokens": [{"platform": "ios", "token": "t1", "app": "com.example.shop"}],
            "chat": "U024BE91L", "locale": "pt-BR", "timezone": "America/Sao_Paulo",
            "data": {"name": "Ada", "plan": "pro"}
        }))
        .expect("a profile")
    }

    #[test]
    fn inline_fields_win_and_the_profile_fills_the_rest() {
        let mut req: NotificationRequest = serde_json::from_value(json!({
            "recipient": {"id": "u42", "email": "work@example.com"},
            "channels": ["email", "sms", "push"],
            "template": {"id": "welcome", "data": {"name": "Ada L."}}
        }))
        .expect("a request");
        profile().resolve(&mut req);
        let r = &req.recipient;
        assert_eq!(r.id.as_deref(), Some("u42"));
        assert_eq!(r.email.as_deref(), Some("work@example.com"), "inline wins");
        assert_eq!(r.phone.as_deref(), Some("+14155550100"));
        assert_eq!(r.push_tokens.len(), 1);
        assert_eq!(r.push_tokens[0].platform, PushPlatform::Ios);
        assert_eq!(r.chat, None, "chat is not requested: not copied");
        let t = req.template.expect("template");
        assert_eq!(t.locale.as_deref(), Some("pt-BR"));
        assert_eq!(t.data["name"], "Ada L.", "the request's data wins");
        assert_eq!(t.data["plan"], "pro");
    }

    #[test]
    fn profiles_are_checked_like_recipients() {
        let limits = Limits::default();
        assert!(validate_profile(&profile(), &limits).is_empty());
        let bad: Profile = serde_json::from_value(json!({
            "email": "not-an-email", "phone": "0800", "timezone": "Mars/Olympus",
            "locale": "en US", "chat": "#general",
            "data": {"blob": "x".repeat(MAX_DATA_BYTES)}
        }))
        .expect("well-formed");
        let errs = validate_profile(&bad, &limits);
        assert_eq!(
            errs.fields(),
            ["email", "phone", "chat", "locale", "timezone", "data"]
        );
        for tz in ["Asia/Kolkata", "Europe/Lisbon", "UTC", "America/St_Johns"] {
            let p = Profile {
                timezone: Some(tz.into()),
                ..Profile::default()
            };
            assert!(validate_profile(&p, &limits).is_empty(), "{tz}");
        }
        assert!(check_id("user-42").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a\nb").is_err());
        assert!(check_id(&"x".repeat(257)).is_err());
    }

    #[test]
    fn preferences_decide_by_recipient_then_tenant_and_required_wins() {
        let tenant: TenantPreferences = serde_json::from_value(json!({
            "categories": {"marketing": {"sms": false}},
            "required": ["security"]
        }))
        .expect("tenant");
        let ada: Preferences = serde_json::from_value(json!({
            "categories": {"marketing": {"email": false, "sms": true}, "digest": {"push": false}}
        }))
        .expect("prefs");
        let none = Preferences::default();
        let m = Some("marketing");
        assert!(tenant.allows(&ada, m, Channel::Email).is_err(), "opted out");
        assert!(
            tenant.allows(&ada, m, Channel::Sms).is_ok(),
            "opted in over the default"
        );
        assert!(
            tenant.allows(&none, m, Channel::Sms).is_err(),
            "the default"
        );
        assert!(tenant.allows(&none, m, Channel::Email).is_ok());
        assert!(tenant.allows(&ada, Some("digest"), Channel::Push).is_err());
        assert!(
            tenant.allows(&ada, None, Channel::Email).is_ok(),
            "no category"
        );
        let stubborn: Preferences =
            serde_json::from_value(json!({"categories": {"security": {"sms": false}}}))
                .expect("prefs");
        assert!(tenant
            .allows(&stubborn, Some("security"), Channel::Sms)
            .is_ok());
        assert_eq!(
            validate_preferences(&stubborn, &tenant).fields(),
            ["categories.security"]
        );
        let bad: Preferences =
            serde_json::from_value(json!({"categories": {"no spaces": {"sms": true}}}))
                .expect("prefs");
        assert_eq!(
            validate_preferences(&bad, &tenant).fields(),
            ["categories.no spaces"]
        );
        assert!(
            serde_json::from_value::<Preferences>(json!({"categories": {"x": {"fax": true}}}))
                .is_err()
        );
    }

    fn at(tz: chrono_tz::Tz, local: &str) -> i64 {
        use chrono::TimeZone;
        let naive = chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M").expect("time");
        tz.from_local_datetime(&naive)
            .earliest()
            .expect("a local time")
            .timestamp_millis()
    }

    fn local(tz: chrono_tz::Tz, ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms)
            .expect("ms")
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    }

    #[test]
    fn quiet_hours_hold_until_their_local_end() {
        let night = QuietHours {
            start: "22:00".into(),
            end: "08:00".into(),
            channels: vec![],
        };
        let kolkata = chrono_tz::Asia::Kolkata; // +05:30
        let held = |tz, t| {
            night
                .held_until(Channel::Sms, at(tz, t), tz)
                .map(|ms| local(tz, ms))
        };
        assert_eq!(
            held(kolkata, "2026-12-05 23:10").as_deref(),
            Some("2026-12-06 08:00 IST")
        );
        assert_eq!(
            held(kolkata, "2026-12-06 03:00").as_deref(),
            Some("2026-12-06 08:00 IST")
        );
        assert_eq!(
            held(kolkata, "2026-12-06 08:00"),
            None,
            "the end is outside"
        );
        assert_eq!(held(kolkata, "2026-12-06 21:59"), None);
        // Across Europe's spring-forward night (2027-03-28, 02:00 → 03:00)
        // and autumn's (2026-10-25, 03:00 → 02:00): the local end time.
        let lisbon = chrono_tz::Europe::Lisbon;
        assert_eq!(
            held(lisbon, "2027-03-27 23:30").as_deref(),
            Some("2027-03-28 08:00 WEST")
        );
        assert_eq!(
            held(lisbon, "2026-10-24 23:30").as_deref(),
            Some("2026-10-25 08:00 WET")
        );
        // An end the change skips: the first moment after it.
        let gap = QuietHours {
            start: "23:00".into(),
            end: "01:30".into(),
            channels: vec![],
        };
        let new_york = chrono_tz::America::New_York; // 2027-03-14, 02:00 → 03:00
        let e = QuietHours {
            end: "02:30".into(),
            ..gap
        };
        let ms = e
            .held_until(Channel::Email, at(new_york, "2027-03-13 23:30"), new_york)
            .expect("held");
        assert_eq!(local(new_york, ms), "2027-03-14 03:00 EDT");
        // A daytime window, and one for some channels only.
        let lunch = QuietHours {
            start: "12:00".into(),
            end: "13:00".into(),
            channels: vec![Channel::Push],
        };
        let utc = chrono_tz::UTC;
        assert!(lunch
            .held_until(Channel::Push, at(utc, "2026-12-05 12:30"), utc)
            .is_some());
        assert!(lunch
            .held_until(Channel::Email, at(utc, "2026-12-05 12:30"), utc)
            .is_none());
        assert!(lunch
            .held_until(Channel::Push, at(utc, "2026-12-05 13:30"), utc)
            .is_none());
        let bad = Profile {
            quiet_hours: Some(QuietHours {
                start: "25:00".into(),
                end: "08:00".into(),
                channels: vec![],
            }),
            ..Profile::default()
        };
        assert_eq!(
            validate_profile(&bad, &Limits::default()).fields(),
            ["quiet_hours"]
        );
    }

    #[test]
    fn an_erasure_says_what_it_removed() {
        let e = profile().erased();
        assert!(e.email && e.phone && e.chat && e.locale && e.timezone);
        assert!(!e.webhook_url);
        assert_eq!((e.push_tokens, e.data_keys), (1, 2));
    }
}
