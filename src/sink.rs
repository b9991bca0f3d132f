//! Stage "sink": the single writer. Owns the verdict receiver, folds every verdict into the
//! [`Summary`], and saves them to the store in batches (a few hundred rows, or every
//! ~200 ms, whichever comes first). One save runs while the next batch fills, so workers
//! never wait on the disk. Never does HTTP.
//!
//! # What becomes of each answer
//!
//! Every answer received is counted in the summary and, once its batch's save result is
//! known, recorded in the output files with what happened to it in the store
//! ([`Stored`]: written, conflict, unwritten, dry run). So nothing is lost without a trace,
//! even when the store fails.
//!
//! # Store faults
//!
//! A save that fails with a transient cause ([`store::is_transient`]: SQLite `BUSY` or
//! `LOCKED`, a deadlock, a dropped connection) is tried again with backoff
//! ([`STORE_RETRY_FIRST`] doubling to [`STORE_RETRY_MAX`]) for [`retry_budget`]: at least
//! [`STORE_RETRY_MIN`] (60 s), or `--lease` when that is longer. While a save is retried
//! the sink takes at most one more batch of verdicts and then stops receiving: the
//! verdict channel is bounded, so the pool's workers wait on it and take no new items
//! (memory stays bounded by two batches plus the channel). A final error, or a transient
//! one that outlasts the budget, halts the run at once (no new check is admitted), and
//! every later answer is recorded as `unwritten`; the run exits 4 (docs/reference.md §4.2).
//!
//! # Checkpointed stores
//!
//! The JSON and JSON Lines stores apply a save in memory and write their file at most once
//! per checkpoint interval (replacing it by rename), so a save that returns does not mean
//! the answers are on disk. For them the sink counts an answer as written only once it saw
//! the file replaced after the answer was saved (a new inode, size or mtime at the path),
//! or once the store's [`Store::finish`] (which writes what is left) succeeded. Until then
//! the answers are held here (bounded by one checkpoint interval of answers). A foreign
//! process replacing the file at that very moment would be taken for a checkpoint; the
//! store itself notices foreign edits before it writes.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Result, anyhow};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::model::Verdict;
use crate::report::{OutputFiles, Progress, Stored, Summary};
use crate::store::{self, Saved, Store};

/// Most verdicts written in one transaction.
pub const BATCH_ROWS: usize = 1000;
/// Longest a verdict waits before its batch is written.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Shortest time a transient store failure is retried before the run gives up (exit 4):
/// long enough to wait out another process's lock for a backup, a `VACUUM` or a migration.
pub const STORE_RETRY_MIN: Duration = Duration::from_secs(60);
/// First pause before a store operation is tried again.
pub const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between two tries of a store operation.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long transient store failures are retried: [`STORE_RETRY_MIN`], or the lease when
/// it is longer (a worker waiting less than its lease would give up claims that are still
/// its own).
pub fn retry_budget(lease: Duration) -> Duration {
    lease.max(STORE_RETRY_MIN)
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or has failed
/// transiently for `budget` (measured from the first failure; one try may overrun it by
/// the store's own lock wait). `what` names the operation in messages.
pub async fn retry_transient<T, F, Fut>(what: &str, budget: Duration, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut wait = STORE_RETRY_FIRST;
    let mut failing_since: Option<Instant> = None;
    loop {
        match op().await {
            Ok(v) => {
                if let Some(since) = failing_since {
                    tracing::info!(
                        "{what}: the store answers again after {:.1}s",
                        since.elapsed().as_secs_f64()
                    );
                }
                return Ok(v);
            }
            Err(e) if store::is_transient(&e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= budget {
                    return Err(e.context(format!(
                        "{what}: still failing after {}s of retries",
                        budget.as_secs()
                    )));
                }
                if wait == STORE_RETRY_FIRST {
                    tracing::warn!(
                        "{what}: {e:#}; trying again for up to {}s",
                        budget.as_secs()
                    );
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(STORE_RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// How the sink writes.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// `--dry-run`: nothing is saved; every answer is recorded as [`Stored::DryRun`].
    pub dry_run: bool,
    /// How long transient store failures are retried ([`retry_budget`]).
    pub retry_for: Duration,
    /// The store's file when the store writes it by checkpoints (JSON, JSON Lines): see
    /// the module docs.
    pub checkpointed: Option<PathBuf>,
}

/// The sink after its channel closed: the summary and outputs, and the answers a
/// checkpointed store still holds in memory. [`Sunk::finish`] ends the store and settles
/// them.
pub struct Sunk {
    summary: Summary,
    outputs: OutputFiles,
    retry_for: Duration,
    checkpoint: Option<Checkpoint>,
    /// Answers a checkpointed store holds in memory, not yet seen on disk.
    applied: Vec<Verdict>,
    /// The store failed: nothing more is given to it.
    failed: bool,
}

/// Watches the file of a checkpointed store for being replaced.
struct Checkpoint {
    path: PathBuf,
    last: Option<FileStamp>,
}

/// What changes when a file is replaced by rename: its inode (the new file existed next to
/// the old one, so they differ), and its mtime and size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    dev: u64,
    len: u64,
    mtime: Option<std::time::SystemTime>,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some(FileStamp {
        ino,
        dev,
        len: m.len(),
        mtime: m.modified().ok(),
    })
}

impl Checkpoint {
    /// Whether the file was replaced since the last look.
    fn rewritten(&mut self) -> bool {
        let now = stamp(&self.path);
        let changed = now != self.last;
        self.last = now;
        changed
    }
}

/// A batch being saved: the verdicts stay here, so whatever happens to the save (even a
/// panic in the store) every one of them is still settled.
type Saving = (Arc<[Verdict]>, JoinHandle<Result<Saved>>);

/// Receives verdicts until every sender is gone, saving them in batches (see the module
/// docs). A store failure cancels `halt` (no new checks) and is kept in the summary
/// (exit 4); an output failure disables that output only. Call [`Sunk::finish`] on the
/// result once nothing else uses the store.
pub async fn run<S: Store>(
    store: Arc<S>,
    mut rx: mpsc::Receiver<Verdict>,
    summary: Summary,
    outputs: OutputFiles,
    progress: Arc<Progress>,
    opts: SinkOptions,
    halt: CancellationToken,
) -> Sunk {
    let mut sunk = Sunk {
        summary,
        outputs,
        retry_for: opts.retry_for,
        checkpoint: opts.checkpointed.map(|path| Checkpoint {
            last: stamp(&path),
            path,
        }),
        applied: Vec::new(),
        failed: false,
    };
    let mut batch: Vec<Verdict> = Vec::with_capacity(BATCH_ROWS);
    let mut saving: Option<Saving> = None;
    let mut tick = tokio::time::interval(BATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush = tokio::select! {
            v = rx.recv() => match v {
                Some(v) => {
                    sunk.summary.add(&v);
                    progress.record(&v);
                    if opts.dry_run {
                        sunk.settle(&v, Stored::DryRun);
                    } else if sunk.failed {
                        sunk.settle(&v, Stored::Unwritten);
                    } else {
                        batch.push(v);
                    }
                    batch.len() >= BATCH_ROWS
                }
                None => break,
            },
            // An empty save still lets file stores checkpoint what they hold in memory.
            _ = tick.tick() => {
                sunk.outputs.flush();
                !opts.dry_run && saving.as_ref().is_none_or(|(_, h)| h.is_finished())
            }
        };
        if flush {
            // At most one save in flight: wait for the previous one (while it is retried,
            // this is where the sink stops receiving and the bounded channel holds the
            // pool back), then start this one.
            if let Some(prev) = saving.take() {
                sunk.resolve(prev, &halt).await;
            }
            if sunk.failed {
                for v in batch.drain(..) {
                    sunk.settle(&v, Stored::Unwritten);
                }
                sunk.outputs.flush();
                continue;
            }
            let page: Arc<[Verdict]> =
                std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS)).into();
            saving = Some(start_save(&store, &page, opts.retry_for, &halt));
        }
    }
    if let Some(prev) = saving.take() {
        sunk.resolve(prev, &halt).await;
    }
    if !batch.is_empty() {
        if sunk.failed {
            for v in batch.drain(..) {
                sunk.settle(&v, Stored::Unwritten);
            }
        } else {
            let page: Arc<[Verdict]> = batch.into();
            let save = start_save(&store, &page, opts.retry_for, &halt);
            sunk.resolve(save, &halt).await;
        }
    }
    sunk.outputs.flush();
    sunk
}

/// Saves `page` on its own task, retrying transient failures. A save that fails for good
/// cancels `halt` right there, not when the sink next looks at it: no new check is
/// admitted after the failure.
fn start_save<S: Store>(
    store: &Arc<S>,
    page: &Arc<[Verdict]>,
    budget: Duration,
    halt: &CancellationToken,
) -> Saving {
    let (store, todo, halt) = (Arc::clone(store), Arc::clone(page), halt.clone());
    let handle = tokio::spawn(async move {
        // Each try shares the page (a save only reads it).
        let r = retry_transient("saving answers", budget, || store.save(Arc::clone(&todo))).await;
        if r.is_err() {
            halt.cancel();
        }
        r
    });
    (Arc::clone(page), handle)
}

impl Sunk {
    /// Records one answer's store result in the summary and the outputs.
    fn settle(&mut self, v: &Verdict, stored: Stored) {
        self.summary.add_stored(stored);
        self.outputs.record(v, stored);
    }

    /// Settles a finished save: conflicts and written answers, or the store failure.
    async fn resolve(&mut self, (page, handle): Saving, halt: &CancellationToken) {
        let result = match handle.await {
            Ok(r) => r,
            Err(e) => Err(anyhow!("store writer task failed: {e}")),
        };
        match result {
            Ok(saved) => {
                let conflicts: HashSet<usize> = saved.conflicts.into_iter().collect();
                for (i, v) in page.iter().enumerate() {
                    if conflicts.contains(&i) {
                        self.settle(v, Stored::Conflict);
                    } else if self.checkpoint.is_some() {
                        self.applied.push(v.clone());
                    } else {
                        self.settle(v, Stored::Written);
                    }
                }
                if self.checkpoint.as_mut().is_some_and(Checkpoint::rewritten) {
                    self.settle_applied(Stored::Written);
                }
            }
            Err(e) => {
                self.fail(&e, halt);
                for v in page.iter() {
                    if self.checkpoint.is_some() {
                        // Applied in the store's memory before its write failed: the final
                        // write at finish may still get it to disk.
                        self.applied.push(v.clone());
                    } else {
                        // A failed SQL save rolled back: none of the batch was written.
                        self.settle(v, Stored::Unwritten);
                    }
                }
            }
        }
        self.outputs.flush();
    }

    fn settle_applied(&mut self, stored: Stored) {
        for v in std::mem::take(&mut self.applied) {
            self.settle(&v, stored);
        }
    }

    /// The store failed: no new checks, nothing more given to it.
    fn fail(&mut self, e: &anyhow::Error, halt: &CancellationToken) {
        halt.cancel();
        self.failed = true;
        if self.summary.store_error.is_none() {
            self.summary.store_error = Some(one_line(&format!("{e:#}")));
        }
    }

    /// Ends the store (its final write, releasing locks and claims; transient failures
    /// retried like saves), settles the answers a checkpointed store still held, and
    /// returns the summary and the outputs to finish. A failing end is a store failure.
    pub async fn finish<S: Store>(mut self, store: &S) -> (Summary, OutputFiles) {
        let finished =
            retry_transient("finishing the store", self.retry_for, || store.finish()).await;
        match finished {
            // The final write holds everything the store was given.
            Ok(()) => self.settle_applied(Stored::Written),
            Err(e) => {
                self.failed = true;
                if self.summary.store_error.is_none() {
                    self.summary.store_error = Some(one_line(&format!("{e:#}")));
                }
                self.settle_applied(Stored::Unwritten);
            }
        }
        self.outputs.flush();
        (self.summary, self.outputs)
    }

    /// Records a store failure that happened outside the sink (claiming items): the run
    /// stopped because of it.
    pub fn store_failed(&mut self, e: &anyhow::Error) {
        self.failed = true;
        if self.summary.store_error.is_none() {
            self.summary.store_error = Some(one_line(&format!("{e:#}")));
        }
    }

    /// The summary so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }
}

/// An error message on one line (a driver's message may hold newlines).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_the_budget() {
        let mut tries = 0;
        let started = tokio::time::Instant::now();
        let r: Result<()> = retry_transient("t", Duration::from_secs(60), || {
            tries += 1;
            async { Err(anyhow::Error::new(store::Transient(true))) }
        })
        .await;
        let e = r.unwrap_err();
        assert!(
            format!("{e:#}").contains("still failing after 60s"),
            "{e:#}"
        );
        assert!(started.elapsed() >= Duration::from_secs(60));
        // 0.1 + 0.2 + ... + 3.2 + 5 + 5 ...: a dozen or two tries, not thousands.
        assert!((10..40).contains(&tries), "{tries}");
    }

    #[tokio::test(start_paused = true)]
    async fn final_errors_are_not_retried_and_success_ends_retries() {
        let mut tries = 0;
        let r: Result<()> = retry_transient("t", Duration::from_secs(60), || {
            tries += 1;
            async { Err(anyhow!("disk full")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(tries, 1);
        let mut tries = 0;
        let r = retry_transient("t", Duration::from_secs(60), || {
            tries += 1;
            let n = tries;
            async move {
                if n < 3 {
                    Err(anyhow::Error::new(store::Transient(true)))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[test]
    fn budget_is_at_least_a_minute_or_the_lease() {
        assert_eq!(
            retry_budget(Duration::from_secs(120)),
            Duration::from_secs(120)
        );
        assert_eq!(retry_budget(Duration::from_secs(10)), STORE_RETRY_MIN);
    }

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use anyhow::bail;

    use crate::model::{Item, Outcome};
    use crate::report::OutputConfig;
    use crate::store::{ImportCounts, NewItem, StatusCounts, Transient};

    /// What the fake store answers to the next non-empty save.
    enum Answer {
        Saved(Vec<usize>),
        /// Saved, and the store's file replaced (a checkpoint of a file store).
        Checkpoint,
        Busy,
        Full,
    }

    /// A store that answers saves from a script and remembers what it was given.
    #[derive(Default)]
    struct Fake {
        script: Mutex<VecDeque<Answer>>,
        saved: Mutex<Vec<String>>,
        /// The file a checkpoint replaces.
        file: Option<PathBuf>,
        finish_fails: bool,
    }

    impl Fake {
        fn new(script: Vec<Answer>) -> Fake {
            Fake {
                script: Mutex::new(script.into()),
                ..Fake::default()
            }
        }

        fn replace_file(&self) {
            let path = self.file.as_ref().unwrap();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{:?}", self.saved.lock().unwrap())).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }

    impl Store for Fake {
        async fn claim(&self, _n: usize) -> Result<Vec<Item>> {
            Ok(Vec::new())
        }
        async fn pending(&self) -> Result<u64> {
            Ok(0)
        }
        async fn save(&self, batch: Arc<[Verdict]>) -> Result<Saved> {
            if batch.is_empty() {
                return Ok(Saved::default());
            }
            let answer = self.script.lock().unwrap().pop_front();
            match answer {
                Some(Answer::Busy) => Err(anyhow::Error::new(Transient(true))),
                Some(Answer::Full) => Err(anyhow!("database or disk is full")),
                Some(Answer::Checkpoint) => {
                    let mut saved = self.saved.lock().unwrap();
                    saved.extend(batch.iter().map(|v| v.id.clone()));
                    drop(saved);
                    self.replace_file();
                    Ok(Saved::default())
                }
                Some(Answer::Saved(conflicts)) => {
                    let mut saved = self.saved.lock().unwrap();
                    for (i, v) in batch.iter().enumerate() {
                        if !conflicts.contains(&i) {
                            saved.push(v.id.clone());
                        }
                    }
                    Ok(Saved { conflicts })
                }
                None => {
                    let mut saved = self.saved.lock().unwrap();
                    saved.extend(batch.iter().map(|v| v.id.clone()));
                    Ok(Saved::default())
                }
            }
        }
        async fn finish(&self) -> Result<()> {
            if self.finish_fails {
                bail!("cannot write: No space left on device");
            }
            if self.file.is_some() {
                self.replace_file();
            }
            Ok(())
        }
        async fn status_counts(&self) -> Result<StatusCounts> {
            Ok(StatusCounts::default())
        }
        async fn status_all(&self) -> Result<Vec<(String, StatusCounts)>> {
            Ok(Vec::new())
        }
        async fn import(&self, _items: Vec<NewItem>, _reset: bool) -> Result<ImportCounts> {
            Ok(ImportCounts::default())
        }
    }

    fn verdict(id: &str) -> Verdict {
        Verdict {
            key: 0,
            id: id.into(),
            outcome: Outcome::Ok,
            http_status: Some(200),
            attempts: 1,
            error: None,
            checked_at: std::time::SystemTime::now(),
            elapsed: Duration::from_millis(3),
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    /// Runs the sink over `waves` of verdicts (a pause of two batch intervals between
    /// waves, so each wave is its own save); returns the summary, the report's `store`
    /// field per id, whether the run was halted, and what the store holds.
    async fn sink_over(
        store: Fake,
        waves: &[&[&str]],
    ) -> (Summary, Vec<(String, String)>, bool, Vec<String>) {
        let checkpointed = store.file.clone();
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("r.jsonl");
        let cfg = OutputConfig {
            report: Some(report.clone()),
            ..OutputConfig::default()
        };
        let outputs = OutputFiles::check(&cfg, None).unwrap().open("t").unwrap();
        let store = Arc::new(store);
        let halt = CancellationToken::new();
        let (tx, rx) = mpsc::channel(16);
        let progress = Arc::new(Progress::start(crate::cli::ProgressMode::Never, 0));
        let opts = SinkOptions {
            dry_run: false,
            retry_for: Duration::from_secs(60),
            checkpointed,
        };
        let sink = tokio::spawn(run(
            Arc::clone(&store),
            rx,
            Summary::new("t", "fake", false),
            outputs,
            progress,
            opts,
            halt.clone(),
        ));
        // Waves arrive half-way between two ticks (the clock is paused, so exactly), so a
        // tick never splits a wave into two saves.
        tokio::time::sleep(BATCH_INTERVAL * 5 / 2).await;
        for wave in waves {
            for id in *wave {
                tx.send(verdict(id)).await.unwrap();
            }
            tokio::time::sleep(BATCH_INTERVAL * 2).await;
        }
        drop(tx);
        let (summary, outputs) = sink.await.unwrap().finish(store.as_ref()).await;
        assert_eq!(outputs.finish(&summary), 0);
        let lines = std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["item_id"].as_str().unwrap().to_string(),
                    v["store"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let saved = store.saved.lock().unwrap().clone();
        (summary, lines, halt.is_cancelled(), saved)
    }

    fn stored(lines: &[(String, String)], what: &str) -> Vec<String> {
        let mut ids: Vec<String> = lines
            .iter()
            .filter(|(_, s)| s == what)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_are_counted_and_reported_per_item() {
        let store = Fake::new(vec![Answer::Saved(vec![1, 3])]);
        let (s, lines, halted, saved) = sink_over(store, &[&["a", "b", "c", "d", "e"]]).await;
        assert_eq!(
            (s.checked, s.written, s.conflicts, s.unwritten),
            (5, 3, 2, 0)
        );
        assert_eq!(stored(&lines, "conflict"), ["b", "d"]);
        assert_eq!(stored(&lines, "written"), ["a", "c", "e"]);
        assert_eq!(saved, ["a", "c", "e"]);
        assert!(!halted && s.store_error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_store_is_waited_out() {
        let store = Fake::new(vec![Answer::Busy, Answer::Busy, Answer::Busy]);
        let (s, lines, halted, saved) = sink_over(store, &[&["a", "b"], &["c"]]).await;
        assert_eq!((s.checked, s.written, s.unwritten), (3, 3, 0));
        assert_eq!(stored(&lines, "written"), ["a", "b", "c"]);
        assert_eq!(saved.len(), 3);
        assert!(!halted && s.store_error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_failure_halts_and_counts_the_unwritten() {
        let store = Fake::new(vec![Answer::Saved(vec![]), Answer::Full]);
        let (s, lines, halted, saved) = sink_over(store, &[&["a", "b"], &["c", "d"], &["e"]]).await;
        assert!(halted, "no new checks after the failure");
        assert!(s.store_error.as_deref().unwrap().contains("disk is full"));
        assert_eq!((s.checked, s.written, s.unwritten), (5, 2, 3));
        assert_eq!(stored(&lines, "written"), ["a", "b"]);
        assert_eq!(stored(&lines, "unwritten"), ["c", "d", "e"]);
        // Nothing was given to the store after it failed.
        assert_eq!(saved, ["a", "b"]);
        let line = s.store_failure_line().unwrap();
        assert!(
            line.contains("2 answers written, 3 could not be written"),
            "{line}"
        );
    }

    fn file_store(script: Vec<Answer>, dir: &tempfile::TempDir, finish_fails: bool) -> Fake {
        let file = dir.path().join("items.json");
        std::fs::write(&file, "[]").unwrap();
        Fake {
            file: Some(file),
            finish_fails,
            ..Fake::new(script)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpointed_store_counts_answers_written_once_its_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(
            vec![
                Answer::Saved(vec![]),
                Answer::Checkpoint,
                Answer::Saved(vec![]),
            ],
            &dir,
            false,
        );
        let (s, lines, _, _) = sink_over(store, &[&["a"], &["b"], &["c"]]).await;
        assert_eq!((s.written, s.unwritten), (3, 0));
        // The report lists a and b once the checkpoint with b was seen, c after finish.
        let order: Vec<&str> = lines.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert_eq!(stored(&lines, "written"), ["a", "b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_checkpointed_store_that_fails_counts_what_only_its_memory_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(
            vec![Answer::Checkpoint, Answer::Saved(vec![]), Answer::Full],
            &dir,
            true,
        );
        let (s, lines, halted, _) = sink_over(store, &[&["a"], &["b"], &["c"], &["d"]]).await;
        assert!(halted);
        // a reached the file; b was only in memory when the next write failed; c's write
        // failed; d came after the failure; the final write failed too.
        assert_eq!((s.checked, s.written, s.unwritten), (4, 1, 3));
        assert_eq!(stored(&lines, "written"), ["a"]);
        assert_eq!(stored(&lines, "unwritten"), ["b", "c", "d"]);
    }

    #[test]
    fn messages_fit_on_one_line() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
    }
}
