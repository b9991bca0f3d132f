//! Stage "check", admission: the run's request slots (`--concurrency`) and who gets the next
//! free one. While first attempts wait, retries may hold at most a quarter of the slots;
//! below that share a waiting retry goes first, above it the first attempts do. Among
//! waiting retries the one with the fewest attempts goes first, then the oldest.
//!
//! Why: a hang is found only by an item's first attempt, and its retry chain (several
//! timeouts in a row) is what ends a run late. First attempts going first find every hang
//! early; the retries' share keeps the chains of the hangs found so far running meanwhile,
//! and "fewest attempts first" starts the longest remaining chains first. `bench/flaky_sim.py`
//! compares this with the other orders tried (BENCHMARKS.md, "flaky").

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The request slots shared by every check of the run.
pub(crate) struct Slots {
    state: Mutex<State>,
    /// Retries in flight allowed while first attempts wait.
    retry_share: usize,
}

struct State {
    free: usize,
    retries_in_flight: usize,
    firsts: VecDeque<oneshot::Sender<()>>,
    retries: BinaryHeap<Reverse<RetryWaiter>>,
    seq: u64,
}

/// A retry waiting for a slot, ordered by (attempt, arrival).
struct RetryWaiter {
    attempt: u32,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for RetryWaiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for RetryWaiter {}

impl PartialOrd for RetryWaiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RetryWaiter {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.attempt, self.seq).cmp(&(other.attempt, other.seq))
    }
}

/// One slot held; dropping it hands the slot to the next waiter.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    retry: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.retry);
    }
}

/// A wait for a slot; if dropped after the slot was handed over, it hands the slot on.
struct Pending {
    slots: Arc<Slots>,
    rx: Option<oneshot::Receiver<()>>,
    retry: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.slots.release(self.retry);
            }
        }
    }
}

impl Slots {
    /// `concurrency` slots (at least one); retries may hold a quarter of them (at least
    /// one) while first attempts wait.
    pub(crate) fn new(concurrency: usize) -> Arc<Slots> {
        let n = concurrency.max(1);
        Arc::new(Slots {
            state: Mutex::new(State {
                free: n,
                retries_in_flight: 0,
                firsts: VecDeque::new(),
                retries: BinaryHeap::new(),
                seq: 0,
            }),
            retry_share: n.div_ceil(4),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot for an item's `attempt` (1: its first).
    pub(crate) async fn acquire(self: &Arc<Self>, attempt: u32) -> Slot {
        let retry = attempt > 1;
        let rx = {
            let mut s = self.lock();
            // A free slot means nobody is waiting (a freed slot goes to a waiter first).
            if s.free > 0 {
                s.free -= 1;
                s.retries_in_flight += usize::from(retry);
                return Slot {
                    slots: Arc::clone(self),
                    retry,
                };
            }
            let (tx, rx) = oneshot::channel();
            if retry {
                s.seq += 1;
                let seq = s.seq;
                s.retries.push(Reverse(RetryWaiter { attempt, seq, tx }));
            } else {
                s.firsts.push_back(tx);
            }
            rx
        };
        let mut pending = Pending {
            slots: Arc::clone(self),
            rx: Some(rx),
            retry,
        };
        if let Some(rx) = pending.rx.as_mut() {
            // The sender is dropped only after a send or with the whole `Slots`, which
            // `pending` keeps alive: an error cannot happen.
            let _ = rx.await;
        }
        pending.rx = None;
        Slot {
            slots: Arc::clone(self),
            retry,
        }
    }

    /// A slot held by a `retry` (or a first attempt) came free: hand it to the next waiter,
    /// or keep it free.
    fn release(&self, retry: bool) {
        let mut s = self.lock();
        s.retries_in_flight -= usize::from(retry);
        loop {
            let retry_goes = !s.retries.is_empty()
                && (s.retries_in_flight < self.retry_share || s.firsts.is_empty());
            if retry_goes {
                if let Some(Reverse(w)) = s.retries.pop()
                    && w.tx.send(()).is_ok()
                {
                    s.retries_in_flight += 1;
                    return;
                }
            } else if let Some(tx) = s.firsts.pop_front() {
                if tx.send(()).is_ok() {
                    return;
                }
            } else {
                s.free += 1;
                return;
            }
            // That waiter had given up (a stop): the next one.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Queues `attempts` in this order behind the held slots, then frees `held` one by one
    /// and returns the order in which the waiters got a slot (each keeps its slot).
    async fn order(
        concurrency: usize,
        held: usize,
        attempts: &[(&'static str, u32)],
    ) -> Vec<&'static str> {
        let slots = Slots::new(concurrency);
        let mut holding = Vec::new();
        for _ in 0..held {
            holding.push(slots.acquire(1).await);
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut keep = Vec::new();
        for &(name, attempt) in attempts {
            let (slots, got) = (Arc::clone(&slots), Arc::clone(&got));
            keep.push(tokio::spawn(async move {
                let slot = slots.acquire(attempt).await;
                got.lock().unwrap().push(name);
                slot
            }));
            tokio::task::yield_now().await;
        }
        for slot in holding {
            drop(slot);
            tokio::task::yield_now().await;
        }
        let mut slots_now = Vec::new();
        for k in keep {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), k).await {
                slots_now.push(s);
            }
        }
        let result = got.lock().unwrap().clone();
        drop(slots_now);
        result
    }

    #[tokio::test]
    async fn first_attempts_go_before_retries_beyond_the_retries_share() {
        // 4 slots: retries may hold 1 while first attempts wait. The first freed slot goes
        // to a retry (none in flight), the next ones to first attempts.
        let got = order(
            4,
            4,
            &[
                ("first-1", 1),
                ("retry-a", 2),
                ("retry-b", 2),
                ("first-2", 1),
                ("first-3", 1),
            ],
        )
        .await;
        assert_eq!(got, ["retry-a", "first-1", "first-2", "first-3"]);
    }

    #[tokio::test]
    async fn the_retry_with_the_fewest_attempts_goes_first() {
        let got = order(1, 1, &[("third", 3), ("sixth", 6), ("second", 2)]).await;
        assert_eq!(got, ["second"]);
        let got = order(
            2,
            2,
            &[
                ("sixth", 6),
                ("third", 3),
                ("second", 2),
                ("second-later", 2),
            ],
        )
        .await;
        // Slot 1 to "second"; with no first attempt waiting, slot 2 to the next retry.
        assert_eq!(got, ["second", "second-later"]);
    }

    #[tokio::test]
    async fn a_retry_takes_a_free_slot_when_no_first_attempt_waits() {
        let slots = Slots::new(1);
        let s = slots.acquire(1).await;
        let retry = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire(2).await })
        };
        tokio::task::yield_now().await;
        drop(s);
        let r = tokio::time::timeout(Duration::from_secs(5), retry).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "the retry did not get the freed slot"
        );
        // And at once when a slot is free.
        let slots = Slots::new(2);
        let _a = slots.acquire(1).await;
        let _b = tokio::time::timeout(Duration::from_secs(5), slots.acquire(5))
            .await
            .expect("a retry waited with a slot free");
    }

    #[tokio::test]
    async fn a_wait_given_up_loses_no_slot() {
        let slots = Slots::new(1);
        let held = slots.acquire(1).await;
        // Given up before the slot frees…
        let gave_up = tokio::time::timeout(Duration::from_millis(10), slots.acquire(1)).await;
        assert!(gave_up.is_err());
        // …and one that is handed the slot but dropped before it runs again.
        let mut handed = Box::pin(slots.acquire(1));
        assert!(futures_poll_once(handed.as_mut()).await.is_none());
        drop(held);
        drop(handed);
        // The one slot is still there.
        let _again = tokio::time::timeout(Duration::from_secs(5), slots.acquire(1))
            .await
            .expect("a slot was lost to a wait that gave up");
        assert_eq!(slots.lock().free, 0);
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
