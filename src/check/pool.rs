//! Stage "check", scheduling part: takes items from a channel and runs their checks
//! concurrently, handing verdicts to the sink's channel. Bounds the items in progress (so
//! memory is O(concurrency)); the fetcher bounds the requests in flight. On stop it takes no
//! new item, gives in-flight checks `grace`, then abandons them: an abandoned item sends no
//! verdict and keeps its status. A panic in one check becomes that item's error. Never sees
//! the store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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

impl UrlSource {
    /// The item's URL, or why it has none (an item error).
    pub fn url_for(&self, item: &Item) -> Result<url::Url, String> {
        match self {
            UrlSource::Template(t) => t.render(item),
            UrlSource::ItemColumn => template::item_url(item),
        }
    }
}

/// What the pool did, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Checks abandoned when the run stopped (their items keep their status).
    pub abandoned: u64,
}

/// Runs `check` on every item until `items` is closed, or `stop` fires. `check` returns
/// `None` when it gave up because of the stop (the item then keeps its status).
///
/// `max_in_progress` bounds the items being checked at once, sleeping retries included;
/// it is larger than the request bound so retries waiting out a backoff leave the request
/// slots to other items.
pub async fn run<C, F>(
    check: Arc<C>,
    mut items: mpsc::Receiver<Item>,
    verdicts: mpsc::Sender<Verdict>,
    max_in_progress: usize,
    stop: CancellationToken,
    grace: Duration,
) -> PoolStats
where
    C: Fn(Item) -> F + Send + Sync + 'static,
    F: Future<Output = Option<Verdict>> + Send + 'static,
{
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
        let fut = check(item);
        let tx = verdicts.clone();
        let handle = tasks.spawn(async move {
            if let Some(v) = fut.await {
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
                        url: None,
                        next_check_at: None,
                        host_limit: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn item(i: i64) -> Item {
        Item {
            key: i,
            id: format!("i{i}"),
            url: None,
            fields: vec![],
            checks: 0,
            first_checked_at: None,
        }
    }

    fn ok(item: &Item) -> Verdict {
        Verdict {
            key: item.key,
            id: item.id.clone(),
            outcome: Outcome::Ok,
            http_status: Some(200),
            attempts: 1,
            error: None,
            checked_at: SystemTime::now(),
            elapsed: Duration::ZERO,
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    async fn feed(n: i64) -> mpsc::Receiver<Item> {
        let (tx, rx) = mpsc::channel(n.max(1) as usize);
        for i in 0..n {
            tx.send(item(i)).await.unwrap();
        }
        rx
    }

    #[tokio::test]
    async fn a_panic_is_that_items_error_and_the_rest_go_on() {
        let check = Arc::new(|item: Item| async move {
            if item.key == 3 {
                panic!("boom on {}", item.id);
            }
            Some(ok(&item))
        });
        let (vtx, mut vrx) = mpsc::channel(100);
        let stats = run(
            check,
            feed(10).await,
            vtx,
            4,
            CancellationToken::new(),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(stats, PoolStats::default());
        let mut got = Vec::new();
        while let Some(v) = vrx.recv().await {
            got.push(v);
        }
        assert_eq!(got.len(), 10);
        let bad: Vec<_> = got.iter().filter(|v| v.outcome == Outcome::Error).collect();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].id, "i3");
        assert!(
            bad[0]
                .error
                .as_deref()
                .unwrap()
                .contains("panicked: boom on i3")
        );
    }

    #[tokio::test]
    async fn in_progress_is_bounded() {
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (n, p) = (Arc::clone(&now), Arc::clone(&peak));
        let check = Arc::new(move |item: Item| {
            let (n, p) = (Arc::clone(&n), Arc::clone(&p));
            async move {
                let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(cur, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Some(ok(&item))
            }
        });
        let (vtx, mut vrx) = mpsc::channel(1000);
        run(
            check,
            feed(200).await,
            vtx,
            5,
            CancellationToken::new(),
            Duration::from_secs(1),
        )
        .await;
        let mut count = 0;
        while vrx.recv().await.is_some() {
            count += 1;
        }
        assert_eq!(count, 200);
        assert_eq!(peak.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn stop_abandons_after_grace() {
        let stop = CancellationToken::new();
        let check = Arc::new(|item: Item| async move {
            if item.key % 2 == 0 {
                std::future::pending::<()>().await;
            }
            Some(ok(&item))
        });
        let (vtx, mut vrx) = mpsc::channel(100);
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s2.cancel();
        });
        let started = std::time::Instant::now();
        let stats = run(
            check,
            feed(10).await,
            vtx,
            100,
            stop,
            Duration::from_millis(100),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(stats.abandoned, 5);
        let mut count = 0;
        while vrx.recv().await.is_some() {
            count += 1;
        }
        assert_eq!(
            count, 5,
            "the odd items answered; the hanging ones sent nothing"
        );
    }
}
