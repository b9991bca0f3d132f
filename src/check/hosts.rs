//! Stage "check", per host: how many requests one host gets at once (an adaptive limit),
//! whether it gets any (a circuit breaker), and what it answered (the summary's per-host
//! table). The gate asks it before a request starts; the fetcher tells it how every attempt
//! ended. Knows nothing of items or stores.
//!
//! - **Adaptive limit** (AIMD, as Vector's adaptive request concurrency): it starts at the
//!   host's bound (`--per-host`, else `--concurrency`). A 429, a 503, a timeout, or a clear
//!   rise in latency cuts it by 10 % (at least by one, never below 1), but only for a
//!   request sent after the last cut: one burst of refusals is one cut, and the limit
//!   comes down about once per round trip. An answer that came while the host had
//!   as many requests in flight as its limit, with the limit's worth of such answers since
//!   the last change, raises it by one, never above the bound: the limit grows only when it
//!   was actually what held the requests back.
//! - **Circuit breaker** (`--circuit N`): N consecutive connection failures, timeouts or 5xx
//!   open the host's circuit. Requests wait out a cool-down of [`COOL_DOWN`], then one
//!   probe goes; its answer closes the circuit (the waiting requests go on), its failure
//!   opens it again for twice as long (at most [`MAX_COOL_DOWN`], Envoy's longest
//!   ejection) and from then on the host's requests are deferred at once: no request,
//!   the item's status unchanged, due again when the circuit would next let a probe
//!   through. The first cool-down is short so that an API restarting behind its load
//!   balancer gets its items checked in the same run, and a down API costs a cron run
//!   seconds, not its whole deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The first cool-down of an open circuit.
pub const COOL_DOWN: Duration = Duration::from_secs(5);
/// The longest cool-down: it doubles with every failed probe up to this.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(300);
/// Round trips kept for the latency signal.
const RECENT: usize = 32;

/// Hosts with statistics of their own; the rest are counted together (a store whose items
/// each name another host must not grow the table without bound).
pub const MAX_HOSTS: usize = 1000;

/// How the hosts of a run are treated (`--per-host`, `--adaptive`, `--circuit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPolicy {
    /// The most requests in flight to one host (`--per-host`, else `--concurrency`).
    pub max: usize,
    /// The limit adapts between 1 and `max`.
    pub adaptive: bool,
    /// Consecutive failures that open a circuit; 0: no circuit breaker.
    pub circuit: u32,
}

/// How one attempt ended, for its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An answer with this HTTP status.
    Answer(u16),
    /// No answer within `--timeout`.
    Timeout,
    /// The connection could not be made or was lost.
    Connect,
    /// Ended on our side without telling anything about the host (a body too large, a
    /// redirect loop, a certificate we refuse).
    Neutral,
}

/// Why a request to a host may not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// When the circuit lets a probe through again: the item's `next_check_at`.
    pub until: SystemTime,
    /// For the item's `last_error`.
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    /// No request before `until`; `deferring`: after a failed probe, requests are
    /// deferred instead of waiting.
    Open {
        until: Instant,
        deferring: bool,
    },
    /// One probe is in flight; everything else waits for its answer.
    Probing,
}

/// One host's state. Behind a mutex: it is touched once when a request starts and once
/// when it ends.
struct Ctl {
    limit: usize,
    lowest: usize,
    /// Slots held back to keep requests under `limit`, and how many more are still to be
    /// held back as requests end (the limit came down while they were in flight).
    reserve: Vec<OwnedSemaphorePermit>,
    debt: usize,
    /// The limit held a request back (or was just reached) since it last changed.
    reached: bool,
    /// Healthy answers since then.
    at_limit_ok: usize,
    last_cut: Option<Instant>,
    /// The last round trips (seconds), and a slowly forgetting minimum of them: a clear
    /// rise is the median of the recent ones far above the minimum, so a few slow items
    /// (a big transcode) do not count, a slower host does.
    recent: std::collections::VecDeque<f64>,
    rtt_base: Option<f64>,
    /// The share of recent first attempts that said "overloaded" (429, 503, a timeout),
    /// a moving average over about a limit's worth of them (at least [`RECENT`]).
    overload_share: f64,
    consecutive: u32,
    state: State,
    cool_down: Duration,
    /// When the circuit first opened, and after how many failures.
    opened: Option<(SystemTime, u32)>,
    opens: u32,
    deferred: u64,
    stats: Stats,
}

#[derive(Clone)]
struct Stats {
    requests: u64,
    retries: u64,
    by_class: [u64; 5],
    errors: u64,
    latency_ms: Histogram<u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests: 0,
            retries: 0,
            by_class: [0; 5],
            errors: 0,
            // 1 ms .. 1 hour at 2 significant figures: a few KiB per host.
            latency_ms: Histogram::new_with_bounds(1, 3_600_000, 2)
                .expect("static histogram bounds are valid"),
        }
    }
}

/// One host: its state and the waiters for a slot or for its circuit.
pub struct Host {
    name: String,
    policy: HostPolicy,
    /// `max` slots; the adaptive limit keeps `max - limit` of them in [`Ctl::reserve`].
    slots: Arc<Semaphore>,
    ctl: Mutex<Ctl>,
    /// The circuit changed (closed, or a probe's turn).
    changed: Notify,
}

/// Permission for one request to a host; dropping it frees the host's slot.
pub struct HostPermit {
    host: Arc<Host>,
    probe: bool,
    slot: Option<OwnedSemaphorePermit>,
    /// The host's limit when the request started (for `--report`).
    pub limit: usize,
    started: Instant,
    done: bool,
}

impl Host {
    fn new(name: String, policy: HostPolicy) -> Host {
        let max = policy.max.max(1);
        Host {
            name,
            policy: HostPolicy { max, ..policy },
            slots: Arc::new(Semaphore::new(max)),
            ctl: Mutex::new(Ctl {
                limit: max,
                lowest: max,
                reserve: Vec::new(),
                debt: 0,
                reached: false,
                at_limit_ok: 0,
                last_cut: None,
                recent: std::collections::VecDeque::with_capacity(RECENT),
                rtt_base: None,
                overload_share: 0.0,
                consecutive: 0,
                state: State::Closed,
                cool_down: COOL_DOWN,
                opened: None,
                opens: 0,
                deferred: 0,
                stats: Stats::new(),
            }),
            changed: Notify::new(),
        }
    }

    fn ctl(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot of this host under its limit and circuit. Slots are handed out in
    /// the order they were asked for (a fair semaphore), so items go in claim order.
    pub async fn acquire(self: &Arc<Self>) -> Result<HostPermit, Deferred> {
        enum Next {
            Go { probe: bool },
            WaitUntil(Instant),
            Wait,
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is looked at: a change in between still wakes us.
            notified.as_mut().enable();
            let next = {
                let mut c = self.ctl();
                let now = Instant::now();
                match c.state {
                    State::Closed => Next::Go { probe: false },
                    State::Probing => Next::Wait,
                    State::Open { until, .. } if now >= until => {
                        c.state = State::Probing;
                        tracing::info!(host = %self.name, "circuit half-open: one probe request");
                        Next::Go { probe: true }
                    }
                    State::Open {
                        until,
                        deferring: true,
                    } => {
                        c.deferred += 1;
                        let left = until.saturating_duration_since(now);
                        return Err(Deferred {
                            until: SystemTime::now() + left,
                            why: format!(
                                "not checked: the circuit for {} is open (after {} consecutive \
                                 failures); due again when it may be probed",
                                self.name,
                                c.opened.map_or(self.policy.circuit, |o| o.1)
                            ),
                        });
                    }
                    State::Open { until, .. } => Next::WaitUntil(until),
                }
            };
            match next {
                Next::Go { probe } => {
                    // Made first: dropped while it waits for a slot (a stop), a probe
                    // gives its turn back.
                    let mut permit = HostPermit {
                        host: Arc::clone(self),
                        probe,
                        slot: None,
                        limit: 0,
                        started: Instant::now(),
                        done: false,
                    };
                    let full = self.slots.available_permits() == 0;
                    let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                        continue;
                    };
                    let mut c = self.ctl();
                    if !probe && c.state != State::Closed {
                        // The circuit opened while this one queued: ask it again.
                        drop(c);
                        drop(slot);
                        permit.done = true;
                        continue;
                    }
                    if full || self.slots.available_permits() == 0 {
                        c.reached = true;
                    }
                    permit.slot = Some(slot);
                    permit.limit = c.limit;
                    permit.started = Instant::now();
                    return Ok(permit);
                }
                Next::WaitUntil(t) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                Next::Wait => notified.await,
            }
        }
    }

    /// What this host looks like now, for the summary.
    pub fn summary(&self) -> HostSummary {
        let c = self.ctl();
        let s = &c.stats;
        let pct = |q: f64| {
            if s.latency_ms.is_empty() {
                0
            } else {
                s.latency_ms.value_at_quantile(q)
            }
        };
        HostSummary {
            host: self.name.clone(),
            requests: s.requests,
            answers: AnswerClasses {
                c2xx: s.by_class[0],
                c3xx: s.by_class[1],
                c4xx: s.by_class[2],
                c5xx: s.by_class[3],
                other: s.by_class[4],
            },
            errors: s.errors,
            retries: s.retries,
            latency_p50_ms: pct(0.50),
            latency_p95_ms: pct(0.95),
            limit: c.limit,
            lowest_limit: c.lowest,
            max_limit: self.policy.max,
            circuit: match c.state {
                State::Closed if c.opens > 0 => "closed again",
                State::Closed => "closed",
                State::Open { .. } => "open",
                State::Probing => "probing",
            },
            circuit_opened_at: c.opened.map(|(t, _)| crate::model::rfc3339(t)),
            circuit_failures: c.opened.map(|(_, n)| n),
            deferred: c.deferred,
        }
    }
}

impl HostPermit {
    /// How the attempt ended (`retry`: it was not the item's first attempt). Updates the
    /// host's limit, circuit and statistics, then frees the slot.
    pub fn done(mut self, signal: Signal, retry: bool) {
        self.finish(Some((signal, retry)));
    }

    fn finish(&mut self, outcome: Option<(Signal, bool)>) {
        if self.done {
            return;
        }
        self.done = true;
        let host = Arc::clone(&self.host);
        let policy = host.policy;
        let mut wake_all = false;
        {
            let mut c = host.ctl();
            if let Some(slot) = self.slot.take() {
                if c.debt > 0 {
                    // The limit came down while this one was in flight: keep its slot back.
                    c.debt -= 1;
                    c.reserve.push(slot);
                } else {
                    drop(slot);
                }
            }
            if outcome.is_none() && self.probe && c.state == State::Probing {
                // A probe that never got its answer (a stop): the next request probes.
                c.state = State::Open {
                    until: Instant::now(),
                    deferring: false,
                };
                wake_all = true;
            }
            if let Some((signal, retry)) = outcome {
                let rtt = self.started.elapsed();
                record(&mut c, signal, retry, rtt);
                let failure = matches!(signal, Signal::Timeout | Signal::Connect)
                    || matches!(signal, Signal::Answer(s) if s >= 500);
                let overload = matches!(signal, Signal::Timeout | Signal::Answer(429 | 503));
                if self.probe {
                    wake_all = true;
                    if failure {
                        c.cool_down = (c.cool_down * 2).min(MAX_COOL_DOWN);
                        c.state = State::Open {
                            until: Instant::now() + c.cool_down,
                            deferring: true,
                        };
                        c.opens += 1;
                        tracing::warn!(host = %host.name, cool_down_s = c.cool_down.as_secs(), "circuit probe failed: the host's items are deferred");
                    } else {
                        c.state = State::Closed;
                        c.consecutive = 0;
                        c.cool_down = COOL_DOWN;
                        tracing::info!(host = %host.name, "circuit closed: the probe was answered");
                    }
                } else if c.state == State::Closed {
                    if failure {
                        c.consecutive += 1;
                        if policy.circuit > 0 && c.consecutive >= policy.circuit {
                            c.state = State::Open {
                                until: Instant::now() + c.cool_down,
                                deferring: false,
                            };
                            c.opens += 1;
                            if c.opened.is_none() {
                                c.opened = Some((SystemTime::now(), c.consecutive));
                            }
                            tracing::warn!(host = %host.name, failures = c.consecutive, "circuit opened");
                        }
                    } else if signal != Signal::Neutral {
                        c.consecutive = 0;
                    }
                    if policy.adaptive {
                        let before = c.limit;
                        let reading = Reading {
                            overload,
                            failure,
                            retry,
                        };
                        adapt(&mut c, policy.max, reading, self.started, rtt);
                        set_limit(&host.slots, &mut c, before);
                    }
                }
            }
        }
        if wake_all {
            host.changed.notify_waiters();
        }
    }
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        // An attempt abandoned (a stop) says nothing about the host.
        self.finish(None);
    }
}

fn record(c: &mut Ctl, signal: Signal, retry: bool, rtt: Duration) {
    let s = &mut c.stats;
    s.requests += 1;
    if retry {
        s.retries += 1;
    }
    match signal {
        Signal::Answer(code) => {
            let class = match code {
                200..=299 => 0,
                300..=399 => 1,
                400..=499 => 2,
                500..=599 => 3,
                _ => 4,
            };
            s.by_class[class] += 1;
        }
        Signal::Timeout | Signal::Connect => s.errors += 1,
        Signal::Neutral => {}
    }
    let ms = (rtt.as_millis() as u64).clamp(1, 3_600_000);
    s.latency_ms.saturating_record(ms);
}

/// Holds back or gives back slots after the limit went from `before` to `c.limit`.
fn set_limit(slots: &Arc<Semaphore>, c: &mut Ctl, before: usize) {
    for _ in c.limit..before {
        match Arc::clone(slots).try_acquire_owned() {
            Ok(p) => c.reserve.push(p),
            // Every slot is in use: the next one to come back is kept.
            Err(_) => c.debt += 1,
        }
    }
    for _ in before..c.limit {
        if c.debt > 0 {
            c.debt -= 1;
        } else {
            drop(c.reserve.pop());
        }
    }
}

/// How one attempt ended, as the adaptive limit reads it.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// 429, 503 or a timeout.
    overload: bool,
    /// A connection failure, a timeout or a 5xx.
    failure: bool,
    /// Not the item's first attempt.
    retry: bool,
}

/// The share of recent first attempts saying "overloaded" from which an overload answer
/// lowers the limit. Below it, the items that hang or answer 503 are those items' own
/// trouble, and do not slow the rest (a host that is overloaded says so to most requests).
const OVERLOAD_SHARE: f64 = 0.25;

/// Whether the median of `xs` (the element at `len / 2` once sorted) is above `limit`:
/// it is exactly when at least `len - len / 2` of them are. This runs on every answer, and
/// counting costs a tenth of selecting the median.
fn median_above(xs: &std::collections::VecDeque<f64>, limit: f64) -> bool {
    let n = xs.len();
    let above = xs.iter().filter(|&&x| x > limit).count();
    n > 0 && above >= n - n / 2
}

/// The AIMD step after one attempt; whether the limit grew.
fn adapt(c: &mut Ctl, max: usize, o: Reading, started: Instant, rtt: Duration) -> bool {
    let Reading {
        overload,
        failure,
        retry,
    } = o;
    if !retry {
        // Retries are of items that already failed: they would make any host look
        // overloaded.
        let window = c.limit.max(RECENT) as f64;
        let x = if overload { 1.0 } else { 0.0 };
        c.overload_share += (x - c.overload_share) / window;
    }
    let overload = overload && c.overload_share >= OVERLOAD_SHARE;
    let x = rtt.as_secs_f64();
    let base = match c.rtt_base {
        Some(b) if x >= b => b + (x - b) * 0.01,
        _ => x,
    };
    c.rtt_base = Some(base);
    if c.recent.len() == RECENT {
        c.recent.pop_front();
    }
    c.recent.push_back(x);
    // A clear rise: the median of the recent round trips three times the usual one and
    // 50 ms more (sub-millisecond noise on a fast host is no signal).
    let slower = !overload && !failure && c.recent.len() >= RECENT / 2 && {
        median_above(&c.recent, (3.0 * base).max(base + 0.05))
    };
    if overload || slower {
        // Only a request sent under the current limit speaks about it: the answers to
        // those sent before the last cut were already answered by that cut.
        if c.last_cut.is_none_or(|t| started > t) {
            let cut = ((c.limit as f64) * 0.9).floor() as usize;
            c.limit = cut.min(c.limit.saturating_sub(1)).max(1);
            c.lowest = c.lowest.min(c.limit);
            c.last_cut = Some(Instant::now());
            tracing::debug!(
                limit = c.limit,
                overload,
                slower,
                rtt_ms = (x * 1000.0) as u64,
                "host limit lowered"
            );
            c.at_limit_ok = 0;
            c.reached = false;
        }
        return false;
    }
    if failure || !c.reached || c.limit >= max {
        return false;
    }
    c.at_limit_ok += 1;
    if c.at_limit_ok >= c.limit {
        c.limit += 1;
        c.at_limit_ok = 0;
        c.reached = false;
        return true;
    }
    false
}

/// Every host of the run.
pub struct Hosts {
    policy: HostPolicy,
    map: Mutex<HashMap<String, Arc<Host>>>,
    /// Hosts beyond [`MAX_HOSTS`] share this one (its limit and circuit too).
    overflow: Arc<Host>,
}

impl Hosts {
    /// No host yet.
    pub fn new(policy: HostPolicy) -> Hosts {
        Hosts {
            policy,
            map: Mutex::new(HashMap::new()),
            overflow: Arc::new(Host::new("(other hosts)".into(), policy)),
        }
    }

    /// The host named `key` (`host:port`).
    pub fn get(&self, key: &str) -> Arc<Host> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(key) {
            return Arc::clone(h);
        }
        if map.len() >= MAX_HOSTS {
            return Arc::clone(&self.overflow);
        }
        let h = Arc::new(Host::new(key.to_string(), self.policy));
        map.insert(key.to_string(), Arc::clone(&h));
        h
    }

    /// Every host's (name, limit, bound), cheaply (no statistics).
    pub fn limits(&self) -> Vec<(String, usize, usize)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|h| (h.name.clone(), h.ctl().limit, h.policy.max))
            .collect()
    }

    /// Every host that got a request or deferred an item, busiest first.
    pub fn summaries(&self) -> Vec<HostSummary> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<HostSummary> = map
            .values()
            .chain(std::iter::once(&self.overflow))
            .map(|h| h.summary())
            .filter(|s| s.requests > 0 || s.deferred > 0)
            .collect();
        v.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.host.cmp(&b.host))
        });
        v
    }
}

/// Answers of one host by status class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AnswerClasses {
    /// 2xx.
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    /// 3xx (redirects followed count once each).
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    /// 5xx.
    #[serde(rename = "5xx")]
    pub c5xx: u64,
    /// Any other status.
    pub other: u64,
}

/// One line of the summary's per-host table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostSummary {
    /// `host:port`.
    pub host: String,
    /// Attempts sent.
    pub requests: u64,
    /// Answers by class.
    pub answers: AnswerClasses,
    /// Timeouts and connection failures.
    pub errors: u64,
    /// Attempts after an item's first.
    pub retries: u64,
    /// Round trip of one attempt.
    pub latency_p50_ms: u64,
    /// Round trip of one attempt.
    pub latency_p95_ms: u64,
    /// The adaptive limit at the end.
    pub limit: usize,
    /// The lowest it went.
    pub lowest_limit: usize,
    /// Its bound (`--per-host`, else `--concurrency`).
    pub max_limit: usize,
    /// `closed`, `open`, `probing`, or `closed again` (it opened and a probe closed it).
    pub circuit: &'static str,
    /// When the circuit first opened (RFC 3339 UTC).
    pub circuit_opened_at: Option<String>,
    /// After how many consecutive failures it opened.
    pub circuit_failures: Option<u32>,
    /// Items not checked because the circuit was open.
    pub deferred: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_above_agrees_with_the_sorted_median() {
        // Every length the window takes, values with ties, limits on and between them.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for n in 1..=RECENT {
            for _ in 0..200 {
                let xs: std::collections::VecDeque<f64> = (0..n)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed % 8) as f64 * 0.5
                    })
                    .collect();
                let mut sorted: Vec<f64> = xs.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                for limit in [0.0, 0.25, 0.5, 1.0, 1.75, 2.0, 3.5, 4.0] {
                    assert_eq!(
                        median_above(&xs, limit),
                        sorted[n / 2] > limit,
                        "{sorted:?} against {limit}"
                    );
                }
            }
        }
        assert!(!median_above(&std::collections::VecDeque::new(), 0.0));
    }

    fn host(max: usize, adaptive: bool, circuit: u32) -> Arc<Host> {
        Arc::new(Host::new(
            "h:80".into(),
            HostPolicy {
                max,
                adaptive,
                circuit,
            },
        ))
    }

    fn limit(h: &Host) -> usize {
        h.ctl().limit
    }

    #[tokio::test]
    async fn overload_cuts_once_per_round_trip_and_healthy_answers_at_the_limit_grow_it() {
        let h = host(20, true, 0);
        // A burst of 429s in one round trip is one cut.
        let permits: Vec<HostPermit> = futures_permits(&h, 20).await;
        for p in permits {
            p.done(Signal::Answer(429), false);
        }
        assert_eq!(limit(&h), 18, "20 · 0.9");
        assert_eq!(h.summary().lowest_limit, 18);
        // Answers below the limit do not grow it.
        for _ in 0..50 {
            h.acquire().await.unwrap().done(Signal::Answer(200), false);
        }
        assert_eq!(limit(&h), 18);
        // A limit's worth of answers received at the limit grows it by one.
        for p in futures_permits(&h, 18).await {
            p.done(Signal::Answer(200), false);
        }
        assert_eq!(limit(&h), 19);
        // Never above the bound.
        for _ in 0..10 {
            for p in futures_permits(&h, limit(&h)).await {
                p.done(Signal::Answer(200), false);
            }
        }
        assert_eq!(limit(&h), 20);
    }

    async fn futures_permits(h: &Arc<Host>, n: usize) -> Vec<HostPermit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(h.acquire().await.unwrap());
        }
        v
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_cuts_never_go_below_one() {
        let h = host(3, true, 0);
        for _ in 0..30 {
            h.acquire().await.unwrap().done(Signal::Timeout, false);
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        assert_eq!(limit(&h), 1);
    }

    #[tokio::test]
    async fn items_failing_on_their_own_do_not_lower_the_limit() {
        // 10 % of the items answer 503 and 1 % time out, every retry of them too: the host
        // answers the rest, so the limit stays.
        let h = host(100, true, 0);
        for i in 0..2_000 {
            let first = match i % 100 {
                0 => Signal::Timeout,
                1..=10 => Signal::Answer(503),
                _ => Signal::Answer(200),
            };
            h.acquire().await.unwrap().done(first, false);
            if first != Signal::Answer(200) {
                h.acquire().await.unwrap().done(first, true);
            }
        }
        assert_eq!(h.summary().lowest_limit, 100);
    }

    #[tokio::test]
    async fn without_adaptive_the_limit_stays() {
        let h = host(4, false, 0);
        for _ in 0..5 {
            h.acquire().await.unwrap().done(Signal::Answer(503), false);
        }
        assert_eq!(limit(&h), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_probes_and_closes_or_defers() {
        let h = host(10, true, 3);
        for _ in 0..3 {
            h.acquire().await.unwrap().done(Signal::Connect, false);
        }
        assert_eq!(h.summary().circuit, "open");
        assert_eq!(h.summary().circuit_failures, Some(3));
        // The next request waits the cool-down, then is the probe; the one after it waits
        // for the probe's answer.
        let started = Instant::now();
        let probe = h.acquire().await.unwrap();
        assert!(probe.probe);
        assert!(started.elapsed() >= COOL_DOWN);
        let h2 = Arc::clone(&h);
        let waiter = tokio::spawn(async move { h2.acquire().await.map(|p| p.probe) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiter.is_finished(),
            "a second request went during the probe"
        );
        // The probe fails: the waiter and everything after is deferred, due again after
        // a doubled cool-down.
        probe.done(Signal::Answer(503), false);
        let d = waiter.await.unwrap().unwrap_err();
        assert!(d.why.contains("circuit for h:80 is open"), "{}", d.why);
        let due = d.until.duration_since(SystemTime::now()).unwrap();
        assert!(due > COOL_DOWN && due <= COOL_DOWN * 2, "{due:?}");
        assert_eq!(h.summary().deferred, 1);
        // After the cool-down a probe goes again; its answer closes the circuit.
        tokio::time::advance(COOL_DOWN * 2).await;
        let probe = h.acquire().await.unwrap();
        assert!(probe.probe);
        probe.done(Signal::Answer(200), false);
        assert_eq!(h.summary().circuit, "closed again");
        assert!(!h.acquire().await.unwrap().probe);
    }

    #[tokio::test]
    async fn answers_reset_the_count_and_circuit_zero_is_off() {
        let h = host(10, false, 3);
        for _ in 0..10 {
            h.acquire().await.unwrap().done(Signal::Answer(500), false);
            h.acquire().await.unwrap().done(Signal::Answer(404), false);
        }
        assert_eq!(h.summary().circuit, "closed", "never 3 in a row");
        let off = host(10, false, 0);
        for _ in 0..100 {
            off.acquire().await.unwrap().done(Signal::Connect, false);
        }
        assert_eq!(off.summary().circuit, "closed");
        let s = off.summary();
        assert_eq!((s.requests, s.errors), (100, 100));
    }

    #[tokio::test]
    async fn the_limit_bounds_requests_in_flight() {
        let h = host(2, true, 0);
        let _a = h.acquire().await.unwrap();
        let _b = h.acquire().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(30), h.acquire()).await;
        assert!(third.is_err(), "a third request went past a limit of 2");
        drop(_a);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), h.acquire())
                .await
                .is_ok()
        );
    }
}

#[cfg(test)]
mod stress {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// 40 of 50 slots held for good, 100 tasks taking turns on the other 10: every task
    /// keeps getting slots (no wake-up is lost).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_wakeup_is_lost_when_most_slots_are_held() {
        let h = Arc::new(Host::new(
            "h:80".into(),
            HostPolicy {
                max: 50,
                adaptive: false,
                circuit: 20,
            },
        ));
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(h.acquire().await.unwrap());
        }
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (h, done) = (Arc::clone(&h), Arc::clone(&done));
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let p = h.acquire().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    p.done(Signal::Answer(200), false);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .unwrap_or_else(|_| panic!("stuck after {} of 2000", done.load(Ordering::Relaxed)));
        drop(held);
    }
}
