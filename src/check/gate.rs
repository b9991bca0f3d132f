//! Stage "check", admission: decides when a request may start. Holds the bound on requests
//! in flight (`--concurrency`), the start rate (`--rate`), the pause a host asked for with
//! `Retry-After`, and each host's limit and circuit ([`super::hosts`]: `--per-host`,
//! `--adaptive`, `--circuit`). A request waits here without holding anything it has not
//! been admitted to. Knows nothing of items or stores.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::hosts::{Deferred, HostPermit, HostPolicy, HostSummary, Hosts, Signal};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

/// `--rate`: at most `count` request starts per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts allowed per period.
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parses `200`, `200/s`, `5000/m`, `100/h`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        let (n, unit) = t.split_once('/').unwrap_or((t, "s"));
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => {
                return Err(format!(
                    "{s:?}: unknown period {other:?} (use /s, /m or /h)"
                ));
            }
        };
        let count = n
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| format!("{s:?} is not a rate like 200, 200/s or 5000/m"))?;
        Ok(Rate { count, per })
    }
}

/// The admission gate shared by every check of the run.
pub struct Gate {
    in_flight: Arc<Semaphore>,
    /// Each host's limit and circuit, when anything about hosts is on (`--per-host` below
    /// `--concurrency`, `--adaptive`, `--circuit`); else admissions skip the host table
    /// unless a host asked for a pause.
    hosts: Option<Hosts>,
    /// Some host asked for a pause: from then on every admission looks its host up.
    any_pause: AtomicBool,
    paused: Mutex<HashMap<String, Instant>>,
    rate: Option<DefaultDirectRateLimiter>,
    /// First attempts before retries for the global slots. (Not for a host's slots: a
    /// retry holding one while it waits for the first attempts to other hosts could hold
    /// back that host's first attempts.)
    first: FirstAttempts,
}

/// Permission to have one request in flight; dropping it frees the slots. Tell it how the
/// attempt ended with [`Admission::done`].
pub struct Admission {
    host: Option<HostPermit>,
    _global: OwnedSemaphorePermit,
}

impl Admission {
    /// The host's limit when the request was admitted (`None`: no per-host limit).
    pub fn host_limit(&self) -> Option<usize> {
        self.host.as_ref().map(|h| h.limit)
    }

    /// How the attempt ended (`retry`: not the item's first attempt): feeds the host's
    /// adaptive limit, circuit and statistics.
    pub fn done(self, signal: Signal, retry: bool) {
        if let Some(h) = self.host {
            h.done(signal, retry);
        }
    }
}

/// Why [`Gate::admit`] admitted nothing.
#[derive(Debug)]
pub enum Refused {
    /// The run is stopping.
    Cancelled,
    /// The host's circuit is open: the item is deferred.
    Deferred(Deferred),
}

impl Gate {
    /// A gate for `concurrency` requests in flight, at most `per_host` of them to one host,
    /// started at most at `rate`.
    pub fn new(
        concurrency: usize,
        per_host: Option<usize>,
        rate: Option<Rate>,
        adaptive: bool,
        circuit: u32,
    ) -> Gate {
        let rate = rate.map(|r| {
            // Evenly spaced starts (a burst of one): "at most R per second" holds for every
            // window, not just on average.
            let every = r.per / r.count.get();
            let quota = Quota::with_period(every.max(Duration::from_nanos(1)))
                .unwrap_or_else(|| Quota::per_second(r.count));
            RateLimiter::direct(quota)
        });
        let per_host = per_host.filter(|&n| n < concurrency);
        let hosts = (per_host.is_some() || adaptive || circuit > 0).then(|| {
            Hosts::new(HostPolicy {
                max: per_host.unwrap_or(concurrency),
                adaptive,
                circuit,
            })
        });
        Gate {
            in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
            hosts,
            any_pause: AtomicBool::new(false),
            paused: Mutex::new(HashMap::new()),
            rate,
            first: FirstAttempts::default(),
        }
    }

    /// Waits until a request to `url` may start: the host's pause, the rate, a slot of the
    /// host (its limit and circuit), then a global slot. A `retry` (not the item's first
    /// attempt) takes a global slot only when no first attempt is waiting for one.
    pub async fn admit(
        &self,
        url: &Url,
        retry: bool,
        cancel: &CancellationToken,
    ) -> Result<Admission, Refused> {
        let wait = async {
            loop {
                let paused = self.any_pause.load(Ordering::Relaxed);
                let key = (self.hosts.is_some() || paused).then(|| host_key(url));
                if paused && let Some(key) = &key {
                    while let Some(t) = self.paused_until(key) {
                        tokio::time::sleep_until(t).await;
                    }
                }
                if let Some(rate) = &self.rate {
                    rate.until_ready().await;
                }
                let host = match (&self.hosts, &key) {
                    (Some(hosts), Some(key)) => {
                        Some(hosts.get(key).acquire().await.map_err(Refused::Deferred)?)
                    }
                    _ => None,
                };
                let global = self
                    .first
                    .in_turn(retry, Arc::clone(&self.in_flight).acquire_owned())
                    .await
                    .map_err(|_| Refused::Cancelled)?;
                // The host may have asked for a pause while this one waited for its slots:
                // nothing new starts before the pause is over.
                // (The host's key is looked up once, unless the first pause came meanwhile.)
                let paused_now = self.any_pause.load(Ordering::Relaxed)
                    && match &key {
                        Some(key) => self.paused_until(key),
                        None => self.paused_until(&host_key(url)),
                    }
                    .is_some();
                if paused_now {
                    continue;
                }
                return Ok(Admission {
                    host,
                    _global: global,
                });
            }
        };
        tokio::select! {
            a = wait => a,
            _ = cancel.cancelled() => Err(Refused::Cancelled),
        }
    }

    /// When the pause `key`'s host asked for ends, if it is not over.
    fn paused_until(&self, key: &str) -> Option<Instant> {
        let until = self
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied();
        until.filter(|&t| t > Instant::now())
    }

    /// The host of `url` asked for a break (`Retry-After`): no new request to it for `d`.
    pub fn pause_host(&self, url: &Url, d: Duration) {
        self.any_pause.store(true, Ordering::Relaxed);
        let until = Instant::now() + d;
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        let p = paused.entry(host_key(url)).or_insert(until);
        if *p < until {
            *p = until;
        }
    }

    /// The hosts whose adaptive limit is below its bound, for the progress line:
    /// `api:443 9/50, cdn:443 3/50` (the three lowest), or empty.
    pub fn limits_below_bound(&self) -> String {
        let Some(hosts) = &self.hosts else {
            return String::new();
        };
        let mut low: Vec<(usize, usize, String)> = hosts
            .limits()
            .into_iter()
            .filter(|(_, limit, max)| limit < max)
            .map(|(h, l, m)| (l, m, h))
            .collect();
        low.sort();
        let more = low.len().saturating_sub(3);
        let mut text: Vec<String> = low
            .iter()
            .take(3)
            .map(|(l, m, h)| format!("{h} {l}/{m}"))
            .collect();
        if more > 0 {
            text.push(format!("{more} more"));
        }
        text.join(", ")
    }

    /// Every host's line of the summary (empty without per-host limits or circuits).
    pub fn host_summaries(&self) -> Vec<HostSummary> {
        self.hosts.as_ref().map_or_else(Vec::new, Hosts::summaries)
    }
}

/// First attempts before retries, for the global request slots: while a first attempt waits for a slot, retries wait. So every item's first answer comes
/// early (a hang is found in the first seconds, not at the end), and the retry chains
/// overlap with the rest of the run. One retry at a time queues for a slot: a first attempt
/// that comes later waits behind at most that one.
#[derive(Default)]
struct FirstAttempts {
    waiting: AtomicUsize,
    retries_waiting: AtomicUsize,
    gone: Notify,
    lane: Lane,
}

/// The one place in line for retries.
struct Lane(Semaphore);

impl Default for Lane {
    fn default() -> Lane {
        Lane(Semaphore::new(1))
    }
}

impl FirstAttempts {
    /// Waits for `slot` in turn: a first attempt at once, a `retry` once no first attempt
    /// waits.
    async fn in_turn<T>(&self, retry: bool, slot: impl Future<Output = T>) -> T {
        if retry {
            let _lane = self.lane.0.acquire().await;
            self.gone().await;
            slot.await
        } else {
            let _waiting = Waiting::new(self);
            slot.await
        }
    }

    /// Returns when no first attempt waits.
    async fn gone(&self) {
        // SeqCst on both counters (here and in `Waiting::drop`): either this sees the last
        // first attempt gone, or that one sees this retry waiting and wakes it.
        self.retries_waiting.fetch_add(1, Ordering::SeqCst);
        let _done = scopeguard(|| {
            self.retries_waiting.fetch_sub(1, Ordering::SeqCst);
        });
        super::wait_until(&self.gone, || self.waiting.load(Ordering::SeqCst) == 0).await;
    }
}

/// A first attempt waiting (counted while it waits, also when the wait is dropped by a
/// stop).
struct Waiting<'a>(&'a FirstAttempts);

impl<'a> Waiting<'a> {
    fn new(f: &'a FirstAttempts) -> Waiting<'a> {
        f.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(f)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let f = self.0;
        if f.waiting.fetch_sub(1, Ordering::SeqCst) == 1
            && f.retries_waiting.load(Ordering::SeqCst) > 0
        {
            f.gone.notify_waiters();
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// `host:port` of a URL, the unit of per-host limits, pauses and circuits.
fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn rates() {
        let r = Rate::parse("200").unwrap();
        assert_eq!((r.count.get(), r.per), (200, Duration::from_secs(1)));
        let r = Rate::parse("5000/m").unwrap();
        assert_eq!((r.count.get(), r.per), (5000, Duration::from_secs(60)));
        assert_eq!(Rate::parse("10/h").unwrap().per, Duration::from_secs(3600));
        for bad in ["", "0", "-1", "x/s", "5/d", "1.5"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn per_host_bound_is_separate_per_host() {
        let gate = Gate::new(10, Some(2), None, false, 0);
        let stop = CancellationToken::new();
        let a1 = gate
            .admit(&url("http://a/1"), false, &stop)
            .await
            .ok()
            .unwrap();
        let _a2 = gate
            .admit(&url("http://a/2"), false, &stop)
            .await
            .ok()
            .unwrap();
        // A third to host a waits; host b is free.
        let third = tokio::time::timeout(
            Duration::from_millis(50),
            gate.admit(&url("http://a/3"), false, &stop),
        )
        .await;
        assert!(third.is_err(), "a third request to one host was admitted");
        assert!(gate.admit(&url("http://b/1"), false, &stop).await.is_ok());
        drop(a1);
        assert!(gate.admit(&url("http://a/3"), false, &stop).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_host_waits() {
        let gate = Gate::new(10, None, None, false, 0);
        let stop = CancellationToken::new();
        gate.pause_host(&url("http://a/"), Duration::from_secs(3));
        let started = Instant::now();
        gate.admit(&url("http://a/x"), false, &stop)
            .await
            .ok()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(3));
        // Other hosts are not paused.
        let started = Instant::now();
        gate.pause_host(&url("http://a/"), Duration::from_secs(3));
        gate.admit(&url("http://b/x"), false, &stop)
            .await
            .ok()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn limits_below_their_bound_are_named() {
        let gate = Gate::new(10, Some(5), None, true, 0);
        let stop = CancellationToken::new();
        assert_eq!(gate.limits_below_bound(), "");
        let a = gate
            .admit(&url("http://a/1"), false, &stop)
            .await
            .ok()
            .unwrap();
        assert_eq!(a.host_limit(), Some(5));
        // Every request refused, one at a time: once a quarter of them (on average) said
        // so, the next refusal is a cut.
        a.done(Signal::Answer(429), false);
        while gate.limits_below_bound().is_empty() {
            gate.admit(&url("http://a/2"), false, &stop)
                .await
                .ok()
                .unwrap()
                .done(Signal::Answer(429), false);
        }
        gate.admit(&url("http://b/1"), false, &stop)
            .await
            .ok()
            .unwrap()
            .done(Signal::Answer(200), false);
        assert_eq!(gate.limits_below_bound(), "a:80 4/5");
        let s = gate.host_summaries();
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().find(|h| h.host == "a:80").unwrap().lowest_limit, 4);
    }

    #[tokio::test]
    async fn first_attempts_go_before_retries() {
        let gate = Arc::new(Gate::new(1, None, None, false, 0));
        let stop = CancellationToken::new();
        let held = gate
            .admit(&url("http://a/0"), false, &stop)
            .await
            .ok()
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = tokio::task::JoinSet::new();
        // Queued in this order while the one slot is held.
        for (name, retry) in [("first-1", false), ("retry", true), ("first-2", false)] {
            let (gate, stop, order) = (Arc::clone(&gate), stop.clone(), Arc::clone(&order));
            waiting.spawn(async move {
                let a = gate
                    .admit(&url("http://a/x"), retry, &stop)
                    .await
                    .ok()
                    .unwrap();
                order.lock().unwrap().push(name);
                tokio::task::yield_now().await;
                drop(a);
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        while waiting.join_next().await.is_some() {}
        assert_eq!(*order.lock().unwrap(), ["first-1", "first-2", "retry"]);
    }

    #[tokio::test]
    async fn a_retry_goes_when_no_first_attempt_waits() {
        let gate = Gate::new(2, None, None, false, 0);
        let stop = CancellationToken::new();
        let _first = gate
            .admit(&url("http://a/1"), false, &stop)
            .await
            .ok()
            .unwrap();
        let retry = tokio::time::timeout(
            Duration::from_secs(5),
            gate.admit(&url("http://a/2"), true, &stop),
        )
        .await;
        assert!(
            matches!(retry, Ok(Ok(_))),
            "a retry waited with a slot free"
        );
    }

    #[tokio::test]
    async fn cancel_ends_a_wait() {
        let gate = Gate::new(1, None, None, false, 0);
        let stop = CancellationToken::new();
        let _held = gate
            .admit(&url("http://a/"), false, &stop)
            .await
            .ok()
            .unwrap();
        stop.cancel();
        assert!(matches!(
            gate.admit(&url("http://a/"), false, &stop).await,
            Err(Refused::Cancelled)
        ));
    }
}
