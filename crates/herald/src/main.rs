//! `herald`: the notification engine's one binary.

use herald_core::store::Scopes;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::app::{self, Running};
use herald::config::Config;

/// mimalloc instead of glibc's malloc: under load Herald allocates and frees
/// many small objects across threads (requests, rows, HTTP bodies), where
/// glibc's arenas spent a tenth of all CPU in the profile
/// (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a notification engine (email, SMS, push, webhooks)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the store lives and what config to read (shared by commands that touch the store).
#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// Config file (TOML). Without it, the sandbox defaults are used.
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the embedded database (overrides store.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl StoreArgs {
    fn load(&self) -> anyhow::Result<Config> {
        self.load_with(|_| {})
    }

    /// With more overrides from the command line, before validation.
    fn load_with(&self, overrides: impl FnOnce(&mut Config)) -> anyhow::Result<Config> {
        Config::load_with(self.config.as_deref(), |cfg| {
            if let Some(d) = &self.data_dir {
                cfg.store.data_dir = d.clone();
            }
            overrides(cfg);
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and the delivery engine. Without --config this is the
    /// sandbox: SQLite under --data-dir, the built-in vendor simulator for
    /// email, SMS, push and webhooks, and the API key from HERALD_DEV_API_KEY
    /// (generated and printed when unset).
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Sandbox only: send to the vendor simulator already running at
        /// this URL (`herald sim`) instead of starting one.
        #[arg(long, conflicts_with = "config")]
        sim_url: Option<String>,
        /// Run the sandbox on an address other than loopback (a demo on a
        /// shared host). Without it a sandbox refuses one: its vendors are
        /// simulated and its key may have been printed.
        #[arg(long, conflicts_with = "config")]
        sandbox: bool,
        /// This node's roles, comma-separated (overrides node.roles).
        #[arg(long, value_enum, value_delimiter = ',')]
        roles: Vec<herald::config::Role>,
        /// The channels this node's workers deliver, comma-separated
        /// (overrides node.channels).
        #[arg(long, value_delimiter = ',', value_parser = parse_channel)]
        channels: Vec<herald_core::model::Channel>,
    },
    /// Run a showcase workload through a sandbox started in-process (real
    /// HTTP, real SQLite, simulated vendors) and print a report. Exits
    /// non-zero if any notification was lost or delivered twice.
    Demo(herald::tooling::demo::DemoArgs),
    /// Load Herald and measure it: accepted and delivered per second,
    /// accept-to-vendor latency per lane, lost and duplicated, CPU, peak RSS
    /// and bytes stored. Starts its own sandbox Herald (a child process) and
    /// simulator unless given --target. Prints a table and writes JSON; exits
    /// non-zero if anything was lost, duplicated or refused.
    Bench(herald::tooling::bench::BenchArgs),
    /// Run the vendor simulator alone (SendGrid, Twilio, SNS, FCM and webhook
    /// endpoints, with a ledger at /_sim/ledger and faults at /_sim/faults).
    Sim {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Seed for fault decisions, to make a run repeatable.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run librdkafka's mock Kafka cluster in this process, with Herald's
    /// lane topics made, and print its bootstrap servers: a Kafka to try the
    /// fleet's bus against (`[kafka] brokers`) on a machine without one. It
    /// speaks the real protocol but keeps everything in memory: for trying
    /// and benchmarking, never for production.
    KafkaMock {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=16))]
        brokers: i32,
        /// Partitions per lane topic.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=1024))]
        partitions: i32,
        #[arg(long, default_value = "herald")]
        topic_prefix: String,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (what `GET /openapi.json`
    /// serves; docs/openapi.json is this).
    Openapi,
    /// Ask a running node whether it is ready (`/readyz`) or alive
    /// (`--live`: `/healthz`); exit 0 if so, 1 if not. For a container's
    /// health check, where there is no curl.
    Health {
        /// The node's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Only whether the process answers (`/healthz`), not its
        /// dependencies.
        #[arg(long)]
        live: bool,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Dead letters: deliveries that used up their attempts.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Suppression lists: addresses a tenant's notifications are not sent
    /// to (bounces, complaints, opt-outs, dead tokens, gone endpoints).
    Suppressions {
        #[command(subcommand)]
        command: SuppressionsCommand,
    },
    /// Recipients: the people a tenant notifies by its own id for each.
    Recipients {
        #[command(subcommand)]
        command: RecipientsCommand,
    },
}

#[derive(Subcommand)]
enum RecipientsCommand {
    /// Import recipients from a JSON-lines or CSV file (streamed; each row
    /// checked as the API checks it; a row with the id of a stored
    /// recipient replaces it).
    Import {
        #[command(flatten)]
        args: herald::recipients::ImportArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum SuppressionsCommand {
    /// List suppressed addresses, newest first.
    List {
        #[command(flatten)]
        filter: herald::suppressions::ListArgs,
        /// Most to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Put an address on a tenant's list: its deliveries end `suppressed`
    /// without a vendor call (on running workers within about
    /// suppression.refresh_interval_ms).
    Add {
        #[command(flatten)]
        address: herald::suppressions::AddressArgs,
        /// Why (bounce, complaint, unsubscribed, unregistered, gone, manual).
        #[arg(long, default_value = "manual", value_parser = herald::suppressions::parse_reason)]
        reason: herald_core::suppression::SuppressionReason,
        /// A note kept with it.
        #[arg(long)]
        detail: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Lift a suppression: the address may be sent to again.
    Remove {
        #[command(flatten)]
        address: herald::suppressions::AddressArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest death first.
    List {
        #[command(flatten)]
        filter: herald::dlq::FilterArgs,
        /// Most to list.
        #[arg(long, default_value_t = herald::dlq::DEFAULT_PAGE)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Put dead letters back in the queue (attempts reset, same delivery id
    /// and so the same vendor idempotency key): one by id, or with --all
    /// every one matching the filters, oldest first, up to --limit.
    Replay {
        /// The dead letter's id (its delivery id).
        id: Option<uuid::Uuid>,
        /// Replay every dead letter matching the filters.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filter: herald::dlq::FilterArgs,
        #[arg(long, default_value_t = herald::dlq::MAX_PAGE)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key for a tenant (created if new) and print it. The key
    /// is shown once; only its hash is stored.
    Create {
        /// The tenant the key belongs to, by name (1 to 128 characters);
        /// created if it does not exist yet.
        #[arg(long)]
        tenant: String,
        /// Create the store if it does not exist yet (the first key of a new
        /// deployment, before any node has started). Without it, a store
        /// that does not exist is refused: a mistyped --data-dir must not
        /// make a new, empty one the server never reads.
        #[arg(long)]
        init: bool,
        /// What the key may do: `send` (create and cancel notifications,
        /// keep recipients), `read` (look), `admin` (replay dead letters,
        /// change lists and callbacks, hold circuits, sign in to the
        /// console); comma-separated or repeated. Without it the key has
        /// all three, as every key made before scopes.
        #[arg(long = "scope", value_name = "SCOPES", value_parser = parse_scopes)]
        scopes: Vec<Scopes>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn parse_scopes(list: &str) -> Result<Scopes, String> {
    Scopes::parse(list)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // `serve` reads its config before its runtime starts: the runtime
        // runs `engine.threads` threads (`Config::threads`). It sets up its
        // logs and traces from that config (`[telemetry]`).
        Command::Serve {
            store,
            listen,
            sim_url,
            sandbox,
            roles,
            channels,
        } => {
            let node = Node { roles, channels };
            let sandbox = SandboxArgs {
                on: store.config.is_none(),
                sim_url,
                explicit: sandbox,
            };
            prepare_serve(&store, listen, node).and_then(|cfg| {
                let threads = cfg.threads(herald::config::cores()).engine;
                on_runtime(Some(threads), serve(cfg, sandbox))
                    .map(|()| std::process::ExitCode::SUCCESS)
            })
        }
        command => {
            herald::telemetry::init_logging();
            on_runtime(None, run(command))
        }
    };
    // Errors end the process with their chain on one line, not a backtrace:
    // "invalid configuration: ...", "binding 127.0.0.1:8080: Address in use".
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs `work` to its end on a new runtime of `threads` workers (`None`:
/// one per core).
fn on_runtime<T>(
    threads: Option<usize>,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(work);
    // A Kafka client closing against a cluster it cannot reach may hold its
    // thread; the process does not wait on it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Every command but `serve` (`main` runs that on a runtime of its own
/// size).
async fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Demo(args) => Ok(if herald::tooling::demo::run(args).await? {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }),
        Command::Bench(args) => Ok(if herald::tooling::bench::run(args).await? {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }),
        Command::Sim { listen, seed } => {
            let sim = herald_sim::Sim::new(seed);
            let (addr, task) = sim
                .start(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            eprintln!("vendor simulator listening on http://{addr}");
            tokio::select! {
                _ = task => {},
                _ = app::shutdown_signal() => {},
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::KafkaMock {
            brokers,
            partitions,
            topic_prefix,
        } => {
            let cluster = herald_bus::kafka::mock_cluster(brokers, partitions, &topic_prefix)?;
            eprintln!(
                "mock Kafka cluster: {brokers} brokers, topics {topic_prefix}.notifications.{{critical,high,normal,low}} with {partitions} partitions; bootstrap servers:"
            );
            println!("{}", cluster.bootstrap_servers());
            app::shutdown_signal().await;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    tenant,
                    init,
                    scopes,
                    store,
                },
        } => {
            let name = tenant.trim();
            if name.is_empty() || name.len() > 128 {
                anyhow::bail!("--tenant must be 1 to 128 characters");
            }
            let cfg = store.load()?;
            let s = if init {
                app::open_store(&cfg).await?
            } else {
                app::open_existing_store(&cfg).await?
            };
            let key = herald::api::generate_key();
            let scopes = scopes
                .into_iter()
                .reduce(Scopes::union)
                .unwrap_or(Scopes::ALL);
            let id = app::add_key(s.as_ref(), name, &key, "cli", scopes).await?;
            eprintln!(
                "created a key for tenant {name} ({id}) with scopes {scopes}; it is shown once:"
            );
            println!("{key}");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Dlq { command } => dlq(command).await,
        Command::Suppressions { command } => suppressions(command).await,
        Command::Recipients { command } => recipients(command).await,
        Command::Openapi => {
            print!("{}", herald::api::openapi::document());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Health { url, live } => {
            let path = if live { "/healthz" } else { "/readyz" };
            let url = format!("{}{path}", url.trim_end_matches('/'));
            let answer = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()?
                .get(&url)
                .send()
                .await;
            Ok(match answer {
                Ok(r) if r.status().is_success() => std::process::ExitCode::SUCCESS,
                Ok(r) => {
                    eprintln!(
                        "{url}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                    std::process::ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("{url}: {e}");
                    std::process::ExitCode::FAILURE
                }
            })
        }
        Command::Serve { .. } => unreachable!("main runs serve on a runtime sized by its config"),
    }
}

async fn dlq(command: DlqCommand) -> anyhow::Result<std::process::ExitCode> {
    use herald::dlq;
    match command {
        DlqCommand::List {
            filter,
            limit,
            json,
            store,
        } => {
            let s = app::open_existing_store(&store.load()?).await?;
            let filter = filter.resolve(s.as_ref()).await?;
            let page = s.dead_letters(&filter, None, limit).await?;
            dlq::print(&page, json);
            Ok(std::process::ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            id,
            all,
            filter,
            limit,
            store,
        } => {
            let s = app::open_existing_store(&store.load()?).await?;
            match (id, all) {
                (Some(id), _) => {
                    let tenant = filter.resolve(s.as_ref()).await?.tenant_id;
                    dlq::replay_one(s.as_ref(), tenant.as_deref(), id).await
                }
                (None, true) => {
                    let filter = filter.resolve(s.as_ref()).await?;
                    let n = s.replay_dead_letters(&filter, limit).await?;
                    println!("replayed {n} dead letters");
                    Ok(std::process::ExitCode::SUCCESS)
                }
                (None, false) => anyhow::bail!("give a dead letter's id, or --all with filters"),
            }
        }
    }
}

async fn suppressions(command: SuppressionsCommand) -> anyhow::Result<std::process::ExitCode> {
    use herald::suppressions as cli;
    match command {
        SuppressionsCommand::List {
            filter,
            limit,
            json,
            store,
        } => {
            let s = app::open_existing_store(&store.load()?).await?;
            cli::list(s.as_ref(), &filter, limit, json).await?;
        }
        SuppressionsCommand::Add {
            address,
            reason,
            detail,
            store,
        } => {
            let cfg = store.load()?;
            let s = app::open_existing_store(&cfg).await?;
            cli::add(s.as_ref(), &address, reason, detail, &cfg.limits()).await?;
        }
        SuppressionsCommand::Remove { address, store } => {
            let s = app::open_existing_store(&store.load()?).await?;
            cli::remove(s.as_ref(), &address).await?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn recipients(command: RecipientsCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        RecipientsCommand::Import { args, store } => {
            let cfg = store.load()?;
            let s = app::open_existing_store(&cfg).await?;
            let started = std::time::Instant::now();
            let done = herald::recipients::import(s.as_ref(), &args, &cfg.limits()).await?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "imported {} recipients in {secs:.1} s ({:.0}/s); {} lines refused",
                done.written,
                done.written as f64 / secs.max(0.001),
                done.refused
            );
            Ok(if done.refused == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(2)
            })
        }
    }
}

/// `--roles` and `--channels`, when given.
struct Node {
    roles: Vec<herald::config::Role>,
    channels: Vec<herald_core::model::Channel>,
}

fn parse_channel(s: &str) -> Result<herald_core::model::Channel, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a channel (email, sms, push, webhook)"))
}

/// Whether a node runs as a sandbox, and how.
struct SandboxArgs {
    /// No config file: a node with one never falls back to the simulator.
    on: bool,
    /// A simulator already running, instead of starting one.
    sim_url: Option<String>,
    /// `--sandbox`: asked for by name, so it may listen beyond loopback.
    explicit: bool,
}

/// Says, where nobody can miss it, that this node sends nothing real.
fn sandbox_banner(sim_url: &str, data_dir: &std::path::Path) -> String {
    let line = "=".repeat(76);
    format!(
        "{line}\n  SANDBOX: every vendor is Herald's simulator at {sim_url}\n  \
         Nothing reaches a real person. Data in {}.\n  \
         For production, start with --config (docs/configuration.md).\n{line}",
        data_dir.display()
    )
}

/// `serve`'s config: the file (or the sandbox's defaults) with the
/// command line's overrides.
fn prepare_serve(
    args: &StoreArgs,
    listen: Option<SocketAddr>,
    node: Node,
) -> anyhow::Result<Config> {
    let mut cfg = args.load_with(|cfg| {
        if !node.roles.is_empty() {
            cfg.node.roles = node.roles;
        }
        if !node.channels.is_empty() {
            cfg.node.channels = node.channels;
        }
    })?;
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    Ok(cfg)
}

async fn serve(mut cfg: Config, sandboxing: SandboxArgs) -> anyhow::Result<()> {
    let telemetry = herald::telemetry::init(&cfg.telemetry)?;
    if herald::telemetry::tracing_on() {
        tracing::info!(
            sample_ratio = cfg.telemetry.sample_ratio,
            "traces go out over OTLP"
        );
    }
    // A node with a config never falls back to the simulator; one without
    // is a sandbox, on loopback unless asked for by name.
    let sandbox = sandboxing.on;
    if sandbox && !sandboxing.explicit && !cfg.server.listen.ip().is_loopback() {
        anyhow::bail!(
            "a sandbox listens on loopback only (its vendors are simulated and its API key may have been printed): \
             pass --sandbox to listen on {} anyway, or --config for a real node",
            cfg.server.listen
        );
    }
    let mut dev_key = None;
    let _sim = if sandbox {
        let (sim_url, task) = match sandboxing.sim_url {
            Some(url) => (url.trim_end_matches('/').to_owned(), None),
            None => {
                let sim = herald_sim::Sim::new(None);
                let (addr, task) = sim.start("127.0.0.1:0".parse()?).await?;
                (format!("http://{addr}"), Some(task))
            }
        };
        cfg = cfg.into_sandbox(&sim_url);
        let key = match std::env::var("HERALD_DEV_API_KEY") {
            Ok(k) if !k.trim().is_empty() => k.trim().to_owned(),
            _ => {
                let k = herald::api::generate_key();
                eprintln!("HERALD_DEV_API_KEY is not set; this run's sandbox API key is:\n  {k}");
                k
            }
        };
        dev_key = Some(key);
        eprintln!("{}", sandbox_banner(&sim_url, &cfg.store.data_dir));
        eprintln!("the simulator's ledger of what it was sent: {sim_url}/_sim/ledger");
        task
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    let running = Running::start(cfg, listener, dev_key.as_deref()).await?;
    eprintln!("herald listening on http://{}", running.addr);
    app::shutdown_signal().await;
    eprintln!("shutting down: finishing in-flight work");
    running.shutdown().await;
    // The spans still buffered go out (bounded by the exporter's timeout).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(())
}
