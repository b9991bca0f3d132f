//! Stage "sink": the single writer. Owns the verdict receiver, folds every verdict into the
//! [`Summary`], and saves them to the store in batches (a few hundred rows, or every
//! ~200 ms, whichever comes first). One save runs while the next batch fills, so workers
//! never wait on the disk. Never does HTTP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::model::Verdict;
use crate::report::{OutputFiles, Progress, Summary};
use crate::store::Store;

/// Most verdicts written in one transaction.
pub const BATCH_ROWS: usize = 1000;
/// Longest a verdict waits before its batch is written.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Receives verdicts until every sender is gone; returns the folded summary and the output
/// files to finish. A store or output error ends the sink (the caller stops the run).
pub async fn run<S: Store>(
    store: Arc<S>,
    mut rx: mpsc::Receiver<Verdict>,
    mut summary: Summary,
    mut outputs: OutputFiles,
    progress: Arc<Progress>,
    dry_run: bool,
) -> Result<(Summary, OutputFiles)> {
    let mut batch: Vec<Verdict> = Vec::with_capacity(BATCH_ROWS);
    let mut saving: Option<JoinHandle<Result<()>>> = None;
    let mut tick = tokio::time::interval(BATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush = tokio::select! {
            v = rx.recv() => match v {
                Some(v) => {
                    summary.add(&v);
                    progress.record(&v);
                    outputs.record(&v)?;
                    if !dry_run {
                        batch.push(v);
                    }
                    batch.len() >= BATCH_ROWS
                }
                None => break,
            },
            // An empty save still lets file stores checkpoint what they hold in memory.
            _ = tick.tick() => saving.as_ref().is_none_or(JoinHandle::is_finished),
        };
        if flush {
            // At most one save in flight: wait for the previous one, then start this one.
            if let Some(prev) = saving.take() {
                prev.await.context("store writer task failed")??;
            }
            let page = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
            let store = Arc::clone(&store);
            saving = Some(tokio::spawn(
                async move { store.save(page).await.map(|_| ()) },
            ));
        }
    }
    if let Some(prev) = saving.take() {
        prev.await.context("store writer task failed")??;
    }
    if !batch.is_empty() {
        store.save(batch).await?;
    }
    Ok((summary, outputs))
}
