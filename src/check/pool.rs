//! Stage "check", scheduling part: takes items from a channel and runs their checks
//! concurrently, handing verdicts to the sink's channel. Bounds the items in progress (so
//! memory is O(concurrency)); the fetcher bounds the requests in flight. On stop it takes no
//! new item, gives in-flight checks `grace`, then abandons them: an abandoned item sends no
//! verdict and keeps its status. A panic in one check becomes that item's error. Never sees
//! the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::fetch::Fetcher;
use super::template::{self, UrlTemplate};
use crate::model::{Item, ItemKey, Outcome, Verdict};

/// Where an item's URL comes from.
#[derive(Debug, Clone)]
pub enum UrlSource {
    /// `--url TEMPLATE`.
    Template(UrlTemplate),
    /// The item's own url column.
    ItemColumn,
}

/// What the pool did, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Checks abandoned when the run stopped (their items keep their status).
    pub abandoned: u64,
}

/// Runs checks until `items` is closed, or `stop` fires.
///
/// `max_in_progress` bounds the items being checked at once, sleeping retries included;
/// it is larger than the request bound so retries waiting out a backoff leave the request
/// slots to other items.
pub async fn run(
    fetcher: Arc<Fetcher>,
    urls: Arc<UrlSource>,
    mut items: mpsc::Receiver<Item>,
    verdicts: mpsc::Sender<Verdict>,
    max_in_progress: usize,
    stop: CancellationToken,
    grace: Duration,
) -> PoolStats {
    let slots = Arc::new(Semaphore::new(max_in_progress.max(1)));
    let mut tasks = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, (ItemKey, String)> = HashMap::new();
    loop {
        // A permit first, then an item: an item is never taken without a place to run it.
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            item = items.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let (key, id) = (item.key, item.id.clone());
        let fetcher = Arc::clone(&fetcher);
        let urls = Arc::clone(&urls);
        let tx = verdicts.clone();
        let stop = stop.clone();
        let handle = tasks.spawn(async move {
            let url = match &*urls {
                UrlSource::Template(t) => t.render(&item),
                UrlSource::ItemColumn => template::item_url(&item),
            };
            if let Some(v) = fetcher.check(&item, url, &stop).await {
                // The sink only goes away when the run is failing anyway.
                let _ = tx.send(v).await;
            }
            drop(permit);
        });
        running.insert(handle.id(), (key, id));
        while let Some(done) = tasks.try_join_next_with_id() {
            reap(done, &mut running, &verdicts).await;
        }
    }
    drop(items);
    if !stop.is_cancelled() {
        // Items ran out: wait for the checks, unless a stop comes meanwhile.
        loop {
            tokio::select! {
                done = tasks.join_next_with_id() => match done {
                    Some(done) => reap(done, &mut running, &verdicts).await,
                    None => return PoolStats::default(),
                },
                _ = stop.cancelled() => break,
            }
        }
    }
    finish_after_grace(tasks, running, verdicts, grace).await
}

/// After a stop: in-flight checks get `grace` to finish, then are abandoned.
async fn finish_after_grace(
    mut tasks: JoinSet<()>,
    mut running: HashMap<tokio::task::Id, (ItemKey, String)>,
    verdicts: mpsc::Sender<Verdict>,
    grace: Duration,
) -> PoolStats {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
            Ok(Some(done)) => reap(done, &mut running, &verdicts).await,
            Ok(None) => return PoolStats::default(),
            Err(_) => {
                let abandoned = tasks.len() as u64;
                tasks.abort_all();
                return PoolStats { abandoned };
            }
        }
    }
}

/// Forgets a finished task; a panicked one becomes its item's error verdict.
async fn reap(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    running: &mut HashMap<tokio::task::Id, (ItemKey, String)>,
    verdicts: &mpsc::Sender<Verdict>,
) {
    match done {
        Ok((id, ())) => {
            running.remove(&id);
        }
        Err(e) => {
            let Some((key, item_id)) = running.remove(&e.id()) else {
                return;
            };
            if e.is_panic() {
                let msg = panic_message(e.into_panic());
                tracing::error!(id = %item_id, "check panicked: {msg}");
                let _ = verdicts
                    .send(Verdict {
                        key,
                        id: item_id,
                        outcome: Outcome::Error,
                        http_status: None,
                        attempts: 0,
                        error: Some(format!("internal error: check panicked: {msg}")),
                        checked_at: SystemTime::now(),
                        elapsed: Duration::ZERO,
                    })
                    .await;
            }
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".into()
    }
}
