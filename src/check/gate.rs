//! Stage "check", admission: decides when a request may start. Holds the bound on requests
//! in flight (`--concurrency`), the start rate (`--rate`), the pause a host asked for with
//! `Retry-After`, and each host's limit and circuit ([`super::hosts`]: `--per-host`,
//! `--adaptive`, `--circuit`). A request waits here without holding anything it has not
//! been admitted to. Knows nothing of items or stores.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::hosts::{Deferred, HostPermit, HostPolicy, HostSummary, Hosts, Signal};
use super::slots::{Slot, Slots};
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
    /// The run's request slots (`--concurrency`): first attempts before retries beyond
    /// the retries' share ([`super::slots`]). A host's slots (`--per-host`, `--adaptive`,
    /// `--circuit`) are in arrival order: requests wait there first.
    slots: Arc<Slots>,
    /// Each host's limit and circuit, when anything about hosts is on (`--per-host` below
    /// `--concurrency`, `--adaptive`, `--circuit`); else admissions skip the host table
    /// unless a host asked for a pause.
    hosts: Option<Hosts>,
    /// Some host asked for a pause: from then on every admission looks its host up.
    any_pause: AtomicBool,
    paused: Mutex<HashMap<String, Instant>>,
    rate: Option<DefaultDirectRateLimiter>,
}

/// Permission to have one request in flight; dropping it frees the slots. Tell it how the
/// attempt ended with [`Admission::done`].
pub struct Admission {
    host: Option<HostPermit>,
    _global: Slot,
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
            slots: Slots::new(concurrency),
            hosts,
            any_pause: AtomicBool::new(false),
            paused: Mutex::new(HashMap::new()),
            rate,
        }
    }

    /// Waits until a request to `url` may start: the host's pause, the rate, a slot of the
    /// host (its limit and circuit), then one of the run's slots, where an item's
    /// `attempt` (1: its first) decides its place in line (see `check/slots.rs`).
    pub async fn admit(
        &self,
        url: &Url,
        attempt: u32,
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
                let global = self.slots.acquire(attempt).await;
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
        if cancel.is_cancelled() {
            return Err(Refused::Cancelled);
        }
        // The admission first: most requests are admitted at once, and then the stop's
        // future is never polled (polling it registers a waiter with the token, which
        // measurably costs on every request).
        tokio::select! {
            biased;
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

/// `host:port` of a URL, the unit of per-host limits, pauses and circuits. Made for every
/// request: one allocation, no `format!`.
fn host_key(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let mut key = String::with_capacity(host.len() + 6);
    key.push_str(host);
    key.push(':');
    crate::model::push_decimal(&mut key, url.port_or_known_default().unwrap_or(0).into());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn the_host_key_is_host_and_port() {
        assert_eq!(
            host_key(&url("https://API.example.com/x")),
            "api.example.com:443"
        );
        assert_eq!(host_key(&url("http://127.0.0.1:8080/")), "127.0.0.1:8080");
        assert_eq!(host_key(&url("http://[::1]:9/a")), "[::1]:9");
        assert_eq!(host_key(&url("http://h/")), "h:80");
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
        let a1 = gate.admit(&url("http://a/1"), 1, &stop).await.ok().unwrap();
        let _a2 = gate.admit(&url("http://a/2"), 1, &stop).await.ok().unwrap();
        // A third to host a waits; host b is free.
        let third = tokio::time::timeout(
            Duration::from_millis(50),
            gate.admit(&url("http://a/3"), 1, &stop),
        )
        .await;
        assert!(third.is_err(), "a third request to one host was admitted");
        assert!(gate.admit(&url("http://b/1"), 1, &stop).await.is_ok());
        drop(a1);
        assert!(gate.admit(&url("http://a/3"), 1, &stop).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_host_waits() {
        let gate = Gate::new(10, None, None, false, 0);
        let stop = CancellationToken::new();
        gate.pause_host(&url("http://a/"), Duration::from_secs(3));
        let started = Instant::now();
        gate.admit(&url("http://a/x"), 1, &stop).await.ok().unwrap();
        assert!(started.elapsed() >= Duration::from_secs(3));
        // Other hosts are not paused.
        let started = Instant::now();
        gate.pause_host(&url("http://a/"), Duration::from_secs(3));
        gate.admit(&url("http://b/x"), 1, &stop).await.ok().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn limits_below_their_bound_are_named() {
        let gate = Gate::new(10, Some(5), None, true, 0);
        let stop = CancellationToken::new();
        assert_eq!(gate.limits_below_bound(), "");
        let a = gate.admit(&url("http://a/1"), 1, &stop).await.ok().unwrap();
        assert_eq!(a.host_limit(), Some(5));
        // Every request refused, one at a time: once a quarter of them (on average) said
        // so, the next refusal is a cut.
        a.done(Signal::Answer(429), false);
        while gate.limits_below_bound().is_empty() {
            gate.admit(&url("http://a/2"), 1, &stop)
                .await
                .ok()
                .unwrap()
                .done(Signal::Answer(429), false);
        }
        gate.admit(&url("http://b/1"), 1, &stop)
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
    async fn first_attempts_go_before_retries_beyond_their_share() {
        // 4 slots, of which retries may hold one while first attempts wait.
        let gate = Arc::new(Gate::new(4, None, None, false, 0));
        let stop = CancellationToken::new();
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(
                gate.admit(&url(&format!("http://a/{i}")), 1, &stop)
                    .await
                    .ok()
                    .unwrap(),
            );
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = tokio::task::JoinSet::new();
        // Queued in this order while every slot is held; each keeps the slot it gets.
        let queued = [
            ("first-1", 1),
            ("retry-3", 3),
            ("retry-2", 2),
            ("first-2", 1),
            ("first-3", 1),
        ];
        for (name, attempt) in queued {
            let (gate, stop, order) = (Arc::clone(&gate), stop.clone(), Arc::clone(&order));
            waiting.spawn(async move {
                // (The retry left waiting ends with the stop.)
                let Ok(a) = gate.admit(&url("http://a/x"), attempt, &stop).await else {
                    return;
                };
                order.lock().unwrap().push(name);
                stop.cancelled().await;
                drop(a);
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for a in held {
            drop(a);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The retry with fewer attempts first (within the share of one), then the first
        // attempts in their order; the other retry waits for them.
        assert_eq!(
            *order.lock().unwrap(),
            ["retry-2", "first-1", "first-2", "first-3"]
        );
        stop.cancel();
        while waiting.join_next().await.is_some() {}
    }

    #[tokio::test]
    async fn a_retry_goes_when_no_first_attempt_waits() {
        let gate = Gate::new(2, None, None, false, 0);
        let stop = CancellationToken::new();
        let _first = gate.admit(&url("http://a/1"), 1, &stop).await.ok().unwrap();
        let retry = tokio::time::timeout(
            Duration::from_secs(5),
            gate.admit(&url("http://a/2"), 2, &stop),
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
        let _held = gate.admit(&url("http://a/"), 1, &stop).await.ok().unwrap();
        stop.cancel();
        assert!(matches!(
            gate.admit(&url("http://a/"), 1, &stop).await,
            Err(Refused::Cancelled)
        ));
    }
}
