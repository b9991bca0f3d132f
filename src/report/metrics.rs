//! `--metrics-file FILE`: the run in Prometheus text exposition format (0.0.4), for
//! node_exporter's textfile collector. Written once, at the end, atomically (temp file in
//! the same directory, fsync, rename), so the collector never reads half a file.
//!
//! Every value describes the last run of the task, so the counts are gauges (a run starts
//! again from zero; alert on them as they are, `rate()` is meaningless for them):
//!
//! ```text
//! recheck_last_run_items{task="42",outcome="ok"} 2          # also still_failed, not_found, error, dead
//! recheck_last_run_requests{task="42"} 19                   # HTTP attempts
//! recheck_last_run_retries{task="42"} 8                     # attempts after the first
//! recheck_run_duration_seconds{task="42"} 1.25
//! recheck_last_run_timestamp_seconds{task="42"} 1738317600.123
//! recheck_run_interrupted{task="42"} 0                   # 1: stopped by a signal
//! recheck_run_deadline_reached{task="42"} 0              # 1: stopped by --deadline
//! recheck_run_dry_run{task="42"} 0                       # 1: a --dry-run, nothing written
//! recheck_run_store_failed{task="42"} 0                  # 1: the store failed (exit 4)
//! recheck_last_run_conflicts{task="42"} 0                # rows changed meanwhile, not written
//! recheck_last_run_unwritten{task="42"} 0                # answers the failed store lost
//! recheck_task_backlog{task="42"} 12                     # still failed in the store after the run
//! recheck_task_not_due{task="42"} 9                      # of them skipped: not due yet
//! recheck_task_next_due_timestamp_seconds{task="42"} 1.7e9 # earliest next_check_at
//! recheck_last_run_unchecked{task="42"} 0                # claimed, left unchecked by a stop
//! recheck_last_run_deferred{task="42"} 0                 # not checked: the host's circuit was open
//! recheck_check_duration_seconds_bucket{task="42",le="0.005"} 0
//! ...
//! recheck_check_duration_seconds_bucket{task="42",le="+Inf"} 11
//! recheck_check_duration_seconds_sum{task="42"} 3.21
//! recheck_check_duration_seconds_count{task="42"} 11
//! ```
//!
//! The histogram is each item's time from its first attempt to its verdict, retries and
//! backoff included, over the items that made at least one request (as the summary's
//! percentiles). Its buckets are counted exactly, from every verdict, in fixed memory.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use crate::model::{Outcome, Verdict};
use crate::report::Summary;
use crate::report::outputs::AtomicFile;

/// Upper bounds of the latency histogram: `le` label and bound.
pub const BUCKETS: [(&str, Duration); 13] = [
    ("0.005", Duration::from_millis(5)),
    ("0.01", Duration::from_millis(10)),
    ("0.025", Duration::from_millis(25)),
    ("0.05", Duration::from_millis(50)),
    ("0.1", Duration::from_millis(100)),
    ("0.25", Duration::from_millis(250)),
    ("0.5", Duration::from_millis(500)),
    ("1", Duration::from_secs(1)),
    ("2.5", Duration::from_millis(2500)),
    ("5", Duration::from_secs(5)),
    ("10", Duration::from_secs(10)),
    ("30", Duration::from_secs(30)),
    ("60", Duration::from_secs(60)),
];

/// A Prometheus histogram of check durations: per-bucket counts (not cumulative), the
/// total count and the exact sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: Duration,
}

impl Latency {
    /// Counts one duration.
    pub fn observe(&mut self, d: Duration) {
        if let Some(i) = BUCKETS.iter().position(|(_, le)| d <= *le) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(d);
    }

    /// `(le, cumulative count)` per bucket, `+Inf` last.
    pub fn cumulative(&self) -> Vec<(&'static str, u64)> {
        let mut acc = 0;
        let mut out: Vec<(&'static str, u64)> = BUCKETS
            .iter()
            .zip(self.counts)
            .map(|((le, _), n)| {
                acc += n;
                (*le, acc)
            })
            .collect();
        out.push(("+Inf", self.count));
        out
    }
}

/// The `--metrics-file`, until it is written.
pub struct MetricsFile {
    file: AtomicFile,
    task: String,
    latency: Latency,
}

impl MetricsFile {
    pub(crate) fn new(file: AtomicFile, task: &str) -> MetricsFile {
        MetricsFile {
            file,
            task: task.to_string(),
            latency: Latency::default(),
        }
    }

    /// Observes the verdict's duration, when it made a request.
    pub fn record(&mut self, v: &Verdict) {
        if v.attempts > 0 {
            self.latency.observe(v.elapsed);
        }
    }

    /// Writes the file; `now` is the run's end.
    pub fn finish(self, summary: &Summary, now: SystemTime) -> Result<()> {
        let text = render(&self.task, summary, &self.latency, now);
        self.file.write(|w| Ok(w.write_all(text.as_bytes())?))
    }
}

/// The exposition text.
pub fn render(task: &str, s: &Summary, latency: &Latency, now: SystemTime) -> String {
    let task = format!("task=\"{}\"", escape_label(task));
    let mut out = String::new();
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    head(
        &mut out,
        "recheck_last_run_items",
        "gauge",
        "Items checked by the last run of the task, by outcome.",
    );
    for o in Outcome::ALL {
        let n = match o {
            Outcome::Ok => s.ok,
            Outcome::StillFailed => s.still_failed,
            Outcome::NotFound => s.not_found,
            Outcome::Error => s.errors,
            Outcome::Dead => s.dead,
            Outcome::Deferred => s.deferred,
        };
        let _ = writeln!(out, "recheck_last_run_items{{{task},outcome=\"{o}\"}} {n}");
    }
    let at = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let single: [(&str, &str, String); 12] = [
        (
            "recheck_last_run_requests",
            "HTTP attempts made by the last run of the task.",
            s.requests.to_string(),
        ),
        (
            "recheck_last_run_retries",
            "HTTP attempts after the first, by the last run of the task.",
            s.retries.to_string(),
        ),
        (
            "recheck_run_duration_seconds",
            "Wall time of the last run of the task.",
            seconds(s.duration),
        ),
        (
            "recheck_last_run_timestamp_seconds",
            "When the last run of the task ended, in seconds since the Unix epoch.",
            seconds(at),
        ),
        (
            "recheck_run_interrupted",
            "1 if the last run of the task was stopped by a signal.",
            u8::from(s.interrupted).to_string(),
        ),
        (
            "recheck_run_deadline_reached",
            "1 if the last run of the task was stopped by --deadline.",
            u8::from(s.deadline_reached).to_string(),
        ),
        (
            "recheck_run_dry_run",
            "1 if the last run of the task was a --dry-run (nothing was written to the store).",
            u8::from(s.dry_run).to_string(),
        ),
        (
            "recheck_run_store_failed",
            "1 if the store failed during the last run of the task (exit 4).",
            u8::from(s.store_error.is_some()).to_string(),
        ),
        (
            "recheck_last_run_conflicts",
            "Answers of the last run not written because their row had changed meanwhile.",
            s.conflicts.to_string(),
        ),
        (
            "recheck_last_run_unwritten",
            "Answers of the last run not written because the store failed.",
            s.unwritten.to_string(),
        ),
        (
            "recheck_last_run_deferred",
            "Items the last run deferred because their host's circuit was open (exit 5).",
            s.deferred.to_string(),
        ),
        (
            "recheck_last_run_unchecked",
            "Items the last run claimed but left unchecked (a stop came first).",
            s.unchecked.to_string(),
        ),
    ];
    for (name, help, value) in single {
        head(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{{task}}} {value}");
    }
    if let Some(n) = s.backlog {
        let name = "recheck_task_backlog";
        head(
            &mut out,
            name,
            "gauge",
            "Items of the task still failed in the store after the last run.",
        );
        let _ = writeln!(out, "{name}{{{task}}} {n}");
    }
    if let Some(n) = s.not_due {
        let name = "recheck_task_not_due";
        head(
            &mut out,
            name,
            "gauge",
            "Failed items the last run skipped because they were not due yet (next_check_at ahead).",
        );
        let _ = writeln!(out, "{name}{{{task}}} {n}");
    }
    if let Some(at) = s.next_due_at.as_deref().and_then(crate::model::parse_time) {
        let name = "recheck_task_next_due_timestamp_seconds";
        head(
            &mut out,
            name,
            "gauge",
            "The earliest next_check_at of the task's failed items, in Unix seconds.",
        );
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(out, "{name}{{{task}}} {secs:.3}");
    }
    let name = "recheck_check_duration_seconds";
    head(
        &mut out,
        name,
        "histogram",
        "Time from an item's first attempt to its verdict, retries included, in the last run of the task.",
    );
    for (le, n) in latency.cumulative() {
        let _ = writeln!(out, "{name}_bucket{{{task},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_sum{{{task}}} {}", seconds(latency.sum));
    let _ = writeln!(out, "{name}_count{{{task}}} {}", latency.count);
    out
}

/// A label value as the exposition format spells it: `\`, `"` and newline escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds with at most microsecond digits and no trailing zeros (`1.25`, `60`, `0`).
fn seconds(d: Duration) -> String {
    let s = format!("{:.6}", d.as_secs_f64());
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_exact() {
        let mut l = Latency::default();
        for ms in [1, 5, 6, 100, 2500, 70_000] {
            l.observe(Duration::from_millis(ms));
        }
        let c = l.cumulative();
        assert_eq!(c[0], ("0.005", 2));
        assert_eq!(c[1], ("0.01", 3));
        assert_eq!(c[4], ("0.1", 4));
        assert_eq!(c[8], ("2.5", 5));
        assert_eq!(c[12], ("60", 5));
        assert_eq!(c[13], ("+Inf", 6));
        assert_eq!(l.sum, Duration::from_millis(72_612));
    }

    #[test]
    fn seconds_are_short() {
        assert_eq!(seconds(Duration::ZERO), "0");
        assert_eq!(seconds(Duration::from_secs(60)), "60");
        assert_eq!(seconds(Duration::from_millis(1250)), "1.25");
        assert_eq!(seconds(Duration::from_nanos(1_000_000_001)), "1");
    }

    #[test]
    fn a_dry_run_says_so() {
        let text = |dry| {
            render(
                "t",
                &Summary::new("t", "y", dry),
                &Latency::default(),
                SystemTime::UNIX_EPOCH,
            )
        };
        assert!(text(true).contains("\nrecheck_run_dry_run{task=\"t\"} 1\n"));
        assert!(text(false).contains("\nrecheck_run_dry_run{task=\"t\"} 0\n"));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
        let s = Summary::new("x", "y", false);
        let text = render(
            "we\"ird\\\n",
            &s,
            &Latency::default(),
            SystemTime::UNIX_EPOCH,
        );
        assert!(
            text.contains(r#"recheck_last_run_requests{task="we\"ird\\\n"} 0"#),
            "{text}"
        );
        for name in [
            "recheck_run_store_failed",
            "recheck_last_run_conflicts",
            "recheck_last_run_unwritten",
        ] {
            assert!(text.contains(&format!("\n{name}{{task=")), "{name}: {text}");
        }
        // Every sample is one line: the newline in the task did not split one.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("recheck_"), "{line}");
        }
    }
}
