//! `--junit FILE`: JUnit XML for CI test reporters, one `<testsuite>` per run and one
//! `<testcase>` per checked item:
//!
//! ```xml
//! <testsuites name="recheck" tests="3" failures="1" errors="1" ...>
//!     <testsuite name="recheck task 42" tests="3" failures="1" errors="1" timestamp="..." time="1.250">
//!         <testcase name="a1" classname="42" time="0.012"/>
//!         <testcase name="a7" classname="42" time="0.010">
//!             <failure message="HTTP 404 Not Found" type="not_found">HTTP 404 Not Found
//!
//! url: https://api.example.com/v1/items/a7
//! http_status: 404
//! attempts: 1
//! checked_at: 2025-01-31T10:00:00.123Z</failure>
//!         </testcase>
//!         <testcase name="a9" classname="42" time="4.100">
//!             <error message="timed out after 5s (after 6 attempts)" type="error">...</error>
//!         </testcase>
//!     </testsuite>
//! </testsuites>
//! ```
//!
//! `still_failed`, `not_found` and `dead` are `<failure>`s (`type` the outcome) (the API answered, and the answer says
//! the item is not OK); `error` outcomes are `<error>`s (no usable answer: timeouts, 5xx,
//! invalid JSON). GitHub's reporters (mikepenz/action-junit-report, dorny/test-reporter)
//! show both as failed tests with the message and the text; GitLab shows them as "failed"
//! and "error" and counts them apart. The message is the item's error; the text adds the
//! URL (password redacted), HTTP status, attempts and time.
//!
//! Testcases are held in memory until the end (O(items)): `--junit` is meant for CI-sized
//! runs. The file is written at the end, atomically, also after an interrupt or a deadline
//! (then with what was checked, and a `<system-out>` line saying so), and after a store
//! failure (a `store_failed` property and a `<system-out>` line with how many answers the
//! store lacks).

use std::time::SystemTime;

use anyhow::Result;
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::model::{Outcome, Verdict, rfc3339};
use crate::report::Summary;
use crate::report::outputs::AtomicFile;

/// The testcases of a run, until the file is written.
pub struct JunitReport {
    file: AtomicFile,
    task: String,
    started: SystemTime,
    suite: TestSuite,
}

impl JunitReport {
    /// An empty suite for `task`, to be written to `file`.
    pub(crate) fn new(file: AtomicFile, task: &str, started: SystemTime) -> JunitReport {
        JunitReport {
            file,
            task: task.to_string(),
            started,
            suite: TestSuite::new(format!("recheck task {task}")),
        }
    }

    /// Adds the verdict's testcase.
    pub fn record(&mut self, v: &Verdict) {
        self.suite.add_test_case(test_case(&self.task, v));
    }

    /// Writes the file.
    pub fn finish(self, summary: &Summary) -> Result<()> {
        let report = build(self.suite, &self.task, self.started, summary);
        self.file.write(|w| Ok(report.serialize(w)?))
    }
}

/// Text XML 1.0 can hold: a character it forbids (controls but tab, newline and carriage
/// return; U+FFFE, U+FFFF) becomes U+FFFD, which escaping alone cannot fix (an item id with
/// one made the whole file unparseable).
fn xml_text(s: &str) -> std::borrow::Cow<'_, str> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r')
            || ('\u{20}'..='\u{D7FF}').contains(&c)
            || ('\u{E000}'..='\u{FFFD}').contains(&c)
            || c >= '\u{10000}'
    };
    if s.chars().all(allowed) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| if allowed(c) { c } else { '\u{FFFD}' })
            .collect(),
    )
}

fn test_case(task: &str, v: &Verdict) -> TestCase {
    let status = match v.outcome {
        Outcome::Ok => TestCaseStatus::success(),
        Outcome::Deferred => {
            let mut s = TestCaseStatus::skipped();
            if let Some(why) = &v.error {
                s.set_message(xml_text(why).into_owned());
            }
            s
        }
        other => {
            let kind = if other == Outcome::Error {
                NonSuccessKind::Error
            } else {
                NonSuccessKind::Failure
            };
            let message = v.error.clone().unwrap_or_else(|| other.to_string());
            let mut text = format!("{message}\n");
            if let Some(url) = &v.url {
                text.push_str(&format!("\nurl: {url}"));
            }
            if let Some(s) = v.http_status {
                text.push_str(&format!("\nhttp_status: {s}"));
            }
            text.push_str(&format!(
                "\nattempts: {}\nchecked_at: {}",
                v.attempts,
                rfc3339(v.checked_at)
            ));
            let mut s = TestCaseStatus::non_success(kind);
            s.set_message(xml_text(&message).into_owned())
                .set_type(other.as_str())
                .set_description(xml_text(&text).into_owned());
            s
        }
    };
    let mut tc = TestCase::new(xml_text(&v.id).as_ref(), status);
    tc.set_classname(xml_text(task).as_ref())
        .set_time(v.elapsed);
    tc
}

fn build(mut suite: TestSuite, task: &str, started: SystemTime, summary: &Summary) -> Report {
    let timestamp = chrono::DateTime::<chrono::Utc>::from(started).fixed_offset();
    suite.set_timestamp(timestamp).set_time(summary.duration);
    suite.add_properties([
        Property::new("task", task),
        Property::new("interrupted", summary.interrupted.to_string()),
        Property::new("deadline_reached", summary.deadline_reached.to_string()),
        Property::new("dry_run", summary.dry_run.to_string()),
        Property::new("store_failed", summary.store_error.is_some().to_string()),
    ]);
    let stopped = if summary.interrupted {
        Some("interrupted")
    } else if summary.deadline_reached {
        Some("stopped by --deadline")
    } else {
        None
    };
    let mut notes = String::new();
    if let Some(line) = summary.store_failure_line() {
        // The testcases are the answers; this says which of them the store lacks.
        notes.push_str(&format!("recheck: {line}\n"));
    }
    if let Some(why) = stopped {
        notes.push_str(&format!(
            "recheck: run {why}: {} items checked; {} checks abandoned in flight; items not checked are not listed\n",
            summary.checked, summary.abandoned
        ));
    }
    if !notes.is_empty() {
        suite.set_system_out(notes);
    }
    let mut report = Report::new("recheck");
    report
        .set_timestamp(timestamp)
        .set_time(summary.duration)
        .add_test_suite(suite);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn verdict(id: &str, outcome: Outcome, error: Option<&str>) -> Verdict {
        Verdict {
            key: 0,
            id: id.into(),
            outcome,
            http_status: Some(404),
            attempts: 1,
            error: error.map(Into::into),
            checked_at: SystemTime::UNIX_EPOCH,
            elapsed: Duration::from_millis(250),
            url: Some(format!("http://h/{id}")),
            next_check_at: None,
            host_limit: None,
        }
    }

    /// Characters XML 1.0 forbids (in an item id, an error) are replaced, and the file
    /// still parses.
    #[test]
    fn characters_xml_cannot_hold_are_replaced() {
        let mut suite = TestSuite::new("recheck task t");
        let mut v = verdict(
            "a\u{FFFE}b\u{1}c\u{FFFF}",
            Outcome::StillFailed,
            Some("bad \u{0}byte"),
        );
        v.url = None;
        suite.add_test_case(test_case("t\u{FFFF}", &v));
        let report = build(
            suite,
            "t",
            SystemTime::UNIX_EPOCH,
            &Summary::new("t", "s", false),
        );
        let xml = report.to_string().unwrap();
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let case = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase"))
            .unwrap();
        assert_eq!(case.attribute("name"), Some("a\u{FFFD}b\u{FFFD}c\u{FFFD}"));
        assert!(xml.contains("bad \u{FFFD}byte"), "{xml}");
        assert_eq!(xml_text("plain é 😀"), "plain é 😀");
    }

    #[test]
    fn failures_errors_and_escaping() {
        let mut suite = TestSuite::new("recheck task t<1>");
        for v in [
            verdict("ok-1", Outcome::Ok, None),
            verdict("404-1", Outcome::NotFound, Some("HTTP 404 Not Found")),
            verdict("x&<\"", Outcome::StillFailed, Some("/a is \"b\"")),
            verdict("e", Outcome::Error, Some("timed out")),
            verdict("d", Outcome::Dead, Some("dead: /status is \"failed\"")),
        ] {
            suite.add_test_case(test_case("t<1>", &v));
        }
        let mut summary = Summary::new("t<1>", "x", false);
        summary.interrupted = true;
        let xml = build(suite, "t<1>", SystemTime::UNIX_EPOCH, &summary)
            .to_string()
            .unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let ts = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(ts.attribute("name"), Some("recheck task t<1>"));
        assert_eq!(ts.attribute("tests"), Some("5"));
        assert_eq!(ts.attribute("failures"), Some("3"));
        assert_eq!(ts.attribute("errors"), Some("1"));
        let odd = ts
            .children()
            .find(|n| n.attribute("name") == Some("x&<\""))
            .unwrap();
        let f = odd.children().find(|n| n.has_tag_name("failure")).unwrap();
        assert_eq!(f.attribute("message"), Some("/a is \"b\""));
        assert_eq!(f.attribute("type"), Some("still_failed"));
        assert!(f.text().unwrap().contains("url: http://h/x&<\""));
        let dead = ts
            .children()
            .find(|n| n.attribute("name") == Some("d"))
            .unwrap();
        let f = dead.children().find(|n| n.has_tag_name("failure")).unwrap();
        assert_eq!(f.attribute("type"), Some("dead"));
        assert_eq!(f.attribute("message"), Some("dead: /status is \"failed\""));
        assert!(xml.contains("run interrupted"), "{xml}");
        summary.store_error = Some("disk full".into());
        let xml = build(TestSuite::new("s"), "t", SystemTime::UNIX_EPOCH, &summary)
            .to_string()
            .unwrap();
        assert!(xml.contains("the store failed: disk full"), "{xml}");
        assert!(xml.contains("run interrupted"), "{xml}");
    }
}
