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
use crate::store::{self, Ident, ImportCounts, NewItem, OpenMode, Store, StoreOptions, StoreSpec};

/// Exit code of a run stopped by `--deadline`.
pub const EXIT_DEADLINE: u8 = 3;
/// Items claimed from the store per page.
pub const CLAIM_BATCH: usize = 1000;
/// How long in-flight checks may finish after a stop before they are abandoned.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// Items handed to the store per `import` call (one transaction in the SQL stores): what a
/// store failure can cost at most, and about a third of what an import holds in memory.
pub const IMPORT_BATCH: usize = 10_000;

/// Exit code of a run whose store failed during the run (docs/reference.md §4.2).
pub const EXIT_STORE_FAILED: u8 = 4;

/// Exit code of a run that deferred items because their host's circuit opened
/// (docs/reference.md §4.2).
pub const EXIT_API_UNAVAILABLE: u8 = 5;

/// The exit code for a finished run (docs/reference.md §4.2). When several apply: 4 (the store
/// failed), then 130 (interrupted), then 3 (deadline), then 5 (items deferred: the API was
/// unavailable), then 1 (items not OK, or an output file failed: that is never hidden by
/// `--fail-on never`, since the file the user asked for is missing or incomplete).
pub fn exit_code(summary: &Summary, fail_on: FailOn) -> u8 {
    if summary.store_error.is_some() {
        EXIT_STORE_FAILED
    } else if summary.interrupted {
        EXIT_INTERRUPTED
    } else if summary.deadline_reached {
        EXIT_DEADLINE
    } else if summary.deferred > 0 {
        EXIT_API_UNAVAILABLE
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
    let fds = crate::limits::ensure_open_files(cfg.concurrency, cfg.per_host)?;
    // Before the store is opened: a bad --cacert/--cert/--key touches nothing.
    let clients = crate::check::client::Clients::new(cfg.http.clone(), fds)?;
    // Every output path is checked first, creating nothing; the report is created only
    // once the store was opened and validated, so a refused run touches no output file.
    let outputs = OutputFiles::check(&cfg.outputs, cfg.store.path())?;
    let store = Arc::new(store::open(&cfg.store, cfg.store_opts.clone(), OpenMode::Run).await?);
    let outputs = outputs.open(&cfg.task)?;
    let retry_for = sink::retry_budget(cfg.store_opts.lease);
    let gate = Arc::new(Gate::new(
        cfg.concurrency,
        cfg.per_host,
        cfg.rate,
        cfg.adaptive,
        cfg.circuit,
    ));
    let fetcher = Arc::new(Fetcher::new(clients, cfg.fetch.clone(), Arc::clone(&gate)));
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

    let claimed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeder = tokio::spawn(feed(
        Arc::clone(&store),
        item_tx,
        cfg.limit,
        halt.clone(),
        retry_for,
        Arc::clone(&claimed),
    ));
    let summary = Summary::new(&cfg.task, &cfg.store.to_string(), cfg.dry_run);
    let total = sink::retry_transient("counting items", retry_for, || store.pending()).await?;
    let total = cfg.limit.map_or(total, |l| l.min(total));
    let progress = Arc::new(Progress::start(cfg.progress, total));
    {
        let gate = Arc::clone(&gate);
        progress.watch_host_limits(Arc::new(move || gate.limits_below_bound()));
    }
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
            // Ticks from the start, not from the end of the last renewal: a slow renewal
            // (a busy database) does not push the next one toward the lease's end.
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = renewing.cancelled() => return,
                }
                if let Err(e) = store.renew().await {
                    tracing::warn!("cannot renew leases: {e:#}");
                }
            }
        })
    };
    let urls = Arc::new(cfg.urls);
    let schedule = Arc::new(cfg.schedule.clone());
    let check = {
        let halt = halt.clone();
        move |item: Item, slot: pool::Slot| {
            let (fetcher, urls, halt) = (Arc::clone(&fetcher), Arc::clone(&urls), halt.clone());
            let schedule = Arc::clone(&schedule);
            async move {
                let url = urls.url_for(&item);
                // What the store remembers of the item decides its schedule.
                let (checks, first) = (item.checks, item.first_checked_at);
                let mut verdict = fetcher.check(item, url, slot, &halt).await?;
                schedule.apply(checks, first, &mut verdict);
                Some(verdict)
            }
        }
    };
    let stats = pool::run(
        Arc::new(check),
        item_rx,
        verdict_tx,
        (max_in_progress(cfg.concurrency), RETRY_ROOM),
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
    // What is left for the next run (other workers may still be taking some).
    let failed = cfg.store_opts.failed.as_str();
    match store.status_counts().await {
        Ok(c) => {
            summary.backlog = Some(count_of(&c, failed));
            if let Some(sc) = c.schedule {
                summary.not_due = Some(sc.not_due);
                summary.next_due_at = sc.next_due_at;
            }
        }
        Err(e) => tracing::warn!("cannot count the items left in the store: {e:#}"),
    }
    summary.hosts = gate.host_summaries();
    // Claimed but never answered: a stop (or a store failure) came first.
    summary.unchecked = claimed
        .load(Ordering::SeqCst)
        .saturating_sub(summary.checked + summary.deferred);
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

/// Items in progress at once before their first retry: every request slot busy, plus as
/// many again waiting for a slot. Items waiting out a backoff move to [`RETRY_ROOM`] (a
/// retry never holds a request slot while it sleeps). Memory stays O(concurrency).
pub fn max_in_progress(concurrency: usize) -> usize {
    concurrency.saturating_mul(2)
}

/// Items that may be retrying at once, beyond [`max_in_progress`]: while they wait out
/// their backoff, new items start, so a hang further on is found early and the retry chains
/// overlap with the rest of the run. Small each: an attempt's state is on the heap only
/// while it runs.
pub const RETRY_ROOM: usize = 2_048;

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
    claimed: Arc<std::sync::atomic::AtomicU64>,
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
        claimed.fetch_add(page.len() as u64, Ordering::SeqCst);
        for item in page {
            if halt.is_cancelled() {
                return Ok(());
            }
            // The send first: with room in the channel it is ready at once and the halt's
            // future is not polled (polling it registers a waiter with the token).
            tokio::select! {
                biased;
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

/// The count of one status (as text) in `c`.
fn count_of(c: &store::StatusCounts, status: &str) -> u64 {
    c.counts
        .iter()
        .filter(|(s, _)| s == status)
        .map(|(_, n)| n)
        .sum()
}

/// `recheck status`: counts of a task's items per status, with its backlog (failed items)
/// by schedule; without `--task`, one line per task of the store.
pub async fn status(args: &StatusArgs, out: &mut dyn Write) -> Result<()> {
    // Refused before the store is opened: a usage error touches nothing (exit 2).
    if args.format == Format::Markdown {
        anyhow::bail!(
            "--format markdown is for `recheck run` (and --step-summary); `recheck status` prints text or json"
        );
    }
    let task = args.task.as_deref();
    let (spec, mut opts) = match task {
        Some(t) => plain_opts(t, &args.store, &args.failed_status)?,
        None => {
            let (spec, columns) = store_columns(&args.store)?;
            let opts = StoreOptions::basic("", columns, StatusValue::new(&args.failed_status));
            (spec, opts)
        }
    };
    opts.read_only = true;
    let store = store::open(&spec, opts, OpenMode::Status).await?;
    let rows: Vec<TaskStatus> = match task {
        Some(t) => vec![TaskStatus::new(t, store.status_counts().await?, args)],
        None => store
            .status_all()
            .await?
            .into_iter()
            .map(|(t, c)| TaskStatus::new(&t, c, args))
            .collect(),
    };
    let store_name = spec.to_string();
    match (args.format, task) {
        (Format::Json, Some(_)) => {
            let mut j = rows[0].json();
            j["store"] = store_name.into();
            writeln!(out, "{j}")?;
        }
        (Format::Json, None) => {
            let tasks: Vec<serde_json::Value> = rows.iter().map(TaskStatus::json).collect();
            let j = serde_json::json!({"store": store_name, "tasks": tasks});
            writeln!(out, "{j}")?;
        }
        (Format::Text, Some(t)) => rows[0].write_text(t, &store_name, out)?,
        (Format::Text, None) => write_tasks_table(&rows, &store_name, out)?,
        (Format::Markdown, _) => {} // refused above
    }
    Ok(())
}

/// One task's line of `recheck status`.
struct TaskStatus {
    task: String,
    counts: store::StatusCounts,
    total: u64,
    /// Items with the failed status: what runs will check.
    backlog: u64,
    /// Items with the dead status: given up on.
    dead: u64,
}

impl TaskStatus {
    fn new(task: &str, counts: store::StatusCounts, args: &StatusArgs) -> TaskStatus {
        TaskStatus {
            task: task.to_string(),
            total: counts.counts.iter().map(|(_, n)| n).sum(),
            backlog: count_of(&counts, &args.failed_status),
            dead: count_of(&counts, &args.dead_status),
            counts,
        }
    }

    fn json(&self) -> serde_json::Value {
        let c = &self.counts;
        let by_status: serde_json::Map<String, serde_json::Value> = c
            .counts
            .iter()
            .map(|(s, n)| (s.clone(), (*n).into()))
            .collect();
        let sc = c.schedule.as_ref();
        serde_json::json!({
            "task": self.task,
            "total": self.total,
            "statuses": by_status,
            "backlog": self.backlog,
            "dead": self.dead,
            "not_due": sc.map(|s| s.not_due),
            "next_due_at": sc.and_then(|s| s.next_due_at.clone()),
            "unchecked": sc.map(|s| s.never_checked),
            "oldest_checked_at": c.oldest_checked_at,
            "newest_checked_at": c.newest_checked_at,
        })
    }

    fn write_text(&self, task: &str, store: &str, out: &mut dyn Write) -> Result<()> {
        let c = &self.counts;
        writeln!(out, "task {task} on {store}")?;
        let width = c
            .counts
            .iter()
            .map(|(s, _)| s.len())
            .max()
            .unwrap_or(0)
            .max(9);
        for (s, n) in &c.counts {
            writeln!(out, "  {s:<width$}  {n:>10}")?;
        }
        writeln!(out, "  {:<width$}  {:>10}", "total", self.total)?;
        writeln!(
            out,
            "  {:<width$}  {:>10}  (failed: what the next runs check)",
            "backlog", self.backlog
        )?;
        if let Some(sc) = &c.schedule {
            let next = sc
                .next_due_at
                .as_deref()
                .map_or(String::new(), |at| format!("; the next is due at {at}"));
            writeln!(
                out,
                "  {:<width$}  {:>10}  (failed, waiting for their next_check_at{next})",
                "not due", sc.not_due
            )?;
            writeln!(
                out,
                "  {:<width$}  {:>10}  (failed, never checked yet)",
                "unchecked", sc.never_checked
            )?;
        }
        writeln!(
            out,
            "  {:<width$}  {:>10}  (given up on: failed for good)",
            "dead", self.dead
        )?;
        if let (Some(a), Some(b)) = (&c.oldest_checked_at, &c.newest_checked_at) {
            writeln!(out, "  checked between {a} and {b}")?;
        }
        Ok(())
    }
}

/// `recheck status` without `--task`: one line per task.
fn write_tasks_table(rows: &[TaskStatus], store: &str, out: &mut dyn Write) -> Result<()> {
    let n = rows.len();
    writeln!(out, "{n} task{} on {store}", if n == 1 { "" } else { "s" })?;
    if rows.is_empty() {
        return Ok(());
    }
    let width = rows.iter().map(|r| r.task.len()).max().unwrap_or(0).max(4);
    writeln!(
        out,
        "  {:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  next due",
        "task", "total", "backlog", "not due", "unchecked", "dead"
    )?;
    for r in rows {
        let sc = r.counts.schedule.as_ref();
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
        writeln!(
            out,
            "  {:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {}",
            r.task,
            r.total,
            r.backlog,
            opt(sc.map(|s| s.not_due)),
            opt(sc.map(|s| s.never_checked)),
            r.dead,
            sc.and_then(|s| s.next_due_at.as_deref()).unwrap_or("-")
        )?;
    }
    Ok(())
}

/// `recheck import`: adds the items listed in the input to the task as failed items. An id
/// the task already has is left as it is, unless `--reset` (then it is failed again).
///
/// Two passes, so that memory stays flat in the input size and a bad line still imports
/// nothing: the first reads every line and checks that it parses (keeping no item; stdin and
/// other inputs that cannot be read twice are copied to an unlinked temporary file on the
/// way), the second reads it again from the start and hands the store batches of
/// [`IMPORT_BATCH`] items, one store call (one transaction in the SQL stores) each. A
/// failure in the second pass (a store error) keeps the batches written before it, and the
/// error says which lines those are.
pub async fn import(args: &ImportArgs, out: &mut dyn Write) -> Result<()> {
    let (spec, opts) = plain_opts(&args.task, &args.store, &args.failed_status)?;
    let path = args.file.clone().filter(|p| p.as_os_str() != "-");
    let source = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "stdin".into());
    // Reading is blocking I/O: off the async threads, like the stores' own work.
    let checked = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || check_input(path.as_deref(), &source))
            .await
            .context("the input check stopped")?
            .map_err(|e| anyhow!("{e:#}; nothing was imported"))?
    };
    let store = store::open(&spec, opts, OpenMode::Create).await?;
    // One batch waits in the channel while the store writes the previous one: the reader
    // keeps the store busy, and memory holds at most three batches.
    let (tx, mut rx) = mpsc::channel::<Result<ImportBatch>>(1);
    let reader = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || send_batches(checked, &source, &tx))
    };
    let mut done = Imported::default();
    let mut failure = None;
    while let Some(batch) = rx.recv().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let (first, last, n) = (batch.first_line, batch.last_line, batch.items.len());
        match store.import(batch.items, args.reset).await {
            Ok(c) => {
                done.counts += c;
                done.items += n as u64;
                done.last_line = last;
            }
            Err(e) => {
                failure = Some(e.context(format!("lines {first}-{last}")));
                break;
            }
        }
    }
    // Stops the reader if it is still going (it sees the channel closed).
    drop(rx);
    reader.await.context("the input reader stopped")?;
    // What was written stays: make it durable (and free the store) on failure too.
    let finished = store.finish().await;
    if let Some(e) = failure {
        let kept = format!("{source}: {}", done.kept());
        return Err(match finished {
            Ok(()) => e.context(kept),
            Err(f) => e.context(format!("{kept} (and closing the store failed: {f:#})")),
        });
    }
    let c = &done.counts;
    if let Err(f) = finished {
        // Every batch was accepted, and the stores commit each one before accepting it.
        return Err(f.context(format!(
            "{source}: imported all {} items (added {}, already there {}, reset {}), \
             then closing the store failed",
            done.items, c.added, c.already, c.reset
        )));
    }
    writeln!(
        out,
        "imported into task {} on {spec}: added {}, already there {}, reset {}",
        args.task, c.added, c.already, c.reset
    )?;
    Ok(())
}

/// What an import has written so far.
#[derive(Default)]
struct Imported {
    counts: ImportCounts,
    /// Items handed to the store in the batches it accepted.
    items: u64,
    /// The input line of the last item of those batches (0: none).
    last_line: u64,
}

impl Imported {
    /// Says what a failed import kept, for its error message.
    fn kept(&self) -> String {
        if self.items == 0 {
            return "nothing was imported".into();
        }
        let c = &self.counts;
        let next = self.last_line + 1;
        format!(
            "imported {} items before line {next} (added {}, already there {}, reset {}), \
             nothing from line {next} on",
            self.items, c.added, c.already, c.reset
        )
    }
}

/// Up to [`IMPORT_BATCH`] parsed items, with the input lines they came from.
struct ImportBatch {
    items: Vec<NewItem>,
    first_line: u64,
    last_line: u64,
}

/// The import input after its first pass: every line parsed.
struct CheckedInput {
    /// What the second pass reads from its start: the input file itself, or the temporary
    /// copy of stdin.
    file: std::fs::File,
    /// How many bytes the first pass read: a file that grows meanwhile is imported as checked.
    len: u64,
}

/// The first pass: reads the whole input, checks that every line parses, keeps no item. A
/// regular file is read again by the second pass (through the same open file, so a rename
/// cannot swap it); anything else (stdin, a pipe, a FIFO) is copied to an unlinked
/// temporary file on the way, since it can be read only once.
fn check_input(path: Option<&std::path::Path>, source: &str) -> Result<CheckedInput> {
    use std::io::{Seek, SeekFrom};
    let file = path
        .map(|p| std::fs::File::open(p).with_context(|| format!("{source}: cannot open")))
        .transpose()?;
    let regular = match &file {
        Some(f) => f
            .metadata()
            .with_context(|| format!("{source}: cannot read its metadata"))?
            .is_file(),
        None => false,
    };
    match (file, regular) {
        (Some(file), true) => {
            let len = check_lines(std::io::BufReader::new(&file), None, source)?;
            Ok(CheckedInput { file, len })
        }
        (input, _) => {
            let mut spool = tempfile::tempfile().with_context(|| {
                format!("{source}: cannot create a temporary file to hold the input")
            })?;
            let len = {
                let mut copy = std::io::BufWriter::new(&mut spool);
                let len = match input {
                    Some(f) => check_lines(std::io::BufReader::new(f), Some(&mut copy), source)?,
                    None => check_lines(std::io::stdin().lock(), Some(&mut copy), source)?,
                };
                copy.flush()
                    .with_context(|| format!("{source}: cannot write its temporary copy"))?;
                len
            };
            spool
                .seek(SeekFrom::Start(0))
                .with_context(|| format!("{source}: cannot read back its temporary copy"))?;
            Ok(CheckedInput { file: spool, len })
        }
    }
}

/// Reads `input` to its end, parsing every line (and copying its bytes to `copy`); returns
/// the number of bytes read. The first bad line is the error, named `SOURCE:LINE`.
fn check_lines(input: impl BufRead, mut copy: Option<&mut dyn Write>, source: &str) -> Result<u64> {
    let mut lines = InputLines::new(input);
    while let Some((n, line)) = lines.next_line(source)? {
        if let Some(copy) = copy.as_mut() {
            copy.write_all(line)
                .with_context(|| format!("{source}: cannot write its temporary copy"))?;
        }
        parse_line_bytes(line, source, n)?;
    }
    Ok(lines.bytes)
}

/// The second pass: reads the checked input again and sends it in batches of
/// [`IMPORT_BATCH`] items. Stops when the receiver is gone (the store failed). An error
/// here (a read error, a line that no longer parses because the file was changed since the
/// first pass) is sent as the last message.
fn send_batches(input: CheckedInput, source: &str, tx: &mpsc::Sender<Result<ImportBatch>>) {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = input.file;
    if let Err(e) = file.seek(SeekFrom::Start(0)) {
        let _ = tx.blocking_send(Err(anyhow!("{source}: cannot seek back to the start: {e}")));
        return;
    }
    let mut lines = InputLines::new(std::io::BufReader::new(file.take(input.len)));
    let mut batch = ImportBatch {
        items: Vec::with_capacity(IMPORT_BATCH),
        first_line: 0,
        last_line: 0,
    };
    loop {
        let next = lines.next_line(source).and_then(|l| match l {
            None => Ok(None),
            Some((n, bytes)) => parse_line_bytes(bytes, source, n)
                .map(|item| Some((n, item)))
                .with_context(|| format!("{source} changed since it was checked")),
        });
        match next {
            Ok(Some((_, None))) => {}
            Ok(Some((n, Some(item)))) => {
                if batch.items.is_empty() {
                    batch.first_line = n;
                }
                batch.last_line = n;
                batch.items.push(item);
                if batch.items.len() == IMPORT_BATCH {
                    let full = std::mem::replace(
                        &mut batch,
                        ImportBatch {
                            items: Vec::with_capacity(IMPORT_BATCH),
                            first_line: 0,
                            last_line: 0,
                        },
                    );
                    if tx.blocking_send(Ok(full)).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => {
                if !batch.items.is_empty() {
                    let _ = tx.blocking_send(Ok(batch));
                }
                return;
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// The lines of an input, numbered from 1, read into one reused buffer (so a long input
/// costs no memory), with the bytes read so far.
struct InputLines<R> {
    input: R,
    buf: Vec<u8>,
    line: u64,
    bytes: u64,
}

impl<R: BufRead> InputLines<R> {
    fn new(input: R) -> Self {
        InputLines {
            input,
            buf: Vec::new(),
            line: 0,
            bytes: 0,
        }
    }

    /// The next line with its number, end of line included; `None` at the end.
    fn next_line(&mut self, source: &str) -> Result<Option<(u64, &[u8])>> {
        self.buf.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.buf)
            .with_context(|| format!("{source}: cannot read line {}", self.line + 1))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.bytes += n as u64;
        Ok(Some((self.line, &self.buf)))
    }
}

/// One raw input line parsed, its errors named `SOURCE:LINE`.
fn parse_line_bytes(line: &[u8], source: &str, n: u64) -> Result<Option<NewItem>> {
    let text = std::str::from_utf8(line).map_err(|e| anyhow!("{source}:{n}: not UTF-8: {e}"))?;
    parse_import_line(text).map_err(|e| anyhow!("{source}:{n}: {e}"))
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
        // 4, then 130, then 3, then 1 (docs/reference.md §4.2).
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
            reset: false,
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
        // 1880 ok, 30 gone, 10 dead; of the 80 failed, 50 not due until 2099, 20 due again,
        // 10 never checked. And a second task, never checked.
        conn.execute_batch(
            "UPDATE items SET status = 'ok', checked_at = '2026-11-20T03:10:00.000Z', checks = 1 WHERE rowid <= 1880;
             UPDATE items SET status = 'gone', checked_at = '2026-11-21T03:10:04.250Z', checks = 1 WHERE rowid > 1880 AND rowid <= 1910;
             UPDATE items SET status = 'dead', checked_at = '2026-11-21T03:10:04.250Z', checks = 3 WHERE rowid > 1910 AND rowid <= 1920;
             UPDATE items SET checked_at = '2026-11-21T03:10:04.250Z', checks = 2, next_check_at = '2099-01-01T00:10:00.000Z' WHERE rowid > 1920 AND rowid <= 1970;
             UPDATE items SET next_check_at = '2099-01-01T00:00:00.000Z' WHERE rowid = 1921;
             UPDATE items SET checked_at = '2026-11-21T03:10:04.250Z', checks = 1, next_check_at = '2026-11-21T04:10:04.250Z' WHERE rowid > 1970 AND rowid <= 1990;
             INSERT INTO items(task_id, item_id, status) VALUES ('nightly-43', 'a', 'failed'), ('nightly-43', 'b', 'failed');",
        )
        .unwrap();
        let mut args = StatusArgs {
            task: Some("nightly-42".into()),
            store: store_args(&db),
            failed_status: "failed".into(),
            dead_status: "dead".into(),
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
        // Every task of the store, one line each.
        args.task = None;
        args.format = Format::Text;
        let mut out = Vec::new();
        status(&args, &mut out).await.unwrap();
        let text = String::from_utf8(out)
            .unwrap()
            .replace(&db.display().to_string(), "jobs.db");
        insta::assert_snapshot!("status_all_text", text);
        args.format = Format::Json;
        let mut out = Vec::new();
        status(&args, &mut out).await.unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(j["tasks"].as_array().unwrap().len(), 2, "{j}");
        assert_eq!(j["tasks"][1]["task"], "nightly-43");
        assert_eq!(j["tasks"][1]["backlog"], 2);
        assert_eq!(j["tasks"][1]["unchecked"], 2);
        assert_eq!(j["tasks"][0]["not_due"], 50);
        assert_eq!(j["tasks"][0]["next_due_at"], "2099-01-01T00:00:00.000Z");
    }

    fn import_args(db: &std::path::Path, file: &std::path::Path) -> ImportArgs {
        ImportArgs {
            task: "t".into(),
            store: store_args(db),
            failed_status: "failed".into(),
            reset: false,
            file: Some(file.to_path_buf()),
        }
    }

    fn count_rows(db: &std::path::Path, table: &str) -> i64 {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn import_streams_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (db, input) = (dir.path().join("s.db"), dir.path().join("ids.txt"));
        // Two and a half batches, blank lines and a JSON line among them.
        let mut text: String = (0..2 * IMPORT_BATCH + IMPORT_BATCH / 2)
            .map(|i| format!("id-{i}\n"))
            .collect();
        text.push_str("\n{\"id\": \"j\", \"url\": \"http://127.0.0.1:9/j\"}\n\n");
        std::fs::write(&input, text).unwrap();
        let mut out = Vec::new();
        import(&import_args(&db, &input), &mut out).await.unwrap();
        let want = 2 * IMPORT_BATCH + IMPORT_BATCH / 2 + 1;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "imported into task t on sqlite:{}: added {want}, already there 0, reset 0\n",
                db.display()
            )
        );
        assert_eq!(count_rows(&db, "items"), want as i64);
    }

    #[tokio::test]
    async fn import_bad_line_imports_nothing_and_creates_no_store() {
        let dir = tempfile::tempdir().unwrap();
        let (db, input) = (dir.path().join("s.db"), dir.path().join("ids.txt"));
        // The bad line comes after more than a batch: the first pass catches it anyway.
        let mut text: String = (0..IMPORT_BATCH + 5).map(|i| format!("id-{i}\n")).collect();
        text.push_str("{\"url\": \"http://x\"}\nlast\n");
        std::fs::write(&input, text).unwrap();
        let e = import(&import_args(&db, &input), &mut Vec::new())
            .await
            .unwrap_err();
        let msg = format!("{e:#}");
        let line = IMPORT_BATCH + 6;
        assert!(
            msg.starts_with(&format!("{}:{line}: expected", input.display())),
            "{msg}"
        );
        assert!(msg.ends_with("; nothing was imported"), "{msg}");
        assert!(!db.exists(), "a refused import created the store");
    }

    #[tokio::test]
    async fn import_store_failure_midway_says_what_was_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (db, input) = (dir.path().join("s.db"), dir.path().join("ids.txt"));
        // A table without a url column: the batch holding the one line with a url fails.
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(
                "CREATE TABLE data(task_id TEXT NOT NULL, item_id TEXT NOT NULL, \
                 status TEXT NOT NULL, PRIMARY KEY (task_id, item_id))",
            )
            .unwrap();
        let mut text: String = (0..IMPORT_BATCH + 2).map(|i| format!("id-{i}\n")).collect();
        text.push_str("{\"id\": \"u\", \"url\": \"http://x/u\"}\n");
        text.extend((0..IMPORT_BATCH).map(|i| format!("late-{i}\n")));
        std::fs::write(&input, text).unwrap();
        let mut args = import_args(&db, &input);
        args.store.table = "data".into();
        let e = import(&args, &mut Vec::new()).await.unwrap_err();
        let (next, last) = (IMPORT_BATCH + 1, 2 * IMPORT_BATCH);
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with(&format!(
                "{}: imported {IMPORT_BATCH} items before line {next} (added {IMPORT_BATCH}, \
                 already there 0, reset 0), nothing from line {next} on: lines {next}-{last}: ",
                input.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("no url column"), "{msg}");
        assert_eq!(count_rows(&db, "data"), IMPORT_BATCH as i64);
    }

    /// The second pass reads what the first one checked: bytes appended meanwhile are not
    /// imported, and a line that no longer parses is an error after the batches before it.
    #[test]
    fn import_second_pass_reads_what_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.txt");
        let mut text: String = (0..IMPORT_BATCH + 3).map(|i| format!("id-{i}\n")).collect();
        let checked_len = text.len() as u64;
        text.push_str("appended\n");
        std::fs::write(&path, &text).unwrap();
        let read = |len| {
            let (tx, mut rx) = mpsc::channel(8);
            let input = CheckedInput {
                file: std::fs::File::open(&path).unwrap(),
                len,
            };
            send_batches(input, "ids.txt", &tx);
            drop(tx);
            std::iter::from_fn(move || rx.try_recv().ok()).collect::<Vec<_>>()
        };
        let got = read(checked_len);
        let sizes: Vec<_> = got
            .iter()
            .map(|b| {
                let b = b.as_ref().unwrap();
                (b.items.len(), b.first_line, b.last_line)
            })
            .collect();
        let batch = IMPORT_BATCH as u64;
        assert_eq!(sizes, [(IMPORT_BATCH, 1, batch), (3, batch + 1, batch + 3)]);
        // Line 10,002 changed after the check.
        let changed = text.replacen(
            &format!("id-{}\n", IMPORT_BATCH + 1),
            &format!("{{\"id\": {}\n", IMPORT_BATCH + 1),
            1,
        );
        std::fs::write(&path, changed).unwrap();
        let got = read(checked_len);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap().items.len(), IMPORT_BATCH);
        let e = got[1].as_ref().map(|_| ()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with(&format!(
                "ids.txt changed since it was checked: ids.txt:{}: invalid JSON",
                batch + 2
            )),
            "{msg}"
        );
    }

    #[test]
    fn import_kept_messages() {
        assert_eq!(Imported::default().kept(), "nothing was imported");
        let done = Imported {
            counts: ImportCounts {
                added: 15_000,
                already: 4_000,
                reset: 1_000,
            },
            items: 20_000,
            last_line: 20_003,
        };
        assert_eq!(
            done.kept(),
            "imported 20000 items before line 20004 (added 15000, already there 4000, \
             reset 1000), nothing from line 20004 on"
        );
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
