//! Progress on stderr: a bar on a terminal, periodic log lines elsewhere.
//!
//! [`Progress::record`] is on the hot path of the single writer (hundreds of thousands of
//! verdicts a second), so it only bumps relaxed atomics. A ticker task reads them: in bar
//! mode ten times a second, to update the bar (which indicatif redraws at most ten times a
//! second); in log mode every [`LOG_EVERY`], to emit one `info` line through `tracing`.
//!
//! Logs and the bar share stderr through one process-wide [`MultiProgress`]: every log line
//! goes through [`LogWriter`], which hides the bar, writes the whole line, and redraws the
//! bar ([`MultiProgress::suspend`]). While no bar is shown the draw target is hidden and a
//! log line is written as it is, so logs to a pipe or a file (text or JSON lines) never
//! carry a control character.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::ProgressMode;
use crate::model::{Outcome, Verdict};

/// How often the bar is updated (and, at most, redrawn).
pub const BAR_EVERY: Duration = Duration::from_millis(100);
/// How often a progress line is logged when there is no bar.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// The bar's rates (and so its ETA) are measured over this much recent time.
const BAR_WINDOW: Duration = Duration::from_secs(5);

/// The bar: elapsed time, the bar itself and `done/total` on the first line; the outcomes
/// so far, requests per second and the ETA on the second (`{status}`, see [`Shown`]).
const BAR_TEMPLATE: &str =
    "[{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} checked\n  {status}";

/// The one place on stderr where a bar is drawn, shared by [`Progress`] and [`LogWriter`].
/// Hidden (draws nothing) except while a [`Progress`] shows a bar.
static STDERR_BARS: LazyLock<MultiProgress> =
    LazyLock::new(|| MultiProgress::with_draw_target(ProgressDrawTarget::hidden()));

/// A `tracing-subscriber` writer for stderr that keeps log lines and the progress bar
/// apart: each log line is written whole, above the bar. Use it as the fmt layer's writer
/// (`.with_writer(LogWriter)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::with_capacity(256))
    }
}

/// One log record being formatted; written to stderr (above the bar) when dropped.
#[derive(Debug)]
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        // With a hidden draw target this only runs the closure (under the bars' lock, so a
        // bar that appears meanwhile waits for the line).
        STDERR_BARS.suspend(|| {
            let mut err = io::stderr().lock();
            // Like the default stderr writer, a log line that cannot be written is dropped.
            let _ = err.write_all(&self.0);
            let _ = err.flush();
        });
    }
}

/// Stderr as indicatif's terminal, whether or not it is one (`--progress always`), and
/// infallible: once a write fails (a closed pipe, a hung-up terminal) it draws nothing more.
/// indicatif unwraps I/O errors while it hides the bar for a log line; this never gives it one.
#[derive(Debug)]
struct StderrTerm {
    term: console::Term,
    broken: AtomicBool,
}

impl StderrTerm {
    fn new() -> StderrTerm {
        StderrTerm {
            // Buffered: a whole frame goes out in one write on flush.
            term: console::Term::buffered_stderr(),
            broken: AtomicBool::new(false),
        }
    }

    fn guard(&self, op: impl FnOnce(&console::Term) -> io::Result<()>) -> io::Result<()> {
        if !self.broken.load(Ordering::Relaxed) && op(&self.term).is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl TermLike for StderrTerm {
    fn width(&self) -> u16 {
        self.term.size().1
    }

    fn height(&self) -> u16 {
        self.term.size().0
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.guard(|t| t.move_cursor_up(n))
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.guard(|t| t.move_cursor_down(n))
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.guard(|t| t.move_cursor_right(n))
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.guard(|t| t.move_cursor_left(n))
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.guard(|t| t.write_line(s))
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.guard(|t| t.write_str(s))
    }

    fn clear_line(&self) -> io::Result<()> {
        self.guard(|t| t.clear_line())
    }

    fn flush(&self) -> io::Result<()> {
        self.guard(|t| t.flush())
    }
}

/// Whether `mode` means a bar on this process's stderr: `auto` draws where indicatif
/// itself would (a terminal, `TERM` set and not `dumb`).
fn wants_bar(mode: ProgressMode) -> bool {
    match mode {
        ProgressMode::Always => true,
        ProgressMode::Never => false,
        ProgressMode::Auto => io::stderr().is_terminal() && !console::is_dumb(),
    }
}

/// Verdicts counted so far. Written by the sink only, read by the ticker.
#[derive(Debug, Default)]
struct Counts {
    ok: AtomicU64,
    still_failed: AtomicU64,
    not_found: AtomicU64,
    errors: AtomicU64,
    dead: AtomicU64,
    deferred: AtomicU64,
    requests: AtomicU64,
}

impl Counts {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            ok: self.ok.load(Ordering::Relaxed),
            still_failed: self.still_failed.load(Ordering::Relaxed),
            not_found: self.not_found.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snapshot {
    ok: u64,
    still_failed: u64,
    not_found: u64,
    errors: u64,
    dead: u64,
    /// Not checked: their host's circuit was open. Done for the bar, not checked.
    deferred: u64,
    requests: u64,
}

impl Snapshot {
    fn done(&self) -> u64 {
        self.ok + self.still_failed + self.not_found + self.errors + self.dead + self.deferred
    }
}

/// Rates over a sliding window of samples.
#[derive(Debug)]
struct Meter {
    window: Duration,
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Meter {
    fn new(window: Duration, at: Instant, first: Snapshot) -> Meter {
        let mut samples = VecDeque::new();
        samples.push_back((at, first.done(), first.requests));
        Meter { window, samples }
    }

    /// Adds a sample; returns (items/s, requests/s) since the oldest sample that is still
    /// in the window (or the newest one before it).
    fn push(&mut self, at: Instant, s: Snapshot) -> (f64, f64) {
        self.samples.push_back((at, s.done(), s.requests));
        while self.samples.len() > 2 && at.duration_since(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        let (t0, d0, r0) = self.samples[0];
        let secs = at.duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        (
            s.done().saturating_sub(d0) as f64 / secs,
            s.requests.saturating_sub(r0) as f64 / secs,
        )
    }
}

/// Says which hosts' adaptive limits are below their bound (`h:443 9/50`), or nothing.
pub type HostLimits = Arc<dyn Fn() -> String + Send + Sync>;

struct HostLimitsFn(Mutex<Option<HostLimits>>);

impl fmt::Debug for HostLimitsFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostLimits")
    }
}

/// What the bar and the log line show.
#[derive(Debug, Clone, PartialEq)]
struct Status {
    total: u64,
    counts: Snapshot,
    elapsed: Duration,
    items_per_s: f64,
    requests_per_s: f64,
    /// Hosts below their limit's bound, or empty.
    hosts: String,
}

impl Status {
    fn done(&self) -> u64 {
        self.counts.done()
    }

    /// Time left at the recent item rate; `None` while nothing moves.
    fn eta(&self) -> Option<Duration> {
        let left = self.total.saturating_sub(self.done());
        if left == 0 {
            return Some(Duration::ZERO);
        }
        (self.items_per_s > 0.0).then(|| Duration::from_secs_f64(left as f64 / self.items_per_s))
    }

    /// The bar's second line.
    fn bar_message(&self) -> String {
        let c = &self.counts;
        let deferred = if c.deferred > 0 {
            format!(", deferred {}", c.deferred)
        } else {
            String::new()
        };
        let hosts = if self.hosts.is_empty() {
            String::new()
        } else {
            format!(" | limit {}", self.hosts)
        };
        // One decimal below 10/s: a slow API's 0.4 req/s is not "0 req/s".
        let rate = if self.requests_per_s < 10.0 {
            format!("{:.1}", self.requests_per_s)
        } else {
            format!("{:.0}", self.requests_per_s)
        };
        format!(
            "ok {}, still failed {}, not found {}, errors {}, dead {}{deferred} | {rate} req/s, ETA {}{hosts}",
            c.ok,
            c.still_failed,
            c.not_found,
            c.errors,
            c.dead,
            Eta(self.eta()),
        )
    }

    /// The periodic log line (no bar).
    fn log(&self) {
        let c = &self.counts;
        if !self.hosts.is_empty() {
            tracing::info!(host_limits = %self.hosts, "hosts below their concurrency limit");
        }
        tracing::info!(
            done = self.done(),
            total = self.total,
            ok = c.ok,
            still_failed = c.still_failed,
            not_found = c.not_found,
            errors = c.errors,
            dead = c.dead,
            deferred = c.deferred,
            requests_per_s = (self.requests_per_s * 10.0).round() / 10.0,
            eta = %Eta(self.eta()),
            "progress"
        );
    }
}

/// An ETA as an operator reads it: `42s`, `3m 05s`, `2h 10m`, or `unknown`.
struct Eta(Option<Duration>);

impl fmt::Display for Eta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(d) = self.0 else {
            return f.write_str("unknown");
        };
        let s = d.as_secs_f64().ceil() as u64;
        match s {
            0..60 => write!(f, "{s}s"),
            60..3600 => write!(f, "{}m {:02}s", s / 60, s % 60),
            _ => write!(f, "{}h {:02}m", s / 3600, s % 3600 / 60),
        }
    }
}

/// State shared by [`Progress`] and its ticker.
#[derive(Debug)]
struct Shared {
    total: u64,
    counts: Counts,
    started: Instant,
    /// Hosts whose adaptive limit is below its bound, as text (`h:443 9/50`).
    host_limits: HostLimitsFn,
    /// The bar while it is shown; taken (and cleared) by [`Progress::finish`]. Locked by the
    /// ticker ten times a second and by `finish`, never by [`Progress::record`].
    bar: Mutex<Option<Shown>>,
}

/// A bar on stderr and the text of its `{status}` key. The text is a template key rather
/// than the bar's message because `set_message` draws: one tick sets the text, then
/// updates position and length in one [`ProgressBar::update`], so a tick draws once.
#[derive(Debug)]
struct Shown {
    bar: ProgressBar,
    status: Arc<Mutex<String>>,
}

impl Shown {
    fn new(total: u64) -> Shown {
        let status = Arc::new(Mutex::new(String::new()));
        let text = Arc::clone(&status);
        let style = ProgressStyle::with_template(BAR_TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
            .with_key(
                "status",
                move |_: &indicatif::ProgressState, w: &mut dyn fmt::Write| {
                    let _ = w.write_str(&text.lock().unwrap_or_else(PoisonError::into_inner));
                },
            );
        let shown = Shown {
            bar: ProgressBar::hidden().with_style(style),
            status,
        };
        shown.show(&Status {
            total,
            counts: Snapshot::default(),
            elapsed: Duration::ZERO,
            items_per_s: 0.0,
            requests_per_s: 0.0,
            hosts: String::new(),
        });
        shown
    }

    /// Updates the bar; draws it (at most [`BAR_EVERY`] apart, unless a log line forces it).
    fn show(&self, status: &Status) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status.bar_message();
        self.bar.update(|s| {
            // More may be checked than were pending at the start (items added meanwhile).
            s.set_len(status.total.max(status.done()));
            s.set_pos(status.done());
        });
    }
}

impl Shared {
    fn new(total: u64) -> Shared {
        Shared {
            total,
            counts: Counts::default(),
            started: Instant::now(),
            host_limits: HostLimitsFn(Mutex::new(None)),
            bar: Mutex::new(None),
        }
    }

    fn host_limits(&self) -> String {
        let f = self
            .host_limits
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        f.map_or_else(String::new, |f| f())
    }

    fn show_on_bar(&self, status: &Status) {
        if let Some(shown) = self
            .bar
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            shown.show(status);
        }
    }
}

/// Every `every` from now, measures rates over `window` and hands the status to `show`.
/// Runs until aborted. The first sample is taken now, not when the task is first polled.
fn tick(
    shared: Arc<Shared>,
    every: Duration,
    window: Duration,
    mut show: impl FnMut(&Shared, &Status) + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let start = Instant::now();
    let mut meter = Meter::new(window, start, shared.counts.snapshot());
    let mut clock = tokio::time::interval_at(start + every, every);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The ETA's rate, smoothed over a few windows: on a slow API the window holds a handful
    // of items and its rate (so the ETA) would jump with each one.
    let mut smoothed: Option<f64> = None;
    let alpha = (every.as_secs_f64() / (2.0 * window.as_secs_f64())).clamp(0.01, 1.0);
    async move {
        loop {
            let now = clock.tick().await;
            let counts = shared.counts.snapshot();
            let (window_rate, requests_per_s) = meter.push(now, counts);
            let items_per_s = match smoothed {
                Some(s) if window_rate > 0.0 => s + alpha * (window_rate - s),
                Some(s) => s,
                None => window_rate,
            };
            if items_per_s > 0.0 {
                smoothed = Some(items_per_s);
            }
            let status = Status {
                total: shared.total,
                counts,
                elapsed: now.duration_since(shared.started),
                items_per_s,
                requests_per_s,
                hosts: shared.host_limits(),
            };
            show(&shared, &status);
        }
    }
}

/// The run's progress display, shared by the sink (which records) and the run.
#[derive(Debug)]
pub struct Progress {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the display for `total` items: a bar on stderr (per `mode`), else a progress
    /// log line every [`LOG_EVERY`]. Call it inside a Tokio runtime (the ticker is a task);
    /// outside one, it only counts. Nothing is shown when `total` is 0.
    pub fn start(mode: ProgressMode, total: u64) -> Progress {
        let shared = Arc::new(Shared::new(total));
        let runtime = tokio::runtime::Handle::try_current().ok();
        let ticker = match runtime {
            Some(rt) if total > 0 && wants_bar(mode) => {
                STDERR_BARS.set_draw_target(ProgressDrawTarget::term_like_with_hz(
                    Box::new(StderrTerm::new()),
                    (Duration::from_secs(1).as_millis() / BAR_EVERY.as_millis()) as u8,
                ));
                let shown = Shown::new(total);
                // Added once its text is set: the first frame is drawn here.
                STDERR_BARS.add(shown.bar.clone());
                shown.bar.tick();
                *shared.bar.lock().unwrap_or_else(PoisonError::into_inner) = Some(shown);
                Some(rt.spawn(tick(
                    Arc::clone(&shared),
                    BAR_EVERY,
                    BAR_WINDOW,
                    Shared::show_on_bar,
                )))
            }
            Some(rt) if total > 0 => Some(rt.spawn(tick(
                Arc::clone(&shared),
                LOG_EVERY,
                LOG_EVERY,
                |_: &Shared, s: &Status| s.log(),
            ))),
            _ => None,
        };
        Progress { shared, ticker }
    }

    /// Shows, on every tick, the hosts whose adaptive limit is below its bound.
    pub fn watch_host_limits(&self, f: HostLimits) {
        *self
            .shared
            .host_limits
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(f);
    }

    /// Counts one verdict: a few relaxed atomic adds, no lock, no I/O.
    pub fn record(&self, v: &Verdict) {
        let c = &self.shared.counts;
        let counter = match v.outcome {
            Outcome::Ok => &c.ok,
            Outcome::StillFailed => &c.still_failed,
            Outcome::NotFound => &c.not_found,
            Outcome::Error => &c.errors,
            Outcome::Dead => &c.dead,
            Outcome::Deferred => &c.deferred,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        c.requests
            .fetch_add(u64::from(v.attempts), Ordering::Relaxed);
    }

    /// Stops the ticker and removes the bar (before the summary is printed). Idempotent.
    pub fn finish(&self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        let bar = self
            .shared
            .bar
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(Shown { bar, .. }) = bar {
            bar.finish_and_clear();
            STDERR_BARS.remove(&bar);
            STDERR_BARS.set_draw_target(ProgressDrawTarget::hidden());
        }
    }
}

/// Clears whatever bar is on the terminal, at once (a second Ctrl-C exits without the
/// run's own cleanup).
pub fn clear_terminal() {
    let _ = STDERR_BARS.clear();
    STDERR_BARS.set_draw_target(ProgressDrawTarget::hidden());
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn verdict(outcome: Outcome, attempts: u32) -> Verdict {
        Verdict {
            key: 0,
            id: "x".into(),
            outcome,
            http_status: Some(200),
            attempts,
            error: None,
            checked_at: SystemTime::now(),
            elapsed: Duration::ZERO,
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    fn status(total: u64, counts: Snapshot, items_per_s: f64, requests_per_s: f64) -> Status {
        Status {
            total,
            counts,
            elapsed: Duration::from_secs(10),
            items_per_s,
            requests_per_s,
            hosts: String::new(),
        }
    }

    #[test]
    fn slow_rates_keep_a_decimal() {
        assert!(
            status(100, Snapshot::default(), 1.0, 0.4)
                .bar_message()
                .contains("| 0.4 req/s")
        );
        assert!(
            status(100, Snapshot::default(), 1.0, 123.4)
                .bar_message()
                .contains("| 123 req/s")
        );
    }

    #[test]
    fn hosts_below_their_bound_are_on_the_bar() {
        let mut s = status(100, Snapshot::default(), 1.0, 1.0);
        assert!(!s.bar_message().contains("limit"));
        s.hosts = "api:443 9/50".into();
        assert!(
            s.bar_message().ends_with(" | limit api:443 9/50"),
            "{}",
            s.bar_message()
        );
    }

    #[test]
    fn record_counts_outcomes_and_requests() {
        let p = Progress::start(ProgressMode::Never, 10); // no runtime: counts only
        assert!(p.ticker.is_none());
        p.record(&verdict(Outcome::Ok, 1));
        p.record(&verdict(Outcome::Ok, 3));
        p.record(&verdict(Outcome::StillFailed, 1));
        p.record(&verdict(Outcome::NotFound, 1));
        p.record(&verdict(Outcome::Error, 6));
        p.record(&verdict(Outcome::Dead, 1));
        let s = p.shared.counts.snapshot();
        assert_eq!(
            s,
            Snapshot {
                ok: 2,
                still_failed: 1,
                not_found: 1,
                errors: 1,
                dead: 1,
                requests: 13,
                deferred: 0,
            }
        );
        assert_eq!(s.done(), 6);
        p.finish();
        p.finish();
    }

    #[test]
    fn eta_reads_like_a_person_wrote_it() {
        let f = |s: Option<f64>| Eta(s.map(Duration::from_secs_f64)).to_string();
        assert_eq!(f(None), "unknown");
        assert_eq!(f(Some(0.0)), "0s");
        assert_eq!(f(Some(0.2)), "1s");
        assert_eq!(f(Some(59.0)), "59s");
        assert_eq!(f(Some(65.0)), "1m 05s");
        assert_eq!(f(Some(3599.0)), "59m 59s");
        assert_eq!(f(Some(7800.0)), "2h 10m");
    }

    #[test]
    fn eta_from_the_recent_item_rate() {
        let counts = Snapshot {
            ok: 30,
            ..Snapshot::default()
        };
        assert_eq!(
            status(100, counts, 7.0, 9.0).eta(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(status(100, counts, 0.0, 0.0).eta(), None);
        assert_eq!(status(30, counts, 0.0, 0.0).eta(), Some(Duration::ZERO));
        assert_eq!(status(10, counts, 0.0, 0.0).eta(), Some(Duration::ZERO));
    }

    #[test]
    fn bar_template_parses_and_message_has_everything() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        let counts = Snapshot {
            ok: 1100,
            still_failed: 50,
            not_found: 20,
            errors: 30,
            dead: 4,
            requests: 1300,
            deferred: 0,
        };
        assert_eq!(
            status(5000, counts, 480.0, 512.4).bar_message(),
            "ok 1100, still failed 50, not found 20, errors 30, dead 4 | 512 req/s, ETA 8s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn meter_keeps_a_sliding_window() {
        let t0 = Instant::now();
        let snap = |done: u64, requests: u64| Snapshot {
            ok: done,
            requests,
            ..Snapshot::default()
        };
        let mut m = Meter::new(Duration::from_secs(5), t0, snap(0, 0));
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(m.push(at(1), snap(10, 20)), (10.0, 20.0));
        assert_eq!(m.push(at(2), snap(20, 40)), (10.0, 20.0));
        // The run stalls: the rate falls as the busy seconds leave the window.
        for s in 3..=7 {
            m.push(at(s), snap(20, 40));
        }
        // Window [2, 7]: nothing since second 2.
        assert_eq!(m.push(at(7), snap(20, 40)), (0.0, 0.0));
        assert!(m.samples.len() <= 8);
    }

    /// The log-mode ticker, on Tokio's paused clock: a line every 10 s, rates over the last
    /// interval, and the exact text an operator sees.
    #[tokio::test(start_paused = true)]
    async fn log_ticker_every_ten_seconds() {
        let shared = Arc::new(Shared::new(100));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ticker = tokio::spawn(tick(
            Arc::clone(&shared),
            LOG_EVERY,
            LOG_EVERY,
            move |_: &Shared, s: &Status| {
                let _ = tx.send((Instant::now(), s.clone()));
            },
        ));
        let p = Progress {
            shared: Arc::clone(&shared),
            ticker: None,
        };
        let t0 = Instant::now();
        for i in 0..30 {
            let outcome = [Outcome::Ok, Outcome::Ok, Outcome::Error][i % 3];
            p.record(&verdict(outcome, 2));
        }
        // Nothing else is pending, so the paused clock jumps to the first tick.
        let (at, first) = rx.recv().await.unwrap();
        assert_eq!(at - t0, Duration::from_secs(10));
        assert_eq!(first.done(), 30);
        assert_eq!((first.items_per_s, first.requests_per_s), (3.0, 6.0));
        assert_eq!(first.elapsed, Duration::from_secs(10));
        assert_eq!(Eta(first.eta()).to_string(), "24s"); // 70 left at 3/s

        tokio::time::sleep(Duration::from_secs(5)).await;
        for _ in 0..20 {
            p.record(&verdict(Outcome::NotFound, 1));
        }
        let (at, second) = rx.recv().await.unwrap();
        assert_eq!(at - t0, Duration::from_secs(20));
        // Only the last ten seconds count: 20 items, 20 requests; the ETA's item rate is
        // smoothed half-way from the first window's 3/s toward them.
        assert_eq!((second.items_per_s, second.requests_per_s), (2.5, 2.0));
        assert_eq!(Eta(second.eta()).to_string(), "20s");
        ticker.abort();

        // The line itself, as the text log format prints it.
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let out = Arc::clone(&out);
            move || CaptureWriter(Arc::clone(&out))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || second.log());
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            " INFO progress done=50 total=100 ok=20 still_failed=0 not_found=20 errors=10 dead=0 deferred=0 \
             requests_per_s=2.0 eta=20s\n"
        );
    }

    struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

    impl Write for CaptureWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_pass_through_whole_when_no_bar_is_shown() {
        use tracing_subscriber::fmt::MakeWriter;
        let mut line = LogWriter.make_writer();
        line.write_all(b"part one, ").unwrap();
        line.write_all(b"part two\n").unwrap();
        assert_eq!(line.0, b"part one, part two\n");
        line.0.clear(); // nothing reaches the test's stderr
        drop(line);
    }
}
