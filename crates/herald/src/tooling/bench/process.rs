//! The Herald process under test: `herald serve` started as a child (so its
//! CPU and memory are its own, apart from the load generator's and the
//! simulator's), killed with SIGKILL and restarted on the same data
//! directory for the crash scenario; and what Linux's /proc says it used.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Runs `cmd` (a `herald serve`) and returns once it listens, with its base
/// URL (from its "herald listening on" line). Killed when dropped; its
/// stderr is drained in the background so it never blocks on a full pipe.
pub async fn spawn_serve(mut cmd: Command) -> anyhow::Result<(Child, String)> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting herald serve")?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("herald listening on ") {
                return Ok(url.trim().to_owned());
            }
            said.push(line);
        }
        bail!("herald serve exited before listening: {}", said.join(" | "))
    })
    .await
    .context("herald serve did not listen within 30 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, base))
}

/// A sandbox `herald serve` the bench started, sending to the bench's
/// simulator.
pub struct Herald {
    pub base: String,
    pub key: String,
    pub data_dir: PathBuf,
    child: Child,
    launch: Launch,
    /// CPU used by processes that were killed (a crash run's first life).
    earlier_cpu: Duration,
    earlier_peak_rss: u64,
}

/// How to start it (again).
struct Launch {
    bin: PathBuf,
    data_dir: PathBuf,
    listen: String,
    sim_url: String,
    key: String,
    /// Configuration the scenario sets (`HERALD__…` variables).
    env: Vec<(String, String)>,
}

impl Launch {
    async fn spawn(&self) -> anyhow::Result<(Child, String)> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.listen, "--sim-url", &self.sim_url])
            .env("HERALD_DEV_API_KEY", &self.key)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        spawn_serve(cmd).await
    }
}

impl Herald {
    pub async fn start(
        bin: &Path,
        data_dir: &Path,
        sim_url: &str,
        key: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Herald> {
        // A fixed port, so a restarted process is where clients expect it.
        let listen = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
            l.local_addr()?.to_string()
        };
        let launch = Launch {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            listen,
            sim_url: sim_url.to_owned(),
            key: key.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let (child, base) = launch.spawn().await?;
        Ok(Herald {
            base,
            key: key.to_owned(),
            data_dir: data_dir.to_path_buf(),
            child,
            launch,
            earlier_cpu: Duration::ZERO,
            earlier_peak_rss: 0,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, then start again on the same data directory and port.
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<Duration> {
        if let Some(usage) = self.pid().and_then(usage) {
            self.earlier_cpu += usage.cpu;
            self.earlier_peak_rss = self.earlier_peak_rss.max(usage.peak_rss_bytes);
        }
        self.child.start_kill().context("SIGKILL")?;
        self.child.wait().await?;
        let down = Instant::now();
        (self.child, self.base) = self.launch.spawn().await?;
        Ok(down.elapsed())
    }

    /// CPU time of every life of the process so far, and its peak RSS.
    pub fn usage(&self) -> Option<Usage> {
        let now = self.pid().and_then(usage)?;
        Some(Usage {
            cpu: now.cpu + self.earlier_cpu,
            peak_rss_bytes: now.peak_rss_bytes.max(self.earlier_peak_rss),
            rss_bytes: now.rss_bytes,
        })
    }

    /// SIGTERM and wait for a clean shutdown.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
            if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .is_err()
            {
                self.child.start_kill()?;
            }
        }
        Ok(())
    }
}

/// What a process used, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// VmHWM: the most resident memory it has had.
    pub peak_rss_bytes: u64,
    /// VmRSS: resident memory now.
    pub rss_bytes: u64,
}

/// /proc/<pid>/stat's utime and stime are in USER_HZ, which Linux fixes at
/// 100 for user space whatever the kernel's own tick.
const USER_HZ: u64 = 100;

/// CPU and memory of process `pid` (None where /proc does not have it).
pub fn usage(pid: u32) -> Option<Usage> {
    usage_at(&format!("/proc/{pid}"))
}

/// This process's own usage (the load generator and, when local, the simulator).
pub fn own_usage() -> Option<Usage> {
    usage_at("/proc/self")
}

fn usage_at(dir: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    Some(Usage {
        cpu: Duration::from_millis(ticks * 1000 / USER_HZ),
        peak_rss_bytes: kib("VmHWM:"),
        rss_bytes: kib("VmRSS:"),
    })
}

/// Bytes of every file under `dir` (the database, its WAL and shared memory).
pub fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_usage() {
        let u = own_usage().expect("/proc/self on Linux");
        assert!(u.peak_rss_bytes >= u.rss_bytes && u.rss_bytes > 0, "{u:?}");
    }
}
