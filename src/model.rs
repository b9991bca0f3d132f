//! Shared vocabulary: items, outcomes, verdicts and status values. No I/O lives here.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Where an item lives in its store: a SQLite `rowid`, or the position of the item in a
/// JSON/JSONL file. Only the store that produced it interprets it.
pub type ItemKey = i64;

/// One failed item claimed from a store, ready to be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The store's locator for write-back.
    pub key: ItemKey,
    /// The item's id as text (`item_id`, or the `--id-column`).
    pub id: String,
    /// The item's own URL (`url` / `--url-column`), when the store has one.
    pub url: Option<String>,
    /// Values of the extra columns the URL template asks for (`{COLUMN}`), in the order of
    /// [`crate::store::StoreOptions::extra_columns`]. `None` is SQL NULL / a missing field.
    pub fields: Vec<Option<String>>,
    /// Runs that judged the item before this one (`checks`; 0 where the store has no such
    /// column).
    pub checks: u32,
    /// When the item was first checked (`first_checked_at`), if it was and the store says.
    pub first_checked_at: Option<SystemTime>,
}

/// What one check concluded about one item (docs/reference.md §3.4, the outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Expected HTTP status and every `--expect-json` rule holds.
    Ok,
    /// Expected HTTP status, but a JSON rule does not hold.
    StillFailed,
    /// 404 or 410.
    NotFound,
    /// Retries exhausted, or a non-retryable failure.
    Error,
    /// The answer says the item failed for good (a `--dead-json` / `--dead-jq` rule holds).
    Dead,
    /// Not an outcome of a check: the host's circuit was open, so the item was not asked
    /// for (or its retries stopped). Its status stays; only `next_check_at` is written.
    /// Not in [`Outcome::ALL`] and not counted as checked.
    Deferred,
}

impl Outcome {
    /// All outcomes, in the order summaries list them.
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::StillFailed,
        Outcome::NotFound,
        Outcome::Error,
        Outcome::Dead,
    ];

    /// The snake_case name used in JSON output and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::StillFailed => "still_failed",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
            Outcome::Dead => "dead",
            Outcome::Deferred => "deferred",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of checking one item: what gets written back and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The store's locator of the item.
    pub key: ItemKey,
    /// The item's id (for reports and logs).
    pub id: String,
    /// What the check concluded.
    pub outcome: Outcome,
    /// HTTP status of the last answer, if any answer came.
    pub http_status: Option<u16>,
    /// HTTP attempts made for this item in this run.
    pub attempts: u32,
    /// Why the item is not OK (`None` when it is OK). Never contains a secret.
    pub error: Option<String>,
    /// When the check finished.
    pub checked_at: SystemTime,
    /// Time from the first attempt to the verdict, retries and waits included.
    pub elapsed: Duration,
    /// The URL asked, for reports: its password, if any, is replaced by `***`.
    pub url: Option<String>,
    /// The host's adaptive limit when the last attempt was admitted (`None`: no per-host
    /// limit), for `--report`.
    pub host_limit: Option<usize>,
    /// When the item is due for its next check (`next_check_at`): set after a not-OK check
    /// by `--recheck-backoff`, or by a `Retry-After` longer than the run could wait; `None`
    /// means due at once (or settled).
    pub next_check_at: Option<SystemTime>,
}

/// A status value as the user typed it (`--failed-status 5`, `--ok-status ok`).
///
/// Stores decide how to bind it: as an integer where the column (or the JSON field) holds
/// integers and the text parses as one, else as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusValue(String);

impl StatusValue {
    /// Wraps a status value; any text is allowed.
    pub fn new(text: impl Into<String>) -> Self {
        StatusValue(text.into())
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as an integer, when it is one (`"5"` → `Some(5)`, `"05"` → `None`).
    pub fn as_int(&self) -> Option<i64> {
        canonical_int(&self.0)
    }
}

/// `text` as an integer when it is written the way the integer prints (`"5"`, `"-12"`):
/// `"05"`, `"+5"` or `"-0"` are text that only looks like a number. No allocation (keys
/// and statuses go through here for every row).
pub fn canonical_int(text: &str) -> Option<i64> {
    let n: i64 = text.parse().ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !text.starts_with('+') && (text == "0" || !digits.starts_with('0'));
    canonical.then_some(n)
}

impl fmt::Display for StatusValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Appends `n` in decimal, without `format!` (no allocation beyond `out`'s): for text made
/// on every request or row (SQL placeholders, `host:port` keys).
pub fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Formats a time as RFC 3339 UTC with millisecond precision, the form every store writes
/// into `checked_at` (it sorts as text).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Reads a time a store holds as text: RFC 3339 (`T` or a space, `Z` optional, any
/// fraction), UTC. `None` for anything else.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim()).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_ints_only() {
        for (text, want) in [
            ("0", Some(0)),
            ("5", Some(5)),
            ("-12", Some(-12)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("05", None),
            ("+5", None),
            ("-0", None),
            ("-05", None),
            ("00", None),
            ("", None),
            ("-", None),
            ("5a", None),
            ("9223372036854775808", None),
        ] {
            assert_eq!(canonical_int(text), want, "{text:?}");
            let n: Option<i64> = text.parse().ok();
            let old = n.filter(|n| n.to_string() == text);
            assert_eq!(canonical_int(text), old, "as before for {text:?}");
        }
    }

    #[test]
    fn decimals_without_format() {
        for n in [0u64, 7, 10, 99, 100, 65_535, u64::MAX] {
            let mut out = String::from("x");
            super::push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    use super::*;

    #[test]
    fn status_value_int_only_when_canonical() {
        assert_eq!(StatusValue::new("5").as_int(), Some(5));
        assert_eq!(StatusValue::new("-1").as_int(), Some(-1));
        assert_eq!(StatusValue::new("05").as_int(), None);
        assert_eq!(StatusValue::new("+5").as_int(), None);
        assert_eq!(StatusValue::new("failed").as_int(), None);
    }

    #[test]
    fn rfc3339_is_utc_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.500Z");
        assert_eq!(parse_time("1970-01-01T00:00:01.500Z"), Some(t));
        assert_eq!(parse_time("1970-01-01 00:00:01.5"), Some(t));
        assert_eq!(parse_time("yesterday"), None);
    }
}
