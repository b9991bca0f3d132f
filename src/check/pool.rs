//! Stage "check", scheduling part: takes items from a channel and runs their checks
//! concurrently, handing verdicts to the sink's channel. Bounds the items in progress (so
//! memory is O(concurrency)); the fetcher bounds the requests in flight. On stop it takes no
//! new item, gives in-flight checks `grace`, then abandons them: an abandoned item sends no
//! verdict and keeps its status. A panic in one check becomes that item's error. Never sees
//! the store.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
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

/// An item's place in the pool: held from the start of its check to its end. An item about
/// to wait out a backoff moves to the retry room ([`Slot::to_retry`]), so items waiting to
/// retry do not keep new items from starting (a hang further on is found early), while the
/// items waiting for their first request stay few and in claim order.
pub struct Slot {
    first: Option<OwnedSemaphorePermit>,
    room: Arc<Semaphore>,
    retry: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Moves to the retry room (waiting while it is full, still holding the first slot),
    /// then frees the first slot for a new item. Once moved, it stays.
    pub async fn to_retry(&mut self) {
        if self.retry.is_some() {
            return;
        }
        if let Ok(p) = Arc::clone(&self.room).acquire_owned().await {
            self.retry = Some(p);
            self.first = None;
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
/// `max_in_progress` bounds the items being checked at once before their first retry; it
/// is larger than the request bound so every request slot has an item ready. `retry_room`
/// bounds the items that moved on to retrying ([`Slot::to_retry`]). `check` gets the item's
/// [`Slot`] and keeps it until it ends: dropping it lets another item start.
///
/// The checks are futures of this one task (a `FuturesUnordered`), not a task each: on the
/// one-thread runtime that saves the task's allocation, its scheduling and the join
/// bookkeeping on every item (BENCHMARKS.md, "CPU per check"); a check's wake-up polls
/// that check only. A panic in a check is caught around its poll.
pub async fn run<C, F>(
    check: Arc<C>,
    items: mpsc::Receiver<Item>,
    verdicts: mpsc::Sender<Verdict>,
    (max_in_progress, retry_room): (usize, usize),
    stop: CancellationToken,
    grace: Duration,
) -> PoolStats
where
    C: Fn(Item, Slot) -> F + Send + Sync + 'static,
    F: Future<Output = Option<Verdict>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_in_progress.max(1)));
    let room = Arc::new(Semaphore::new(retry_room.max(1)));
    let mut running = FuturesUnordered::new();
    // The next item and a place for it: one future, kept across the loop's turns (made
    // again only once it has given both), so a check's wake-up does not make it again.
    let mut next = Box::pin(next_item(Arc::clone(&slots), items));
    let mut open = true;
    let mut turns = 0u32;
    loop {
        if stop.is_cancelled() {
            break;
        }
        if !open && running.is_empty() {
            return PoolStats::default();
        }
        // Every few turns, the other tasks get theirs: a connection that a finished check
        // gave up is closed by its own task, and until that runs its socket stays open.
        // Without this, one poll of the pool could finish dozens of checks and start as
        // many new connections first (seen: "Too many open files" with the idle budget at
        // 0, tests/it/limits.rs).
        turns += 1;
        if turns.is_multiple_of(YIELD_EVERY) {
            tokio::task::yield_now().await;
        }
        tokio::select! {
            biased;
            Some(()) = running.next(), if !running.is_empty() => {}
            (got, rest) = &mut next, if open => match got {
                Some((permit, item)) => {
                    next = Box::pin(next_item(Arc::clone(&slots), rest));
                    if stop.is_cancelled() {
                        break;
                    }
                    let slot = Slot {
                        first: Some(permit),
                        room: Arc::clone(&room),
                        retry: None,
                    };
                    let (key, id) = (item.key, item.id.clone());
                    running.push(Checking::new(key, id, check(item, slot), verdicts.clone()));
                }
                None => open = false,
            },
            _ = stop.cancelled() => break,
        }
    }
    // No item is taken any more: the feeder sees the channel closed.
    drop(next);
    finish_after_grace(running, grace).await
}

/// Turns of the pool's loop (a check finished or started) between two yields to the other
/// tasks; well under the open-files reserve (`limits::OTHER_FDS`) for sockets a finished
/// check left to close.
const YIELD_EVERY: u32 = 32;

/// A place in the pool, then an item for it (`None`: the items ran out); gives the
/// receiver back for the next one.
async fn next_item(
    slots: Arc<Semaphore>,
    mut items: mpsc::Receiver<Item>,
) -> (Option<(OwnedSemaphorePermit, Item)>, mpsc::Receiver<Item>) {
    let Ok(permit) = slots.acquire_owned().await else {
        return (None, items);
    };
    let got = items.recv().await.map(|item| (permit, item));
    (got, items)
}

/// After a stop: in-flight checks get `grace` to finish, then are abandoned.
async fn finish_after_grace<F>(
    mut running: FuturesUnordered<Checking<F>>,
    grace: Duration,
) -> PoolStats
where
    F: Future<Output = Option<Verdict>>,
{
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        if running.is_empty() {
            return PoolStats::default();
        }
        if tokio::time::timeout_at(deadline, running.next())
            .await
            .is_err()
        {
            // Dropped with the set: an abandoned check sends nothing.
            return PoolStats {
                abandoned: running.len() as u64,
            };
        }
    }
}

pin_project_lite::pin_project! {
    /// One item's check: sends its verdict when it has one, and turns a panic into that
    /// item's error verdict.
    struct Checking<F> {
        #[pin]
        check: F,
        // The verdict being sent (the sink's channel was full).
        sending: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        verdicts: mpsc::Sender<Verdict>,
        key: ItemKey,
        id: String,
        done: bool,
    }
}

impl<F> Checking<F> {
    fn new(key: ItemKey, id: String, check: F, verdicts: mpsc::Sender<Verdict>) -> Self {
        Checking {
            check,
            sending: None,
            verdicts,
            key,
            id,
            done: false,
        }
    }
}

impl<F: Future<Output = Option<Verdict>>> Future for Checking<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if !*this.done {
            let check = this.check.as_mut();
            let verdict = match panic::catch_unwind(AssertUnwindSafe(|| check.poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(v)) => v,
                Err(payload) => {
                    let msg = panic_message(payload);
                    tracing::error!(id = %this.id, "check panicked: {msg}");
                    Some(panicked(*this.key, std::mem::take(this.id), &msg))
                }
            };
            *this.done = true;
            let Some(v) = verdict else {
                return Poll::Ready(());
            };
            // Most sends find room: no future for them.
            match this.verdicts.try_send(v) {
                Ok(()) => return Poll::Ready(()),
                // The sink only goes away when the run is failing anyway.
                Err(mpsc::error::TrySendError::Closed(_)) => return Poll::Ready(()),
                Err(mpsc::error::TrySendError::Full(v)) => {
                    let tx = this.verdicts.clone();
                    *this.sending = Some(Box::pin(async move {
                        let _ = tx.send(v).await;
                    }));
                }
            }
        }
        match this.sending.as_mut() {
            Some(send) => send.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// The verdict of a check that panicked.
fn panicked(key: ItemKey, id: String, msg: &str) -> Verdict {
    Verdict {
        key,
        id,
        outcome: Outcome::Error,
        http_status: None,
        attempts: 0,
        error: Some(format!("internal error: check panicked: {msg}")),
        checked_at: SystemTime::now(),
        elapsed: Duration::ZERO,
        url: None,
        next_check_at: None,
        host_limit: None,
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
        let check = Arc::new(|item: Item, slot: Slot| async move {
            let _slot = slot;
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
            (4, 4),
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

    /// Runs `n` items through the pool with `bounds`, each holding its check for `hold`
    /// (after moving to the retry room when `retrying`); the verdicts received and the most
    /// checks that were past that point at once.
    async fn peak_of(
        n: i64,
        bounds: (usize, usize),
        hold: Duration,
        retrying: bool,
    ) -> (usize, usize) {
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (n_, p) = (Arc::clone(&now), Arc::clone(&peak));
        let check = Arc::new(move |item: Item, mut slot: Slot| {
            let (n, p) = (Arc::clone(&n_), Arc::clone(&p));
            async move {
                if retrying {
                    slot.to_retry().await;
                }
                let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(cur, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                n.fetch_sub(1, Ordering::SeqCst);
                drop(slot);
                Some(ok(&item))
            }
        });
        let (vtx, mut vrx) = mpsc::channel(1000);
        run(
            check,
            feed(n).await,
            vtx,
            bounds,
            CancellationToken::new(),
            Duration::from_secs(1),
        )
        .await;
        let mut count = 0;
        while vrx.recv().await.is_some() {
            count += 1;
        }
        (count, peak.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn in_progress_is_bounded() {
        let (count, peak) = peak_of(200, (5, 5), Duration::from_millis(2), false).await;
        assert_eq!(count, 200);
        assert_eq!(peak, 5);
    }

    #[tokio::test]
    async fn retrying_items_leave_their_place_to_new_ones() {
        // Every item "retries" for 30 ms: with 2 places and a room of 20, up to 20 retry at
        // once (not 2), and never more.
        let (count, peak) = peak_of(100, (2, 20), Duration::from_millis(30), true).await;
        assert_eq!(count, 100);
        assert!(peak > 2 && peak <= 20, "{peak} retrying at once");
    }

    #[tokio::test]
    async fn stop_abandons_after_grace() {
        let stop = CancellationToken::new();
        let check = Arc::new(|item: Item, slot: Slot| async move {
            let _slot = slot;
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
            (100, 100),
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
