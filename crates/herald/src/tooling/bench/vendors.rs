//! The simulated vendors the bench reads its truth from: the simulator it
//! started in its own process, or one running elsewhere (`herald sim`)
//! reached over its control API.

use std::collections::BTreeMap;

use anyhow::Context;
use herald_sim::{Fault, Sim, VendorStats};
use serde::Deserialize;

/// One message a vendor accepted.
#[derive(Debug, Clone, Deserialize)]
pub struct Receipt {
    pub vendor: String,
    pub recipient: String,
    pub received_at_ms: i64,
    /// Requests that carried its key (more than 1: repeats the key absorbed).
    pub requests: u32,
}

#[derive(Clone)]
pub enum Vendors {
    Local(Sim),
    Remote { url: String, http: reqwest::Client },
}

/// The ledger's largest page.
const PAGE: usize = 10_000;

impl Vendors {
    pub async fn set_fault(&self, vendor: &str, fault: Fault) -> anyhow::Result<()> {
        match self {
            Vendors::Local(sim) => sim.set_fault(vendor, fault).map_err(anyhow::Error::msg),
            Vendors::Remote { url, http } => {
                let mut body = serde_json::to_value(&fault)?;
                body["vendor"] = vendor.into();
                let resp = http
                    .post(format!("{url}/_sim/faults"))
                    .json(&body)
                    .send()
                    .await?;
                let status = resp.status();
                anyhow::ensure!(
                    status.is_success(),
                    "setting a fault: {status} {}",
                    resp.text().await.unwrap_or_default()
                );
                Ok(())
            }
        }
    }

    /// Forgets every receipt and fault.
    pub async fn reset(&self) -> anyhow::Result<()> {
        match self {
            Vendors::Local(sim) => sim.reset(),
            Vendors::Remote { url, http } => {
                http.post(format!("{url}/_sim/reset"))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        Ok(())
    }

    pub async fn stats(&self) -> anyhow::Result<BTreeMap<String, VendorStats>> {
        Ok(match self {
            Vendors::Local(sim) => sim
                .stats()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            Vendors::Remote { url, http } => http
                .get(format!("{url}/_sim/stats"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
                .context("simulator stats")?,
        })
    }

    /// Messages accepted so far, all vendors.
    pub async fn delivered(&self) -> anyhow::Result<u64> {
        Ok(self.stats().await?.values().map(|s| s.unique).sum())
    }

    /// Everything the vendors accepted.
    pub async fn receipts(&self) -> anyhow::Result<Vec<Receipt>> {
        match self {
            Vendors::Local(sim) => Ok(sim
                .entries()
                .into_iter()
                .map(|e| Receipt {
                    vendor: e.vendor.to_owned(),
                    recipient: e.recipient,
                    received_at_ms: e.received_at_ms,
                    requests: e.requests,
                })
                .collect()),
            Vendors::Remote { url, http } => {
                #[derive(Deserialize)]
                struct Page {
                    entries: Vec<Receipt>,
                }
                let mut all = Vec::new();
                loop {
                    let page: Page = http
                        .get(format!("{url}/_sim/ledger"))
                        .query(&[("offset", all.len()), ("limit", PAGE)])
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await
                        .context("simulator ledger")?;
                    let n = page.entries.len();
                    all.extend(page.entries);
                    if n < PAGE {
                        return Ok(all);
                    }
                }
            }
        }
    }
}
