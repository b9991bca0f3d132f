//! `--expect-jq` / `--dead-jq`: jq filters (jq's language, run by jaq) compiled once at
//! start and run on each answer's JSON. Pure, like `judge`: no I/O, no clock.

use std::fmt;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use jaq_core::load::{Arena, File, Loader, lex, parse};
use jaq_core::{Ctx, Native, Vars, compile, data};
use jaq_json::Val;

type Data = data::JustLut<Val>;
type Filter = compile::Filter<Native<Data>>;

/// One compiled jq filter. It holds on an answer when its first output is `true`.
#[derive(Clone)]
pub struct JqRule {
    source: String,
    // Shared: the configuration is cloned into every worker, the program graph need not be.
    filter: Arc<Filter>,
}

impl fmt::Debug for JqRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JqRule").field(&self.source).finish()
    }
}

impl PartialEq for JqRule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl JqRule {
    /// Compiles `source` with jq's standard library. A filter that does not compile is an
    /// error naming `flag`, what was expected and where (`line 1, column 5`), on one line.
    pub fn compile(flag: &str, source: &str) -> Result<JqRule> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let fail = |what: String, at: &str| {
            anyhow!("{flag} {source:?}: {what} at {}", position(source, at))
        };
        let modules = Loader::new(defs)
            .load(
                &arena,
                File {
                    code: source,
                    path: (),
                },
            )
            .map_err(|errs| {
                let Some((_, err)) = errs.into_iter().next() else {
                    return anyhow!("{flag} {source:?}: does not compile");
                };
                match err {
                    jaq_core::load::Error::Lex(es) => match es.into_iter().next() {
                        Some((expect, at)) => fail(format!("expected {}", lex_expect(&expect)), at),
                        None => anyhow!("{flag} {source:?}: does not compile"),
                    },
                    jaq_core::load::Error::Parse(es) => match es.into_iter().next() {
                        Some((expect, at)) => fail(
                            format!("expected {}, found {}", parse_expect(&expect), found(at)),
                            at,
                        ),
                        None => anyhow!("{flag} {source:?}: does not compile"),
                    },
                    jaq_core::load::Error::Io(es) => {
                        let why = es.into_iter().next().map(|(_, e)| e).unwrap_or_default();
                        anyhow!("{flag} {source:?}: {}", one_line(&why))
                    }
                }
            })?;
        let filter = jaq_core::Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                let first = errs
                    .into_iter()
                    .next()
                    .and_then(|(_, es)| es.into_iter().next());
                match first {
                    Some((name, undefined)) => {
                        fail(format!("undefined {} {name:?}", undefined.as_str()), name)
                    }
                    None => anyhow!("{flag} {source:?}: does not compile"),
                }
            })?;
        Ok(JqRule {
            source: source.to_string(),
            filter: Arc::new(filter),
        })
    }

    /// The filter as typed.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the filter on `input` as an `--expect-jq` rule: `Ok(())` when its first output
    /// is `true`, else why not (`jq '.a' gave false`, `... gave no output`, `... failed: <jq's
    /// message>`).
    pub fn check(&self, input: Val) -> std::result::Result<(), String> {
        let shown = short_filter(&self.source);
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        match self.filter.id.run((ctx, input)).next() {
            None => Err(format!("jq {shown} gave no output")),
            Some(Ok(Val::Bool(true))) => Ok(()),
            Some(Ok(v)) => Err(format!("jq {shown} gave {}", one_line(&v.to_string()))),
            Some(Err(exn)) => Err(format!("jq {shown} failed: {}", exn_message(exn))),
        }
    }

    /// Runs the filter on `input`: `Ok(true)` when its first output is `true`, `Ok(false)`
    /// for any other first output or none, `Err` with jq's message when it fails first.
    pub fn holds(&self, input: Val) -> std::result::Result<bool, String> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        match self.filter.id.run((ctx, input)).next() {
            None => Ok(false),
            Some(Ok(v)) => Ok(v == Val::Bool(true)),
            Some(Err(exn)) => Err(exn_message(exn)),
        }
    }
}

/// jq's message for an exception, on one line.
fn exn_message(exn: jaq_core::Exn<'_, Val>) -> String {
    match exn.get_err() {
        Ok(e) => {
            // jq shows an error whose value is a string as that string, unquoted.
            let shown = e.to_string();
            let text = serde_json::from_str::<String>(&shown).unwrap_or(shown);
            one_line(&text)
        }
        // `halt`/`halt_error` end jq itself; here they only end this filter (jaq's own
        // helper would exit the process).
        Err(_) => "halt".into(),
    }
}

/// The filter quoted for a message, cut so a long program does not flood `last_error`.
pub fn quoted(source: &str) -> String {
    short_filter(source)
}

fn short_filter(source: &str) -> String {
    let s = one_line(source);
    if s.chars().count() <= 60 {
        format!("'{s}'")
    } else {
        format!("'{}...'", s.chars().take(57).collect::<String>())
    }
}

/// `line L, column C` (1-based, in characters) of `at`, a slice of `source`.
fn position(source: &str, at: &str) -> String {
    let start = source.as_ptr() as usize;
    let offset = (at.as_ptr() as usize)
        .checked_sub(start)
        .filter(|&o| o <= source.len() && source.is_char_boundary(o))
        .unwrap_or(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("line {line}, column {column}")
}

fn found(at: &str) -> String {
    if at.is_empty() {
        "end of filter".into()
    } else {
        let token: String = at.chars().take(20).collect();
        format!("{token:?}")
    }
}

fn lex_expect(e: &lex::Expect<&str>) -> String {
    match e {
        // The library's own text panics on delimiters it does not know: never call it there.
        lex::Expect::Delim("(") => "a closing parenthesis".into(),
        lex::Expect::Delim("[") => "a closing bracket".into(),
        lex::Expect::Delim("{") => "a closing brace".into(),
        lex::Expect::Delim("\"") => "a closing quote".into(),
        lex::Expect::Delim(d) => format!("a closing delimiter for {d:?}"),
        lex::Expect::Digit => "a digit".into(),
        lex::Expect::Ident => "an identifier".into(),
        lex::Expect::Escape => "a string escape sequence".into(),
        lex::Expect::Unicode => "a 4-digit hexadecimal code point".into(),
        lex::Expect::Token => "a token".into(),
        _ => "something else".into(),
    }
}

fn parse_expect(e: &parse::Expect<&str>) -> String {
    e.as_str().to_string()
}

/// jq's messages may quote a value with newlines; keep every message on one line.
fn one_line(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if s.chars().count() <= 200 {
        return s;
    }
    let cut: String = s.chars().take(197).collect();
    format!("{cut}...")
}

/// Converts an answer's parsed JSON into jq's value (no second parse of the body).
pub fn to_val(doc: &serde_json::Value) -> std::result::Result<Val, String> {
    use serde::Deserialize;
    Val::deserialize(doc).map_err(|e| format!("answer not usable by jq: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(filter: &str, doc: serde_json::Value) -> std::result::Result<bool, String> {
        JqRule::compile("--expect-jq", filter)
            .unwrap()
            .holds(to_val(&doc).unwrap())
    }

    #[test]
    fn first_output_true_holds() {
        let doc = json!({"status":"done","renditions":["a","b","c"]});
        assert_eq!(holds(r#".status == "done""#, doc.clone()), Ok(true));
        assert_eq!(holds("(.renditions | length) >= 3", doc.clone()), Ok(true));
        assert_eq!(holds("(.renditions | length) >= 4", doc.clone()), Ok(false));
        assert_eq!(
            holds(".renditions | all(startswith(\"a\"))", doc.clone()),
            Ok(false)
        );
        // only `true` is true (not 1, not "true"), and the first output decides
        assert_eq!(holds("1", doc.clone()), Ok(false));
        assert_eq!(holds("true, false", doc.clone()), Ok(true));
        assert_eq!(holds("false, true", doc.clone()), Ok(false));
        assert_eq!(holds("empty", doc), Ok(false));
    }

    #[test]
    fn check_says_what_the_filter_gave() {
        let rule = JqRule::compile("--expect-jq", "(.renditions | length) >= 3").unwrap();
        let doc = |n: usize| to_val(&json!({"renditions": vec!["r"; n]})).unwrap();
        assert_eq!(rule.check(doc(3)), Ok(()));
        assert_eq!(
            rule.check(doc(2)),
            Err("jq '(.renditions | length) >= 3' gave false".into())
        );
        let rule = JqRule::compile("--expect-jq", ".renditions | length").unwrap();
        assert_eq!(
            rule.check(doc(2)),
            Err("jq '.renditions | length' gave 2".into())
        );
        let rule = JqRule::compile("--expect-jq", ".x[]").unwrap();
        assert_eq!(
            rule.check(to_val(&json!({"x": []})).unwrap()),
            Err("jq '.x[]' gave no output".into())
        );
        assert_eq!(
            rule.check(to_val(&json!({"x": true})).unwrap()),
            Err("jq '.x[]' failed: cannot use true as iterable (array or object)".into())
        );
    }

    #[test]
    fn run_time_error_is_the_message() {
        let err = holds(".status | length > 1", json!({"status": true})).unwrap_err();
        assert_eq!(err, "true has no length");
        let err = holds(r#"error("no\nway")"#, json!(1)).unwrap_err();
        assert!(err.contains("no") && !err.contains('\n'), "{err}");
        // halt ends the filter, not the process
        assert_eq!(holds("halt", json!(1)), Err("halt".into()));
    }

    #[test]
    fn compile_errors_name_the_flag_and_position() {
        let e = JqRule::compile("--expect-jq", ".status ==")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--expect-jq \".status ==\": expected"), "{e}");
        assert!(e.contains("line 1, column 11"), "{e}");
        let e = JqRule::compile("--dead-jq", ".a | nosuchfn")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("undefined filter \"nosuchfn\" at line 1, column 6"),
            "{e}"
        );
        let e = JqRule::compile("--expect-jq", "[.a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at line 1, column"), "{e}");
        for bad in ["(", "\"abc", ".a |", "if . then 1", "{a:}", "$x", ".[", "@"] {
            let e = JqRule::compile("--expect-jq", bad).unwrap_err().to_string();
            assert!(
                e.contains("line 1, column") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }
}
