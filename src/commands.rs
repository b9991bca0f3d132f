//! The commands, wiring the stages together. [`run`] is the only place that knows every
//! stage: store → feeder → pool → sink → store → summary.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::check::fetch::Fetcher;
use crate::check::gate::Gate;
use crate::check::pool;
use crate::cli::{FailOn, ImportArgs, InitArgs, StatusArgs};
use crate::config::{RunConfig, store_columns};
use crate::model::{Item, StatusValue};
use crate::report::{Format, OutputFiles, Progress, Summary};
use crate::shutdown::EXIT_INTERRUPTED;
use crate::sink;
use crate::store::{self, Ident, NewItem, OpenMode, Store, StoreOptions, StoreSpec};

/// Exit code of a run stopped by `--deadline`.
pub const EXIT_DEADLINE: u8 = 3;
/// Items claimed from the store per page.
pub const CLAIM_BATCH: usize = 1000;
/// How long in-flight checks may finish after a stop before they are abandoned.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// Items imported per transaction.
const IMPORT_BATCH: usize = 10_000;

/// Exit code of a run whose store failed during the run (SPEC §4).
pub const EXIT_STORE_FAILED: u8 = 4;

/// The exit code for a finished run (SPEC §4). When several apply: 4 (the store failed),
/// then 130 (interrupted), then 3 (deadline), then 1 (items not OK, or an output file
/// failed: that is never hidden by `--fail-on never`, since the file the user asked for is
/// missing or incomplete).
pub fn exit_code(summary: &Summary, fail_on: FailOn) -> u8 {
    if summary.store_error.is_some() {
        EXIT_STORE_FAILED
    } else if summary.interrupted {
        EXIT_INTERRUPTED
    } else if summary.deadline_reached {
        EXIT_DEADLINE
    } else if summary.output_errors > 0 || (!summary.all_ok() && fail_on != FailOn::Never) {
        1
    } else {
        0
    }
}

/// `recheck run`: checks the task's failed items and writes the verdicts back. `stop`
/// (signals) makes it take no new item and finish what is in flight. Errors are setup
/// errors before anything was written (exit 2); item failures are data in the
/// [`Summary`], and so is a store that fails during the run (`store_error`, exit 4: no new
/// checks after it, every answer still counted and reported).
pub async fn run(cfg: RunConfig, stop: CancellationToken) -> Result<Summary> {
    let started = Instant::now();
    crate::limits::ensure_open_files(cfg.concurrency)?;
    // Every output path is checked first, creating nothing; the report is created only
    // once the store was opened and validated, so a refused run touches no output file.
    let outputs = OutputFiles::check(&cfg.outputs, cfg.store.path())?;
    let store = Arc::new(store::open(&cfg.store, cfg.store_opts.clone(), OpenMode::Run).await?);
    let outputs = outputs.open(&cfg.task)?;
    let retry_for = sink::retry_budget(cfg.store_opts.lease);
    let client = reqwest::Client::builder()
        .user_agent(concat!("recheck/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(cfg.connect_timeout)
        .pool_max_idle_per_host(cfg.concurrency)
        .tcp_nodelay(true)
        // Redirects are followed by `fetch`, which drops secret headers across origins.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot build the HTTP client")?;
    let gate = Gate::new(cfg.concurrency, cfg.per_host, cfg.rate);
    let fetcher = Arc::new(Fetcher::new(client, cfg.fetch.clone(), gate));
    tracing::info!(task = %cfg.task, store = %cfg.store, concurrency = cfg.concurrency, dry_run = cfg.dry_run, "checking failed items");

    // One token halts the run: a signal (`stop`), the deadline, or a store error.
    let halt = stop.child_token();
    let deadline_hit = Arc::new(AtomicBool::new(false));
    if let Some(after) = cfg.deadline {
        let (halt, hit) = (halt.clone(), Arc::clone(&deadline_hit));
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => {
                    tracing::warn!("--deadline reached: no new checks; writing the answers already received");
                    hit.store(true, Ordering::SeqCst);
                    halt.cancel();
                }
                _ = halt.cancelled() => {}
            }
        });
    }
    let (item_tx, item_rx) = mpsc::channel::<Item>(CLAIM_BATCH);
    let (verdict_tx, verdict_rx) = mpsc::channel(sink::BATCH_ROWS.max(cfg.concurrency * 2));

    let feeder = tokio::spawn(feed(
        Arc::clone(&store),
        item_tx,
        cfg.limit,
        halt.clone(),
        retry_for,
    ));
    let summary = Summary::new(&cfg.task, &cfg.store.to_string(), cfg.dry_run);
    let total = sink::retry_transient("counting items", retry_for, || store.pending()).await?;
    let total = cfg.limit.map_or(total, |l| l.min(total));
    let progress = Arc::new(Progress::start(cfg.progress, total));
    let sink_opts = sink::SinkOptions {
        dry_run: cfg.dry_run,
        retry_for,
        // JSON and JSON Lines stores write their file by checkpoints, not on each save.
        checkpointed: match &cfg.store {
            StoreSpec::Json(p) | StoreSpec::Jsonl(p) => Some(p.clone()),
            _ => None,
        },
    };
    let sink = tokio::spawn(sink::run(
        Arc::clone(&store),
        verdict_rx,
        summary,
        outputs,
        Arc::clone(&progress),
        sink_opts,
        halt.clone(),
    ));
    // Claims of a shared store are renewed while the pool works, three times per lease.
    let renewing = CancellationToken::new();
    let renewer = {
        let (store, renewing) = (Arc::clone(&store), renewing.clone());
        let every = cfg.store_opts.lease / 3;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = renewing.cancelled() => return,
                }
                if let Err(e) = store.renew().await {
                    tracing::warn!("cannot renew leases: {e:#}");
                }
            }
        })
    };
    let urls = Arc::new(cfg.urls);
    let check = {
        let halt = halt.clone();
        move |item: Item| {
            let (fetcher, urls, halt) = (Arc::clone(&fetcher), Arc::clone(&urls), halt.clone());
            async move {
                let url = urls.url_for(&item);
                fetcher.check(item, url, &halt).await
            }
        }
    };
    let stats = pool::run(
        Arc::new(check),
        item_rx,
        verdict_tx,
        max_in_progress(cfg.concurrency),
        halt.clone(),
        STOP_GRACE,
    )
    .await;
    let fed = feeder
        .await
        .unwrap_or_else(|e| Err(anyhow!("item feeder task failed: {e}")));
    let mut sunk = sink.await.context("store writer task failed")?;
    renewing.cancel();
    let _ = renewer.await;
    if let Err(e) = fed {
        if sunk.summary().checked == 0 && sunk.summary().store_error.is_none() {
            // Refused before a single answer: nothing was written (exit 2).
            let _ = store.finish().await;
            halt.cancel();
            progress.finish();
            return Err(e);
        }
        // Answers were received (and maybe written): a store failure during the run.
        sunk.store_failed(&e);
    }
    let (mut summary, outputs) = sunk.finish(store.as_ref()).await;
    halt.cancel(); // ends the deadline timer
    progress.finish();
    summary.duration = started.elapsed();
    summary.interrupted = stop.is_cancelled();
    summary.deadline_reached = deadline_hit.load(Ordering::SeqCst) && !summary.interrupted;
    summary.abandoned = stats.abandoned;
    // An output that fails costs no answer: the store is written by now. It is one error
    // line (logged by `finish`) and exit 1 at least.
    summary.output_errors = outputs.finish(&summary) as u64;
    if let Some(line) = summary.store_failure_line() {
        tracing::error!("{line}");
    }
    tracing::info!(
        checked = summary.checked,
        ok = summary.ok,
        duration_ms = summary.duration.as_millis() as u64,
        "done"
    );
    Ok(summary)
}

/// Items in progress at once: every request slot busy, plus as many again waiting out a
/// backoff or about to take a slot. A retry never holds a request slot while it sleeps; this
/// bound keeps memory O(concurrency). (Measured: a larger bound, 2 × concurrency + 1,024,
/// shaved ~6 % off the flaky benchmark but cost ~8 MiB and broke the memory target.)
pub fn max_in_progress(concurrency: usize) -> usize {
    concurrency.saturating_mul(2)
}

/// Claims pages of items and hands them to the pool until none are left, `limit` is
/// reached or the run halts. A transient store failure is retried for `retry_for` (as the
/// sink's saves: a lock held by another process is waited out); any other store error
/// halts the run.
async fn feed<S: Store>(
    store: Arc<S>,
    tx: mpsc::Sender<Item>,
    limit: Option<u64>,
    halt: CancellationToken,
    retry_for: std::time::Duration,
) -> Result<()> {
    let mut sent = 0u64;
    loop {
        let want = match limit {
            Some(l) if sent >= l => return Ok(()),
            Some(l) => CLAIM_BATCH.min((l - sent) as usize),
            None => CLAIM_BATCH,
        };
        let page = tokio::select! {
            page = sink::retry_transient("claiming items", retry_for, || store.claim(want)) => page,
            _ = halt.cancelled() => return Ok(()),
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                halt.cancel();
                return Err(e);
            }
        };
        if page.is_empty() {
            return Ok(());
        }
        for item in page {
            tokio::select! {
                r = tx.send(item) => if r.is_err() { return Ok(()) },
                _ = halt.cancelled() => return Ok(()),
            }
            sent += 1;
        }
    }
}

fn plain_opts(
    task: &str,
    args: &crate::cli::StoreArgs,
    failed: &str,
) -> Result<(StoreSpec, StoreOptions)> {
    if task.trim().is_empty() {
        bail!("--task is empty");
    }
    let (spec, columns) = store_columns(args)?;
    Ok((
        spec,
        StoreOptions::basic(task, columns, StatusValue::new(failed)),
    ))
}

/// `recheck status`: counts of the task's items per status.
pub async fn status(args: &StatusArgs, out: &mut dyn Write) -> Result<()> {
    let (spec, mut opts) = plain_opts(&args.task, &args.store, "failed")?;
    opts.read_only = true;
    let store = store::open(&spec, opts, OpenMode::Status).await?;
    let counts = store.status_counts().await?;
    let total: u64 = counts.counts.iter().map(|(_, n)| n).sum();
    match args.format {
        Format::Json => {
            let by_status: serde_json::Map<String, serde_json::Value> = counts
                .counts
                .iter()
                .map(|(s, n)| (s.clone(), (*n).into()))
                .collect();
            let j = serde_json::json!({
                "task": args.task,
                "store": spec.to_string(),
                "total": total,
                "statuses": by_status,
                "oldest_checked_at": counts.oldest_checked_at,
                "newest_checked_at": counts.newest_checked_at,
            });
            writeln!(out, "{j}")?;
        }
        Format::Text => {
            writeln!(out, "task {} on {spec}", args.task)?;
            let width = counts
                .counts
                .iter()
                .map(|(s, _)| s.len())
                .max()
                .unwrap_or(0)
                .max(5);
            for (s, n) in &counts.counts {
                writeln!(out, "  {s:<width$}  {n:>10}")?;
            }
            writeln!(out, "  {:<width$}  {total:>10}", "total")?;
            if let (Some(a), Some(b)) = (&counts.oldest_checked_at, &counts.newest_checked_at) {
                writeln!(out, "  checked between {a} and {b}")?;
            }
        }
    }
    Ok(())
}

/// `recheck import`: adds (or resets to failed) the items listed in the input.
pub async fn import(args: &ImportArgs, out: &mut dyn Write) -> Result<()> {
    let (spec, opts) = plain_opts(&args.task, &args.store, &args.failed_status)?;
    let input: Box<dyn BufRead + Send> = match args.file.as_deref() {
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("{}: cannot open", p.display()))?,
        )),
    };
    let source = args
        .file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "stdin".into());
    // Parse everything first: a bad line must not leave half an import behind.
    let mut items = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("{source}: cannot read line {}", n + 1))?;
        if let Some(item) =
            parse_import_line(&line).map_err(|e| anyhow!("{source}:{}: {e}", n + 1))?
        {
            items.push(item);
        }
    }
    let store = store::open(&spec, opts, OpenMode::Create).await?;
    let mut written = 0;
    let mut rest = items;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(IMPORT_BATCH));
        written += store.import(rest, false).await?.added;
        rest = tail;
    }
    store.finish().await?;
    writeln!(
        out,
        "imported {written} items into task {} on {spec}",
        args.task
    )?;
    Ok(())
}

/// One input line: a bare id, or `{"id": .., "url": ..}`. Blank lines are skipped.
fn parse_import_line(line: &str) -> Result<Option<NewItem>> {
    let t = line.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if !t.starts_with('{') {
        return Ok(Some(NewItem {
            id: t.to_string(),
            url: None,
        }));
    }
    let v: serde_json::Value = serde_json::from_str(t).map_err(|e| anyhow!("invalid JSON: {e}"))?;
    let id = match v.get("id").or_else(|| v.get("item_id")) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => bail!("expected a non-empty \"id\" (string or number)"),
    };
    let url = match v.get("url") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => bail!("\"url\" must be a string"),
    };
    Ok(Some(NewItem { id, url }))
}

/// `recheck init`: creates the default schema.
pub async fn init(args: &InitArgs, out: &mut dyn Write) -> Result<()> {
    let spec = StoreSpec::parse(&args.store)?;
    let table = Ident::new("--table", &args.table)?;
    let msg = store::init(&spec, &table).await?;
    writeln!(out, "{msg}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::StoreArgs;

    #[test]
    fn exit_code_precedence() {
        let s = |store: bool, interrupted: bool, deadline: bool, not_ok: bool| {
            let mut s = Summary::new("t", "x", false);
            s.checked = 1;
            s.ok = u64::from(!not_ok);
            s.store_error = store.then(|| "disk full".to_string());
            s.interrupted = interrupted;
            s.deadline_reached = deadline;
            s
        };
        // 4, then 130, then 3, then 1 (SPEC §4).
        assert_eq!(exit_code(&s(true, true, true, true), FailOn::Any), 4);
        assert_eq!(exit_code(&s(true, false, false, false), FailOn::Never), 4);
        assert_eq!(exit_code(&s(false, true, true, true), FailOn::Any), 130);
        assert_eq!(exit_code(&s(false, false, true, true), FailOn::Any), 3);
        assert_eq!(exit_code(&s(false, false, false, true), FailOn::Any), 1);
        assert_eq!(exit_code(&s(false, false, false, true), FailOn::Never), 0);
        assert_eq!(exit_code(&s(false, false, false, false), FailOn::Any), 0);
        // A failed output file is at least 1, even with --fail-on never, and never hides
        // a higher code.
        let mut out = s(false, false, false, false);
        out.output_errors = 1;
        assert_eq!(exit_code(&out, FailOn::Never), 1);
        out.deadline_reached = true;
        assert_eq!(exit_code(&out, FailOn::Any), 3);
        out.store_error = Some("x".into());
        assert_eq!(exit_code(&out, FailOn::Any), 4);
    }

    fn store_args(path: &std::path::Path) -> StoreArgs {
        StoreArgs {
            store: path.display().to_string(),
            table: "items".into(),
            task_column: "task_id".into(),
            id_column: "item_id".into(),
            status_column: "status".into(),
            url_column: "url".into(),
        }
    }

    #[tokio::test]
    async fn status_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.db");
        let import = ImportArgs {
            task: "nightly-42".into(),
            store: store_args(&db),
            failed_status: "failed".into(),
            file: None,
        };
        let (spec, opts) = plain_opts(&import.task, &import.store, "failed").unwrap();
        let store = store::open(&spec, opts, OpenMode::Create).await.unwrap();
        let items = (0..2000)
            .map(|i| NewItem {
                id: format!("i{i}"),
                url: None,
            })
            .collect();
        store.import(items, false).await.unwrap();
        store.finish().await.unwrap();
        drop(store);
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "UPDATE items SET status = 'ok', checked_at = '2026-11-20T03:10:00.000Z' WHERE rowid <= 1880;
             UPDATE items SET status = 'gone', checked_at = '2026-11-21T03:10:04.250Z' WHERE rowid > 1880 AND rowid <= 1910;",
        )
        .unwrap();
        let mut args = StatusArgs {
            task: "nightly-42".into(),
            store: store_args(&db),
            format: Format::Text,
        };
        let mut out = Vec::new();
        status(&args, &mut out).await.unwrap();
        let text = String::from_utf8(out)
            .unwrap()
            .replace(&db.display().to_string(), "jobs.db");
        insta::assert_snapshot!("status_text", text);
        args.format = Format::Json;
        let mut out = Vec::new();
        status(&args, &mut out).await.unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let text = serde_json::to_string_pretty(&j)
            .unwrap()
            .replace(&db.display().to_string(), "jobs.db");
        insta::assert_snapshot!("status_json", text);
    }

    #[test]
    fn import_lines() {
        assert_eq!(parse_import_line("  ").unwrap(), None);
        assert_eq!(
            parse_import_line(" a b ").unwrap(),
            Some(NewItem {
                id: "a b".into(),
                url: None
            })
        );
        assert_eq!(
            parse_import_line(r#"{"id": 7, "url": "http://x/7"}"#).unwrap(),
            Some(NewItem {
                id: "7".into(),
                url: Some("http://x/7".into())
            })
        );
        assert!(parse_import_line(r#"{"url": "x"}"#).is_err());
        assert!(parse_import_line("{nope").is_err());
    }
}
