//! Stage "check", admission: decides when a request may start. Holds the bound on requests
//! in flight (`--concurrency`), the per-host bound (`--per-host`), the start rate (`--rate`)
//! and the pause a host asked for with `Retry-After`. A request waits here without holding
//! anything it has not been admitted to. Knows nothing of items or stores.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// One host's bound and pause.
struct Host {
    slots: Option<Arc<Semaphore>>,
    /// Set from a 429/503 `Retry-After`: no new request to the host before then.
    paused_until: Mutex<Option<Instant>>,
}

/// The admission gate shared by every check of the run.
pub struct Gate {
    in_flight: Arc<Semaphore>,
    per_host: Option<usize>,
    /// Some host asked for a pause: from then on every admission looks its host up. Until
    /// then (and without `--per-host`) admissions skip the per-host table entirely.
    any_pause: AtomicBool,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    rate: Option<DefaultDirectRateLimiter>,
}

/// Permission to have one request in flight; dropping it frees the slots.
pub struct Admission {
    _host: Option<OwnedSemaphorePermit>,
    _global: OwnedSemaphorePermit,
}

impl Gate {
    /// A gate for `concurrency` requests in flight, at most `per_host` of them to one host,
    /// started at most at `rate`.
    pub fn new(concurrency: usize, per_host: Option<usize>, rate: Option<Rate>) -> Gate {
        let rate = rate.map(|r| {
            // Evenly spaced starts (a burst of one): "at most R per second" holds for every
            // window, not just on average.
            let every = r.per / r.count.get();
            let quota = Quota::with_period(every.max(Duration::from_nanos(1)))
                .unwrap_or_else(|| Quota::per_second(r.count));
            RateLimiter::direct(quota)
        });
        Gate {
            in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
            per_host: per_host.filter(|&n| n < concurrency),
            any_pause: AtomicBool::new(false),
            hosts: Mutex::new(HashMap::new()),
            rate,
        }
    }

    fn host(&self, url: &Url) -> Arc<Host> {
        let key = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(hosts.entry(key).or_insert_with(|| {
            Arc::new(Host {
                slots: self.per_host.map(|n| Arc::new(Semaphore::new(n.max(1)))),
                paused_until: Mutex::new(None),
            })
        }))
    }

    /// Waits until a request to `url` may start: the host's pause, the rate, a host slot,
    /// then a global slot. `None` when `cancel` fires first.
    pub async fn admit(&self, url: &Url, cancel: &CancellationToken) -> Option<Admission> {
        let host = (self.per_host.is_some() || self.any_pause.load(Ordering::Relaxed))
            .then(|| self.host(url));
        let wait = async {
            if let Some(host) = &host {
                loop {
                    let until = *host.paused_until.lock().unwrap_or_else(|e| e.into_inner());
                    match until {
                        Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                        _ => break,
                    }
                }
            }
            if let Some(rate) = &self.rate {
                rate.until_ready().await;
            }
            let host_permit = match host.as_ref().and_then(|h| h.slots.as_ref()) {
                Some(s) => Some(Arc::clone(s).acquire_owned().await.ok()?),
                None => None,
            };
            let global = Arc::clone(&self.in_flight).acquire_owned().await.ok()?;
            Some(Admission {
                _host: host_permit,
                _global: global,
            })
        };
        tokio::select! {
            a = wait => a,
            _ = cancel.cancelled() => None,
        }
    }

    /// The host of `url` asked for a break (`Retry-After`): no new request to it for `d`.
    pub fn pause_host(&self, url: &Url, d: Duration) {
        self.any_pause.store(true, Ordering::Relaxed);
        let host = self.host(url);
        let until = Instant::now() + d;
        let mut p = host.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }
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
        let gate = Gate::new(10, Some(2), None);
        let stop = CancellationToken::new();
        let a1 = gate.admit(&url("http://a/1"), &stop).await.unwrap();
        let _a2 = gate.admit(&url("http://a/2"), &stop).await.unwrap();
        // A third to host a waits; host b is free.
        let third = tokio::time::timeout(
            Duration::from_millis(50),
            gate.admit(&url("http://a/3"), &stop),
        )
        .await;
        assert!(third.is_err(), "a third request to one host was admitted");
        assert!(gate.admit(&url("http://b/1"), &stop).await.is_some());
        drop(a1);
        assert!(gate.admit(&url("http://a/3"), &stop).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_host_waits() {
        let gate = Gate::new(10, None, None);
        let stop = CancellationToken::new();
        gate.pause_host(&url("http://a/"), Duration::from_secs(3));
        let started = Instant::now();
        gate.admit(&url("http://a/x"), &stop).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(3));
        // Other hosts are not paused.
        let started = Instant::now();
        gate.pause_host(&url("http://a/"), Duration::from_secs(3));
        gate.admit(&url("http://b/x"), &stop).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn cancel_ends_a_wait() {
        let gate = Gate::new(1, None, None);
        let stop = CancellationToken::new();
        let _held = gate.admit(&url("http://a/"), &stop).await.unwrap();
        stop.cancel();
        assert!(gate.admit(&url("http://a/"), &stop).await.is_none());
    }
}
