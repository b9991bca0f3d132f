//! `--report FILE`: one JSON object per checked item, one per line, written as the answers
//! are saved (memory does not grow with the number of items):
//!
//! ```json
//! {"task":"42","item_id":"a7","url":"https://api.example.com/v1/items/a7","outcome":"not_found","http_status":404,"attempts":1,"error":"HTTP 404 Not Found","latency_ms":12,"checked_at":"2025-01-31T10:00:00.123Z","store":"written","host_limit":100}
//! ```
//!
//! Keys are always present, in that order; `url`, `http_status` and `error` are `null`
//! when there is none. `url` has its password, if any, replaced by `***`; header values
//! never appear.
//!
//! `store` says what became of the answer in the store ([`Stored`]): `written`;
//! `conflict` (the row changed since it was claimed, the other change was kept);
//! `unwritten` (the store failed during the run, exit 4: the answer is only here); or
//! `dry_run`. A line is written once its batch's save result is known, so the report never
//! claims a write that did not happen, and every answer received is in it even when the
//! store failed.
//!
//! The path is checked before the store is opened, and the file is created (or truncated)
//! only after the store was opened and validated, so a refused run leaves an earlier report
//! alone. Lines are whole objects, flushed after each batch, so `tail -f` or `jq` can
//! follow the file during the run.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::model::{Outcome, Verdict, rfc3339};
use crate::report::Stored;

/// The open `--report` file.
pub struct JsonlReport {
    out: BufWriter<File>,
    task: String,
    flag: &'static str,
    path: PathBuf,
}

/// One line of the report.
#[derive(Serialize)]
struct Line<'a> {
    task: &'a str,
    item_id: &'a str,
    url: Option<&'a str>,
    outcome: Outcome,
    http_status: Option<u16>,
    attempts: u32,
    error: Option<&'a str>,
    latency_ms: u64,
    checked_at: String,
    store: Stored,
    /// The host's adaptive limit when the item's last attempt started (`null`: none).
    host_limit: Option<usize>,
}

impl JsonlReport {
    /// Wraps an open, empty `file` (see [`crate::report::outputs`] for how it is opened);
    /// `flag` and `path` name it in messages.
    pub fn new(flag: &'static str, path: &Path, file: File, task: &str) -> JsonlReport {
        JsonlReport {
            out: BufWriter::new(file),
            task: task.to_string(),
            flag,
            path: path.to_path_buf(),
        }
    }

    /// Creates (or truncates) the file at `path`, for tests and tools; a run opens its
    /// report through [`crate::report::outputs::OutputFiles::check`] instead.
    pub fn create(flag: &'static str, path: &Path, task: &str) -> Result<JsonlReport> {
        crate::report::outputs::refuse_dash(flag, path)?;
        let file = File::create(path)
            .with_context(|| format!("{flag} {}: cannot create", path.display()))?;
        Ok(JsonlReport::new(flag, path, file, task))
    }

    /// Appends the verdict's line, saying what became of it in the store.
    pub fn record(&mut self, v: &Verdict, stored: Stored) -> Result<()> {
        let line = Line {
            task: &self.task,
            item_id: &v.id,
            url: v.url.as_deref(),
            outcome: v.outcome,
            http_status: v.http_status,
            attempts: v.attempts,
            error: v.error.as_deref(),
            latency_ms: u64::try_from(v.elapsed.as_millis()).unwrap_or(u64::MAX),
            checked_at: rfc3339(v.checked_at),
            store: stored,
            host_limit: v.host_limit,
        };
        serde_json::to_writer(&mut self.out, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .with_context(|| self.what())
    }

    /// Writes out what is buffered (after each batch, and at the end).
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| self.what())
    }

    /// Flushes what is buffered.
    pub fn finish(mut self) -> Result<()> {
        self.flush()
    }

    /// Closes the file after a write error without writing the rest of the buffer: the
    /// lines already written stay, nothing half-written follows the error.
    pub fn abandon(self) {
        let (_file, _unwritten) = self.out.into_parts();
    }

    fn what(&self) -> String {
        format!("{} {}: cannot write", self.flag, self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn one_object_per_line_with_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut r = JsonlReport::create("--report", &path, "t\"1").unwrap();
        for (id, outcome, error) in [
            ("a", Outcome::Ok, None),
            ("b\nc", Outcome::Error, Some("timed out")),
        ] {
            r.record(
                &Verdict {
                    key: 0,
                    id: id.into(),
                    outcome,
                    http_status: None,
                    attempts: 2,
                    error: error.map(Into::into),
                    checked_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
                    elapsed: Duration::from_micros(12_900),
                    url: Some(format!("http://x/{id}")),
                    next_check_at: None,
                    host_limit: None,
                },
                Stored::Written,
            )
            .unwrap();
        }
        r.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            r#"{"task":"t\"1","item_id":"a","url":"http://x/a","outcome":"ok","http_status":null,"attempts":2,"error":null,"latency_ms":12,"checked_at":"1970-01-01T00:00:01.500Z","store":"written","host_limit":null}"#
        );
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["item_id"], "b\nc");
        assert_eq!(v["error"], "timed out");
    }

    #[test]
    fn bad_paths_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let e = JsonlReport::create("--report", &dir.path().join("no/r.jsonl"), "t")
            .err()
            .unwrap();
        assert!(format!("{e:#}").starts_with("--report "), "{e:#}");
        assert!(JsonlReport::create("--report", dir.path(), "t").is_err());
        assert!(JsonlReport::create("--report", Path::new("-"), "t").is_err());
    }
}
