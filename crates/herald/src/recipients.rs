//! `herald recipients import`: a tenant's people from a file, for teams
//! bringing their users over. JSON lines (one profile per line, with its
//! `id`) or CSV (a header naming the columns), streamed: the file is never
//! held whole, rows are checked as the API checks them and written a
//! thousand at a time. A row Herald cannot use is reported (its line and
//! why) and skipped; the rest go in.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use herald_core::model::{PushPlatform, PushToken};
use herald_core::recipient::{check_id, validate_profile, Profile};
use herald_core::store::{Recipients, Tenants};
use herald_core::validate::Limits;

/// Rows per store write.
const BATCH: usize = 1_000;
/// Refused rows reported one by one; past it, only counted.
const REPORTED: usize = 20;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line: `{"id": …, "email": …, …}`.
    Jsonl,
    /// A header line, then a row per recipient: `id`, `email`, `phone`,
    /// `webhook_url`, `chat`, `locale`, `timezone`, `push_token`,
    /// `push_platform`, `push_app`, and `data.KEY` for template data.
    Csv,
}

/// `herald recipients import` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct ImportArgs {
    /// The tenant, by name.
    #[arg(long)]
    pub tenant: String,
    /// The file (`-` for standard input).
    pub file: PathBuf,
    /// By default from the file's extension (.csv; anything else: JSON lines).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub written: usize,
    pub refused: usize,
}

/// Counts the bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn open(path: &Path, bar: &indicatif::ProgressBar) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let input: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        if let Ok(m) = f.metadata() {
            bar.set_length(m.len());
        }
        Box::new(f)
    };
    Ok(Box::new(std::io::BufReader::with_capacity(
        256 * 1024,
        Counting {
            inner: input,
            bar: bar.clone(),
        },
    )))
}

/// One row: its line, and the recipient or why it cannot be one.
type Row = (usize, Result<(String, Profile), String>);

/// Imports `args.file` into the tenant's recipients.
pub async fn import<S: Recipients + Tenants + ?Sized>(
    store: &S,
    args: &ImportArgs,
    limits: &Limits,
) -> anyhow::Result<Imported> {
    let tenant = store
        .tenant_id(&args.tenant)
        .await?
        .ok_or_else(|| anyhow::anyhow!("--tenant: no tenant is named {:?}", args.tenant))?;
    let format = args.format.unwrap_or_else(|| {
        if args.file.extension().is_some_and(|e| e == "csv") {
            Format::Csv
        } else {
            Format::Jsonl
        }
    });
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "importing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    let reader = open(&args.file, &bar)?;
    // Reading and parsing on a blocking thread; writing here, a batch at
    // a time, while the next is parsed.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Row>>(2);
    let limits_for_parse = limits.clone();
    let parser = tokio::task::spawn_blocking(move || {
        parse(reader, format, &limits_for_parse, |batch| {
            tx.blocking_send(batch).is_ok()
        })
    });
    let mut done = Imported::default();
    while let Some(rows) = rx.recv().await {
        let mut batch = Vec::with_capacity(rows.len());
        for (line, row) in rows {
            match row {
                Ok(r) => batch.push(r),
                Err(why) => {
                    done.refused += 1;
                    if done.refused <= REPORTED {
                        bar.suspend(|| eprintln!("line {line}: {why}"));
                    }
                }
            }
        }
        if !batch.is_empty() {
            done.written += store
                .put_recipients(&tenant, batch, herald_core::now_ms())
                .await?;
        }
        bar.set_message(format!("{} recipients", done.written));
    }
    parser.await??;
    bar.finish_and_clear();
    if done.refused > REPORTED {
        eprintln!("… and {} more lines refused", done.refused - REPORTED);
    }
    Ok(done)
}

/// Reads rows and hands them on `BATCH` at a time; stops early when
/// `send` says the receiver is gone.
fn parse(
    reader: Box<dyn BufRead + Send>,
    format: Format,
    limits: &Limits,
    mut send: impl FnMut(Vec<Row>) -> bool,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flush = |batch: &mut Vec<Row>, force: bool| {
        if batch.len() >= BATCH || (force && !batch.is_empty()) {
            send(std::mem::replace(batch, Vec::with_capacity(BATCH)))
        } else {
            true
        }
    };
    match format {
        Format::Jsonl => {
            for (i, line) in reader.lines().enumerate() {
                let line = line.context("reading the file")?;
                if line.trim().is_empty() {
                    continue;
                }
                batch.push((i + 1, from_json(&line).and_then(|r| checked(r, limits))));
                if !flush(&mut batch, false) {
                    return Ok(());
                }
            }
        }
        Format::Csv => {
            let mut csv = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(reader);
            let header = csv.headers().context("reading the CSV header")?.clone();
            if !header.iter().any(|h| h == "id") {
                anyhow::bail!("the CSV header has no id column");
            }
            for (i, record) in csv.records().enumerate() {
                // Line numbers count the header.
                let row = record
                    .map_err(|e| e.to_string())
                    .and_then(|r| from_csv(&header, &r))
                    .and_then(|r| checked(r, limits));
                batch.push((i + 2, row));
                if !flush(&mut batch, false) {
                    return Ok(());
                }
            }
        }
    }
    flush(&mut batch, true);
    Ok(())
}

fn checked((id, profile): (String, Profile), limits: &Limits) -> Result<(String, Profile), String> {
    check_id(&id).map_err(|why| format!("id: {why}"))?;
    let errs = validate_profile(&profile, limits);
    if let Some(e) = errs.list.first() {
        return Err(format!("{}: {}", e.field, e.reason));
    }
    Ok((id, profile))
}

fn from_json(line: &str) -> Result<(String, Profile), String> {
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let id = match v.remove("id") {
        Some(serde_json::Value::String(id)) => id,
        Some(_) => return Err("id: must be a string".into()),
        None => return Err("id: required".into()),
    };
    let profile = serde_path_to_error::deserialize(serde_json::Value::Object(v))
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    Ok((id, profile))
}

fn from_csv(
    header: &csv::StringRecord,
    row: &csv::StringRecord,
) -> Result<(String, Profile), String> {
    let mut p = Profile::default();
    let mut id = None;
    let (mut token, mut platform, mut app) = (None, None, None);
    for (name, value) in header.iter().zip(row.iter()) {
        if value.is_empty() {
            continue;
        }
        let v = Some(value.to_owned());
        match name {
            "id" => id = v,
            "email" => p.email = v,
            "phone" => p.phone = v,
            "webhook_url" => p.webhook_url = v,
            "chat" => p.chat = v,
            "locale" => p.locale = v,
            "timezone" => p.timezone = v,
            "push_token" => token = v,
            "push_platform" => platform = v,
            "push_app" => app = v,
            other => match other.strip_prefix("data.") {
                Some(key) if !key.is_empty() => {
                    p.data.insert(key.to_owned(), value.into());
                }
                _ => return Err(format!("{other}: not a column Herald knows")),
            },
        }
    }
    if let Some(token) = token {
        let platform: PushPlatform = match platform.as_deref() {
            Some(name) => serde_json::from_value(name.into())
                .map_err(|_| format!("push_platform: {name:?} is not android, ios or web"))?,
            None => return Err("push_platform: required with push_token".into()),
        };
        p.push_tokens.push(PushToken {
            platform,
            token,
            app,
        });
    }
    let id = id.ok_or("id: required")?;
    Ok((id, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(format: Format, text: &str) -> Vec<Row> {
        let mut out = Vec::new();
        let reader: Box<dyn BufRead + Send> =
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        parse(reader, format, &Limits::default(), |b| {
            out.extend(b);
            true
        })
        .expect("parsed");
        out
    }

    #[test]
    fn json_lines_are_read_checked_and_numbered() {
        let got = rows(
            Format::Jsonl,
            "{\"id\": \"u1\", \"email\": \"a@example.com\", \"data\": {\"name\": \"Zoë\"}}\n\
             \n\
             {\"id\": \"u2\", \"phone\": \"12\"}\n\
             {\"email\": \"b@example.com\"}\n\
             not json\n\
             {\"id\": \"u5\", \"emial\": \"typo@example.com\"}\n",
        );
        assert_eq!(got.len(), 5, "the blank line is skipped");
        let (line, first) = &got[0];
        assert_eq!(*line, 1);
        let (id, p) = first.as_ref().expect("valid");
        assert_eq!((id.as_str(), p.data["name"].as_str()), ("u1", Some("Zoë")));
        assert_eq!(got[1].0, 3);
        assert!(
            got[1].1.as_ref().is_err_and(|e| e.starts_with("phone")),
            "{:?}",
            got[1]
        );
        assert!(got[2].1.as_ref().is_err_and(|e| e.starts_with("id")));
        assert!(got[3]
            .1
            .as_ref()
            .is_err_and(|e| e.contains("not a JSON object")));
        assert!(
            got[4].1.as_ref().is_err_and(|e| e.contains("emial")),
            "{:?}",
            got[4]
        );
    }

    #[test]
    fn csv_columns_fill_the_profile() {
        let got = rows(
            Format::Csv,
            "id,email,phone,push_token,push_platform,push_app,timezone,data.name\n\
             u1,a@example.com,+14155550100,tok-1,ios,com.example,Asia/Kolkata,\"Zoë, the first\"\n\
             u2,,,tok-2,,,,\n\
             u3,b@example.com,,,,,Mars/Base,\n",
        );
        let (id, p) = got[0].1.as_ref().expect("valid");
        assert_eq!(id, "u1");
        assert_eq!(p.push_tokens[0].platform, PushPlatform::Ios);
        assert_eq!(p.push_tokens[0].app.as_deref(), Some("com.example"));
        assert_eq!(p.data["name"], "Zoë, the first");
        assert_eq!(got[0].0, 2, "line numbers count the header");
        assert!(got[1]
            .1
            .as_ref()
            .is_err_and(|e| e.starts_with("push_platform")));
        assert!(got[2].1.as_ref().is_err_and(|e| e.starts_with("timezone")));
        let unknown = rows(Format::Csv, "id,nickname\nu1,Ada\n");
        assert!(unknown[0].1.as_ref().is_err_and(|e| e.contains("nickname")));
    }
}
