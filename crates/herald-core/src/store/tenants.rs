//! `Tenants`: API keys and the tenants they belong to (auth, the CLI), and
//! each tenant's callback: where Herald tells it what became of its
//! notifications.

use std::fmt;

use async_trait::async_trait;

use super::StoreError;
use crate::model::DeliveryState;

/// What an API key may do: `send` (create and cancel notifications, keep
/// recipients and their preferences), `read` (look at notifications,
/// recipients, providers, dead letters, suppressions, callbacks) and
/// `admin` (replay dead letters, change suppression lists, callbacks and
/// the tenant's defaults, hold circuits, sign in to the console). A key
/// made before scopes existed has all three: it keeps what it could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    pub const SEND: Scopes = Scopes(1);
    pub const READ: Scopes = Scopes(2);
    pub const ADMIN: Scopes = Scopes(4);
    pub const ALL: Scopes = Scopes(7);
    const NAMES: [(&'static str, Scopes); 3] = [
        ("send", Scopes::SEND),
        ("read", Scopes::READ),
        ("admin", Scopes::ADMIN),
    ];

    /// Every scope in `other` is in `self`.
    pub fn allows(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    /// `send,read`: the names, comma-separated; an unknown or empty name is
    /// an error naming it. An empty list is refused (a key that can do
    /// nothing is a mistake).
    pub fn parse(list: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes(0);
        for name in list.split(',').map(str::trim) {
            let Some((_, s)) = Self::NAMES.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "unknown scope {name:?}: the scopes are send, read and admin"
                ));
            };
            scopes = scopes.union(*s);
        }
        Ok(scopes)
    }

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, s)| self.allows(*s))
            .map(|(n, _)| *n)
            .collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// The tenant an API key belongs to and what the key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub tenant_id: String,
    pub scopes: Scopes,
}

/// A tenant's callback: the URL Herald posts events to (a signed Standard
/// Webhooks request, delivered as any webhook), and which events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub url: String,
    /// The delivery states reported (`notification.<state>` events).
    pub events: Vec<DeliveryState>,
}

#[async_trait]
pub trait Tenants: Send + Sync {
    /// A tenant's id by its name.
    async fn tenant_id(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// The tenant that owns an API key (by its SHA-256), and its scopes.
    async fn key_grant(&self, key_hash: &[u8]) -> Result<Option<KeyGrant>, StoreError>;
    /// Creates the tenant if needed and adds a key with `scopes` to it;
    /// returns the tenant id.
    async fn add_api_key(
        &self,
        tenant_name: &str,
        key_hash: &[u8],
        label: &str,
        scopes: Scopes,
    ) -> Result<String, StoreError>;
    /// Sets (or, with `None`, removes) the tenant's callback.
    async fn set_callback(
        &self,
        tenant_id: &str,
        callback: Option<Callback>,
    ) -> Result<(), StoreError>;
    /// The tenant's callback, if it has one.
    async fn callback(&self, tenant_id: &str) -> Result<Option<Callback>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::Scopes;

    #[test]
    fn scopes_parse_and_print_by_name() {
        assert_eq!(Scopes::parse("send").expect("scopes"), Scopes::SEND);
        let sr = Scopes::parse(" read , send").expect("scopes");
        assert!(sr.allows(Scopes::SEND) && sr.allows(Scopes::READ));
        assert!(!sr.allows(Scopes::ADMIN));
        assert_eq!(sr.to_string(), "send,read");
        assert_eq!(
            Scopes::parse("send,read,admin").expect("scopes"),
            Scopes::ALL
        );
        assert!(Scopes::parse("root")
            .expect_err("unknown")
            .contains("\"root\""));
        assert!(Scopes::parse("").is_err());
        assert!(Scopes::parse("send,").is_err());
    }
}
