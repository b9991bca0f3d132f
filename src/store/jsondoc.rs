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
//! # Other writers: compare-and-set by item id
//!
//! The lock only stops other recheck runs; a pipeline may rewrite the file meanwhile. So
//! recheck keeps the text it last wrote (or the base, if it wrote nothing since it last
//! read the file) and its `Stamp` (size, mtime, device, inode), and knows which patches
//! are written and which are pending.
//!
//! - Every save first `stat`s the file; if the stamp differs, it reads the file, and if the
//!   bytes differ from what recheck last wrote it re-parses them and makes them the new
//!   base (`State::rebase`): every claimed item is found again by (task, id, occurrence
//!   of that id), so the other process may reorder, add and remove items; written
//!   patches are dropped (their values are in the new text, or the other process
//!   replaced them), pending ones are carried over.
//! - A verdict is merged only if its item is still there and its owned fields (status,
//!   url, bookkeeping, the template's columns, compared as JSON values) are as they were
//!   when it was claimed; else the other change is kept and the verdict is reported in
//!   [`super::Saved::conflicts`].
//! - Every write first compares the file's bytes with what recheck last wrote (catching even a same-size
//!   rewrite within one mtime tick), merges as above, renders, writes and fsyncs the
//!   temporary file, and `stat`s the target once more right before the rename; if it
//!   changed in between, the temporary file is dropped and the write starts over.
//! - An answer accepted by an earlier save but not written yet, whose item the other
//!   process changed afterwards, is dropped: that change is the newer one (as a later
//!   UPDATE in a SQL store); answers already written are left to whatever the other
//!   process does with them.
//! - Changed contents are merged only once they stayed the same for 50 ms (a writer that
//!   rewrites in place may be half-way, and a JSON Lines file cut at a line end parses).
//!   Contents that do not parse (read again three times, 100 ms apart) or a removed file
//!   fail the save with a final error naming the file; nothing is written over them.
//!
//! What remains is the window between the last `stat` and the rename (microseconds): an
//! edit landing exactly there is lost. Closing it would need a lock every writer honours,
//! which a plain file cannot impose.
//!
//! # Limitation
//!
//! The whole file (twice once recheck wrote: the base and what it last wrote), a few words
//! per item and the id of each of the task's failed items live in memory; a write reads
//! the file once more to compare it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow, bail};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::lock::LockFile;
use super::{
    BOOKKEEPING, Columns, Ident, ImportCounts, NewItem, OpenMode, StatusCounts, StoreOptions,
};
use crate::model::{Item, StatusValue, Verdict, parse_time, rfc3339};

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
const CHECKS: usize = 9;
const FIRST_CHECKED_AT: usize = 10;
const NEXT_CHECK_AT: usize = 11;
/// First of the extra columns (`{COLUMN}` of the URL template).
const EXTRA: usize = 12;
/// The schedule's fields, after the bookkeeping ones.
const SCHEDULE: [&str; 3] = ["checks", "first_checked_at", "next_check_at"];

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
    keys.extend(SCHEDULE.iter().map(|s| s.to_string()));
    debug_assert_eq!(keys.len(), EXTRA);
    debug_assert_eq!(keys[NEXT_CHECK_AT], "next_check_at");
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
        match self.raw(idx, slot) {
            // A NULL id, like an empty one, is that item's error when checked (no request).
            Some("null") => Ok(String::new()),
            raw => raw
                .and_then(key_text)
                .ok_or_else(|| format!("{:?} is not a string, a number or null", self.keys[slot])),
        }
    }

    /// Whether any item belongs to `task`.
    fn has_task(&self, task: &str) -> bool {
        (0..self.items.len()).any(|idx| self.task_is(idx, task))
    }

    /// Every task id of the file, once each, for "no such task" messages.
    fn task_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = (0..self.items.len())
            .filter_map(|idx| self.raw(idx, TASK).and_then(key_text))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Where each of `task`'s items is: id → the indices of the items with that id, in
    /// file order (the n-th is occurrence n). Items without a usable id are left out (no
    /// candidate can be one of them).
    fn task_positions(&self, task: &str) -> HashMap<String, Vec<usize>> {
        let mut positions: HashMap<String, Vec<usize>> = HashMap::new();
        for idx in 0..self.items.len() {
            if self.task_is(idx, task)
                && let Ok(id) = self.id_of(idx)
            {
                positions.entry(id).or_default().push(idx);
            }
        }
        positions
    }

    /// A fingerprint of what an answer depends on and what it writes: status, url,
    /// bookkeeping and the template's columns, each compared by JSON value (so another
    /// process that re-serialises the file with other spacing or escapes changes nothing;
    /// a missing field equals `null`). Equal fingerprints: the item is as recheck saw it.
    fn fingerprint(&self, idx: usize, extra: usize) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let slots = [
            STATUS,
            URL,
            HTTP_STATUS,
            ATTEMPTS,
            LAST_ERROR,
            CHECKED_AT,
            CHECKS,
            FIRST_CHECKED_AT,
            NEXT_CHECK_AT,
        ];
        for slot in slots.into_iter().chain(EXTRA..EXTRA + extra) {
            let canonical = match self.raw(idx, slot) {
                None | Some("null") => Cow::Borrowed("null"),
                Some(raw) => serde_json::from_str::<serde_json::Value>(raw)
                    .map_or(Cow::Borrowed(raw), |v| Cow::Owned(v.to_string())),
            };
            canonical.hash(&mut h);
        }
        h.finish()
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

/// What a cheap `stat` of the store file tells: enough to notice that another process
/// replaced (inode), truncated or rewrote it (size, mtime) since recheck last read or wrote
/// it. A same-size rewrite in the same mtime tick is caught by the byte comparison made
/// before every write (see [`Inner::refresh`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<std::time::SystemTime>,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Stamp {
            len: m.len(),
            mtime: m.modified().ok(),
            dev,
            ino,
        }
    }
}

/// Reads the file and the stamp of what was read, from one open file handle (so the two
/// describe the same file even if it is being replaced).
fn read_stamped(path: &Path) -> io::Result<(Vec<u8>, Stamp)> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let stamp = Stamp::of(&f.metadata()?);
    let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
    f.read_to_end(&mut bytes)?;
    Ok((bytes, stamp))
}

/// Replaces `target` with `bytes` atomically: temp file in the same directory, fsync, the
/// original's permissions, rename, fsync of the directory. Just before the rename,
/// `unchanged()` is asked whether the target is still what the caller based `bytes` on; if
/// not, nothing is replaced and `None` is returned. Otherwise the stamp of the new file
/// (taken from the temp file, so it is ours even if the target is replaced right after).
fn atomic_write(
    target: &Path,
    bytes: &[u8],
    unchanged: impl FnOnce() -> io::Result<bool>,
) -> io::Result<Option<Stamp>> {
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
    let stamp = Stamp::of(&tmp.as_file().metadata()?);
    // The last look before the rename: what remains is the microseconds between this stat
    // and the rename (see the module docs).
    if !unchanged()? {
        return Ok(None);
    }
    tmp.persist(target).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(Some(stamp))
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
    let (doc, _) = read_doc(path, format, &label, &Columns::default(), &[])?;
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
) -> Result<(Doc, Stamp)> {
    let (bytes, stamp) = read_stamped(path).map_err(|e| anyhow!("{label}: cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        anyhow!(
            "{label}: not valid UTF-8 (line {})",
            line_at(e.as_bytes(), at)
        )
    })?;
    let doc = Doc::parse(text, format, slot_names(columns, extra))
        .map_err(|e| anyhow!("{label}: {e}"))?;
    Ok((doc, stamp))
}

// ---------------------------------------------------------------------------------------
// The store.

/// One of the task's failed items found at open: what a run may claim, and what it needs
/// to find the item again after another process rewrote the file.
#[derive(Debug)]
struct Cand {
    /// The item's index at open: its [`Item::key`].
    key: usize,
    /// Its id as text (`""` for an empty or `null` id) ...
    id: String,
    /// ... and which of the task's items with that id it is (0 for the first), since a
    /// file may hold an id twice. Items are matched across rewrites by (task, id, occ).
    occ: u32,
    /// Its index in the current base; `None` once another process removed it.
    idx: Option<usize>,
    /// Fingerprint of the item's owned fields when it was claimed ([`Doc::fingerprint`]);
    /// `None` while unclaimed.
    seen: Option<u64>,
}

/// Whether a verdict was merged, or lost to another process's change (compare-and-set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Merged,
    Conflict,
}

struct State {
    /// The base: the file's text as recheck last read it.
    doc: Doc,
    /// The text recheck last wrote (the base plus `patches`), when it wrote since it last
    /// read the file: what the file should still hold. Not re-parsed after a write, which
    /// would cost as much as the write.
    written: Option<String>,
    /// The stamp of what the file should hold; `None` when unknown (never for an open
    /// store).
    stamp: Option<Stamp>,
    /// Answers accepted since the base was read, by item index in `doc`: those in
    /// `pending` are not written yet.
    patches: BTreeMap<usize, Patch>,
    pending: std::collections::BTreeSet<usize>,
    last_write: Instant,
    /// The task's failed items at open, in file order (so sorted by `key`).
    cands: Vec<Cand>,
    /// How many candidates were handed out (or skipped).
    next: usize,
}

impl State {
    /// A slot's current raw value: patched, else the base's.
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
        self.pending.insert(idx);
    }

    /// What the file should hold: the text recheck last wrote, or the base.
    fn expected(&self) -> &[u8] {
        self.written.as_deref().unwrap_or(&self.doc.text).as_bytes()
    }

    /// The candidate an item key names.
    fn cand_of(&self, key: i64) -> Option<usize> {
        let key = usize::try_from(key).ok()?;
        self.cands.binary_search_by_key(&key, |c| c.key).ok()
    }

    /// Merges a verdict into the patches, unless its item is gone or was changed by another
    /// process since it was claimed (then that change is kept and the verdict dropped).
    fn apply(&mut self, opts: &StoreOptions, v: &Verdict, label: &str) -> Result<Applied> {
        let c = self.cand_of(v.key).ok_or_else(|| {
            anyhow!(
                "{label}: no claimed item with key {} (id {:?})",
                v.key,
                v.id
            )
        })?;
        let cand = &self.cands[c];
        let Some(seen) = cand.seen else {
            bail!("{label}: item {:?} was never handed out", cand.id);
        };
        let Some(idx) = cand.idx else {
            return Ok(Applied::Conflict);
        };
        if self.doc.fingerprint(idx, opts.extra_columns.len()) != seen {
            return Ok(Applied::Conflict);
        }
        if v.outcome == crate::model::Outcome::Deferred {
            // Not checked (its host's circuit was open): only when it is due again.
            let next = v
                .next_check_at
                .map_or_else(|| "null".into(), |t| json_str(&rfc3339(t)));
            self.set(idx, NEXT_CHECK_AT, next);
            return Ok(Applied::Merged);
        }
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
        let checks = self
            .current(idx, CHECKS)
            .and_then(int_of)
            .unwrap_or(0)
            .max(0);
        self.set(idx, CHECKS, checks.saturating_add(1).to_string());
        if self
            .current(idx, FIRST_CHECKED_AT)
            .is_none_or(|raw| raw == "null")
        {
            self.set(idx, FIRST_CHECKED_AT, json_str(&rfc3339(v.checked_at)));
        }
        let next = v
            .next_check_at
            .map_or_else(|| "null".into(), |t| json_str(&rfc3339(t)));
        self.set(idx, NEXT_CHECK_AT, next);
        Ok(Applied::Merged)
    }

    /// Makes `doc` (another process's version of the file) the base: finds every candidate
    /// in it by (task, id, occurrence), and carries over the unwritten answers of items that
    /// process left as they were. An unwritten answer whose item it changed or removed is
    /// dropped: its change came after recheck accepted the answer, so it is the newer one
    /// and wins, as a later UPDATE would in a SQL store. Returns how many were dropped.
    fn rebase(&mut self, doc: Doc, opts: &StoreOptions) -> usize {
        let positions = doc.task_positions(&opts.task);
        let mut by_old_idx: HashMap<usize, usize> = HashMap::new();
        for (c, cand) in self.cands.iter_mut().enumerate() {
            if let Some(old) = cand.idx {
                by_old_idx.insert(old, c);
            }
            cand.idx = positions
                .get(&cand.id)
                .and_then(|at| at.get(cand.occ as usize))
                .copied();
        }
        let extra = opts.extra_columns.len();
        let mut dropped = 0;
        let mut old_patches = std::mem::take(&mut self.patches);
        // Written answers are in the new text already, or the other process replaced them.
        old_patches.retain(|idx, _| self.pending.contains(idx));
        self.pending.clear();
        for (old_idx, patch) in old_patches {
            let cand = by_old_idx.get(&old_idx).map(|&c| &self.cands[c]);
            match cand.and_then(|c| Some((c.idx?, c.seen?))) {
                Some((idx, seen)) if doc.fingerprint(idx, extra) == seen => {
                    self.patches.insert(idx, patch);
                    self.pending.insert(idx);
                }
                _ => dropped += 1,
            }
        }
        self.doc = doc;
        self.written = None;
        dropped
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
    /// Serialises saves, imports and writes of the file: one merge at a time, writes land
    /// in the order they were rendered.
    writer: Mutex<()>,
    lock: Mutex<Option<LockFile>>,
}

/// How many times a write starts over because the file changed under it before giving up
/// (a transient error: another process keeps rewriting the file).
const WRITE_ATTEMPTS: usize = 5;
/// How many times contents that do not parse are read again, a little later (another
/// process may be half-way through a non-atomic rewrite), before the save fails.
const REREADS: usize = 3;
const REREAD_PAUSE: Duration = Duration::from_millis(100);
/// How long changed contents must stay the same before they are merged.
const SETTLE: Duration = Duration::from_millis(50);
/// How many times the contents may change again while settling before the save gives up
/// (a transient error).
const UNSETTLED: usize = 20;

/// A final store error (the file is broken or gone: trying again will not help). No
/// [`super::Transient`] marker, so [`super::is_transient`] says no.
fn final_error(msg: String) -> anyhow::Error {
    anyhow!(msg)
}

/// An item's `next_check_at` as a time, when it has one that can be read.
fn next_check_at(doc: &Doc, idx: usize) -> Option<SystemTime> {
    doc.raw(idx, NEXT_CHECK_AT)
        .and_then(decode_str)
        .and_then(|t| parse_time(&t))
}

impl Inner {
    /// Whether item `idx` may be checked now: its `next_check_at` is not ahead of `now`
    /// (or `--ignore-schedule`). Text that is no time leaves it due.
    fn due(&self, doc: &Doc, idx: usize, now: SystemTime) -> bool {
        self.opts.ignore_schedule || next_check_at(doc, idx).is_none_or(|t| t <= now)
    }

    /// Notices a change of the file by another process since recheck last read or wrote
    /// it, and merges it (`State::rebase`). Without `full`, a cheap `stat` decides
    /// whether to read the file; with it, the bytes are always compared (before a write).
    ///
    /// Called with `writer` held: only writer holders change the base, so the file can be
    /// read and parsed without the state lock, which `claim` needs meanwhile.
    fn refresh(&self, full: bool) -> Result<()> {
        let label = &self.label;
        let meta = match fs::metadata(&self.target) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(final_error(format!(
                    "{label}: the file was removed by another process; the answers not \
                     written yet are not written"
                )));
            }
            Err(e) => bail!("{label}: cannot stat: {e}"),
        };
        if !full && lock(&self.state).stamp == Some(Stamp::of(&meta)) {
            return Ok(());
        }
        let read = || {
            read_stamped(&self.target).map_err(|e| anyhow!("{label}: cannot read it again: {e}"))
        };
        let (mut bytes, mut stamp) = read()?;
        let (mut rereads, mut unsettled) = (0, 0);
        loop {
            let keys = {
                let mut st = lock(&self.state);
                if bytes == st.expected() {
                    // Touched, or rewritten with the same bytes: nothing to merge.
                    st.stamp = Some(stamp);
                    return Ok(());
                }
                st.doc.keys.clone()
            };
            // A writer that rewrites in place may be half-way: a JSON Lines file cut at a
            // line end still parses, and would look like removed items. Merge only
            // contents that stayed the same for a moment.
            std::thread::sleep(SETTLE);
            let (again, again_stamp) = read()?;
            // Taken before `again` was read, so it describes those bytes at least as
            // freshly as the first stamp did.
            stamp = again_stamp;
            if again != bytes {
                unsettled += 1;
                if unsettled > UNSETTLED {
                    return Err(anyhow::Error::new(super::Transient(true)).context(format!(
                        "{label}: another process keeps rewriting the file; not written"
                    )));
                }
                bytes = again;
                continue;
            }
            let parsed = String::from_utf8(std::mem::take(&mut bytes))
                .map_err(|e| {
                    let at = e.utf8_error().valid_up_to();
                    anyhow!("not valid UTF-8 (line {})", line_at(e.as_bytes(), at))
                })
                .and_then(|text| Doc::parse(text, self.format, keys));
            match parsed {
                Ok(doc) => {
                    let mut st = lock(&self.state);
                    let dropped = st.rebase(doc, &self.opts);
                    st.stamp = Some(stamp);
                    tracing::info!(
                        store = %label,
                        dropped,
                        "the file was changed by another process; merged by item id"
                    );
                    return Ok(());
                }
                Err(_) if rereads < REREADS => {
                    rereads += 1;
                    std::thread::sleep(REREAD_PAUSE);
                    (bytes, stamp) = read()?;
                }
                Err(e) => {
                    return Err(final_error(format!(
                        "{label}: changed by another process and no longer a valid store \
                         ({e}); not written"
                    )));
                }
            }
        }
    }

    /// Writes the base plus the patches, merged into the file's current contents first,
    /// then makes the written text the base. Called with `writer` held; the state lock is
    /// not held while the file is written.
    fn write(&self) -> Result<()> {
        for _ in 0..WRITE_ATTEMPTS {
            self.refresh(true)?;
            let (text, base) = {
                let st = lock(&self.state);
                if st.pending.is_empty() {
                    return Ok(()); // every unwritten answer lost to the other process
                }
                (st.doc.render(&st.patches, &[]), st.stamp)
            };
            let target = &self.target;
            let unchanged = || match fs::metadata(target) {
                Ok(m) => Ok(Some(Stamp::of(&m)) == base),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            };
            let written = atomic_write(target, text.as_bytes(), unchanged)
                .map_err(|e| anyhow!("{}: cannot write: {e}", self.label))?;
            let Some(stamp) = written else {
                continue; // changed under us: merge again
            };
            let mut st = lock(&self.state);
            st.written = Some(text);
            st.stamp = Some(stamp);
            // No save ran meanwhile (they hold `writer`): every pending patch is written.
            st.pending.clear();
            st.last_write = Instant::now();
            return Ok(());
        }
        Err(anyhow::Error::new(super::Transient(true)).context(format!(
            "{}: another process keeps rewriting the file; not written",
            self.label
        )))
    }

    /// See [`FileStore::save`].
    fn save_blocking(&self, batch: std::sync::Arc<[Verdict]>) -> Result<super::Saved> {
        let _writer = lock(&self.writer);
        let mut saved = super::Saved::default();
        if !batch.is_empty() {
            // Compare-and-set against the newest contents: an item another process changed
            // since it was claimed keeps that change.
            self.refresh(false)?;
            let mut st = lock(&self.state);
            // All or nothing: a verdict for an item this run never claimed is a bug, and
            // must not leave the rest of its batch half merged.
            for v in batch.iter() {
                if st.cand_of(v.key).is_none_or(|c| st.cands[c].seen.is_none()) {
                    bail!(
                        "{}: no claimed item with key {} (id {:?})",
                        self.label,
                        v.key,
                        v.id
                    );
                }
            }
            for (pos, v) in batch.iter().enumerate() {
                if st.apply(&self.opts, v, &self.label)? == Applied::Conflict {
                    saved.conflicts.push(pos);
                }
            }
        }
        let due = {
            let st = lock(&self.state);
            !st.pending.is_empty() && st.last_write.elapsed() >= CHECKPOINT
        };
        if due {
            self.write()?;
        }
        Ok(saved)
    }

    /// Writes what is unwritten (the end of a run).
    fn flush_blocking(&self) -> Result<()> {
        let _writer = lock(&self.writer);
        if lock(&self.state).pending.is_empty() {
            return Ok(());
        }
        self.write()
    }

    fn import_blocking(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        let _writer = lock(&self.writer);
        // Import into the file as it is now, not as it was at open.
        self.refresh(true)?;
        let mut st = lock(&self.state);
        // Restored if the write fails: nothing of this import is kept then.
        let before = (st.patches.clone(), st.pending.clone());
        let opts = &self.opts;
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for idx in 0..st.doc.items.len() {
            if st.doc.task_is(idx, &opts.task)
                && let Ok(id) = st.doc.id_of(idx)
            {
                by_id.entry(id).or_insert(idx);
            }
        }
        let mut appended: Vec<Patch> = Vec::new();
        let mut appended_by_id: HashMap<String, usize> = HashMap::new();
        let mut counts = ImportCounts::default();
        for item in items {
            if let Some(&idx) = by_id.get(&item.id) {
                if reset {
                    let raw = status_json(&opts.failed, st.current(idx, STATUS));
                    st.set(idx, STATUS, raw);
                    if let Some(url) = &item.url {
                        st.set(idx, URL, json_str(url));
                    }
                    counts.reset += 1;
                } else {
                    counts.already += 1;
                }
            } else if let Some(&k) = appended_by_id.get(&item.id) {
                // Twice in the input: the first added it, this one finds it there.
                if reset && let Some(url) = &item.url {
                    let fields = &mut appended[k];
                    match fields.iter_mut().find(|(s, _)| *s == URL) {
                        Some(f) => f.1 = json_str(url),
                        None => fields.push((URL, json_str(url))),
                    }
                }
                counts.already += 1;
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
                counts.added += 1;
            }
        }
        if st.pending.is_empty() && appended.is_empty() {
            return Ok(counts); // nothing changes: the file is not rewritten
        }
        let text = st.doc.render(&st.patches, &appended);
        let base = st.stamp;
        let target = &self.target;
        let unchanged = || match fs::metadata(target) {
            Ok(m) => Ok(Some(Stamp::of(&m)) == base),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        };
        let written = atomic_write(target, text.as_bytes(), unchanged);
        let stamp = match written {
            Ok(Some(stamp)) => stamp,
            Ok(None) => {
                (st.patches, st.pending) = before;
                return Err(anyhow::Error::new(super::Transient(true)).context(format!(
                    "{}: changed by another process during the import; not written",
                    self.label
                )));
            }
            Err(e) => {
                (st.patches, st.pending) = before;
                bail!("{}: cannot write: {e}", self.label);
            }
        };
        // The written text is the new base; item indices are unchanged (appends go last).
        let keys = st.doc.keys.clone();
        st.doc = Doc::parse(text, self.format, keys)
            .map_err(|e| anyhow!("{}: after import: {e}", self.label))?;
        st.written = None;
        st.stamp = Some(stamp);
        st.patches.clear();
        st.pending.clear();
        st.last_write = Instant::now();
        Ok(counts)
    }
}

/// A JSON or JSON Lines store; [`super::json::JsonStore`] and [`super::jsonl::JsonlStore`]
/// are thin wrappers.
pub struct FileStore {
    inner: Arc<Inner>,
}

impl FileStore {
    /// Opens (and validates) the file; see the module docs. In [`OpenMode::Run`] a task
    /// with no item at all in the file is refused, naming the closest task ids.
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
        // `run` never creates a store (docs/reference.md §2.5): only `import` and `init` do.
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
        // On an error from here on the lock file goes with `lock_file`: a refused store
        // is left as it was.
        let (doc, stamp) = read_doc(&target, format, &label, &opts.columns, &opts.extra_columns)?;
        if mode == OpenMode::Run && !doc.has_task(&opts.task) {
            return Err(super::unknown_task(&label, &opts.task, &doc.task_ids()));
        }
        let mut occurrences: HashMap<String, u32> = HashMap::new();
        let mut cands = Vec::new();
        for idx in 0..doc.items.len() {
            if !doc.task_is(idx, &opts.task) {
                continue;
            }
            let id = doc.id_of(idx);
            let occ = match &id {
                Ok(id) => {
                    let n = occurrences.entry(id.clone()).or_default();
                    *n += 1;
                    *n - 1
                }
                Err(_) => 0,
            };
            let failed = doc
                .raw(idx, STATUS)
                .is_some_and(|raw| status_matches(raw, &opts.failed));
            if !failed {
                continue;
            }
            let id = match id {
                Ok(id) => id,
                // A failed item recheck cannot name cannot be written back by id.
                Err(why) if mode == OpenMode::Run => bail!("{label}: {} {why}", doc.locate(idx)),
                Err(_) => continue,
            };
            cands.push(Cand {
                key: idx,
                id,
                occ,
                idx: Some(idx),
                seen: None,
            });
        }
        let state = State {
            doc,
            stamp: Some(stamp),
            written: None,
            patches: BTreeMap::new(),
            pending: std::collections::BTreeSet::new(),
            last_write: Instant::now(),
            cands,
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

    /// Failed items of the task not handed out yet (see [`super::Store::pending`]).
    pub fn pending(&self) -> u64 {
        let st = lock(&self.inner.state);
        let now = SystemTime::now();
        st.cands[st.next.min(st.cands.len())..]
            .iter()
            .filter(|c| c.idx.is_some_and(|idx| self.inner.due(&st.doc, idx, now)))
            .count() as u64
    }

    /// See [`super::Store::claim`]. Items another process removed, or changed from the
    /// failed status, since recheck last read the file are skipped. An empty or `null` id
    /// is handed out as `""`: the check makes it that item's error, without a request.
    pub async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        let inner = &self.inner;
        let mut guard = lock(&inner.state);
        let st = &mut *guard;
        let mut items = Vec::with_capacity(n.min(st.cands.len() - st.next));
        let extra = inner.opts.extra_columns.len();
        let now = SystemTime::now();
        while items.len() < n && st.next < st.cands.len() {
            let cand = &mut st.cands[st.next];
            st.next += 1;
            let Some(idx) = cand.idx else { continue };
            let doc = &st.doc;
            if !doc
                .raw(idx, STATUS)
                .is_some_and(|raw| status_matches(raw, &inner.opts.failed))
                || !inner.due(doc, idx, now)
            {
                continue;
            }
            cand.seen = Some(doc.fingerprint(idx, extra));
            items.push(Item {
                key: cand.key as i64,
                id: cand.id.clone(),
                url: doc.raw(idx, URL).and_then(field_text),
                fields: (0..extra)
                    .map(|i| doc.raw(idx, EXTRA + i).and_then(field_text))
                    .collect(),
                checks: doc
                    .raw(idx, CHECKS)
                    .and_then(int_of)
                    .map_or(0, |c| c.clamp(0, i64::from(u32::MAX)) as u32),
                first_checked_at: doc
                    .raw(idx, FIRST_CHECKED_AT)
                    .and_then(decode_str)
                    .and_then(|t| parse_time(&t)),
            });
        }
        Ok(items)
    }

    /// See [`super::Store::save`]: merged in memory at once (compare-and-set against the
    /// file as it is now), written at most once per checkpoint interval.
    pub async fn save(&self, batch: std::sync::Arc<[Verdict]>) -> Result<super::Saved> {
        if !self.inner.writable {
            return Ok(super::Saved::default());
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.save_blocking(batch))
            .await
            .map_err(|e| anyhow!("{}: write failed: {e}", self.inner.label))?
    }

    /// See [`super::Store::finish`]: writes what is unwritten, releases the lock.
    pub async fn finish(&self) -> Result<()> {
        let result = if self.inner.writable {
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || inner.flush_blocking())
                .await
                .map_err(|e| anyhow!("{}: write failed: {e}", self.inner.label))
                .and_then(|r| r)
        } else {
            Ok(())
        };
        drop(lock(&self.inner.lock).take());
        result
    }

    /// See [`super::Store::status_counts`].
    pub async fn status_counts(&self) -> Result<StatusCounts> {
        let task = self.inner.opts.task.clone();
        let mut counts = self.status_by_task(Some(&task));
        Ok(counts
            .pop()
            .map(|(_, c)| c)
            .unwrap_or_else(|| StatusCounts {
                schedule: Some(Default::default()),
                ..StatusCounts::default()
            }))
    }

    /// See [`super::Store::status_all`].
    pub async fn status_all(&self) -> Result<Vec<(String, StatusCounts)>> {
        Ok(self.status_by_task(None))
    }

    /// Counts per status, and the failed items by schedule, of `task` or of every task.
    fn status_by_task(&self, task: Option<&str>) -> Vec<(String, StatusCounts)> {
        #[derive(Default)]
        struct Acc {
            counts: BTreeMap<String, u64>,
            oldest: Option<String>,
            newest: Option<String>,
            schedule: super::ScheduleCounts,
            earliest: Option<SystemTime>,
        }
        let st = lock(&self.inner.state);
        let opts = &self.inner.opts;
        let now = SystemTime::now();
        let time_of = |idx: usize, slot: usize| {
            st.current(idx, slot)
                .and_then(decode_str)
                .and_then(|t| parse_time(&t))
        };
        let mut by_task: BTreeMap<String, Acc> = BTreeMap::new();
        for idx in 0..st.doc.items.len() {
            let Some(t) = st.doc.raw(idx, TASK).and_then(key_text) else {
                continue;
            };
            if task.is_some_and(|want| want != t) {
                continue;
            }
            let acc = by_task.entry(t).or_default();
            let status = st
                .current(idx, STATUS)
                .map_or_else(|| "(missing)".to_string(), status_text);
            *acc.counts.entry(status).or_default() += 1;
            if let Some(at) = st.current(idx, CHECKED_AT).and_then(decode_str) {
                if acc.oldest.as_ref().is_none_or(|o| at < *o) {
                    acc.oldest = Some(at.clone());
                }
                if acc.newest.as_ref().is_none_or(|n| at > *n) {
                    acc.newest = Some(at);
                }
            }
            if !st
                .current(idx, STATUS)
                .is_some_and(|raw| status_matches(raw, &opts.failed))
            {
                continue;
            }
            let checked = time_of(idx, CHECKED_AT);
            if let Some(next) = time_of(idx, NEXT_CHECK_AT).filter(|t| *t > now) {
                acc.earliest = Some(acc.earliest.map_or(next, |e| e.min(next)));
                // Checked by this run: rescheduled, not skipped.
                if checked.is_none_or(|c| c < opts.started) {
                    acc.schedule.not_due += 1;
                }
            }
            let checks = st.current(idx, CHECKS).and_then(int_of).unwrap_or(0);
            if checks <= 0 && checked.is_none() {
                acc.schedule.never_checked += 1;
            }
        }
        by_task
            .into_iter()
            .map(|(t, acc)| {
                let counts = StatusCounts {
                    counts: acc.counts.into_iter().collect(),
                    oldest_checked_at: acc.oldest,
                    newest_checked_at: acc.newest,
                    schedule: Some(super::ScheduleCounts {
                        next_due_at: acc.earliest.map(rfc3339),
                        ..acc.schedule
                    }),
                };
                (t, counts)
            })
            .collect()
    }

    /// See [`super::Store::import`]: merged into the file as it is now and written at
    /// once. An id the task already has is left as it is unless `reset`.
    pub async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        if !self.inner.writable {
            bail!("{}: opened read-only; cannot import", self.inner.label);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.import_blocking(items, reset))
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
