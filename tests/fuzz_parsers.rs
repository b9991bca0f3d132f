//! Property tests standing in for fuzz targets: the JSON / JSON Lines store reader and
//! writer, the `--url` template, the `--expect-json` pointer rules, and the value parsers of
//! the command line.
//!
//! cargo-fuzz needs a nightly toolchain (sanitizer builds), so these are proptest properties
//! that run on stable as part of `cargo test`, each with a bounded number of cases (see
//! `config`) so the whole file stays well under 20 s in a debug build (about 4 s on 2 idle
//! cores). To fuzz for longer,
//! raise the number of cases; `PROPTEST_CASES` overrides every property's count (proptest
//! applies the environment on top of the configs given here):
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release --test fuzz_parsers
//! PROPTEST_CASES=5000 cargo test --release --test fuzz_parsers -- url_   # one group
//! ```
//!
//! A failing case is shrunk to a minimal input and its seed saved in
//! `tests/fuzz_parsers.proptest-regressions`; commit that file, so every later run replays
//! the saved seeds before generating new cases.
//!
//! The properties:
//! - store reader: on arbitrary bytes and on mutated valid documents, `open` never panics and
//!   fails with one line that names the file; when a mutated document still opens, a run
//!   over it writes a file that opens again.
//! - store round trip: for generated valid documents (any layout, escaped keys, unicode,
//!   nested unknown fields, numeric and string statuses, other tasks), a run claims exactly
//!   the task's failed items and writes a file where unsaved items and everything outside
//!   the items are byte-identical, unowned members keep their raw text and order, and saved
//!   items carry the status of `StoreOptions::status_for` and the run's bookkeeping.
//! - URL template: an id (or task) is always exactly one path segment (or one query value)
//!   that percent-decodes to it; `.` and `..` ids are refused in a path; `parse` never panics
//!   and its errors are one line; a `.`/`..` task in a path is refused at parse time.
//! - JSON rules: `parse_all` and `judge` never panic; `POINTER=<value>` for a value that is
//!   in the document judges `Ok`, for another value `StillFailed` (keys containing an operator character `=` `<` `>` `!` are
//!   not pointed at: `POINTER=VALUE` splits at the first `=`, and RFC 6901 has no escape
//!   for it).
//! - `parse_duration`, `parse_size`, `parse_backoff`, `ExpectStatus::parse` never panic.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use percent_encoding::percent_decode_str;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use recheck::check::judge::{ExpectStatus, Expectations, JsonRule, Judgement, judge};
use recheck::check::template::UrlTemplate;
use recheck::cli::{parse_backoff, parse_duration, parse_size};
use recheck::model::{Item, Outcome, StatusValue, Verdict, rfc3339};
use recheck::store::json::JsonStore;
use recheck::store::jsonl::JsonlStore;
use recheck::store::{AnyStore, Columns, Ident, OpenMode, Store, StoreOptions};

/// `cases` cases per property (unless `PROPTEST_CASES` says otherwise); failures are saved
/// next to this file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

/// A `Result` into a test failure that says what failed.
fn ok<T, E: fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e:#}")))
}

// =======================================================================================
// Generating JSON text: strings with random escapes, numbers in odd spellings, random
// whitespace, nested values.

/// Characters for generated text: mostly plain, with JSON's and URLs' special characters and
/// some far-away unicode.
fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => prop::char::range('a', 'z'),
        1 => any::<char>(),
        2 => select(vec![
            '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{1f}', '\u{7f}', 'é', '€', '😀',
            '\u{2028}', '\u{feff}', '~', '=', ' ', '.', '%', '?', '#', '{', '}', '&', '+',
        ]),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(text_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// A JSON number, spelled in any way JSON allows.
fn number() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,19})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,2})?"
}

/// A JSON string literal: its text and how it is spelled.
#[derive(Debug, Clone)]
struct JStr {
    text: String,
    raw: String,
}

/// Spells `text` as a JSON string; `modes[i]` picks how char `i` is written (plain, short
/// escape, `\u` escape in lower or upper case); chars past `modes` are plain when they may be.
fn spell(text: &str, modes: &[u8]) -> String {
    let mut out = String::from('"');
    for (i, c) in text.chars().enumerate() {
        let mode = modes.get(i).map_or(0, |m| m % 8);
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let must = c == '"' || c == '\\' || c < '\u{20}';
        match (mode, short) {
            (0..=4, _) if !must => out.push(c),
            (0..=5, Some(e)) => out.push_str(e),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    if mode == 7 {
                        write!(out, "\\u{unit:04X}").unwrap();
                    } else {
                        write!(out, "\\u{unit:04x}").unwrap();
                    }
                }
            }
        }
    }
    out.push('"');
    out
}

/// Escape modes: usually none (plain), sometimes random.
fn modes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn jstr_from(text: impl Strategy<Value = String>) -> impl Strategy<Value = JStr> {
    (text, modes()).prop_map(|(text, modes)| JStr {
        raw: spell(&text, &modes),
        text,
    })
}

/// How whitespace between tokens looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// None at all.
    Compact,
    /// Spaces and tabs (and a lone `\r`), never a newline: usable in JSON Lines.
    OneLine,
    /// Anything, newlines included (pretty-printed documents).
    Multi,
}

fn ws(layout: Layout, sel: u8) -> &'static str {
    const ONE_LINE: [&str; 8] = ["", "", " ", " ", "  ", "\t", " \t", "\r"];
    const MULTI: [&str; 8] = ["", " ", "\n", "\n  ", "\n    ", "\r\n  ", "\n\t", " \n "];
    match layout {
        Layout::Compact => "",
        Layout::OneLine => ONE_LINE[usize::from(sel % 8)],
        Layout::Multi => MULTI[usize::from(sel % 8)],
    }
}

/// A JSON value, with the whitespace choices of its spelling.
#[derive(Debug, Clone)]
enum J {
    /// `null`, `true`, `false` or a number, spelled as is.
    Scalar(String),
    Str(JStr),
    /// (whitespace before, element, whitespace after); whitespace inside `[]` when empty.
    Arr(Vec<(u8, J, u8)>, u8),
    /// (whitespace before the key, key, before `:`, after `:`, value, after the value).
    Obj(Vec<(u8, JStr, u8, u8, J, u8)>, u8),
}

fn j_value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        select(vec!["null", "true", "false"]).prop_map(|s| J::Scalar(s.into())),
        number().prop_map(J::Scalar),
        jstr_from(text(8)).prop_map(J::Str),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            (
                prop::collection::vec((any::<u8>(), inner.clone(), any::<u8>()), 0..4),
                any::<u8>()
            )
                .prop_map(|(v, w)| J::Arr(v, w)),
            (
                prop::collection::vec(
                    (
                        any::<u8>(),
                        jstr_from(text(6)),
                        any::<u8>(),
                        any::<u8>(),
                        inner,
                        any::<u8>()
                    ),
                    0..4
                ),
                any::<u8>()
            )
                .prop_map(|(v, w)| J::Obj(v, w)),
        ]
    })
}

fn render_j(j: &J, layout: Layout, out: &mut String) {
    match j {
        J::Scalar(s) => out.push_str(s),
        J::Str(s) => out.push_str(&s.raw),
        J::Arr(elems, w) => {
            out.push('[');
            if elems.is_empty() {
                out.push_str(ws(layout, *w));
            }
            for (i, (a, v, b)) in elems.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws(layout, *a));
                render_j(v, layout, out);
                out.push_str(ws(layout, *b));
            }
            out.push(']');
        }
        J::Obj(members, w) => {
            out.push('{');
            if members.is_empty() {
                out.push_str(ws(layout, *w));
            }
            for (i, (a, k, b, c, v, d)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws(layout, *a));
                out.push_str(&k.raw);
                out.push_str(ws(layout, *b));
                out.push(':');
                out.push_str(ws(layout, *c));
                render_j(v, layout, out);
                out.push_str(ws(layout, *d));
            }
            out.push('}');
        }
    }
}

fn rendered(j: &J, layout: Layout) -> String {
    let mut s = String::new();
    render_j(j, layout, &mut s);
    s
}

// =======================================================================================
// Generating store documents.

/// The store options of one generated document.
#[derive(Debug, Clone, Copy)]
struct StoreCase {
    task: &'static str,
    failed: &'static str,
    ok: &'static str,
    not_found: Option<&'static str>,
}

fn store_case() -> impl Strategy<Value = StoreCase> {
    (
        select(vec!["t1", "42", "é/ü \"q\""]),
        select(vec!["failed", "5"]),
        select(vec!["ok", "1", "07"]),
        select(vec![None, Some("gone"), Some("9")]),
    )
        .prop_map(|(task, failed, ok, not_found)| StoreCase {
            task,
            failed,
            ok,
            not_found,
        })
}

fn options(case: StoreCase) -> StoreOptions {
    StoreOptions {
        ok: StatusValue::new(case.ok),
        not_found: case.not_found.map(StatusValue::new),
        dead: None,
        extra_columns: vec![Ident::new("column", "region").unwrap()],
        ..StoreOptions::basic(case.task, Columns::default(), StatusValue::new(case.failed))
    }
}

/// The fields recheck reads or writes with these options; generated unknown keys avoid them.
const OWNED: [&str; 13] = [
    "checks",
    "first_checked_at",
    "next_check_at",
    "task_id",
    "item_id",
    "id",
    "status",
    "url",
    "http_status",
    "attempts",
    "last_error",
    "checked_at",
    "region",
];

/// The fields a saved verdict writes.
const WRITTEN: [&str; 8] = [
    "checks",
    "first_checked_at",
    "next_check_at",
    "status",
    "http_status",
    "attempts",
    "last_error",
    "checked_at",
];

/// What the test expects the store to make of one generated item.
#[derive(Debug, Clone)]
struct Meta {
    /// Of the store's task (any status).
    of_task: bool,
    /// Of the task, with the failed status: claimed by a run.
    candidate: bool,
    /// `Item::id`.
    id: Option<String>,
    /// `Item::url`.
    url: Option<String>,
    /// `Item::fields[0]` (the `region` column).
    region: Option<String>,
    /// The integer in `attempts` before the run.
    attempts: Option<i64>,
}

/// (raw task field or none, whether it is the store's task)
fn task_field(case: StoreCase) -> impl Strategy<Value = (Option<String>, bool)> {
    let numeric = if case.task == "42" {
        (Some("42".to_string()), true)
    } else {
        (Some("\"T1\"".to_string()), false)
    };
    prop_oneof![
        6 => jstr_from(Just(case.task.to_string())).prop_map(|s| (Some(s.raw), true)),
        1 => Just(numeric),
        2 => select(vec!["\"other\"", "7", "null", "\"t1 \"", "42.0", "[\"t1\"]", "true"])
            .prop_map(|s| (Some(s.to_string()), false)),
        1 => Just((None, false)),
    ]
}

/// (raw status field or none, whether it is the failed status)
fn status_field(case: StoreCase) -> impl Strategy<Value = (Option<String>, bool)> {
    let (matching, other): (Vec<&str>, Vec<&str>) = if case.failed == "5" {
        (
            vec!["5", "5.0", "5e0", "50e-1", "0.5E1", "5.000"],
            vec![
                "\"5.0\"",
                "6",
                "\"failed\"",
                "null",
                "-5",
                "\"05\"",
                "55",
                "5.5",
            ],
        )
    } else {
        (
            vec![],
            vec![
                "\"ok\"",
                "\"FAILED\"",
                "5",
                "null",
                "\"failed \"",
                "{\"s\": \"failed\"}",
                "[\"failed\"]",
                "false",
            ],
        )
    };
    let spelled = || jstr_from(Just(case.failed.to_string())).prop_map(|s| (Some(s.raw), true));
    let numeric = if matching.is_empty() {
        spelled().boxed()
    } else {
        select(matching)
            .prop_map(|s| (Some(s.to_string()), true))
            .boxed()
    };
    prop_oneof![
        4 => spelled(),
        3 => numeric,
        2 => select(other).prop_map(|s| (Some(s.to_string()), false)),
        1 => Just((None, false)),
    ]
}

type Fields = Vec<(String, String)>;

/// (`item_id` / `id` members, the id the store should read)
fn id_fields() -> impl Strategy<Value = (Fields, Option<String>)> {
    let s = || jstr_from(text(8));
    let f = |k: &str, raw: String| vec![(k.to_string(), raw)];
    prop_oneof![
        3 => s().prop_map(move |j| (f("item_id", j.raw), Some(j.text))),
        1 => number().prop_map(move |n| (f("item_id", n.clone()), Some(n))),
        1 => s().prop_map(move |j| (f("id", j.raw), Some(j.text))),
        1 => number().prop_map(move |n| (f("id", n.clone()), Some(n))),
        1 => (s(), s()).prop_map(|(a, b)| (
            vec![("item_id".to_string(), a.raw), ("id".to_string(), b.raw)],
            Some(a.text),
        )),
        1 => Just((vec![], None)),
    ]
}

/// (raw url field or none, `Item::url`)
fn url_field() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    prop_oneof![
        2 => Just((None, None)),
        2 => jstr_from(text(10)).prop_map(|j| (Some(j.raw), Some(j.text))),
        1 => Just((Some("null".to_string()), None)),
        1 => number().prop_map(|n| (Some(n.clone()), Some(n))),
    ]
}

/// (raw attempts field or none, its integer)
fn attempts_field() -> impl Strategy<Value = (Option<String>, Option<i64>)> {
    prop_oneof![
        2 => Just((None, None)),
        2 => (0..1000i64).prop_map(|n| (Some(n.to_string()), Some(n))),
        1 => (0..1000i64).prop_map(|n| (Some(format!("{n}.0")), Some(n))),
        1 => select(vec!["\"3\"", "null", "1.5", "[]"]).prop_map(|s| (Some(s.to_string()), None)),
    ]
}

/// The members recheck knows about, and what it should make of them.
fn owned_fields(case: StoreCase, layout: Layout) -> impl Strategy<Value = (Fields, Meta)> {
    (
        task_field(case),
        status_field(case),
        id_fields(),
        url_field(),
        prop::option::of(j_value()),
        attempts_field(),
        prop::sample::subsequence(vec!["http_status", "last_error", "checked_at"], 0..=3),
        prop::collection::vec(
            select(vec![
                "null",
                "500",
                "\"boom\"",
                "{\"a\": [1]}",
                "\"2024-01-01\"",
            ]),
            3,
        ),
    )
        .prop_map(
            move |(task, status, (ids, id), url, region, attempts, book, book_values)| {
                let mut fields: Fields = Vec::new();
                let mut push = |k: &str, v: Option<String>| {
                    if let Some(v) = v {
                        fields.push((k.to_string(), v));
                    }
                };
                push("task_id", task.0);
                push("status", status.0);
                push("url", url.0);
                push("attempts", attempts.0);
                let region_text = region.as_ref().map(|j| rendered(j, layout));
                push("region", region_text.clone());
                for (k, v) in book.iter().zip(&book_values) {
                    push(k, Some(v.to_string()));
                }
                let candidate = task.1 && status.1;
                let mut id = id;
                fields.extend(ids);
                if candidate && id.is_none() {
                    fields.push(("item_id".into(), "\"fallback\"".into()));
                    id = Some("fallback".into());
                }
                let region = match (&region, region_text) {
                    (Some(J::Scalar(s)), _) if s == "null" => None,
                    (Some(J::Str(s)), _) => Some(s.text.clone()),
                    (_, raw) => raw,
                };
                let meta = Meta {
                    of_task: task.1,
                    candidate,
                    id,
                    url: url.1,
                    region,
                    attempts: attempts.1,
                };
                (fields, meta)
            },
        )
}

/// A member recheck does not know: any key but the owned ones, any value.
fn unknown_field(layout: Layout) -> impl Strategy<Value = (String, String)> {
    (text(10), j_value()).prop_map(move |(k, v)| {
        let k = if OWNED.contains(&k.as_str()) {
            k + "_"
        } else {
            k
        };
        (k, rendered(&v, layout))
    })
}

/// One generated item object.
#[derive(Debug, Clone)]
struct GenItem {
    text: String,
    meta: Meta,
}

fn gen_item(case: StoreCase, layout: Layout) -> impl Strategy<Value = GenItem> {
    (
        owned_fields(case, layout),
        prop::collection::vec(unknown_field(layout), 0..4),
    )
        .prop_flat_map(move |((mut fields, meta), unknown)| {
            fields.extend(unknown);
            let n = fields.len();
            (
                Just(fields).prop_shuffle(),
                prop::collection::vec((modes(), any::<[u8; 3]>()), n),
                any::<u8>(),
                Just(meta),
            )
        })
        .prop_map(move |(fields, looks, close, meta)| {
            let mut text = String::from('{');
            for (i, ((k, v), (modes, w))) in fields.iter().zip(&looks).enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(ws(layout, w[0]));
                text.push_str(&spell(k, modes));
                text.push_str(ws(layout, w[1]));
                text.push(':');
                text.push_str(ws(layout, w[2]));
                text.push_str(v);
            }
            text.push_str(ws(layout, close));
            text.push('}');
            GenItem { text, meta }
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Json,
    Jsonl,
}

impl Fmt {
    fn file_name(self) -> &'static str {
        match self {
            Fmt::Json => "items.json",
            Fmt::Jsonl => "items.jsonl",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Fmt::Json => "json",
            Fmt::Jsonl => "jsonl",
        }
    }
}

/// Everything around the items: BOM, wrapper object, whitespace, blank lines, line ends.
#[derive(Debug, Clone)]
struct Framing {
    bom: bool,
    /// JSON: `{..., "items": [...], ...}` rather than a bare array.
    wrapped: bool,
    /// JSON: the wrapper's other members, and how many come before `items`.
    top: Fields,
    split: usize,
    items_key_modes: Vec<u8>,
    /// JSON Lines: `\r\n` line ends, and one after the last line.
    crlf: bool,
    final_eol: bool,
    /// Whitespace and blank-line choices, used in turn.
    noise: Vec<u8>,
}

fn framing(layout: Layout) -> impl Strategy<Value = Framing> {
    (
        prop::bool::weighted(0.15),
        any::<bool>(),
        prop::collection::vec(unknown_field(layout), 0..3),
        0..4usize,
        modes(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(
            |(bom, wrapped, top, split, items_key_modes, crlf, final_eol, noise)| {
                let top = top
                    .into_iter()
                    .map(|(k, v)| if k == "items" { (k + "_", v) } else { (k, v) })
                    .collect();
                Framing {
                    bom,
                    wrapped,
                    top,
                    split,
                    items_key_modes,
                    crlf,
                    final_eol,
                    noise,
                }
            },
        )
}

/// Hands out the framing's noise bytes in turn (zeros when there are none).
struct Noise<'a>(&'a [u8], usize);

impl Noise<'_> {
    fn next(&mut self) -> u8 {
        if self.0.is_empty() {
            return 0;
        }
        self.1 += 1;
        self.0[(self.1 - 1) % self.0.len()]
    }
}

fn render_doc(fmt: Fmt, layout: Layout, items: &[GenItem], f: &Framing) -> String {
    let mut noise = Noise(&f.noise, 0);
    let mut out = String::new();
    if f.bom {
        out.push('\u{feff}');
    }
    match fmt {
        Fmt::Json => {
            let mut array = String::from('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    array.push(',');
                }
                array.push_str(ws(layout, noise.next()));
                array.push_str(&it.text);
                array.push_str(ws(layout, noise.next()));
            }
            if items.is_empty() {
                array.push_str(ws(layout, noise.next()));
            }
            array.push(']');
            out.push_str(ws(layout, noise.next()));
            if f.wrapped {
                let mut members: Vec<(String, &str)> = f
                    .top
                    .iter()
                    .map(|(k, v)| (spell(k, &[]), v.as_str()))
                    .collect();
                members.insert(
                    f.split.min(members.len()),
                    (spell("items", &f.items_key_modes), array.as_str()),
                );
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws(layout, noise.next()));
                    out.push_str(k);
                    out.push_str(ws(layout, noise.next()));
                    out.push(':');
                    out.push_str(ws(layout, noise.next()));
                    out.push_str(v);
                }
                out.push_str(ws(layout, noise.next()));
                out.push('}');
            } else {
                out.push_str(&array);
            }
            out.push_str(ws(layout, noise.next()));
            if f.final_eol {
                out.push('\n');
            }
        }
        Fmt::Jsonl => {
            let eol = if f.crlf { "\r\n" } else { "\n" };
            let mut lines: Vec<String> = Vec::new();
            for it in items {
                if noise.next() % 4 == 0 {
                    lines.push(ws(Layout::OneLine, noise.next()).to_string());
                }
                lines.push(format!(
                    "{}{}{}",
                    ws(layout, noise.next()),
                    it.text,
                    ws(layout, noise.next())
                ));
            }
            out.push_str(&lines.join(eol));
            if f.final_eol && !lines.is_empty() {
                out.push_str(eol);
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
struct GenDoc {
    fmt: Fmt,
    case: StoreCase,
    text: String,
    items: Vec<Meta>,
}

fn gen_doc(fmt: Fmt, max_items: usize) -> impl Strategy<Value = GenDoc> {
    let layouts = match fmt {
        Fmt::Json => vec![Layout::Compact, Layout::OneLine, Layout::Multi],
        Fmt::Jsonl => vec![Layout::Compact, Layout::OneLine],
    };
    (store_case(), select(layouts))
        .prop_flat_map(move |(case, layout)| {
            (
                Just(case),
                Just(layout),
                prop::collection::vec(gen_item(case, layout), 0..max_items),
                framing(layout),
            )
        })
        .prop_map(move |(case, layout, items, framing)| GenDoc {
            fmt,
            case,
            text: render_doc(fmt, layout, &items, &framing),
            items: items.into_iter().map(|i| i.meta).collect(),
        })
}

fn any_fmt_doc(max_items: usize) -> impl Strategy<Value = GenDoc> {
    prop_oneof![
        gen_doc(Fmt::Json, max_items),
        gen_doc(Fmt::Jsonl, max_items)
    ]
}

// =======================================================================================
// Reading documents back, independently of the store's own reader.

/// The members of an object, in order, duplicates included: (unescaped key, raw value).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    v.push(entry);
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn members(raw: &str) -> Result<Vec<(String, &str)>, TestCaseError> {
    let Members(m) = ok(serde_json::from_str(raw), "an item is not a JSON object")?;
    Ok(m.into_iter().map(|(k, v)| (k, v.get())).collect())
}

fn is_json_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn offset(base: &str, part: &str) -> usize {
    part.as_ptr() as usize - base.as_ptr() as usize
}

/// Byte spans of the item objects of a document.
fn item_spans(text: &str, fmt: Fmt) -> Result<Vec<(usize, usize)>, String> {
    let span = |raw: &RawValue| {
        let s = offset(text, raw.get());
        (s, s + raw.get().len())
    };
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let e = |e: serde_json::Error| e.to_string();
    match fmt {
        Fmt::Json => {
            let array: &RawValue = if body.trim_start_matches(is_json_ws).starts_with('{') {
                let Members(top) = serde_json::from_str(body).map_err(e)?;
                let items = top.into_iter().rev().find(|(k, _)| k == "items");
                items.ok_or("no \"items\" member")?.1
            } else {
                serde_json::from_str(body).map_err(e)?
            };
            let elems: Vec<&RawValue> = serde_json::from_str(array.get()).map_err(e)?;
            Ok(elems.into_iter().map(span).collect())
        }
        Fmt::Jsonl => {
            let mut spans = Vec::new();
            for line in body.split('\n') {
                if !line.trim_matches(is_json_ws).is_empty() {
                    spans.push(span(serde_json::from_str(line).map_err(e)?));
                }
            }
            Ok(spans)
        }
    }
}

/// The text with every item replaced by a NUL (which valid JSON cannot contain).
fn skeleton(text: &str, spans: &[(usize, usize)]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    for &(s, e) in spans {
        out.push_str(&text[pos..s]);
        out.push('\0');
        pos = e;
    }
    out.push_str(&text[pos..]);
    out
}

fn open(fmt: Fmt, path: &Path, opts: StoreOptions, mode: OpenMode) -> anyhow::Result<AnyStore> {
    Ok(match fmt {
        Fmt::Json => AnyStore::Json(JsonStore::open(path, opts, mode)?),
        Fmt::Jsonl => AnyStore::Jsonl(JsonlStore::open(path, opts, mode)?),
    })
}

// =======================================================================================
// Store round trip.

/// What the run does with one claimed item.
#[derive(Debug, Clone)]
struct Step {
    /// 0: nothing saved; else the outcome.
    outcome: u8,
    attempts: u32,
    http: Option<u16>,
    error: String,
    millis: u64,
}

#[derive(Debug, Clone)]
struct Plan {
    steps: Vec<Step>,
    /// Claim page size.
    page: usize,
    /// Verdicts saved in two batches, split here.
    split: usize,
}

fn plan() -> impl Strategy<Value = Plan> {
    let step = (
        0..5u8,
        0..20u32,
        prop::option::of(100..600u16),
        text(12),
        0..4_000_000_000_000u64,
    )
        .prop_map(|(outcome, attempts, http, error, millis)| Step {
            outcome,
            attempts,
            http,
            error,
            millis,
        });
    (prop::collection::vec(step, 1..8), 1..6usize, 0..12usize)
        .prop_map(|(steps, page, split)| Plan { steps, page, split })
}

fn verdict(item: &Item, step: &Step) -> Option<Verdict> {
    let outcome = match step.outcome {
        1 => Outcome::Ok,
        2 => Outcome::StillFailed,
        3 => Outcome::NotFound,
        4 => Outcome::Error,
        _ => return None,
    };
    Some(Verdict {
        key: item.key,
        id: item.id.clone(),
        outcome,
        http_status: step.http,
        attempts: step.attempts,
        error: (outcome != Outcome::Ok).then(|| step.error.clone()),
        checked_at: SystemTime::UNIX_EPOCH + Duration::from_millis(step.millis),
        elapsed: Duration::ZERO,
        // For reports only: a store must not write it over the item's `url`.
        url: Some(format!("http://h/items/{}?verdict", item.id)),
        // Some verdicts carry a schedule.
        next_check_at: (step.millis % 2 == 1)
            .then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(step.millis + 60_000)),
        host_limit: None,
    })
}

fn is_number(raw: &str) -> bool {
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

fn decoded(raw: &str) -> Result<String, TestCaseError> {
    ok(serde_json::from_str::<String>(raw), "not a JSON string")
}

/// One item before and after the run.
fn check_item(
    old: &str,
    new: &str,
    saved: Option<&Verdict>,
    meta: &Meta,
    opts: &StoreOptions,
) -> Result<(), TestCaseError> {
    let Some(v) = saved else {
        prop_assert_eq!(old, new, "an item without a verdict changed");
        return Ok(());
    };
    let (om, nm) = (members(old)?, members(new)?);
    let kept = |m: &[(String, &str)]| -> Vec<(String, String)> {
        m.iter()
            .filter(|(k, _)| !WRITTEN.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()
    };
    prop_assert_eq!(
        kept(&om),
        kept(&nm),
        "members recheck does not write changed (new item {})",
        new
    );
    let one = |m: &[(String, &str)], key: &str| -> Result<String, TestCaseError> {
        let found: Vec<&str> = m.iter().filter(|(k, _)| k == key).map(|e| e.1).collect();
        prop_assert_eq!(found.len(), 1, "{} times {:?} in {}", found.len(), key, new);
        Ok(found[0].to_string())
    };
    let http = v.http_status.map_or("null".to_string(), |s| s.to_string());
    prop_assert_eq!(one(&nm, "http_status")?, http);
    let attempts = meta.attempts.unwrap_or(0) + i64::from(v.attempts);
    prop_assert_eq!(one(&nm, "attempts")?, attempts.to_string());
    match &v.error {
        None => prop_assert_eq!(one(&nm, "last_error")?, "null"),
        Some(e) => prop_assert_eq!(&decoded(&one(&nm, "last_error")?)?, e),
    }
    prop_assert_eq!(decoded(&one(&nm, "checked_at")?)?, rfc3339(v.checked_at));
    // The schedule: generated items were never checked by a schedule-aware run.
    prop_assert_eq!(one(&nm, "checks")?, "1");
    prop_assert_eq!(
        decoded(&one(&nm, "first_checked_at")?)?,
        rfc3339(v.checked_at)
    );
    match v.next_check_at {
        None => prop_assert_eq!(one(&nm, "next_check_at")?, "null"),
        Some(t) => prop_assert_eq!(decoded(&one(&nm, "next_check_at")?)?, rfc3339(t)),
    }
    let old_status = one(&om, "status")?;
    let new_status = one(&nm, "status")?;
    match opts.status_for(v.outcome) {
        None => prop_assert_eq!(old_status, new_status, "status changed on {:?}", v.outcome),
        Some(s) => match s.as_int() {
            // A numeric status stays numeric when the new one is an integer.
            Some(n) if is_number(&old_status) => prop_assert_eq!(new_status, n.to_string()),
            _ => prop_assert_eq!(decoded(&new_status)?, s.as_str()),
        },
    }
    Ok(())
}

fn round_trip(doc: &GenDoc, plan: &Plan) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(doc.fmt.file_name());
    fs::write(&path, &doc.text).unwrap();
    let before = ok(
        item_spans(&doc.text, doc.fmt),
        "generator bug: invalid JSON",
    )?;
    prop_assert_eq!(before.len(), doc.items.len(), "generator bug: item count");
    let opts = options(doc.case);

    if !doc.items.iter().any(|m| m.of_task) {
        // A run on a task the store has no item of is refused (docs/reference.md §2.5), the
        // file untouched.
        let refused = open(doc.fmt, &path, opts.clone(), OpenMode::Run);
        prop_assert!(refused.is_err(), "a run on an unknown task was accepted");
        let msg = refused.err().map(|e| e.to_string()).unwrap_or_default();
        prop_assert!(
            msg.contains(&format!("no task {:?}", doc.case.task)),
            "{}",
            msg
        );
        prop_assert_eq!(
            ok(fs::read_to_string(&path), "read back")?,
            doc.text.clone()
        );
        return Ok(());
    }
    let store = ok(open(doc.fmt, &path, opts.clone(), OpenMode::Run), "open")?;
    let mut claimed = Vec::new();
    loop {
        let page = ok(block_on(store.claim(plan.page)), "claim")?;
        prop_assert!(page.len() <= plan.page);
        if page.is_empty() {
            break;
        }
        claimed.extend(page);
    }
    let expected: Vec<Item> = doc
        .items
        .iter()
        .enumerate()
        .filter(|(_, m)| m.candidate)
        .map(|(idx, m)| Item {
            key: idx as i64,
            id: m.id.clone().unwrap(),
            url: m.url.clone(),
            fields: vec![m.region.clone()],
            checks: 0,
            first_checked_at: None,
        })
        .collect();
    prop_assert_eq!(&claimed, &expected, "claimed items");

    let mut saved: BTreeMap<usize, Verdict> = BTreeMap::new();
    let mut batch = Vec::new();
    for (k, item) in claimed.iter().enumerate() {
        if let Some(v) = verdict(item, &plan.steps[k % plan.steps.len()]) {
            saved.insert(item.key as usize, v.clone());
            batch.push(v);
        }
    }
    let rest = batch.split_off(plan.split.min(batch.len()));
    ok(block_on(store.save(batch.into())), "save")?;
    ok(block_on(store.save(rest.into())), "save")?;
    ok(block_on(store.finish()), "finish")?;
    drop(store);

    let out = ok(fs::read_to_string(&path), "read back")?;
    let after = ok(item_spans(&out, doc.fmt), "the written file is not valid")?;
    prop_assert_eq!(after.len(), before.len(), "items added or lost:\n{}", out);
    prop_assert_eq!(
        skeleton(&doc.text, &before),
        skeleton(&out, &after),
        "bytes outside the items changed"
    );
    for (idx, (&(s0, e0), &(s1, e1))) in before.iter().zip(&after).enumerate() {
        let new = &out[s1..e1];
        if doc.fmt == Fmt::Jsonl {
            prop_assert!(
                !new.contains('\n'),
                "a JSON Lines item spans lines: {}",
                new
            );
        }
        check_item(
            &doc.text[s0..e0],
            new,
            saved.get(&idx),
            &doc.items[idx],
            &opts,
        )?;
    }
    // Still a valid store, and nothing (lock, temp file) left behind.
    ok(open(doc.fmt, &path, opts, OpenMode::Status), "re-open")?;
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    prop_assert_eq!(names, [doc.fmt.file_name()]);
    Ok(())
}

// =======================================================================================
// Store reader on anything.

/// Bytes that matter to a JSON parser, for mutations.
const INTERESTING: &[u8] = b"\"\\{}[],: \n\r\t0-e.u/\x00\xff\xc3\xa9\xe2";

fn mutate(text: &str, muts: &[(u8, u16, u8)]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for &(kind, pos, byte) in muts {
        let len = b.len();
        let special = INTERESTING[usize::from(byte) % INTERESTING.len()];
        match kind % 4 {
            0 if len > 0 => b[usize::from(pos) % len] ^= 1 << (byte % 8),
            1 if len > 0 => b[usize::from(pos) % len] = special,
            2 => b.insert(usize::from(pos) % (len + 1), special),
            _ if len > 0 => {
                b.remove(usize::from(pos) % len);
            }
            _ => {}
        }
    }
    b
}

/// Opens `bytes` as a store: an error is one line naming the file; a store that opens for a
/// run survives a run (claim everything, save, finish) and still opens afterwards.
fn open_anything(fmt: Fmt, bytes: &[u8], case: StoreCase) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(fmt.file_name());
    fs::write(&path, bytes).unwrap();
    let label = format!("{}:{}", fmt.scheme(), path.display());
    let check_err = |e: anyhow::Error| -> Result<(), TestCaseError> {
        let msg = format!("{e:#}");
        prop_assert!(!msg.contains('\n'), "multi-line error: {:?}", msg);
        prop_assert!(msg.starts_with(&label), "error without the file: {:?}", msg);
        Ok(())
    };
    if let Err(e) = open(fmt, &path, options(case), OpenMode::Status) {
        check_err(e)?;
    }
    match open(fmt, &path, options(case), OpenMode::Run) {
        Err(e) => check_err(e)?,
        Ok(store) => {
            let items = ok(block_on(store.claim(usize::MAX)), "claim")?;
            let verdicts = items.iter().enumerate().filter_map(|(k, item)| {
                let step = Step {
                    outcome: (k % 4 + 1) as u8,
                    attempts: 1,
                    http: Some(200),
                    error: "e\n\"".into(),
                    millis: 0,
                };
                verdict(item, &step)
            });
            ok(block_on(store.save(verdicts.collect())), "save")?;
            ok(block_on(store.finish()), "finish")?;
            drop(store);
            ok(
                open(fmt, &path, options(case), OpenMode::Status),
                "re-open after a run",
            )?;
        }
    }
    Ok(())
}

fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "[\\[\\]{}\",:0-9a-z_ \\n\\t\\\\.eE+-]{0,120}".prop_map(String::into_bytes),
        "\\[?\\{\"task_id\": ?\"t1\", ?\"(item_)?id\": ?[\"a-z0-9\\\\{}\\[\\],:]{0,12}, ?\"status\": ?(\"failed\"|5|\"ok\")[\"a-z0-9\\\\{}\\[\\],: ]{0,12}"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn store_json_round_trip_keeps_what_it_does_not_own(
        doc in gen_doc(Fmt::Json, 8),
        plan in plan(),
    ) {
        round_trip(&doc, &plan)?;
    }

    #[test]
    fn store_jsonl_round_trip_keeps_lines_and_what_it_does_not_own(
        doc in gen_doc(Fmt::Jsonl, 8),
        plan in plan(),
    ) {
        round_trip(&doc, &plan)?;
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn store_open_mutated_documents(
        doc in any_fmt_doc(5),
        muts in prop::collection::vec(any::<(u8, u16, u8)>(), 1..4),
    ) {
        open_anything(doc.fmt, &mutate(&doc.text, &muts), doc.case)?;
    }

    #[test]
    fn store_open_arbitrary_bytes(
        json in any::<bool>(),
        bytes in jsonish(),
        case in store_case(),
    ) {
        open_anything(if json { Fmt::Json } else { Fmt::Jsonl }, &bytes, case)?;
    }
}

// =======================================================================================
// URL template.

/// Ids that try to escape their segment or value.
fn hostile_id() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        text(12),
        select(vec![
            ".", "..", "...", "", "/", "%2e", ".%2e", "%2e%2e", "a/../b", " ", "\\..", "?", "#",
            "%", "+", "&", "=", "\u{0}", "\t", "\n", "..\u{0}", ". ", " ..", "..\\", "%2F",
        ])
        .prop_map(String::from),
        "[./\\\\%?#& +=2eEfF]{0,5}",
    ]
}

/// Hostile ids but the dot segments (filtered when generated: many `prop_assume!`s would hit
/// proptest's global limit on rejections in long runs).
fn not_dots() -> impl Strategy<Value = String> {
    hostile_id().prop_filter("a dot segment", |s| s != "." && s != "..")
}

fn item(id: &str, fields: Vec<Option<String>>) -> Item {
    Item {
        key: 0,
        id: id.to_string(),
        url: None,
        fields,
        checks: 0,
        first_checked_at: None,
    }
}

fn decode(s: &str) -> Result<String, TestCaseError> {
    ok(percent_decode_str(s).decode_utf8(), "percent-decoding").map(|c| c.into_owned())
}

fn templates() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z{}:/?#%.=&_ ~]{0,30}",
        "(https?://h/|http://h:8080/|ftp://h/|http://|https://u:p@h/|)[a-z{}/?#%.=&_ ~@:\\[\\]\\\\]{0,24}",
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn url_id_is_one_path_segment(id in hostile_id()) {
        let t = UrlTemplate::parse("http://h/items/{id}", "t").unwrap();
        match t.render(&item(&id, vec![])) {
            // An empty id would ask for the collection (`/items/`): that item's error.
            Err(e) if id.is_empty() => prop_assert!(e.contains("empty item id"), "{}", e),
            Err(e) => prop_assert!(id == "." || id == "..", "{:?} refused: {}", id, e),
            Ok(u) => {
                prop_assert!(!id.is_empty(), "an empty id sent as {}", u);
                prop_assert!(id != "." && id != "..", "dot segment {:?} sent as {}", id, u);
                prop_assert_eq!(u.host_str(), Some("h"));
                prop_assert_eq!(u.query(), None, "{}", u);
                prop_assert_eq!(u.fragment(), None, "{}", u);
                let seg = u.path().strip_prefix("/items/");
                prop_assert!(seg.is_some(), "path {:?} of {:?}", u.path(), id);
                let seg = seg.unwrap();
                prop_assert!(!seg.contains('/'), "{:?} made segments: {}", id, u);
                prop_assert_eq!(decode(seg)?, id);
            }
        }
    }

    #[test]
    fn url_id_is_one_query_value(id in hostile_id()) {
        let t = UrlTemplate::parse("http://h/q?id={id}", "t").unwrap();
        if id.is_empty() {
            let e = t.render(&item(&id, vec![])).err().unwrap_or_default();
            prop_assert!(e.contains("empty item id"), "an empty id was sent: {}", e);
            return Ok(());
        }
        let u = ok(t.render(&item(&id, vec![])), "render")?;
        prop_assert_eq!(u.path(), "/q");
        prop_assert_eq!(u.fragment(), None, "{}", u);
        let q = u.query().unwrap_or_default();
        let value = q.strip_prefix("id=");
        prop_assert!(value.is_some(), "query {:?} of {:?}", q, id);
        let value = value.unwrap();
        prop_assert!(!value.contains(['&', '#', '=']), "{:?} made more of the query: {}", id, u);
        prop_assert_eq!(decode(value)?, id.clone());
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        prop_assert_eq!(pairs, vec![("id".to_string(), id)]);
    }

    #[test]
    fn url_task_is_one_path_segment(task in hostile_id(), id in not_dots()) {
        let parsed = UrlTemplate::parse("http://h/t/{task}/i/{id}", &task);
        if task == "." || task == ".." {
            // A dot segment would be resolved away: refused, as `url_task_dot_segment_is_refused`.
            prop_assert!(parsed.is_err(), "task {:?} accepted", task);
            return Ok(());
        }
        let t = ok(parsed, "parse")?;
        if id.is_empty() {
            let e = t.render(&item(&id, vec![])).err().unwrap_or_default();
            prop_assert!(e.contains("empty item id"), "an empty id was sent: {}", e);
            return Ok(());
        }
        let u = ok(t.render(&item(&id, vec![])), "render")?;
        let segs: Vec<&str> = u.path().split('/').collect();
        prop_assert_eq!(segs.len(), 5, "{:?} / {:?} gave {}", task, id, u);
        prop_assert_eq!((segs[0], segs[1], segs[3]), ("", "t", "i"), "{}", u);
        prop_assert_eq!(decode(segs[2])?, task);
        prop_assert_eq!(decode(segs[4])?, id);
        prop_assert_eq!(u.query(), None, "{}", u);
        prop_assert_eq!(u.fragment(), None, "{}", u);
    }

    #[test]
    fn url_template_parse_never_panics(template in templates(), task in hostile_id()) {
        match UrlTemplate::parse(&template, &task) {
            Err(e) => {
                let msg = format!("{e:#}");
                prop_assert!(!msg.contains('\n'), "multi-line error: {:?}", msg);
                prop_assert!(msg.contains("--url"), "{:?}", msg);
            }
            Ok(t) => {
                let n = t.columns().len();
                for c in t.columns() {
                    prop_assert!(Ident::new("c", c.as_str()).is_ok());
                }
                // Any values: an Ok or an item error, never a panic.
                let _ = t.render(&item(&task, vec![Some(task.clone()); n]));
                let _ = t.render(&item("x", vec![None; n]));
                // With the values the template was validated with, it renders.
                let t = UrlTemplate::parse(&template, "x").unwrap();
                let u = t.render(&item("x", vec![Some("x".into()); n]));
                prop_assert!(u.is_ok(), "{:?} validated but renders {:?}", template, u);
            }
        }
    }
}

/// A task of `.` or `..` in a `{task}` path segment would be sent as a dot segment that
/// every URL parser resolves away (`http://h/t/{task}/i/{id}` with `--task ..` would request
/// `http://h/i/x`): it is refused, as such an id is.
#[test]
fn url_task_dot_segment_is_refused() {
    for task in [".", ".."] {
        let rendered = UrlTemplate::parse("http://h/t/{task}/i/{id}", task)
            .map_err(|e| e.to_string())
            .and_then(|t| t.render(&item("x", vec![])).map_err(|e| e.to_string()));
        // Either the template or the item must be refused, as `{id}` is.
        assert!(
            rendered.is_err(),
            "task {task:?} was resolved away: {rendered:?}"
        );
    }
}

// =======================================================================================
// JSON pointer rules and the judge.

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text(6),
        1 => select(vec!["0", "1", "", "~", "/", "~0", "~1", "a/b", "a~b", "-", "01"])
            .prop_map(String::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text(10).prop_map(Value::String),
        // long enough for the judge's message to cut it (at a char boundary)
        "[a-zé€😀\"\\\\]{70,90}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Walks `doc` along `choices` and returns the RFC 6901 pointer of where it stopped, and the
/// value there. Keys with `=`, `<`, `>` or `!` are not taken: a rule's operator is the first
/// of `=` `!=` `<` `<=` `>` `>=` `=~` in its text, so such a key cannot be named in a rule.
fn pick<'a>(doc: &'a Value, choices: &[usize]) -> (String, &'a Value) {
    let mut pointer = String::new();
    let mut cur = doc;
    for &c in choices {
        match cur {
            Value::Array(a) if !a.is_empty() => {
                let i = c % a.len();
                write!(pointer, "/{i}").unwrap();
                cur = &a[i];
            }
            Value::Object(m) => {
                let keys: Vec<&String> = m
                    .keys()
                    .filter(|k| !k.contains(['=', '<', '>', '!']))
                    .collect();
                if keys.is_empty() {
                    break;
                }
                let k = keys[c % keys.len()];
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                cur = &m[k];
            }
            _ => break,
        }
    }
    (pointer, cur)
}

fn rule_specs() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            any::<String>(),
            text(12),
            "(/[a-z~0-9=]{0,4}){0,3}=[a-z0-9\"{}\\[\\]:,~=]{0,10}",
        ],
        0..4,
    )
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn json_rule_matches_the_value_at_its_pointer(
        doc in json_value(),
        choices in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let (pointer, target) = pick(&doc, &choices);
        let body = serde_json::to_vec(&doc).unwrap();
        let expect = |value: &Value| -> Result<Expectations, TestCaseError> {
            let spec = format!("{pointer}={value}");
            Ok(Expectations {
                status: ExpectStatus::default(),
                json: ok(JsonRule::parse_all(&[spec]), "parse_all")?,
                jq: Vec::new(),
                dead_json: Vec::new(),
                dead_jq: Vec::new(),
            })
        };
        prop_assert_eq!(judge(200, &body, &expect(target)?), Judgement::Ok, "{}", pointer);
        let other = Value::Array(vec![target.clone()]);
        let j = judge(200, &body, &expect(&other)?);
        prop_assert!(matches!(j, Judgement::StillFailed(_)), "{}: {:?}", pointer, j);
    }

    /// The judge builds only the parts of an answer its pointer rules reach; its verdict and
    /// message are those of the rules on the whole document.
    #[test]
    fn judging_the_parts_the_rules_reach_is_judging_the_whole_answer(
        doc in json_value(),
        picks in prop::collection::vec(
            (prop::collection::vec(any::<usize>(), 0..6), 0..4u8, any::<bool>()),
            1..5,
        ),
        stray in "(/([a-z0-9]|~[01]){0,3}){0,3}",
    ) {
        let body = serde_json::to_vec(&doc).unwrap();
        let (mut json, mut dead) = (Vec::new(), Vec::new());
        for (i, (choices, op, is_dead)) in picks.iter().enumerate() {
            let (pointer, target) = pick(&doc, choices);
            // A rule on the value there, on something else, or on a pointer past it.
            let spec = match op {
                0 => format!("{pointer}={target}"),
                1 => format!("{pointer}!={target}"),
                2 => format!("{pointer}/{i}>=0"),
                _ => format!("{stray}=~^a"),
            };
            let rule = ok(JsonRule::parse_all(&[spec]), "parse_all")?;
            if *is_dead { dead.extend(rule) } else { json.extend(rule) }
        }
        let whole: Value = serde_json::from_slice(&body).unwrap();
        let want = dead
            .iter()
            .find_map(|r| r.dead_reason(&whole).map(Judgement::Dead))
            .or_else(|| json.iter().find_map(|r| r.check(&whole).err().map(Judgement::StillFailed)))
            .unwrap_or(Judgement::Ok);
        let expect = Expectations {
            status: ExpectStatus::default(),
            json,
            jq: Vec::new(),
            dead_json: dead,
            dead_jq: Vec::new(),
        };
        prop_assert_eq!(judge(200, &body, &expect), want);
    }

    #[test]
    fn json_rules_and_judge_never_panic(
        specs in rule_specs(),
        status in prop_oneof![100..600u16, any::<u16>()],
        expect_status in prop_oneof![Just("200".to_string()), "[0-9xX, -]{0,10}"],
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
    ) {
        let rules = match JsonRule::parse_all(&specs) {
            Ok(rules) => rules,
            Err(e) => {
                let msg = format!("{e:#}");
                prop_assert!(msg.contains("--expect-json"), "{:?}", msg);
                prop_assert!(!msg.contains('\n'), "multi-line error: {:?}", msg);
                Vec::new()
            }
        };
        let expect = Expectations {
            status: ExpectStatus::parse(&expect_status).unwrap_or_default(),
            json: rules,
            jq: Vec::new(),
            dead_json: Vec::new(),
            dead_jq: Vec::new(),
        };
        let _ = judge(status, &body, &expect);
    }
}

// =======================================================================================
// Value parsers of the command line.

fn durationish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9.eE+\\- a-zµ]{0,12}",
        "-?[0-9]{0,25}(\\.[0-9]{0,25})?([eE][+-]?[0-9]{1,4})? ?(ns|us|µs|ms|s|m|h|d|w|M|y|sec|min|hours|days)?",
        "([0-9]{1,22} ?[a-z]{1,5} ?){1,4}",
        "inf|-inf|NaN|nan|infinity|1e9|999999999.999999999|-0|-0.0|0x10|1_000",
    ]
}

fn sizeish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9.eE+\\- ]{0,8}[kKmMgGtTpPeEiIbB]{0,4}",
        " ?-?[0-9]{0,25}(\\.[0-9]{0,25})? ?(B|b|KB|kB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|PiB|EB|EiB|ZB|k|M|G)? ?",
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn value_parsers_never_panic(
        d in durationish(),
        d2 in durationish(),
        size in sizeish(),
        expect in prop_oneof![
            any::<String>(),
            "( ?([0-9]{1,6}|[0-9]{1,2}[xX]{1,3}|[0-9]{1,6} ?- ?[0-9]{1,6}) ?,?){0,4}",
        ],
    ) {
        let _ = parse_duration(&d);
        let _ = parse_size(&size);
        let _ = parse_size(&d);
        let _ = parse_backoff(&d);
        if let Ok((lo, hi)) = parse_backoff(&format!("{d}..{d2}")) {
            prop_assert!(lo <= hi, "{:?}..{:?}", d, d2);
        }
        for s in [&expect, &d] {
            if let Ok(e) = ExpectStatus::parse(s) {
                for code in [0, 1, 99, 600, 999, 1000, u16::MAX] {
                    prop_assert!(!e.contains(code), "{:?} accepts {}", s, code);
                }
            }
        }
    }
}
