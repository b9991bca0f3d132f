//! The run's counters and their text and JSON forms (docs/reference.md §4.1). Counts errors by
//! message, never keeps anything per item, so it is the same size for ten items or ten million.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::hosts::HostSummary;
use crate::model::{Outcome, Verdict};
use crate::report::Stored;

/// Distinct error messages counted; later new ones are lumped as "other errors".
const MAX_DISTINCT_ERRORS: usize = 1000;
/// Errors listed in the summary.
const TOP_ERRORS: usize = 5;

/// The keys of the JSON summary that scripts may rely on (docs/reference.md §4); the others
/// are additions.
pub const STABLE_KEYS: [&str; 14] = [
    "task",
    "checked",
    "ok",
    "still_failed",
    "not_found",
    "errors",
    "dead",
    "requests",
    "retries",
    "duration_ms",
    "interrupted",
    "dry_run",
    "conflicts",
    "unwritten",
];

/// `--format`: how the summary is printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A small aligned table for people.
    #[default]
    Text,
    /// One JSON object with stable keys, for scripts.
    Json,
    /// GitHub-flavoured Markdown tables, for CI job pages and pull-request comments.
    Markdown,
}

/// Everything the summary says about a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The task checked.
    pub task: String,
    /// The store, as shown to users (password redacted).
    pub store: String,
    /// Items that got an outcome.
    pub checked: u64,
    /// Per outcome.
    pub ok: u64,
    /// Expected status, JSON rule failed.
    pub still_failed: u64,
    /// 404/410.
    pub not_found: u64,
    /// Retries exhausted or final failures.
    pub errors: u64,
    /// Failed for good (a dead rule held).
    pub dead: u64,
    /// Not checked: their host's circuit was open (exit 5). Not in `checked`.
    pub deferred: u64,
    /// HTTP attempts made.
    pub requests: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Wall time of the run.
    pub duration: Duration,
    /// Stopped by a signal.
    pub interrupted: bool,
    /// Stopped by `--deadline`.
    pub deadline_reached: bool,
    /// Nothing was written.
    pub dry_run: bool,
    /// Checks abandoned at a stop (their items keep their status).
    pub abandoned: u64,
    /// Answers written to the store.
    pub written: u64,
    /// Answers not written because their row changed since it was claimed (the other
    /// change was kept).
    pub conflicts: u64,
    /// Answers not written because the store failed (they are still counted above and in
    /// `--report`).
    pub unwritten: u64,
    /// Why the store failed during the run (exit 4), if it did.
    pub store_error: Option<String>,
    /// Output files (`--report`, `--junit`, `--metrics-file`) that failed (exit ≥ 1).
    pub output_errors: u64,
    /// The task's items still failed in the store after the run (`None`: it could not be
    /// counted).
    pub backlog: Option<u64>,
    /// Failed items this run skipped because they were not due yet (`next_check_at`
    /// ahead; `None`: the store has no schedule).
    pub not_due: Option<u64>,
    /// The earliest `next_check_at` among the task's failed items, RFC 3339 UTC: when a
    /// run next has something to check.
    pub next_due_at: Option<String>,
    /// Items claimed from the store but left unchecked by a stop (their status kept).
    pub unchecked: u64,
    /// Per host: requests, answers, latency, adaptive limit, circuit.
    pub hosts: Vec<HostSummary>,
    latency_ms: Histogram<u64>,
    error_counts: HashMap<String, u64>,
    other_errors: u64,
}

impl Summary {
    /// An empty summary for `task` on `store`.
    pub fn new(task: &str, store: &str, dry_run: bool) -> Summary {
        Summary {
            task: task.to_string(),
            store: store.to_string(),
            checked: 0,
            ok: 0,
            still_failed: 0,
            not_found: 0,
            errors: 0,
            dead: 0,
            deferred: 0,
            requests: 0,
            retries: 0,
            duration: Duration::ZERO,
            interrupted: false,
            deadline_reached: false,
            dry_run,
            abandoned: 0,
            written: 0,
            conflicts: 0,
            unwritten: 0,
            store_error: None,
            output_errors: 0,
            backlog: None,
            not_due: None,
            next_due_at: None,
            unchecked: 0,
            hosts: Vec::new(),
            // 1 ms .. 1 hour at 2 significant figures: a few KiB, fixed.
            latency_ms: Histogram::new_with_bounds(1, 3_600_000, 2)
                .expect("static histogram bounds are valid"),
            error_counts: HashMap::new(),
            other_errors: 0,
        }
    }

    /// Counts one verdict.
    pub fn add(&mut self, v: &Verdict) {
        self.requests += u64::from(v.attempts);
        self.retries += u64::from(v.attempts.saturating_sub(1));
        if v.outcome == Outcome::Deferred {
            // No outcome: the host's circuit was open. Its line says so, once per host.
            self.deferred += 1;
            return;
        }
        self.checked += 1;
        match v.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::StillFailed => self.still_failed += 1,
            Outcome::NotFound => self.not_found += 1,
            Outcome::Error => self.errors += 1,
            Outcome::Dead => self.dead += 1,
            Outcome::Deferred => {}
        }
        if v.attempts > 0 {
            let ms = (v.elapsed.as_millis() as u64).clamp(1, 3_600_000);
            self.latency_ms.saturating_record(ms);
        }
        if v.outcome != Outcome::Ok
            && let Some(e) = &v.error
        {
            if let Some(n) = self.error_counts.get_mut(e) {
                *n += 1;
            } else if self.error_counts.len() < MAX_DISTINCT_ERRORS {
                self.error_counts.insert(e.clone(), 1);
            } else {
                self.other_errors += 1;
            }
        }
    }

    /// Counts what became of one answer in the store.
    pub fn add_stored(&mut self, stored: Stored) {
        match stored {
            Stored::Written => self.written += 1,
            Stored::Conflict => self.conflicts += 1,
            Stored::Unwritten => self.unwritten += 1,
            Stored::DryRun => {}
        }
    }

    /// The one stderr line of a run whose store failed: the cause, and how many answers
    /// were and were not written. `None` when the store did not fail.
    pub fn store_failure_line(&self) -> Option<String> {
        let cause = self.store_error.as_deref()?;
        Some(format!(
            "the store failed: {cause}; no new checks after it; {} answers written, {} could not be written (unwritten), {} conflicts",
            self.written, self.unwritten, self.conflicts
        ))
    }

    /// Whether every checked item is OK (exit 0), or nothing was checked.
    pub fn all_ok(&self) -> bool {
        self.ok == self.checked
    }

    /// Latency percentile in ms (time from first attempt to verdict), 0 without data.
    pub fn latency_percentile(&self, q: f64) -> u64 {
        if self.latency_ms.is_empty() {
            0
        } else {
            self.latency_ms.value_at_quantile(q)
        }
    }

    /// The most frequent error messages, most frequent first (ties by message).
    pub fn top_errors(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .error_counts
            .iter()
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        if self.other_errors > 0 && v.len() < n {
            v.push(("(other errors)".into(), self.other_errors));
        }
        v
    }

    /// Prints the summary in `format`.
    pub fn write(&self, format: Format, out: &mut dyn Write) -> io::Result<()> {
        match format {
            Format::Text => self.write_text(out),
            Format::Json => self.write_json(out),
            Format::Markdown => out.write_all(self.markdown().as_bytes()),
        }
    }

    /// The summary as GitHub-flavoured Markdown: a heading, the counts table, the most
    /// common errors and, with more than one host, the per-host table. Every text from
    /// outside (task, store, host, error) goes through [`md_cell`], so it cannot break a
    /// table or inject HTML. Bounded: each text is cut to [`MD_TEXT_MAX`] characters.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let mut head = format!(
            "### recheck: task {} on {}",
            md_cell(&self.task),
            md_cell(&self.store)
        );
        for (on, what) in [
            (self.dry_run, " (dry run: nothing written)"),
            (self.interrupted, " (interrupted)"),
            (self.deadline_reached, " (deadline reached)"),
            (self.store_error.is_some(), " (store failed)"),
        ] {
            if on {
                head.push_str(what);
            }
        }
        s.push_str(&head);
        s.push_str("\n\n| count | value |\n| --- | ---: |\n");
        let mut rows: Vec<(&str, String)> = vec![
            ("checked", thousands(self.checked)),
            ("ok", thousands(self.ok)),
            ("still failed", thousands(self.still_failed)),
            ("not found", thousands(self.not_found)),
            ("errors", thousands(self.errors)),
            ("dead", thousands(self.dead)),
            ("deferred", thousands(self.deferred)),
            ("requests", thousands(self.requests)),
            ("retries", thousands(self.retries)),
            ("duration", format_duration(self.duration)),
        ];
        if !self.latency_ms.is_empty() {
            rows.push((
                "latency p50 / p95 / p99",
                format!(
                    "{} / {} / {} ms",
                    self.latency_percentile(0.50),
                    self.latency_percentile(0.95),
                    self.latency_percentile(0.99)
                ),
            ));
        }
        if let Some(n) = self.backlog {
            rows.push(("backlog (still failed in the store)", thousands(n)));
        }
        if let Some(n) = self.not_due.filter(|n| *n > 0) {
            rows.push(("not due yet", thousands(n)));
        }
        if let Some(at) = &self.next_due_at {
            rows.push(("next due", md_cell(at)));
        }
        for (name, n) in [
            ("unchecked", self.unchecked),
            ("conflicts", self.conflicts),
            ("unwritten", self.unwritten),
            ("abandoned", self.abandoned),
            ("output errors", self.output_errors),
        ] {
            if n > 0 {
                rows.push((name, thousands(n)));
            }
        }
        for (name, value) in rows {
            s.push_str(&format!("| {name} | {value} |\n"));
        }
        if let Some(e) = &self.store_error {
            s.push_str(&format!("\n**The store failed:** {}\n", md_cell(e)));
        }
        let top = self.top_errors(TOP_ERRORS);
        if !top.is_empty() {
            s.push_str("\n#### Most common errors\n\n| items | error |\n| ---: | --- |\n");
            for (e, n) in top {
                s.push_str(&format!("| {} | {} |\n", thousands(n), md_cell(&e)));
            }
        }
        if self.hosts.len() > 1 {
            s.push_str(
                "\n#### Hosts\n\n| host | requests | 2xx | 3xx | 4xx | 5xx | errors | retries | p50 | p95 | limit | circuit |\n\
                 | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
            );
            for h in &self.hosts {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} ms | {} ms | {} | {} |\n",
                    md_cell(&h.host),
                    h.requests,
                    h.answers.c2xx,
                    h.answers.c3xx,
                    h.answers.c4xx,
                    h.answers.c5xx,
                    h.errors,
                    h.retries,
                    h.latency_p50_ms,
                    h.latency_p95_ms,
                    h.lowest_limit,
                    h.circuit
                ));
            }
        }
        s
    }

    fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        #[derive(Serialize)]
        struct Latency {
            p50: u64,
            p95: u64,
            p99: u64,
        }
        #[derive(Serialize)]
        struct TopError<'a> {
            error: &'a str,
            count: u64,
        }
        #[derive(Serialize)]
        struct Json<'a> {
            task: &'a str,
            store: &'a str,
            checked: u64,
            ok: u64,
            still_failed: u64,
            not_found: u64,
            errors: u64,
            dead: u64,
            deferred: u64,
            requests: u64,
            retries: u64,
            duration_ms: u64,
            interrupted: bool,
            deadline_reached: bool,
            dry_run: bool,
            written: u64,
            conflicts: u64,
            unwritten: u64,
            store_error: Option<&'a str>,
            output_errors: u64,
            backlog: Option<u64>,
            not_due: Option<u64>,
            next_due_at: Option<&'a str>,
            unchecked: u64,
            hosts: &'a [HostSummary],
            latency_ms: Latency,
            top_errors: Vec<TopError<'a>>,
        }
        let top = self.top_errors(TOP_ERRORS);
        let j = Json {
            task: &self.task,
            store: &self.store,
            checked: self.checked,
            ok: self.ok,
            still_failed: self.still_failed,
            not_found: self.not_found,
            errors: self.errors,
            dead: self.dead,
            deferred: self.deferred,
            requests: self.requests,
            retries: self.retries,
            duration_ms: self.duration.as_millis() as u64,
            interrupted: self.interrupted,
            deadline_reached: self.deadline_reached,
            dry_run: self.dry_run,
            written: self.written,
            conflicts: self.conflicts,
            unwritten: self.unwritten,
            store_error: self.store_error.as_deref(),
            output_errors: self.output_errors,
            backlog: self.backlog,
            not_due: self.not_due,
            next_due_at: self.next_due_at.as_deref(),
            unchecked: self.unchecked,
            hosts: &self.hosts,
            latency_ms: Latency {
                p50: self.latency_percentile(0.50),
                p95: self.latency_percentile(0.95),
                p99: self.latency_percentile(0.99),
            },
            top_errors: top
                .iter()
                .map(|(e, c)| TopError {
                    error: e,
                    count: *c,
                })
                .collect(),
        };
        serde_json::to_writer(&mut *out, &j)?;
        writeln!(out)
    }

    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut head = format!("task {} on {}", self.task, self.store);
        if self.dry_run {
            head.push_str(" (dry run: nothing written)");
        }
        if self.interrupted {
            head.push_str(" (interrupted)");
        }
        if self.deadline_reached {
            head.push_str(" (deadline reached)");
        }
        if self.store_error.is_some() {
            head.push_str(" (store failed)");
        }
        writeln!(out, "{head}")?;
        let mut rows: Vec<(&str, String)> = vec![
            ("checked", self.checked.to_string()),
            ("ok", self.ok.to_string()),
            ("still failed", self.still_failed.to_string()),
            ("not found", self.not_found.to_string()),
            ("errors", self.errors.to_string()),
            ("dead", self.dead.to_string()),
            ("requests", self.requests.to_string()),
            ("retries", self.retries.to_string()),
            ("duration", format_duration(self.duration)),
        ];
        if !self.latency_ms.is_empty() {
            for (name, q) in [
                ("latency p50", 0.50),
                ("latency p95", 0.95),
                ("latency p99", 0.99),
            ] {
                rows.push((name, format!("{}ms", self.latency_percentile(q))));
            }
        }
        for (name, value) in rows {
            writeln!(out, "  {name:<13}{value:>10}")?;
        }
        if let Some(n) = self.backlog {
            writeln!(
                out,
                "  {:<13}{:>10}  (items of the task still failed in the store)",
                "backlog", n
            )?;
        }
        match (self.not_due.filter(|n| *n > 0), &self.next_due_at) {
            (Some(n), Some(at)) => writeln!(
                out,
                "  {:<13}{n:>10}  (failed items not due yet, skipped; the next is due at {at})",
                "not due"
            )?,
            (Some(n), None) => writeln!(
                out,
                "  {:<13}{n:>10}  (failed items not due yet, skipped)",
                "not due"
            )?,
            (None, Some(at)) => writeln!(
                out,
                "  {:<13}{at}  (the failed items' earliest next_check_at)",
                "next due"
            )?,
            (None, None) => {}
        }
        if self.unchecked > 0 {
            writeln!(
                out,
                "  {:<13}{:>10}  (claimed, left unchecked by the stop; status kept)",
                "unchecked", self.unchecked
            )?;
        }
        if self.conflicts > 0 {
            writeln!(
                out,
                "  {:<13}{:>10}  (rows changed by someone else meanwhile; their change kept)",
                "conflicts", self.conflicts
            )?;
        }
        if self.store_error.is_some() || self.unwritten > 0 {
            writeln!(out, "  {:<13}{:>10}", "written", self.written)?;
            writeln!(
                out,
                "  {:<13}{:>10}  (the store failed; these answers are not in it)",
                "unwritten", self.unwritten
            )?;
        }
        if self.output_errors > 0 {
            writeln!(
                out,
                "  {:<13}{:>10}  (see stderr)",
                "output errors", self.output_errors
            )?;
        }
        if self.abandoned > 0 {
            writeln!(
                out,
                "  {:<13}{:>10}  (in flight at the stop; left unchanged)",
                "abandoned", self.abandoned
            )?;
        }
        if self.deferred > 0 {
            writeln!(
                out,
                "  {:<13}{:>10}  (not checked: their host's circuit was open; status kept)",
                "deferred", self.deferred
            )?;
        }
        for h in &self.hosts {
            if let (Some(at), Some(n)) = (&h.circuit_opened_at, h.circuit_failures) {
                let clock = at.get(11..19).unwrap_or(at);
                writeln!(
                    out,
                    "  {}: circuit opened after {n} consecutive failures at {clock} UTC, {} items deferred (circuit {})",
                    h.host,
                    thousands(h.deferred),
                    h.circuit
                )?;
            }
            if h.lowest_limit < h.max_limit {
                writeln!(
                    out,
                    "  {}: concurrency limit lowered to {} of {} (429/503/timeouts), {} at the end",
                    h.host, h.lowest_limit, h.max_limit, h.limit
                )?;
            }
        }
        if self.hosts.len() > 1 {
            self.write_hosts_table(out)?;
        }
        let top = self.top_errors(TOP_ERRORS);
        if !top.is_empty() {
            writeln!(out, "  most common problems:")?;
            for (e, n) in top {
                writeln!(out, "  {n:>8}  {e}")?;
            }
        }
        Ok(())
    }
}

impl Summary {
    fn write_hosts_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let width = self
            .hosts
            .iter()
            .map(|h| h.host.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            out,
            "  {:<width$}  {:>8}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>6}  {:>6}  {:>5}  circuit",
            "host",
            "requests",
            "2xx",
            "3xx",
            "4xx",
            "5xx",
            "errors",
            "retries",
            "p50",
            "p95",
            "limit"
        )?;
        for h in &self.hosts {
            writeln!(
                out,
                "  {:<width$}  {:>8}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>4}ms  {:>4}ms  {:>5}  {}",
                h.host,
                h.requests,
                h.answers.c2xx,
                h.answers.c3xx,
                h.answers.c4xx,
                h.answers.c5xx,
                h.errors,
                h.retries,
                h.latency_p50_ms,
                h.latency_p95_ms,
                h.lowest_limit,
                h.circuit
            )?;
        }
        Ok(())
    }
}

/// Longest text (in characters) put in one Markdown cell; longer ones end with `…`.
pub const MD_TEXT_MAX: usize = 300;

/// One text as the content of a Markdown table cell: cut to [`MD_TEXT_MAX`] characters,
/// line breaks and other control characters as spaces, `|` escaped, and `\\`, `` ` ``, `<`,
/// `>`, `&` as HTML character references, so the text can neither end the cell, open a
/// code span, nor inject HTML. The result is at most 6 bytes per input character.
pub fn md_cell(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MD_TEXT_MAX {
            out.push('…');
            break;
        }
        match c {
            '|' => out.push_str("\\|"),
            '\\' => out.push_str("&#92;"),
            '`' => out.push_str("&#96;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `49,980`: a count as a person reads it.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1.234s`, `2m 03s`: short, and exact enough for a person.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 60_000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        let s = d.as_secs();
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn v(outcome: Outcome, attempts: u32, error: Option<&str>) -> Verdict {
        Verdict {
            key: 0,
            id: "x".into(),
            outcome,
            http_status: None,
            attempts,
            error: error.map(Into::into),
            checked_at: SystemTime::now(),
            elapsed: Duration::from_millis(20),
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    #[test]
    fn folds_counts() {
        let mut s = Summary::new("t", "sqlite:x.db", false);
        s.add(&v(Outcome::Ok, 1, None));
        s.add(&v(Outcome::Ok, 3, None));
        s.add(&v(Outcome::Error, 6, Some("HTTP 503")));
        s.add(&v(Outcome::Error, 6, Some("HTTP 503")));
        s.add(&v(Outcome::NotFound, 1, Some("HTTP 404 Not Found")));
        s.add(&v(Outcome::Error, 0, Some("item has no url")));
        s.add(&v(Outcome::Dead, 1, Some("dead: /status is \"failed\"")));
        assert_eq!(
            (s.checked, s.ok, s.errors, s.not_found, s.dead),
            (7, 2, 3, 1, 1)
        );
        assert_eq!(s.requests, 18);
        assert_eq!(s.retries, 2 + 5 + 5);
        assert!(!s.all_ok());
        assert_eq!(s.top_errors(5)[0], ("HTTP 503".to_string(), 2));
        assert_eq!(s.latency_percentile(0.5), 20);
    }

    #[test]
    fn json_has_the_stable_keys() {
        let mut s = Summary::new("t", "x", true);
        s.add(&v(Outcome::StillFailed, 1, Some("nope")));
        let mut out = Vec::new();
        s.write(Format::Json, &mut out).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for key in STABLE_KEYS {
            assert!(j.get(key).is_some(), "missing {key}");
        }
        assert_eq!(j["still_failed"], 1);
        assert_eq!(j["dry_run"], true);
    }

    /// A run with every outcome, for the snapshots.
    fn sample() -> Summary {
        let mut s = Summary::new("nightly-42", "sqlite:jobs.db", false);
        let mut add = |outcome, attempts, ms, error: Option<&str>, n| {
            for _ in 0..n {
                let mut x = v(outcome, attempts, error);
                x.elapsed = Duration::from_millis(ms);
                s.add(&x);
            }
        };
        add(Outcome::Ok, 1, 21, None, 1800);
        add(Outcome::Ok, 3, 450, None, 90);
        add(Outcome::Dead, 1, 24, Some("dead: /status is \"failed\""), 7);
        add(
            Outcome::StillFailed,
            1,
            25,
            Some(r#"/status is "processing", expected "done""#),
            60,
        );
        add(Outcome::NotFound, 1, 19, Some("HTTP 404 Not Found"), 30);
        add(
            Outcome::Error,
            6,
            9_000,
            Some("HTTP 503 Service Unavailable (after 6 attempts)"),
            12,
        );
        add(
            Outcome::Error,
            6,
            30_500,
            Some("timed out after 5s (after 6 attempts)"),
            5,
        );
        add(
            Outcome::Error,
            1,
            22,
            Some("invalid JSON in answer: expected value at line 1 column 1"),
            2,
        );
        add(
            Outcome::Error,
            1,
            20,
            Some("unexpected HTTP 401 Unauthorized"),
            1,
        );
        add(Outcome::Error, 0, 0, Some("item has no url"), 1);
        s.duration = Duration::from_millis(4_217);
        s
    }

    #[test]
    fn text_snapshot() {
        let mut out = Vec::new();
        sample().write(Format::Text, &mut out).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
    }

    #[test]
    fn text_snapshot_interrupted_dry_run() {
        let mut s = Summary::new("t", "json:items.json", true);
        s.add(&v(Outcome::Ok, 1, None));
        s.interrupted = true;
        s.abandoned = 3;
        s.duration = Duration::from_millis(1_500);
        let mut out = Vec::new();
        s.write(Format::Text, &mut out).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
    }

    #[test]
    fn text_snapshot_store_failed() {
        let mut s = Summary::new("t", "sqlite:full.db", false);
        for stored in [
            Stored::Written,
            Stored::Written,
            Stored::Conflict,
            Stored::Unwritten,
        ] {
            s.add(&v(Outcome::Ok, 1, None));
            s.add_stored(stored);
        }
        s.store_error =
            Some("sqlite:full.db: cannot commit results: database or disk is full".into());
        s.output_errors = 1;
        s.duration = Duration::from_millis(1_500);
        let mut out = Vec::new();
        s.write(Format::Text, &mut out).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
        assert_eq!(
            s.store_failure_line().unwrap(),
            "the store failed: sqlite:full.db: cannot commit results: database or disk is full; \
             no new checks after it; 2 answers written, 1 could not be written (unwritten), 1 conflicts"
        );
        let mut out = Vec::new();
        s.write(Format::Json, &mut out).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (
                j["written"].as_u64(),
                j["conflicts"].as_u64(),
                j["unwritten"].as_u64()
            ),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(j["output_errors"], 1);
        assert!(j["store_error"].as_str().unwrap().contains("disk is full"));
        assert!(Summary::new("t", "x", false).store_failure_line().is_none());
    }

    /// The schedule's lines: a cron run that skipped items not due yet, gave up on some
    /// (dead) and was stopped by its deadline with claimed items unchecked.
    #[test]
    fn text_snapshot_schedule() {
        let mut s = Summary::new("transcode-7", "sqlite:recheck.db", false);
        s.add(&v(Outcome::Ok, 1, None));
        s.add(&v(
            Outcome::StillFailed,
            1,
            Some("/state is \"processing\", expected done"),
        ));
        s.add(&v(
            Outcome::Dead,
            1,
            Some("gave up after 3 checks: /state is \"processing\", expected done"),
        ));
        s.deadline_reached = true;
        s.backlog = Some(1_204);
        s.not_due = Some(1_180);
        s.next_due_at = Some("2026-12-01T12:10:03.120Z".into());
        s.unchecked = 23;
        s.duration = Duration::from_millis(60_000);
        let mut out = Vec::new();
        s.write(Format::Text, &mut out).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
        let mut out = Vec::new();
        s.write(Format::Json, &mut out).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (
                &j["backlog"],
                &j["not_due"],
                &j["next_due_at"],
                &j["unchecked"],
                &j["dead"]
            ),
            (
                &serde_json::json!(1_204),
                &serde_json::json!(1_180),
                &serde_json::json!("2026-12-01T12:10:03.120Z"),
                &serde_json::json!(23),
                &serde_json::json!(1)
            )
        );
    }

    /// A host that answered three requests, all 2xx, at its full limit of 50.
    fn healthy_host(name: &str) -> crate::check::hosts::HostSummary {
        use crate::check::hosts::{AnswerClasses, HostSummary};
        HostSummary {
            host: name.into(),
            requests: 3,
            answers: AnswerClasses {
                c2xx: 3,
                ..AnswerClasses::default()
            },
            errors: 0,
            retries: 0,
            latency_p50_ms: 12,
            latency_p95_ms: 14,
            limit: 50,
            lowest_limit: 50,
            max_limit: 50,
            circuit: "closed",
            circuit_opened_at: None,
            circuit_failures: None,
            deferred: 0,
        }
    }

    /// Two hosts, one whose circuit opened and one whose limit came down: the lines that
    /// say so and the per-host table.
    #[test]
    fn text_snapshot_hosts() {
        use crate::check::hosts::{AnswerClasses, HostSummary};
        let mut s = Summary::new("t", "sqlite:recheck.db", false);
        for _ in 0..3 {
            s.add(&v(Outcome::Ok, 1, None));
        }
        let mut deferred = v(Outcome::Deferred, 0, Some("not checked: circuit open"));
        for _ in 0..49_980 {
            deferred.attempts = 0;
            s.add(&deferred);
        }
        s.duration = Duration::from_millis(5_400);
        s.hosts = vec![
            HostSummary {
                host: "api.example.com:443".into(),
                requests: 21,
                answers: AnswerClasses {
                    c5xx: 20,
                    ..AnswerClasses::default()
                },
                errors: 1,
                retries: 17,
                latency_p50_ms: 31,
                latency_p95_ms: 45,
                limit: 45,
                lowest_limit: 45,
                max_limit: 50,
                circuit: "open",
                circuit_opened_at: Some("2026-12-01T12:00:03.120Z".into()),
                circuit_failures: Some(20),
                deferred: 49_980,
            },
            healthy_host("cdn.example.com:443"),
        ];
        assert_eq!((s.checked, s.deferred), (3, 49_980));
        assert!(s.all_ok(), "deferred items are not checked ones");
        let mut out = Vec::new();
        s.write(Format::Text, &mut out).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
    }

    #[test]
    fn markdown_snapshot() {
        let mut out = Vec::new();
        sample().write(Format::Markdown, &mut out).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
    }

    /// Hostile texts stay inside their cell: no unescaped `|`, no HTML, no line break.
    #[test]
    fn markdown_cells_are_escaped() {
        let mut s = Summary::new("t|1\n<script>", "sqlite:`x`.db", false);
        s.add(&v(
            Outcome::Error,
            1,
            Some("a|b\r\n<img src=x onerror=alert(1)> `code` \\| &amp;"),
        ));
        let md = s.markdown();
        assert!(!md.contains('<') && !md.contains('`'), "{md}");
        let row = md.lines().find(|l| l.contains("a\\|b")).unwrap();
        assert_eq!(
            row,
            "| 1 | a\\|b  &lt;img src=x onerror=alert(1)&gt; &#96;code&#96; &#92;\\| &amp;amp; |"
        );
        assert!(
            md.starts_with("### recheck: task t\\|1 &lt;script&gt; on sqlite:&#96;x&#96;.db\n")
        );
        let long = md_cell(&"é".repeat(MD_TEXT_MAX + 10));
        assert_eq!(long.chars().count(), MD_TEXT_MAX + 1);
    }

    /// The per-host table comes with more than one host, with one cell per header.
    #[test]
    fn markdown_snapshot_hosts() {
        let mut s = Summary::new("t", "sqlite:recheck.db", false);
        s.add(&v(Outcome::Ok, 1, None));
        s.hosts = vec![healthy_host("a.example.com:443"), healthy_host("b|<x>:443")];
        s.duration = Duration::from_millis(1_000);
        let md = s.markdown();
        let table: Vec<&str> = md
            .lines()
            .skip_while(|l| !l.starts_with("| host"))
            .collect();
        assert_eq!(table.len(), 4, "{md}");
        for l in &table {
            assert_eq!(l.replace("\\|", "").matches('|').count(), 13, "{l}");
        }
        insta::assert_snapshot!(md);
    }

    #[test]
    fn json_snapshot() {
        let mut out = Vec::new();
        sample().write(Format::Json, &mut out).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        insta::assert_snapshot!(serde_json::to_string_pretty(&j).unwrap());
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.234s");
        assert_eq!(format_duration(Duration::from_secs(123)), "2m 03s");
    }
}
