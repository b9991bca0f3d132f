//! Shared machinery of the JSON document and JSON Lines stores ([`super::json`],
//! [`super::jsonl`]).
//!
//! # Splicing, not re-serialising
//!
//! A file store must give back every byte it does not own: unknown fields, key order,
//! whitespace, number spellings (`1.0e3`), escapes (`\u00e9`). So the document is never
//! re-serialised. At open, serde_json parses the text into borrowed [`RawValue`]s (which also
//! validates it and gives line/column errors); a raw value is a slice of the input, so its
//! byte span is found by pointer arithmetic against the input buffer. Per item we keep the
//! span of the object, of the values of the fields recheck reads or writes (key names are
//! compared after unescaping, so `"st\u0061tus"` is `status`; the last of duplicated keys
//! wins), and a little layout (the separator before the last key, the last value's end).
//!
//! Verdicts become *patches*: per item, the new raw JSON text of a field. A write copies the
//! original text and splices the patches in, in one pass (O(file size)): an existing field
//! gets its value replaced, a missing one is inserted after the last member, written like
//! the object's own members (same separator before the key, same `": "`/`":"`). The original
//! text stays the base; patches hold absolute values, so every write renders the same base
//! plus every patch so far.
//!
//! # Durability and locking
//!
//! A write goes to a temporary file in the same directory, is fsynced, gets the original
//! file's permissions and is renamed over the original; then the directory is fsynced. A run
//! writes at most once per second while verdicts arrive (a checkpoint) and once at the end.
//! A store opened for writing holds an exclusive lock on `<file>.lock` (holding the pid) for
//! its whole life, so a second run fails fast.
//!
//! # Limitation
//!
//! The whole file, and a few words per item, live in memory.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::lock::LockFile;
use super::{BOOKKEEPING, Columns, Ident, NewItem, OpenMode, StatusCounts, StoreOptions};
use crate::model::{Item, StatusValue, Verdict, rfc3339};

/// How often a run writes its verdicts back while they arrive.
const CHECKPOINT: Duration = Duration::from_secs(1);

/// The two file layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document: an array of items, or an object with an `items` array.
    Json,
    /// JSON Lines: one item object per line.
    Jsonl,
}

impl Format {
    /// The `--store` prefix, used to name the store in messages.
    fn scheme(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Jsonl => "jsonl",
        }
    }

    /// What `init` (and `import` on a missing file) creates.
    fn initial(self) -> &'static str {
        match self {
            Format::Json => "{\"items\": []}\n",
            Format::Jsonl => "",
        }
    }
}

// Slots: the fields recheck reads or writes, by position in `Doc::keys`.
const TASK: usize = 0;
const ID: usize = 1;
/// `id`, accepted when the id field is absent.
const ID_ALIAS: usize = 2;
const STATUS: usize = 3;
const URL: usize = 4;
const HTTP_STATUS: usize = 5;
const ATTEMPTS: usize = 6;
const LAST_ERROR: usize = 7;
const CHECKED_AT: usize = 8;
/// First of the extra columns (`{COLUMN}` of the URL template).
const EXTRA: usize = 9;

/// The field names of the slots, in slot order.
fn slot_names(columns: &Columns, extra: &[Ident]) -> Vec<String> {
    let mut keys = vec![
        columns.task.as_str().to_string(),
        columns.id.as_str().to_string(),
        "id".to_string(),
        columns.status.as_str().to_string(),
        columns.url.as_str().to_string(),
    ];
    keys.extend(BOOKKEEPING.iter().map(|s| s.to_string()));
    debug_assert_eq!(keys.len(), EXTRA);
    debug_assert_eq!(keys[CHECKED_AT], "checked_at");
    keys.extend(extra.iter().map(|c| c.as_str().to_string()));
    keys
}

// ---------------------------------------------------------------------------------------
// The document: original text plus spans.

/// The value span of one slot of one item.
#[derive(Debug, Clone, Copy)]
struct FieldSpan {
    slot: usize,
    start: usize,
    end: usize,
}

/// Where one item object is, and the bits of its layout that insertions copy.
#[derive(Debug, Clone, Copy)]
struct ItemSpans {
    /// `{` .. one past `}`.
    start: usize,
    end: usize,
    /// This item's range of `Doc::fields`.
    fields: (usize, usize),
    /// Span of the last member's value; `None` for `{}`.
    last_value: Option<(usize, usize)>,
    /// What separates the last member from the one before (`,` and the whitespace around
    /// it), when there are two or more members.
    sep: Option<(usize, usize)>,
}

/// A parsed file: the original text and the spans of its items.
struct Doc {
    text: String,
    format: Format,
    /// Field name of each slot.
    keys: Vec<String>,
    items: Vec<ItemSpans>,
    fields: Vec<FieldSpan>,
    /// JSON only: the items array, `[` .. one past `]`.
    array: Option<(usize, usize)>,
}

/// Per item: (slot, new raw JSON value), at most one entry per field name.
type Patch = Vec<(usize, String)>;

/// A map key, borrowed when it has no escapes, unescaped otherwise.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of an object, in order, duplicates included, values as raw slices.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries<'de>, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    v.push((k.0, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// First index at or after `i` that is not JSON whitespace.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// Byte offset of `part` (a slice of `base`) in `base`.
fn offset(base: &str, part: &str) -> usize {
    let off = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    debug_assert!(
        off + part.len() <= base.len(),
        "slice not within the document"
    );
    off
}

/// 1-based line number of a byte offset.
fn line_at(text: &[u8], off: usize) -> usize {
    1 + text[..off.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// A serde_json error message without its " at line L column C" tail, plus the column.
fn message_at_column(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let tail = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&tail) {
        Some(msg) => format!("{msg} at column {}", e.column()),
        None => full,
    }
}

impl Doc {
    /// Parses and validates `text`. Errors are one line, without the store's name.
    fn parse(text: String, format: Format, keys: Vec<String>) -> Result<Doc> {
        let mut items = Vec::new();
        let mut fields = Vec::new();
        let mut array = None;
        {
            let t = text.as_str();
            let body_start = if t.starts_with('\u{feff}') { 3 } else { 0 };
            let mut scan = |raw: &str| scan_object(t, raw, &keys, &mut items, &mut fields);
            match format {
                Format::Json => {
                    let body = &t[body_start..];
                    let bytes = body.as_bytes();
                    let first = skip_ws(bytes, 0);
                    let elems: Vec<&RawValue> = match bytes.get(first) {
                        None => bail!("not valid JSON: empty file"),
                        Some(b'[') => {
                            let elems = serde_json::from_str(body)
                                .map_err(|e| anyhow!("not valid JSON: {e}"))?;
                            let mut last = bytes.len();
                            while last > 0 && is_ws(bytes[last - 1]) {
                                last -= 1;
                            }
                            array = Some((body_start + first, body_start + last));
                            elems
                        }
                        Some(b'{') => {
                            let Entries(top) = serde_json::from_str(body)
                                .map_err(|e| anyhow!("not valid JSON: {e}"))?;
                            let Some((_, raw)) = top.iter().rev().find(|(k, _)| k == "items")
                            else {
                                bail!(
                                    "the top-level object has no \"items\" array \
                                     (expected an array of items or {{\"items\": [...]}})"
                                );
                            };
                            let raw = raw.get();
                            if !raw.starts_with('[') {
                                bail!(
                                    "\"items\" (line {}) is not an array",
                                    line_at(t.as_bytes(), offset(t, raw))
                                );
                            }
                            let start = offset(t, raw);
                            array = Some((start, start + raw.len()));
                            serde_json::from_str(raw).map_err(|e| anyhow!("not valid JSON: {e}"))?
                        }
                        Some(_) => {
                            serde_json::from_str::<IgnoredAny>(body)
                                .map_err(|e| anyhow!("not valid JSON: {e}"))?;
                            bail!(
                                "the top level is neither an array of items nor an object \
                                 with an \"items\" array"
                            );
                        }
                    };
                    for (i, raw) in elems.iter().enumerate() {
                        let raw = raw.get();
                        if !raw.starts_with('{') {
                            bail!(
                                "item {i} (line {}) is not a JSON object",
                                line_at(t.as_bytes(), offset(t, raw))
                            );
                        }
                        scan(raw)?;
                    }
                }
                Format::Jsonl => {
                    let mut line_start = 0;
                    let mut lineno = 0;
                    while line_start < t.len() {
                        let line_end = t[line_start..]
                            .find('\n')
                            .map_or(t.len(), |i| line_start + i);
                        lineno += 1;
                        let line = &t[line_start.max(body_start)..line_end];
                        if line.bytes().any(|b| !is_ws(b)) {
                            let raw: &RawValue = serde_json::from_str(line).map_err(|e| {
                                anyhow!(
                                    "line {lineno} is not valid JSON: {}",
                                    message_at_column(&e)
                                )
                            })?;
                            if !raw.get().starts_with('{') {
                                bail!("line {lineno} is not a JSON object");
                            }
                            scan(raw.get())?;
                        }
                        line_start = line_end + 1;
                    }
                }
            }
        }
        Ok(Doc {
            text,
            format,
            keys,
            items,
            fields,
            array,
        })
    }

    /// The raw value of a slot in the original text (the last one if the key is duplicated).
    fn raw(&self, idx: usize, slot: usize) -> Option<&str> {
        self.span(idx, slot).map(|(s, e)| &self.text[s..e])
    }

    fn span(&self, idx: usize, slot: usize) -> Option<(usize, usize)> {
        let it = self.items.get(idx)?;
        self.fields[it.fields.0..it.fields.1]
            .iter()
            .find(|f| f.slot == slot)
            .map(|f| (f.start, f.end))
    }

    /// "item 3 (line 12)" / "line 12", for messages.
    fn locate(&self, idx: usize) -> String {
        let line = line_at(self.text.as_bytes(), self.items[idx].start);
        match self.format {
            Format::Json => format!("item {idx} (line {line})"),
            Format::Jsonl => format!("line {line}"),
        }
    }

    fn task_is(&self, idx: usize, task: &str) -> bool {
        self.raw(idx, TASK).and_then(key_text).as_deref() == Some(task)
    }

    /// The item's id: the id field, or `id` when that is absent.
    fn id_of(&self, idx: usize) -> std::result::Result<String, String> {
        let slot = if self.span(idx, ID).is_some() {
            ID
        } else if self.span(idx, ID_ALIAS).is_some() {
            ID_ALIAS
        } else {
            return Err(format!("has no {:?} (or \"id\") field", self.keys[ID]));
        };
        self.raw(idx, slot)
            .and_then(key_text)
            .ok_or_else(|| format!("{:?} is not a string or a number", self.keys[slot]))
    }

    /// The `:` of the member whose value starts at `value_start`, with its whitespace.
    fn colon(&self, value_start: usize) -> &str {
        let b = self.text.as_bytes();
        let mut i = value_start;
        while i > 0 && is_ws(b[i - 1]) {
            i -= 1;
        }
        if i > 0 && b[i - 1] == b':' {
            i -= 1;
        }
        while i > 0 && is_ws(b[i - 1]) {
            i -= 1;
        }
        &self.text[i..value_start]
    }

    /// The whitespace between `{` and the first key.
    fn open_ws(&self, it: &ItemSpans) -> &str {
        let first_key = skip_ws(self.text.as_bytes(), it.start + 1);
        &self.text[it.start + 1..first_key]
    }

    /// What to put between two members (comma included), copied from the object: the
    /// separator before its last member, or, for one member, `,` and the whitespace after
    /// `{`; `,` for an empty object.
    fn sep(&self, it: &ItemSpans) -> Cow<'_, str> {
        match it.sep {
            Some((s, e)) => Cow::Borrowed(&self.text[s..e]),
            None => Cow::Owned(format!(",{}", self.open_ws(it))),
        }
    }

    /// How a new object should look to match an existing one.
    fn style_of(&self, it: &ItemSpans) -> Style<'_> {
        let t = &self.text;
        match it.last_value {
            None => Style::compact(),
            Some((vs, ve)) => Style {
                open: Cow::Borrowed(self.open_ws(it)),
                sep: self.sep(it),
                colon: Cow::Borrowed(self.colon(vs)),
                close: Cow::Borrowed(&t[ve..it.end - 1]),
            },
        }
    }

    /// The text with every patch spliced in and `appended` items added at the end. One
    /// pass over the text.
    fn render(&self, patches: &BTreeMap<usize, Patch>, appended: &[Patch]) -> String {
        let t = self.text.as_str();
        let b = t.as_bytes();
        let mut out = String::with_capacity(t.len() + patches.len() * 128 + appended.len() * 128);
        let mut pos = 0;
        let mut reps: Vec<(usize, usize, &str)> = Vec::new();
        let mut ins: Vec<(usize, &str)> = Vec::new();
        for (&idx, patch) in patches {
            let Some(it) = self.items.get(idx) else {
                continue;
            };
            reps.clear();
            ins.clear();
            for (slot, raw) in patch {
                match self.span(idx, *slot) {
                    Some((s, e)) => reps.push((s, e, raw)),
                    None => ins.push((*slot, raw)),
                }
            }
            reps.sort_unstable_by_key(|r| r.0);
            for &(s, e, raw) in &reps {
                out.push_str(&t[pos..s]);
                out.push_str(raw);
                pos = e;
            }
            if ins.is_empty() {
                continue;
            }
            let at = it.last_value.map_or(it.start + 1, |v| v.1);
            out.push_str(&t[pos..at]);
            pos = at;
            let sep = self.sep(it);
            let colon = it.last_value.map_or(":", |(vs, _)| self.colon(vs));
            for (k, &(slot, raw)) in ins.iter().enumerate() {
                if it.last_value.is_some() || k > 0 {
                    out.push_str(&sep);
                }
                out.push_str(&json_str(&self.keys[slot]));
                out.push_str(colon);
                out.push_str(raw);
            }
        }
        if !appended.is_empty() {
            match self.format {
                Format::Json => {
                    let (a0, a1) = self.array.expect("a JSON document has an items array");
                    if let Some(last) = self.items.last() {
                        out.push_str(&t[pos..last.end]);
                        pos = last.end;
                        let mut ws = last.start;
                        while ws > 0 && is_ws(b[ws - 1]) {
                            ws -= 1;
                        }
                        let between = &t[ws..last.start];
                        let style = self.style_of(last);
                        for item in appended {
                            out.push(',');
                            out.push_str(between);
                            self.push_object(&mut out, &style, item);
                        }
                    } else {
                        // An empty array: pretty-print, indented from the line of the `[`.
                        out.push_str(&t[pos..a0 + 1]);
                        let line_start = t[..a0].rfind('\n').map_or(0, |i| i + 1);
                        let indent_len = t[line_start..]
                            .bytes()
                            .take_while(|&c| c == b' ' || c == b'\t')
                            .count();
                        let indent = &t[line_start..line_start + indent_len];
                        let style = Style {
                            open: Cow::Owned(format!("\n{indent}    ")),
                            sep: Cow::Owned(format!(",\n{indent}    ")),
                            colon: Cow::Borrowed(": "),
                            close: Cow::Owned(format!("\n{indent}  ")),
                        };
                        for (k, item) in appended.iter().enumerate() {
                            if k > 0 {
                                out.push(',');
                            }
                            out.push('\n');
                            out.push_str(indent);
                            out.push_str("  ");
                            self.push_object(&mut out, &style, item);
                        }
                        out.push('\n');
                        out.push_str(indent);
                        // The whitespace that was inside `[ ]` is replaced.
                        pos = a1 - 1;
                    }
                }
                Format::Jsonl => {
                    out.push_str(&t[pos..]);
                    pos = t.len();
                    let eol = if t.contains("\r\n") { "\r\n" } else { "\n" };
                    if !t.is_empty() && !t.ends_with('\n') {
                        out.push_str(eol);
                    }
                    let style = match self.items.last() {
                        Some(it) => self.style_of(it),
                        None => Style::compact(),
                    };
                    for item in appended {
                        self.push_object(&mut out, &style, item);
                        out.push_str(eol);
                    }
                }
            }
        }
        out.push_str(&t[pos..]);
        out
    }

    fn push_object(&self, out: &mut String, style: &Style, fields: &Patch) {
        out.push('{');
        for (k, (slot, raw)) in fields.iter().enumerate() {
            if k == 0 {
                out.push_str(&style.open);
            } else {
                out.push_str(&style.sep);
            }
            out.push_str(&json_str(&self.keys[*slot]));
            out.push_str(&style.colon);
            out.push_str(raw);
        }
        if !fields.is_empty() {
            out.push_str(&style.close);
        }
        out.push('}');
    }
}

/// Records the spans of one item object (`raw` is a slice of `t` starting with `{`).
fn scan_object(
    t: &str,
    raw: &str,
    keys: &[String],
    items: &mut Vec<ItemSpans>,
    fields: &mut Vec<FieldSpan>,
) -> Result<()> {
    let b = t.as_bytes();
    let start = offset(t, raw);
    let end = start + raw.len();
    let Entries(entries) = serde_json::from_str(raw).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    let first_field = fields.len();
    let mut sep = None;
    let mut last_value: Option<(usize, usize)> = None;
    for (key, value) in &entries {
        let vs = offset(t, value.get());
        let ve = vs + value.get().len();
        if let Some((_, prev_end)) = last_value {
            let comma = skip_ws(b, prev_end);
            debug_assert_eq!(b.get(comma), Some(&b','));
            sep = Some((prev_end, skip_ws(b, comma + 1)));
        }
        last_value = Some((vs, ve));
        for (slot, name) in keys.iter().enumerate() {
            if name == key {
                // Duplicated keys: the last one wins, like serde_json.
                match fields[first_field..].iter_mut().find(|f| f.slot == slot) {
                    Some(f) => (f.start, f.end) = (vs, ve),
                    None => fields.push(FieldSpan {
                        slot,
                        start: vs,
                        end: ve,
                    }),
                }
            }
        }
    }
    items.push(ItemSpans {
        start,
        end,
        fields: (first_field, fields.len()),
        last_value,
        sep,
    });
    Ok(())
}

/// The look of an object's members, copied from an existing item.
struct Style<'a> {
    /// After `{`, before the first key.
    open: Cow<'a, str>,
    /// Between two members: `,` and its whitespace.
    sep: Cow<'a, str>,
    /// Between key and value, `:` included.
    colon: Cow<'a, str>,
    /// After the last value, before `}`.
    close: Cow<'a, str>,
}

impl Style<'static> {
    fn compact() -> Self {
        Style {
            open: Cow::Borrowed(""),
            sep: Cow::Borrowed(","),
            colon: Cow::Borrowed(":"),
            close: Cow::Borrowed(""),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading and writing values.

/// A JSON string literal (properly escaped).
fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn is_number(raw: &str) -> bool {
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

fn decode_str(raw: &str) -> Option<String> {
    if raw.starts_with('"') {
        serde_json::from_str(raw).ok()
    } else {
        None
    }
}

/// A task or item id: a string's text or a number's JSON text.
fn key_text(raw: &str) -> Option<String> {
    if is_number(raw) {
        Some(raw.to_string())
    } else {
        decode_str(raw)
    }
}

/// A field for a URL template: strings decoded, null absent, anything else as JSON text.
fn field_text(raw: &str) -> Option<String> {
    if raw == "null" {
        None
    } else if raw.starts_with('"') {
        decode_str(raw)
    } else {
        Some(raw.to_string())
    }
}

/// A status as text for `status`: strings decoded, anything else as JSON text.
fn status_text(raw: &str) -> String {
    decode_str(raw).unwrap_or_else(|| raw.to_string())
}

/// An integral JSON number (`5`, `5.0`, `5e0`).
fn int_of(raw: &str) -> Option<i64> {
    if !is_number(raw) {
        return None;
    }
    raw.parse::<i64>().ok().or_else(|| {
        let f: f64 = raw.parse().ok()?;
        (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    })
}

/// A status field matches a status value as a string equal to its text, or as a number
/// equal to its integer.
fn status_matches(raw: &str, want: &StatusValue) -> bool {
    if is_number(raw) {
        want.as_int().is_some() && int_of(raw) == want.as_int()
    } else {
        decode_str(raw).as_deref() == Some(want.as_str())
    }
}

/// The raw JSON for a new status: a number where the old value was one and the new value
/// is an integer, else a string.
fn status_json(new: &StatusValue, old: Option<&str>) -> String {
    match new.as_int() {
        Some(n) if old.is_some_and(is_number) => n.to_string(),
        _ => json_str(new.as_str()),
    }
}

// ---------------------------------------------------------------------------------------
// Files: atomic writes, creation, the lock.

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_dir(dir: &Path) {
    // Not possible on every platform (Windows); the rename itself is still atomic.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Replaces `target` with `bytes` atomically: temp file in the same directory, fsync, the
/// original's permissions, rename, fsync of the directory.
fn atomic_write(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if let Ok(meta) = fs::metadata(target) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Creates the file with the format's initial content unless it exists. True if created.
fn create_initial(path: &Path, format: Format) -> io::Result<bool> {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut f) => {
            f.write_all(format.initial().as_bytes())?;
            f.sync_all()?;
            sync_dir(parent_dir(path));
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// The file a path names: a symlink's target, so the link survives the rename.
fn resolve(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

fn label(path: &Path, format: Format) -> String {
    format!("{}:{}", format.scheme(), path.display())
}

/// `recheck init` for a file store: create it, or validate an existing one.
pub fn init(path: &Path, format: Format) -> Result<String> {
    let label = label(path, format);
    let created =
        create_initial(path, format).map_err(|e| anyhow!("{label}: cannot create: {e}"))?;
    if created {
        return Ok(match format {
            Format::Json => format!("created {label} (an empty \"items\" array)"),
            Format::Jsonl => format!("created {label} (empty)"),
        });
    }
    let doc = read_doc(path, format, &label, &Columns::default(), &[])?;
    Ok(format!(
        "{label} already exists and is valid ({} items); left unchanged",
        doc.items.len()
    ))
}

fn read_doc(
    path: &Path,
    format: Format,
    label: &str,
    columns: &Columns,
    extra: &[Ident],
) -> Result<Doc> {
    let bytes = fs::read(path).map_err(|e| anyhow!("{label}: cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        anyhow!(
            "{label}: not valid UTF-8 (line {})",
            line_at(e.as_bytes(), at)
        )
    })?;
    Doc::parse(text, format, slot_names(columns, extra)).map_err(|e| anyhow!("{label}: {e}"))
}

// ---------------------------------------------------------------------------------------
// The store.

struct State {
    doc: Doc,
    patches: BTreeMap<usize, Patch>,
    /// Patches not written yet.
    dirty: bool,
    last_write: Instant,
    /// The task's failed items, in file order, found at open.
    candidates: Vec<usize>,
    /// How many candidates were handed out.
    next: usize,
}

impl State {
    /// A slot's current raw value: patched, else original.
    fn current(&self, idx: usize, slot: usize) -> Option<&str> {
        if let Some(patch) = self.patches.get(&idx) {
            let name = &self.doc.keys[slot];
            if let Some((_, raw)) = patch.iter().find(|(s, _)| self.doc.keys[*s] == *name) {
                return Some(raw);
            }
        }
        self.doc.raw(idx, slot)
    }

    fn set(&mut self, idx: usize, slot: usize, raw: String) {
        let keys = &self.doc.keys;
        let patch = self.patches.entry(idx).or_default();
        match patch.iter_mut().find(|(s, _)| keys[*s] == keys[slot]) {
            Some(entry) => entry.1 = raw,
            None => patch.push((slot, raw)),
        }
        self.dirty = true;
    }

    fn apply(&mut self, opts: &StoreOptions, v: &Verdict, label: &str) -> Result<()> {
        let idx = usize::try_from(v.key)
            .ok()
            .filter(|&i| i < self.doc.items.len())
            .ok_or_else(|| anyhow!("{label}: no item at index {} (id {:?})", v.key, v.id))?;
        if let Some(new) = opts.status_for(v.outcome) {
            let raw = status_json(new, self.current(idx, STATUS));
            self.set(idx, STATUS, raw);
        }
        let http = v
            .http_status
            .map_or_else(|| "null".into(), |s| s.to_string());
        self.set(idx, HTTP_STATUS, http);
        let attempts = i64::from(v.attempts);
        let attempts = match self.current(idx, ATTEMPTS).and_then(int_of) {
            Some(old) => old.saturating_add(attempts),
            None => attempts,
        };
        self.set(idx, ATTEMPTS, attempts.to_string());
        let error = v.error.as_deref().map_or_else(|| "null".into(), json_str);
        self.set(idx, LAST_ERROR, error);
        self.set(idx, CHECKED_AT, json_str(&rfc3339(v.checked_at)));
        Ok(())
    }
}

struct Inner {
    label: String,
    /// The file written (a symlink's target).
    target: PathBuf,
    format: Format,
    opts: StoreOptions,
    /// Run (not dry) or Create: holds the lock, may write.
    writable: bool,
    state: Mutex<State>,
    /// Serialises writes of the file, so they land in the order they were rendered.
    writer: Mutex<()>,
    lock: Mutex<Option<LockFile>>,
}

impl Inner {
    /// Writes the patches if any are unwritten (and, unless `force`, the last write is at
    /// least a checkpoint interval old). Blocking.
    fn flush_blocking(&self, force: bool) -> Result<()> {
        let _writer = lock(&self.writer);
        let text = {
            let mut st = lock(&self.state);
            if !st.dirty || (!force && st.last_write.elapsed() < CHECKPOINT) {
                return Ok(());
            }
            st.dirty = false;
            st.last_write = Instant::now();
            st.doc.render(&st.patches, &[])
        };
        if let Err(e) = atomic_write(&self.target, text.as_bytes()) {
            lock(&self.state).dirty = true;
            bail!("{}: cannot write: {e}", self.label);
        }
        Ok(())
    }

    fn import_blocking(&self, items: Vec<NewItem>) -> Result<u64> {
        let _writer = lock(&self.writer);
        let mut st = lock(&self.state);
        let saved = st.patches.clone();
        let opts = &self.opts;
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for idx in 0..st.doc.items.len() {
            if st.doc.task_is(idx, &opts.task)
                && let Ok(id) = st.doc.id_of(idx)
            {
                by_id.insert(id, idx);
            }
        }
        let mut appended: Vec<Patch> = Vec::new();
        let mut appended_by_id: HashMap<String, usize> = HashMap::new();
        let mut count = 0u64;
        for item in items {
            count += 1;
            if let Some(&idx) = by_id.get(&item.id) {
                let raw = status_json(&opts.failed, st.current(idx, STATUS));
                st.set(idx, STATUS, raw);
                if let Some(url) = &item.url {
                    st.set(idx, URL, json_str(url));
                }
            } else if let Some(&k) = appended_by_id.get(&item.id) {
                if let Some(url) = &item.url {
                    let fields = &mut appended[k];
                    match fields.iter_mut().find(|(s, _)| *s == URL) {
                        Some(f) => f.1 = json_str(url),
                        None => fields.push((URL, json_str(url))),
                    }
                }
            } else {
                let status = opts
                    .failed
                    .as_int()
                    .map_or_else(|| json_str(opts.failed.as_str()), |n| n.to_string());
                let mut fields = vec![
                    (TASK, json_str(&opts.task)),
                    (ID, json_str(&item.id)),
                    (STATUS, status),
                ];
                if let Some(url) = &item.url {
                    fields.push((URL, json_str(url)));
                }
                appended_by_id.insert(item.id, appended.len());
                appended.push(fields);
            }
        }
        let text = st.doc.render(&st.patches, &appended);
        if let Err(e) = atomic_write(&self.target, text.as_bytes()) {
            st.patches = saved;
            bail!("{}: cannot write: {e}", self.label);
        }
        // The written text is the new base; item indices are unchanged (appends go last).
        let keys = st.doc.keys.clone();
        st.doc = Doc::parse(text, self.format, keys)
            .map_err(|e| anyhow!("{}: after import: {e}", self.label))?;
        st.patches.clear();
        st.dirty = false;
        st.last_write = Instant::now();
        Ok(count)
    }
}

/// A JSON or JSON Lines store; [`super::json::JsonStore`] and [`super::jsonl::JsonlStore`]
/// are thin wrappers.
pub struct FileStore {
    inner: Arc<Inner>,
}

impl FileStore {
    /// Opens (and validates) the file; see the module docs.
    pub fn open(
        path: &Path,
        opts: StoreOptions,
        mode: OpenMode,
        format: Format,
    ) -> Result<FileStore> {
        let label = label(path, format);
        let writable = !opts.read_only && matches!(mode, OpenMode::Run | OpenMode::Create);
        let target = resolve(path);
        let exists = match fs::metadata(&target) {
            Ok(m) if m.is_dir() => bail!("{label}: is a directory, not a file"),
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => bail!("{label}: {e}"),
        };
        let may_create = mode == OpenMode::Create && writable;
        if !exists && !may_create {
            bail!(
                "{label}: no such file (create it with `recheck init --store {label}` \
                 or `recheck import --store {label}`)"
            );
        }
        let lock_file = if writable {
            Some(LockFile::acquire(&target, &label)?)
        } else {
            None
        };
        if !exists {
            create_initial(&target, format).map_err(|e| anyhow!("{label}: cannot create: {e}"))?;
        }
        let doc = read_doc(&target, format, &label, &opts.columns, &opts.extra_columns)?;
        let candidates: Vec<usize> = (0..doc.items.len())
            .filter(|&idx| {
                doc.task_is(idx, &opts.task)
                    && doc
                        .raw(idx, STATUS)
                        .is_some_and(|raw| status_matches(raw, &opts.failed))
            })
            .collect();
        if mode == OpenMode::Run {
            for &idx in &candidates {
                if let Err(why) = doc.id_of(idx) {
                    bail!("{label}: {} {why}", doc.locate(idx));
                }
            }
        }
        let state = State {
            doc,
            patches: BTreeMap::new(),
            dirty: false,
            last_write: Instant::now(),
            candidates,
            next: 0,
        };
        Ok(FileStore {
            inner: Arc::new(Inner {
                label,
                target,
                format,
                opts,
                writable,
                state: Mutex::new(state),
                writer: Mutex::new(()),
                lock: Mutex::new(lock_file),
            }),
        })
    }

    /// See [`super::Store::claim`].
    /// Failed items of the task not handed out yet.
    pub fn pending(&self) -> u64 {
        let st = lock(&self.inner.state);
        st.candidates.len().saturating_sub(st.next) as u64
    }

    pub async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        let inner = &self.inner;
        let mut st = lock(&inner.state);
        let end = st.next.saturating_add(n).min(st.candidates.len());
        let mut items = Vec::with_capacity(end - st.next);
        for &idx in &st.candidates[st.next..end] {
            let doc = &st.doc;
            let id = doc
                .id_of(idx)
                .map_err(|why| anyhow!("{}: {} {why}", inner.label, doc.locate(idx)))?;
            items.push(Item {
                key: idx as i64,
                id,
                url: st.current(idx, URL).and_then(field_text),
                fields: (0..inner.opts.extra_columns.len())
                    .map(|i| doc.raw(idx, EXTRA + i).and_then(field_text))
                    .collect(),
            });
        }
        st.next = end;
        Ok(items)
    }

    /// See [`super::Store::save`]: applied in memory, written at most once per checkpoint
    /// interval.
    pub async fn save(&self, batch: Vec<Verdict>) -> Result<()> {
        let inner = &self.inner;
        if !inner.writable {
            return Ok(());
        }
        let due = {
            let mut st = lock(&inner.state);
            for v in &batch {
                st.apply(&inner.opts, v, &inner.label)?;
            }
            st.dirty && st.last_write.elapsed() >= CHECKPOINT
        };
        if due {
            self.flush(false).await?;
        }
        Ok(())
    }

    async fn flush(&self, force: bool) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.flush_blocking(force))
            .await
            .map_err(|e| anyhow!("{}: write failed: {e}", self.inner.label))?
    }

    /// See [`super::Store::finish`]: writes what is unwritten, releases the lock.
    pub async fn finish(&self) -> Result<()> {
        let result = if self.inner.writable {
            self.flush(true).await
        } else {
            Ok(())
        };
        drop(lock(&self.inner.lock).take());
        result
    }

    /// See [`super::Store::status_counts`].
    pub async fn status_counts(&self) -> Result<StatusCounts> {
        let st = lock(&self.inner.state);
        let task = &self.inner.opts.task;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut oldest: Option<String> = None;
        let mut newest: Option<String> = None;
        for idx in 0..st.doc.items.len() {
            if !st.doc.task_is(idx, task) {
                continue;
            }
            let status = st
                .current(idx, STATUS)
                .map_or_else(|| "(missing)".to_string(), status_text);
            *counts.entry(status).or_default() += 1;
            if let Some(at) = st.current(idx, CHECKED_AT).and_then(decode_str) {
                if oldest.as_ref().is_none_or(|o| at < *o) {
                    oldest = Some(at.clone());
                }
                if newest.as_ref().is_none_or(|n| at > *n) {
                    newest = Some(at);
                }
            }
        }
        Ok(StatusCounts {
            counts: counts.into_iter().collect(),
            oldest_checked_at: oldest,
            newest_checked_at: newest,
        })
    }

    /// See [`super::Store::import`]: written at once.
    pub async fn import(&self, items: Vec<NewItem>) -> Result<u64> {
        if !self.inner.writable {
            bail!("{}: opened read-only; cannot import", self.inner.label);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.import_blocking(items))
            .await
            .map_err(|e| anyhow!("{}: import failed: {e}", self.inner.label))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        slot_names(&Columns::default(), &[])
    }

    fn doc(text: &str, format: Format) -> Doc {
        Doc::parse(text.to_string(), format, keys()).unwrap()
    }

    fn patch(entries: &[(usize, &str)]) -> Patch {
        entries.iter().map(|(s, r)| (*s, r.to_string())).collect()
    }

    #[test]
    fn insertion_into_empty_object_has_no_leading_comma() {
        let d = doc("[{}, { }]", Format::Json);
        let mut p = BTreeMap::new();
        p.insert(0, patch(&[(STATUS, "\"ok\""), (ATTEMPTS, "1")]));
        p.insert(1, patch(&[(HTTP_STATUS, "200")]));
        assert_eq!(
            d.render(&p, &[]),
            r#"[{"status":"ok","attempts":1}, {"http_status":200 }]"#
        );
    }

    #[test]
    fn insertion_copies_separator_and_colon() {
        // Python's json.dumps style: ", " between members, ": " after keys.
        let d = doc(r#"[{"a": 1, "b" :  [1, 2]}]"#, Format::Json);
        let mut p = BTreeMap::new();
        p.insert(0, patch(&[(STATUS, "\"ok\""), (ATTEMPTS, "2")]));
        assert_eq!(
            d.render(&p, &[]),
            r#"[{"a": 1, "b" :  [1, 2], "status" :  "ok", "attempts" :  2}]"#
        );
    }

    #[test]
    fn escaped_and_duplicated_keys() {
        let text = r#"[{"st\u0061tus": "failed", "task_id": "x", "task_id": "t", "status": 5}]"#;
        let d = doc(text, Format::Json);
        // The last "status" (the plain one) wins, over the escaped one.
        assert_eq!(d.raw(0, STATUS), Some("5"));
        assert_eq!(d.raw(0, TASK), Some("\"t\""));
        assert!(d.task_is(0, "t"));
        let d = doc(
            r#"[{"st\u0061tus": "failed", "task_id": "t"}]"#,
            Format::Json,
        );
        assert_eq!(d.raw(0, STATUS), Some("\"failed\""));
        let mut p = BTreeMap::new();
        p.insert(0, patch(&[(STATUS, "\"ok\"")]));
        assert_eq!(
            d.render(&p, &[]),
            r#"[{"st\u0061tus": "ok", "task_id": "t"}]"#
        );
    }

    #[test]
    fn untouched_document_renders_identically() {
        let text = "\u{feff}{\"a\" : [ 1.0e3 , -0 ],\n \"items\" :[\n\t{\"task_id\":\"\\u00e9\"}\r\n] }\n\n";
        let d = doc(text, Format::Json);
        assert_eq!(d.items.len(), 1);
        assert_eq!(d.render(&BTreeMap::new(), &[]), text);
        assert!(d.task_is(0, "é"));
    }

    #[test]
    fn parse_errors() {
        let err = |t: &str, f| {
            Doc::parse(t.to_string(), f, keys())
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(err("", Format::Json), "not valid JSON: empty file");
        assert_eq!(err(" \n", Format::Json), "not valid JSON: empty file");
        assert!(
            err("[\n{\"a\": 1},\n{\"a\" 2}]", Format::Json).contains("line 3 column 6"),
            "{}",
            err("[\n{\"a\": 1},\n{\"a\" 2}]", Format::Json)
        );
        assert_eq!(
            err("[{}, \n 3]", Format::Json),
            "item 1 (line 2) is not a JSON object"
        );
        assert!(err(r#"{"data": []}"#, Format::Json).contains("no \"items\" array"));
        assert!(
            err(r#"{"items": {}}"#, Format::Json).contains("\"items\" (line 1) is not an array")
        );
        assert!(err("42", Format::Json).contains("neither an array"));
        assert!(err("[] x", Format::Json).starts_with("not valid JSON: trailing characters"));
        assert_eq!(
            err("{}\n\n{\"a\": tru}\n", Format::Jsonl),
            "line 3 is not valid JSON: expected ident at column 10"
        );
        assert_eq!(
            err("{}\n[1]\n", Format::Jsonl),
            "line 2 is not a JSON object"
        );
    }

    #[test]
    fn value_helpers() {
        let five = StatusValue::new("5");
        assert!(status_matches("5", &five));
        assert!(status_matches("5.0", &five));
        assert!(status_matches("\"5\"", &five));
        assert!(!status_matches("50", &five));
        let failed = StatusValue::new("failed");
        assert!(status_matches("\"f\\u0061iled\"", &failed));
        assert!(!status_matches("5", &failed));
        assert!(!status_matches("null", &failed));
        assert_eq!(status_json(&StatusValue::new("1"), Some("5")), "1");
        assert_eq!(status_json(&StatusValue::new("1"), Some("\"5\"")), "\"1\"");
        assert_eq!(status_json(&StatusValue::new("ok"), Some("5")), "\"ok\"");
        assert_eq!(key_text("12"), Some("12".into()));
        assert_eq!(key_text("true"), None);
        assert_eq!(field_text("{\"a\": 1}"), Some("{\"a\": 1}".into()));
        assert_eq!(field_text("null"), None);
        assert_eq!(field_text("false"), Some("false".into()));
        assert_eq!(int_of("1.0e3"), Some(1000));
        assert_eq!(int_of("\"3\""), None);
    }
}
