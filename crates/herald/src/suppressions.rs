//! `herald suppressions list|add|remove`: a tenant's suppression list from
//! the command line, straight on the store (as `herald dlq`).

use herald_core::model::Channel;
use herald_core::store::{Suppressions, Tenants};
use herald_core::suppression::{check_address, normalize, Suppression, SuppressionReason};
use herald_core::validate::Limits;

/// Which tenant and address a command is about.
#[derive(clap::Args, Clone, Debug)]
pub struct AddressArgs {
    /// The tenant, by name.
    #[arg(long)]
    pub tenant: String,
    /// email, sms, push or webhook.
    #[arg(long, value_parser = parse_channel)]
    pub channel: Channel,
    /// The email address, E.164 phone number, push token or webhook URL.
    #[arg(long)]
    pub address: String,
}

/// `herald suppressions list` filters.
#[derive(clap::Args, Clone, Debug)]
pub struct ListArgs {
    /// Only this tenant's (by name).
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, value_parser = parse_channel)]
    pub channel: Option<Channel>,
    /// bounce, complaint, unsubscribed, unregistered, gone or manual.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<SuppressionReason>,
    /// One address (needs --channel).
    #[arg(long, requires = "channel")]
    pub address: Option<String>,
}

pub fn parse_channel(s: &str) -> Result<Channel, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a channel (email, sms, push, webhook)"))
}

pub fn parse_reason(s: &str) -> Result<SuppressionReason, String> {
    s.parse().map_err(|_| {
        let names: Vec<&str> = SuppressionReason::ALL.iter().map(|r| r.as_str()).collect();
        format!("{s:?} is not one of {}", names.join(", "))
    })
}

async fn tenant_id<S: Tenants + ?Sized>(tenants: &S, name: &str) -> anyhow::Result<String> {
    tenants
        .tenant_id(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("--tenant: no tenant is named {name:?}"))
}

pub async fn list<S: Suppressions + Tenants + ?Sized>(
    store: &S,
    args: &ListArgs,
    limit: usize,
    json_lines: bool,
) -> anyhow::Result<()> {
    let tenant_id = match &args.tenant {
        Some(name) => Some(tenant_id(store, name).await?),
        None => None,
    };
    let filter = herald_core::store::SuppressionFilter {
        tenant_id,
        channel: args.channel,
        reason: args.reason,
        address: match (&args.address, args.channel) {
            (Some(a), Some(c)) => Some(normalize(c, a).into_owned()),
            _ => None,
        },
    };
    let page = store.suppressions(&filter, None, limit).await?;
    if json_lines {
        for s in &page {
            let out = crate::api::types::SuppressionOut::from(s);
            println!("{}", serde_json::to_string(&out).unwrap_or_default());
        }
        return Ok(());
    }
    println!(
        "{:<7}  {:<40}  {:<12}  {:<12}  {:<24}  detail",
        "channel", "address", "reason", "source", "since"
    );
    for s in &page {
        println!(
            "{:<7}  {:<40}  {:<12}  {:<12}  {:<24}  {}",
            s.channel.as_str(),
            s.address,
            s.reason.as_str(),
            s.source,
            crate::dlq::rfc3339(s.created_at_ms),
            s.detail.as_deref().unwrap_or("-")
        );
    }
    eprintln!("{} suppressed addresses", page.len());
    Ok(())
}

pub async fn add<S: Suppressions + Tenants + ?Sized>(
    store: &S,
    args: &AddressArgs,
    reason: SuppressionReason,
    detail: Option<String>,
    limits: &Limits,
) -> anyhow::Result<()> {
    check_address(args.channel, &args.address, limits)
        .map_err(|why| anyhow::anyhow!("--address: {why}"))?;
    let tenant_id = tenant_id(store, &args.tenant).await?;
    let address = normalize(args.channel, &args.address).into_owned();
    let s = Suppression {
        tenant_id,
        channel: args.channel,
        address: address.clone(),
        reason,
        detail,
        source: "cli".into(),
        created_at_ms: herald_core::now_ms(),
    };
    let added = store.suppress(s).await?;
    let what = if added {
        "suppressed"
    } else {
        "already suppressed; reason updated:"
    };
    println!("{what} {} {address} ({reason})", args.channel);
    Ok(())
}

pub async fn remove<S: Suppressions + Tenants + ?Sized>(
    store: &S,
    args: &AddressArgs,
) -> anyhow::Result<()> {
    let tenant_id = tenant_id(store, &args.tenant).await?;
    let address = normalize(args.channel, &args.address);
    let now = herald_core::now_ms();
    if store
        .lift_suppression(&tenant_id, args.channel, &address, now)
        .await?
    {
        println!("lifted: {} {address} may be sent to again", args.channel);
        Ok(())
    } else {
        anyhow::bail!(
            "{} {address} is not on {:?}'s suppression list",
            args.channel,
            args.tenant
        )
    }
}
