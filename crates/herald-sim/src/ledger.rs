//! What the simulated vendors received: every request, and the set of
//! idempotency keys they accepted. A repeated key after acceptance gets the
//! original answer and counts as a duplicate, never as a second delivery.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// One accepted message.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub seq: u64,
    pub vendor: &'static str,
    pub key: String,
    pub recipient: String,
    /// Subject or the start of the text, to tell messages apart in tests.
    pub summary: String,
    /// When the accepted request arrived (before any injected latency).
    pub received_at_ms: i64,
    /// When the request says it was made: its `webhook-timestamp`, or its
    /// SigV4 `x-amz-date` (receivers refuse ones minutes old).
    pub stamped_at_ms: Option<i64>,
    /// How many requests carried this key (1 = no duplicate).
    pub requests: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorStats {
    /// Every request that reached the endpoint.
    pub received: u64,
    /// Distinct keys accepted: messages delivered.
    pub unique: u64,
    /// Requests repeating a key that was already accepted.
    pub duplicates: u64,
    /// Requests answered with an injected error, throttle or outage.
    pub faulted: u64,
    /// Requests refused as malformed or unauthorised, or for a recipient the
    /// vendor rejects.
    pub rejected: u64,
}

/// The answer first given for a key, replayed for repeats.
#[derive(Debug, Clone)]
pub struct Original {
    pub status: u16,
    pub body: String,
    pub message_id: String,
}

#[derive(Debug, Default)]
pub struct Ledger {
    entries: Vec<Entry>,
    by_key: HashMap<(&'static str, String), (usize, Original)>,
    stats: BTreeMap<&'static str, VendorStats>,
}

impl Ledger {
    pub fn stats_mut(&mut self, vendor: &'static str) -> &mut VendorStats {
        self.stats.entry(vendor).or_default()
    }

    /// The original answer if this key was already accepted (and counts the repeat).
    pub fn repeat(&mut self, vendor: &'static str, key: &str) -> Option<Original> {
        let (idx, original) = self.by_key.get(&(vendor, key.to_owned()))?.clone();
        if let Some(e) = self.entries.get_mut(idx) {
            e.requests += 1;
        }
        self.stats_mut(vendor).duplicates += 1;
        Some(original)
    }

    pub fn accept(&mut self, entry: Entry, original: Original) {
        let key = (entry.vendor, entry.key.clone());
        self.stats_mut(entry.vendor).unique += 1;
        self.by_key.insert(key, (self.entries.len(), original));
        self.entries.push(entry);
    }

    pub fn next_seq(&self) -> u64 {
        self.entries.len() as u64 + 1
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn stats(&self) -> BTreeMap<&'static str, VendorStats> {
        self.stats.clone()
    }

    pub fn clear(&mut self) {
        *self = Ledger::default();
    }
}
