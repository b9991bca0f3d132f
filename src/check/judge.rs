//! Stage "check", pure part: turns one HTTP answer (status and body) into a judgement.
//! No I/O, no clock: `fetch` feeds it, tests call it directly.

use std::fmt;

use anyhow::{Result, bail};
use serde_json::Value;

/// Statuses that count as an answer (`--expect-status`, e.g. `200,204` or `2xx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectStatus(Vec<(u16, u16)>);

impl ExpectStatus {
    /// Parses `200`, `200,204`, `2xx`, `200-299`.
    pub fn parse(s: &str) -> Result<ExpectStatus> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim) {
            let range = if let Some(class) =
                part.strip_suffix("xx").or_else(|| part.strip_suffix("XX"))
            {
                match class.parse::<u16>() {
                    Ok(c @ 1..=5) if class.len() == 1 => (c * 100, c * 100 + 99),
                    _ => bail!("--expect-status {s:?}: {part:?} is not a status class like 2xx"),
                }
            } else if let Some((a, b)) = part.split_once('-') {
                (code(s, a)?, code(s, b)?)
            } else {
                let c = code(s, part)?;
                (c, c)
            };
            if range.0 > range.1 {
                bail!("--expect-status {s:?}: range {part:?} is empty");
            }
            ranges.push(range);
        }
        Ok(ExpectStatus(ranges))
    }

    /// Whether `status` counts as an answer.
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&status))
    }
}

fn code(whole: &str, s: &str) -> Result<u16> {
    match s.trim().parse::<u16>() {
        Ok(c @ 100..=599) => Ok(c),
        _ => bail!("--expect-status {whole:?}: {s:?} is not an HTTP status (100-599)"),
    }
}

impl Default for ExpectStatus {
    fn default() -> Self {
        ExpectStatus(vec![(200, 200)])
    }
}

/// One `--expect-json POINTER=VALUE` rule, merged per pointer: the value at `pointer` must
/// equal one of `values`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRule {
    /// RFC 6901 pointer (`""` is the whole document).
    pub pointer: String,
    /// Accepted values (any of them).
    pub values: Vec<Value>,
}

impl JsonRule {
    /// Parses the `POINTER=VALUE` spellings and merges rules for the same pointer.
    pub fn parse_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<JsonRule>> {
        let mut rules: Vec<JsonRule> = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            let Some((pointer, value)) = spec.split_once('=') else {
                bail!("--expect-json {spec:?}: expected POINTER=VALUE, e.g. /status=done");
            };
            if !pointer.is_empty() && !pointer.starts_with('/') {
                bail!(
                    "--expect-json {spec:?}: pointer {pointer:?} must be empty or start with '/' (RFC 6901)"
                );
            }
            // `~` must be followed by 0 or 1 (RFC 6901 §3).
            let mut chars = pointer.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                    bail!("--expect-json {spec:?}: '~' in pointer {pointer:?} must be ~0 or ~1");
                }
            }
            let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
            match rules.iter_mut().find(|r| r.pointer == pointer) {
                Some(rule) => rule.values.push(value),
                None => rules.push(JsonRule {
                    pointer: pointer.to_string(),
                    values: vec![value],
                }),
            }
        }
        Ok(rules)
    }
}

/// What the judge needs from the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectations {
    /// Statuses that count as an answer.
    pub status: ExpectStatus,
    /// JSON rules; empty means any body is fine.
    pub json: Vec<JsonRule>,
}

/// The judge's conclusion about one HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Expected status and every rule holds.
    Ok,
    /// Expected status, but a rule does not hold (why).
    StillFailed(String),
    /// 404 or 410.
    NotFound,
    /// Worth another attempt (408, 429, 5xx of SPEC §3).
    Retry(String),
    /// A final failure (another 4xx, an unexpected status, invalid JSON).
    Error(String),
}

/// Statuses SPEC §3 calls retryable.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// `503 Service Unavailable`-style text for a status.
pub fn status_text(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    }
}

/// Does the answer's status need the body? Only an expected status with JSON rules does.
pub fn needs_body(status: u16, expect: &Expectations) -> bool {
    expect.status.contains(status) && !expect.json.is_empty()
}

/// Judges an answer. `body` is only looked at when [`needs_body`] said so.
pub fn judge(status: u16, body: &[u8], expect: &Expectations) -> Judgement {
    if expect.status.contains(status) {
        if expect.json.is_empty() {
            return Judgement::Ok;
        }
        let doc: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Judgement::Error(format!("invalid JSON in answer: {e}")),
        };
        for rule in &expect.json {
            match doc.pointer(&rule.pointer) {
                Some(v) if rule.values.iter().any(|want| want == v) => {}
                Some(v) => {
                    return Judgement::StillFailed(format!(
                        "{} is {}, expected {}",
                        shown_pointer(&rule.pointer),
                        short(v),
                        OneOf(&rule.values)
                    ));
                }
                None => {
                    return Judgement::StillFailed(format!(
                        "{} is missing, expected {}",
                        shown_pointer(&rule.pointer),
                        OneOf(&rule.values)
                    ));
                }
            }
        }
        return Judgement::Ok;
    }
    match status {
        404 | 410 => Judgement::NotFound,
        s if is_retryable_status(s) => Judgement::Retry(status_text(s)),
        s => Judgement::Error(format!("unexpected {}", status_text(s))),
    }
}

/// The pointer for a message: control characters escaped, so the message stays one line.
fn shown_pointer(p: &str) -> String {
    if p.is_empty() {
        "the document".into()
    } else {
        p.escape_debug().to_string()
    }
}

/// A JSON value for an error message, cut so one odd answer cannot flood the logs.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 80 {
        return s;
    }
    let cut = (0..=77).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    format!("{}...", &s[..cut])
}

struct OneOf<'a>(&'a [Value]);

impl fmt::Display for OneOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            f.write_str(&short(v))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expect(status: &str, rules: &[&str]) -> Expectations {
        Expectations {
            status: ExpectStatus::parse(status).unwrap(),
            json: JsonRule::parse_all(rules).unwrap(),
        }
    }

    #[test]
    fn expect_status_spellings() {
        let e = ExpectStatus::parse("200,204").unwrap();
        assert!(e.contains(200) && e.contains(204) && !e.contains(201));
        let e = ExpectStatus::parse("2xx").unwrap();
        assert!(e.contains(200) && e.contains(299) && !e.contains(300));
        let e = ExpectStatus::parse("200-202, 304").unwrap();
        assert!(e.contains(201) && e.contains(304) && !e.contains(203));
        for bad in ["", "abc", "7xx", "99", "600", "300-200", "2x"] {
            assert!(ExpectStatus::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rule_parsing() {
        let rules =
            JsonRule::parse_all(&["/status=done", "/status=ready", "/n=3", "/s=abc"]).unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].values, vec![json!("done"), json!("ready")]);
        assert_eq!(rules[1].values, vec![json!(3)]);
        assert_eq!(rules[2].values, vec![json!("abc")]);
        // "3" quoted stays a string
        assert_eq!(
            JsonRule::parse_all(&["/n=\"3\""]).unwrap()[0].values,
            vec![json!("3")]
        );
        for bad in ["status=done", "/a", "/a~2=1", "/a~=1"] {
            let err = JsonRule::parse_all(&[bad]).unwrap_err().to_string();
            assert!(err.contains("--expect-json"), "{err}");
        }
        // an empty pointer is the whole document
        assert!(JsonRule::parse_all(&["=1"]).is_ok());
    }

    #[test]
    fn outcomes() {
        let e = expect("200", &["/status=done"]);
        assert_eq!(judge(200, br#"{"status":"done"}"#, &e), Judgement::Ok);
        assert_eq!(
            judge(200, br#"{"status":"processing"}"#, &e),
            Judgement::StillFailed(r#"/status is "processing", expected "done""#.into())
        );
        assert!(
            matches!(judge(200, br#"{}"#, &e), Judgement::StillFailed(m) if m.contains("missing"))
        );
        assert!(
            matches!(judge(200, b"{nope", &e), Judgement::Error(m) if m.contains("invalid JSON"))
        );
        assert_eq!(judge(404, b"", &e), Judgement::NotFound);
        assert_eq!(judge(410, b"", &e), Judgement::NotFound);
        assert_eq!(
            judge(503, b"", &e),
            Judgement::Retry("HTTP 503 Service Unavailable".into())
        );
        for s in [408, 429, 500, 502, 504] {
            assert!(matches!(judge(s, b"", &e), Judgement::Retry(_)), "{s}");
        }
        for s in [201, 301, 400, 401, 403, 418, 501] {
            assert!(matches!(judge(s, b"", &e), Judgement::Error(_)), "{s}");
        }
        // without rules, the body is not even parsed
        assert_eq!(judge(200, b"<html>", &expect("200", &[])), Judgement::Ok);
        assert!(!needs_body(200, &expect("200", &[])));
        assert!(needs_body(200, &e));
        assert!(!needs_body(503, &e));
    }

    #[test]
    fn any_of_and_all_of() {
        let e = expect("2xx", &["/a=1", "/a=2", "/b=true"]);
        assert_eq!(judge(204, br#"{"a":2,"b":true}"#, &e), Judgement::Ok);
        assert!(matches!(
            judge(200, br#"{"a":3,"b":true}"#, &e),
            Judgement::StillFailed(_)
        ));
        assert!(matches!(
            judge(200, br#"{"a":1,"b":false}"#, &e),
            Judgement::StillFailed(_)
        ));
    }
}
