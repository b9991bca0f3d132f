//! Stage "check", pure part: turns one HTTP answer (status and body) into a judgement.
//! No I/O, no clock: `fetch` feeds it, tests call it directly.

use std::cmp::Ordering;
use std::fmt;

use anyhow::{Result, bail};
use regex::Regex;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::jq::{self, JqRule};

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

/// The operator of one `--expect-json` rule (docs/reference.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`: equal (numbers by value, `100` = `100.0`).
    Eq,
    /// `!=`: not equal.
    Ne,
    /// `<`: less than.
    Lt,
    /// `<=`: less than or equal.
    Le,
    /// `>`: greater than.
    Gt,
    /// `>=`: greater than or equal.
    Ge,
    /// `=~`: the string matches a regular expression (unanchored, `regex` crate syntax).
    Match,
}

impl Op {
    /// The operator as typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Match => "=~",
        }
    }

    /// Finds the operator: the first of `=` `!=` `<` `<=` `>` `>=` `=~` in the text (at one
    /// position the longer spelling wins). Returns the operator and its byte range.
    fn find(spec: &str) -> Option<(Op, usize, usize)> {
        let b = spec.as_bytes();
        for i in 0..b.len() {
            let next = b.get(i + 1).copied();
            let found = match (b[i], next) {
                (b'=', Some(b'~')) => Some((Op::Match, 2)),
                (b'=', _) => Some((Op::Eq, 1)),
                (b'!', Some(b'=')) => Some((Op::Ne, 2)),
                (b'<', Some(b'=')) => Some((Op::Le, 2)),
                (b'<', _) => Some((Op::Lt, 1)),
                (b'>', Some(b'=')) => Some((Op::Ge, 2)),
                (b'>', _) => Some((Op::Gt, 1)),
                _ => None,
            };
            if let Some((op, len)) = found {
                return Some((op, i, i + len));
            }
        }
        None
    }
}

/// What a rule asks of the value at its pointer.
#[derive(Debug, Clone)]
pub enum Test {
    /// `=` rules merged per pointer: equal to one of these (numbers by value).
    AnyOf(Vec<Value>),
    /// `!=`, `<`, `<=`, `>`, `>=` against one value. The order operators compare two numbers
    /// by value and two strings by their bytes (RFC 3339 times sort right that way); any
    /// other pair does not hold, and the message says why.
    Cmp(Op, Value),
    /// `=~`: a string value matching this regex (other types do not hold).
    Match(Regex),
}

impl PartialEq for Test {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Test::AnyOf(a), Test::AnyOf(b)) => a == b,
            (Test::Cmp(o1, a), Test::Cmp(o2, b)) => o1 == o2 && a == b,
            (Test::Match(a), Test::Match(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// One `--expect-json POINTER OP VALUE` rule; `=` rules are merged per pointer (any of
/// their values), every other rule stands alone. A missing pointer fails every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRule {
    /// RFC 6901 pointer (`""` is the whole document).
    pub pointer: String,
    /// What the value at the pointer must satisfy.
    pub test: Test,
    /// The pointer's reference tokens, unescaped once (`~1` is `/`, `~0` is `~`), so a
    /// check walks the document without splitting and unescaping the pointer again.
    tokens: Vec<String>,
}

impl JsonRule {
    /// The value at the pointer, as [`Value::pointer`] finds it (array indexes are
    /// decimal, without a sign or leading zeros).
    fn find<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.tokens
            .iter()
            .try_fold(doc, |target, token| match target {
                Value::Object(map) => map.get(token.as_str()),
                Value::Array(list) => array_index(token).and_then(|i| list.get(i)),
                _ => None,
            })
    }

    /// Parses `--expect-json` specs; `flag` names the flag in errors (`--expect-json`,
    /// `--dead-json`).
    pub fn parse_flag<S: AsRef<str>>(flag: &str, specs: &[S]) -> Result<Vec<JsonRule>> {
        let mut rules: Vec<JsonRule> = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            let Some((op, start, end)) = Op::find(spec) else {
                bail!(
                    "{flag} {spec:?}: expected POINTER OP VALUE with OP one of = != < <= > >= =~, e.g. /status=done"
                );
            };
            let (pointer, text) = (&spec[..start], &spec[end..]);
            if !pointer.is_empty() && !pointer.starts_with('/') {
                bail!(
                    "{flag} {spec:?}: pointer {pointer:?} must be empty or start with '/' (RFC 6901)"
                );
            }
            // `~` must be followed by 0 or 1 (RFC 6901 §3).
            let mut chars = pointer.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                    bail!("{flag} {spec:?}: '~' in pointer {pointer:?} must be ~0 or ~1");
                }
            }
            let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()));
            let test = match op {
                Op::Eq => {
                    if let Some(JsonRule {
                        test: Test::AnyOf(values),
                        ..
                    }) = rules
                        .iter_mut()
                        .find(|r| r.pointer == pointer && matches!(r.test, Test::AnyOf(_)))
                    {
                        values.push(value);
                        continue;
                    }
                    Test::AnyOf(vec![value])
                }
                Op::Match => {
                    // `"^a"` (valid JSON) and `^a` are the same pattern.
                    let pattern = match &value {
                        Value::String(s) => s.as_str(),
                        _ => text,
                    };
                    let re = Regex::new(pattern).map_err(|e| {
                        let e = e.to_string().replace('\n', " ");
                        anyhow::anyhow!("{flag} {spec:?}: invalid regex: {e}")
                    })?;
                    Test::Match(re)
                }
                op => Test::Cmp(op, value),
            };
            let tokens = pointer
                .split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect();
            rules.push(JsonRule {
                pointer: pointer.to_string(),
                test,
                tokens,
            });
        }
        Ok(rules)
    }

    /// [`JsonRule::parse_flag`] for `--expect-json`.
    pub fn parse_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<JsonRule>> {
        JsonRule::parse_flag("--expect-json", specs)
    }

    /// Checks the rule on a document: `Ok(())`, or why not, naming the actual value.
    pub fn check(&self, doc: &Value) -> std::result::Result<(), String> {
        // The pointer as shown is only made for a message: a passing check allocates nothing.
        let p = || shown_pointer(&self.pointer);
        let Some(v) = self.find(doc) else {
            return Err(format!("{} is missing, expected {}", p(), self.wanted()));
        };
        let why_not = match &self.test {
            Test::AnyOf(values) => {
                if values.iter().any(|want| same(want, v)) {
                    return Ok(());
                }
                None
            }
            Test::Cmp(Op::Ne, want) => {
                if !same(want, v) {
                    return Ok(());
                }
                None
            }
            Test::Cmp(op, want) => match order(v, want) {
                Some(ord) => {
                    let holds = match op {
                        Op::Lt => ord.is_lt(),
                        Op::Le => ord.is_le(),
                        Op::Gt => ord.is_gt(),
                        _ => ord.is_ge(),
                    };
                    if holds {
                        return Ok(());
                    }
                    None
                }
                None => Some(if want.is_number() {
                    "not a number"
                } else if want.is_string() {
                    "not a string"
                } else {
                    "only numbers and strings are ordered"
                }),
            },
            Test::Match(re) => match v {
                Value::String(s) if re.is_match(s) => return Ok(()),
                Value::String(_) => None,
                _ => Some("not a string"),
            },
        };
        let mut msg = format!("{} is {}, expected {}", p(), short(v), self.wanted());
        if let Some(why) = why_not {
            msg.push_str(&format!(" ({why})"));
        }
        Err(msg)
    }

    /// As a dead rule: `Some(why)` when the rule holds on `doc` (`dead: /status is "failed"`,
    /// `dead: /retries is 5 (>= 5)`), `None` when it does not (a missing pointer never holds).
    pub fn dead_reason(&self, doc: &Value) -> Option<String> {
        self.check(doc).ok()?;
        // `check` only holds when the pointer is there.
        let v = self.find(doc)?;
        let p = shown_pointer(&self.pointer);
        Some(match &self.test {
            Test::AnyOf(_) => format!("dead: {p} is {}", short(v)),
            _ => format!("dead: {p} is {} ({})", short(v), self.wanted()),
        })
    }

    /// `"done" or "ready"`, `>= 100`, `=~ "^a"`: what the rule wanted, for messages.
    fn wanted(&self) -> String {
        match &self.test {
            Test::AnyOf(values) => OneOf(values).to_string(),
            Test::Cmp(op, want) => format!("{} {}", op.as_str(), short(want)),
            Test::Match(re) => format!("=~ {}", short(&Value::String(re.as_str().into()))),
        }
    }
}

/// A pointer token as an array index, as serde_json reads it: decimal, no sign, no leading
/// zero ("0" itself is fine).
fn array_index(token: &str) -> Option<usize> {
    let leading_zero = token.starts_with('0') && token.len() != 1;
    if token.starts_with('+') || leading_zero {
        return None;
    }
    token.parse().ok()
}

/// Parses an answer into the part of it that `rules` look at: every value a rule's pointer
/// reaches, whole, and the objects and arrays on the way there; everything else is checked
/// to be JSON (the same parser, the same errors) but never built. A rule finds the same
/// value in the result as in the whole document, so its verdict and message are the same.
///
/// Why: building the whole `serde_json::Value` allocates every string, array and object of
/// the answer, and real answers carry far more than the one or two fields the rules read
/// (BENCHMARKS.md, "Sixth session": `cargo bench --bench judge`).
fn parse_for(body: &[u8], rules: Pointed<'_>) -> serde_json::Result<Value> {
    if rules.len() > Live::BITS as usize {
        return serde_json::from_slice(body);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let all = if rules.len() == Live::BITS as usize {
        Live::MAX
    } else {
        (1 << rules.len()) - 1
    };
    let doc = Keep {
        rules,
        depth: 0,
        live: all,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(doc)
}

/// The rules of one judgement, `--dead-json` then `--expect-json`, by number.
#[derive(Clone, Copy)]
struct Pointed<'r>(&'r [JsonRule], &'r [JsonRule]);

impl<'r> Pointed<'r> {
    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }

    fn tokens(&self, i: usize) -> &'r [String] {
        match self.0.get(i) {
            Some(r) => &r.tokens,
            None => &self.1[i - self.0.len()].tokens,
        }
    }
}

/// A set of rules by number (bit `i`: rule `i`).
type Live = u64;

/// The value at `depth` on the way of the `live` rules' pointers.
#[derive(Clone, Copy)]
struct Keep<'r> {
    rules: Pointed<'r>,
    depth: usize,
    live: Live,
}

impl Keep<'_> {
    /// Each live rule, by number.
    fn each(self) -> impl Iterator<Item = usize> {
        (0..self.rules.len()).filter(move |&i| self.live & (1 << i) != 0)
    }

    /// The live rules whose next token `is` what the caller looks for.
    fn next_token(self, is: impl Fn(&str) -> bool) -> Live {
        self.each()
            .filter(|&i| is(&self.rules.tokens(i)[self.depth]))
            .fold(0, |m, i| m | (1 << i))
    }

    /// The rules whose next token is `key` (a member of an object).
    fn member(self, key: &str) -> Live {
        self.next_token(|t| t == key)
    }

    /// The value one level down, for the rules in `live`.
    fn below(self, live: Live) -> Self {
        Keep {
            live,
            depth: self.depth + 1,
            ..self
        }
    }

    /// The rules whose next token is array index `at`.
    fn element(self, at: usize) -> Live {
        self.next_token(|t| array_index(t) == Some(at))
    }
}

impl<'de> DeserializeSeed<'de> for Keep<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // A rule points here: the whole value, as it is.
        if self
            .each()
            .any(|i| self.rules.tokens(i).len() == self.depth)
        {
            return Value::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Keep<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // Scalars on the way (a pointer that goes on into a number finds nothing): kept as
    // serde_json's own visitor keeps them.
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = serde_json::Map::new();
        while let Some((key, live)) = map.next_key_seed(Key(self))? {
            if live == 0 {
                map.next_value::<IgnoredAny>()?;
            } else {
                // A repeated member replaces the earlier one, as in serde_json's own map.
                kept.insert(key, map.next_value_seed(self.below(live))?);
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let last = self
            .each()
            .filter_map(|i| array_index(&self.rules.tokens(i)[self.depth]))
            .max();
        let mut kept = Vec::new();
        let mut at = 0usize;
        loop {
            // Up to the last index a pointer names, elements keep their places.
            let on_way = last.is_some_and(|last| at <= last);
            let live = if on_way { self.element(at) } else { 0 };
            if live == 0 {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                // Placeholders keep the indexes of the elements that are kept; none of
                // them is reached by a pointer.
                if on_way {
                    kept.push(Value::Null);
                }
            } else {
                match seq.next_element_seed(self.below(live))? {
                    Some(v) => kept.push(v),
                    None => break,
                }
            }
            at += 1;
        }
        Ok(Value::Array(kept))
    }
}

/// An object's member name, with the rules that go on into its value (none: the value is
/// skipped, and the name is not copied).
struct Key<'r>(Keep<'r>);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = (String, Live);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(String, Live), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = (String, Live);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, key: &str) -> Result<(String, Live), E> {
        let live = self.0.member(key);
        Ok((
            if live == 0 {
                String::new()
            } else {
                key.to_owned()
            },
            live,
        ))
    }
}

/// JSON equality, except that numbers compare by value (`100` = `100.0`) at any depth.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => order(a, b) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| same(a, b)))
        }
        _ => a == b,
    }
}

/// Order of two numbers (by value; integers exactly, beyond f64's 2^53) or two strings
/// (by bytes); `None` for any other pair.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let int = |n: &serde_json::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            match (int(x), int(y)) {
                (Some(i), Some(j)) => Some(i.cmp(&j)),
                _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// What the judge needs from the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectations {
    /// Statuses that count as an answer.
    pub status: ExpectStatus,
    /// JSON rules; empty means any body is fine.
    pub json: Vec<JsonRule>,
    /// `--expect-jq` filters; each must give `true` first.
    pub jq: Vec<JqRule>,
    /// `--dead-json` rules; when any holds, the item failed for good.
    pub dead_json: Vec<JsonRule>,
    /// `--dead-jq` filters; when any gives `true` first, the item failed for good.
    pub dead_jq: Vec<JqRule>,
}

impl Expectations {
    /// Whether any rule looks at the body.
    pub fn has_body_rules(&self) -> bool {
        !self.json.is_empty()
            || !self.jq.is_empty()
            || !self.dead_json.is_empty()
            || !self.dead_jq.is_empty()
    }

    /// Whether any dead rule is given (then outcome `dead` can happen).
    pub fn has_dead_rules(&self) -> bool {
        !self.dead_json.is_empty() || !self.dead_jq.is_empty()
    }
}

/// The judge's conclusion about one HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Expected status and every rule holds.
    Ok,
    /// Expected status, but a rule does not hold (why).
    StillFailed(String),
    /// Expected status, and a dead rule holds: failed for good (which rule, what value).
    Dead(String),
    /// 404 or 410.
    NotFound,
    /// Worth another attempt (408, 429, 5xx of docs/reference.md §3.6).
    Retry(String),
    /// A final failure (another 4xx, an unexpected status, invalid JSON).
    Error(String),
}

/// Statuses docs/reference.md §3.6 calls retryable.
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
    expect.status.contains(status) && expect.has_body_rules()
}

/// Judges an answer. `body` is only looked at when [`needs_body`] said so.
pub fn judge(status: u16, body: &[u8], expect: &Expectations) -> Judgement {
    if expect.status.contains(status) {
        if !expect.has_body_rules() {
            return Judgement::Ok;
        }
        let invalid =
            |e: serde_json::Error| Judgement::Error(format!("invalid JSON in answer: {e}"));
        if expect.json.is_empty() && expect.dead_json.is_empty() {
            // jq rules only: serde_json parses straight into jq's value (its recursion limit
            // still applies), no intermediate tree.
            let val: jaq_json::Val = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return invalid(e),
            };
            if let Some(dead) = judge_dead_jq(&val, expect) {
                return dead;
            }
            return judge_jq(&val, expect).unwrap_or(Judgement::Ok);
        }
        // jq filters read the whole answer; pointer rules alone, just what they point at.
        let jq_too = !(expect.dead_jq.is_empty() && expect.jq.is_empty());
        let doc = if jq_too {
            serde_json::from_slice(body)
        } else {
            parse_for(body, Pointed(&expect.dead_json, &expect.json))
        };
        let doc: Value = match doc {
            Ok(v) => v,
            Err(e) => return invalid(e),
        };
        // Dead rules first: an answer that says "failed for good" is dead even if it would
        // also pass the expect rules.
        for rule in &expect.dead_json {
            if let Some(why) = rule.dead_reason(&doc) {
                return Judgement::Dead(why);
            }
        }
        let val = if jq_too {
            match jq::to_val(&doc) {
                Ok(v) => Some(v),
                Err(why) => return Judgement::Error(why),
            }
        } else {
            None
        };
        // The dead jq filters before any expect rule, too.
        if let Some(val) = &val
            && let Some(dead) = judge_dead_jq(val, expect)
        {
            return dead;
        }
        for rule in &expect.json {
            if let Err(why) = rule.check(&doc) {
                return Judgement::StillFailed(why);
            }
        }
        if let Some(val) = &val
            && let Some(j) = judge_jq(val, expect)
        {
            return j;
        }
        return Judgement::Ok;
    }
    match status {
        404 | 410 => Judgement::NotFound,
        s if is_retryable_status(s) => Judgement::Retry(status_text(s)),
        s => Judgement::Error(format!("unexpected {}", status_text(s))),
    }
}

/// Dead jq filters on `val`: `Some(Dead)` when one gives `true` first. A filter that fails
/// on this answer does not hold (the item is judged by the other rules).
fn judge_dead_jq(val: &jaq_json::Val, expect: &Expectations) -> Option<Judgement> {
    expect
        .dead_jq
        .iter()
        .find(|rule| rule.holds(val.clone()) == Ok(true))
        .map(|rule| Judgement::Dead(format!("dead: jq {} gave true", jq::quoted(rule.source()))))
}

/// The `--expect-jq` filters on `val`: `Some(StillFailed)` for the first that does not
/// hold, `None` when all hold.
fn judge_jq(val: &jaq_json::Val, expect: &Expectations) -> Option<Judgement> {
    for rule in &expect.jq {
        if let Err(why) = rule.check(val.clone()) {
            return Some(Judgement::StillFailed(why));
        }
    }
    None
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
            jq: Vec::new(),
            dead_json: Vec::new(),
            dead_jq: Vec::new(),
        }
    }

    /// A rule finds what `Value::pointer` finds, from tokens unescaped once.
    #[test]
    fn rules_find_what_json_pointers_find() {
        let doc: Value = serde_json::from_str(
            r#"{"a": [10, 11, {"b": 2}], "a/b": 1, "m~n": 2, "": {"": 3}, "x": {"0": 4, "01": 5}}"#,
        )
        .unwrap();
        for p in [
            "", "/a", "/a/0", "/a/2/b", "/a/01", "/a/+1", "/a/-", "/a/3", "/a~1b", "/m~0n", "/",
            "//", "/x/0", "/x/01", "/a/2", "/a/2/b/c", "/nope",
        ] {
            let rule = JsonRule::parse_all(&[format!("{p}!=0")]).unwrap().remove(0);
            assert_eq!(rule.find(&doc), doc.pointer(p), "pointer {p:?}");
        }
    }

    /// The part of an answer built for the rules gives every rule the value the whole
    /// document gives it, for pointers into objects, arrays, repeated members, escapes,
    /// scalars on the way and past the end; a body that is not JSON fails the same way.
    #[test]
    fn the_parts_built_for_the_rules_find_what_the_whole_document_finds() {
        let docs = [
            r#"{"a": [10, 11, {"b": 2}], "a/b": 1, "m~n": 2, "": {"": 3}, "x": {"0": 4, "01": 5}}"#,
            r#"{"s": 1, "s": {"t": [1, [2, {"u": "v"}]]}, "big": [[[[]]]], "e": "\u00e9\n"}"#,
            r#"[{"a": 1}, [], "x", null, 1.5e3, {"a": [true, false]}]"#,
            r#""just a string""#,
            r#"{"n": 18446744073709551615, "m": -9223372036854775808, "f": 0.1, "z": null}"#,
            "{}",
            "[]",
        ];
        let pointers = [
            "",
            "/a",
            "/a/0",
            "/a/2/b",
            "/a/01",
            "/a/+1",
            "/a/-",
            "/a/3",
            "/a~1b",
            "/m~0n",
            "/",
            "//",
            "/x/0",
            "/x/01",
            "/a/2/b/c",
            "/nope",
            "/s",
            "/s/t/1/1/u",
            "/s/t/0/x",
            "/0",
            "/0/a",
            "/5/a/1",
            "/2",
            "/2/0",
            "/n",
            "/m",
            "/f",
            "/z",
            "/z/q",
            "/e",
            "/big/0/0",
        ];
        for doc in docs {
            let whole: Value = serde_json::from_str(doc).unwrap();
            for p in pointers {
                let rule = JsonRule::parse_all(&[format!("{p}!=0")]).unwrap();
                let kept = parse_for(doc.as_bytes(), Pointed(&[], &rule)).unwrap();
                assert_eq!(rule[0].find(&kept), whole.pointer(p), "{p:?} in {doc}");
            }
            // All of them at once, split between dead and expect rules.
            let rules: Vec<JsonRule> = pointers
                .iter()
                .flat_map(|p| JsonRule::parse_all(&[format!("{p}!=0")]).unwrap())
                .collect();
            let (dead, expect) = rules.split_at(9);
            let kept = parse_for(doc.as_bytes(), Pointed(dead, expect)).unwrap();
            for r in &rules {
                assert_eq!(
                    r.find(&kept),
                    whole.pointer(&r.pointer),
                    "{:?} in {doc}",
                    r.pointer
                );
            }
        }
        // More rules than one set holds: the whole document, the same answers.
        let many: Vec<JsonRule> = (0..70)
            .flat_map(|i| JsonRule::parse_all(&[format!("/k{i}!=0")]).unwrap())
            .collect();
        let kept = parse_for(br#"{"k3": 1, "j": 2}"#, Pointed(&many, &[])).unwrap();
        assert_eq!(kept, serde_json::json!({"k3": 1, "j": 2}));
        // A body that is not JSON fails at the same place (inside a skipped value the words
        // may differ, a trailing comma there is "expected value", and a control character in
        // a string is placed one column earlier).
        let rule = JsonRule::parse_all(&["/a=1"]).unwrap();
        for bad in [
            "",
            "{",
            r#"{"a": 1"#,
            r#"{"a": 1} x"#,
            r#"{"b": [1,]}"#,
            r#"{"b": tru}"#,
            "[1 2]",
            r#"{"b": "\x"}"#,
            r#"{"a": [1,]}"#,
            "{\"b\": \"\u{1}\"}",
            r#"{"b": 1, "b"}"#,
        ] {
            let want = serde_json::from_str::<Value>(bad).unwrap_err();
            let got = parse_for(bad.as_bytes(), Pointed(&[], &rule)).unwrap_err();
            assert_eq!(got.line(), want.line(), "{bad:?}");
            assert!(
                got.column().abs_diff(want.column()) <= 1,
                "{bad:?}: {got} / {want}"
            );
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
        assert_eq!(
            rules[0].test,
            Test::AnyOf(vec![json!("done"), json!("ready")])
        );
        assert_eq!(rules[1].test, Test::AnyOf(vec![json!(3)]));
        assert_eq!(rules[2].test, Test::AnyOf(vec![json!("abc")]));
        // "3" quoted stays a string
        assert_eq!(
            JsonRule::parse_all(&["/n=\"3\""]).unwrap()[0].test,
            Test::AnyOf(vec![json!("3")])
        );
        for bad in ["status=done", "/a", "/a~2=1", "/a~=1", "/a=~(", "/a!1"] {
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

    fn why(rules: &[&str], body: &str) -> Option<String> {
        match judge(200, body.as_bytes(), &expect("200", rules)) {
            Judgement::Ok => None,
            Judgement::StillFailed(m) => Some(m),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn operator_is_the_first_in_the_text() {
        let r = JsonRule::parse_all(&["/progress>=50"]).unwrap();
        assert_eq!(r[0].pointer, "/progress");
        assert_eq!(r[0].test, Test::Cmp(Op::Ge, json!(50)));
        let ops = [
            ("/a=1", Op::Eq),
            ("/a!=1", Op::Ne),
            ("/a<1", Op::Lt),
            ("/a<=1", Op::Le),
            ("/a>1", Op::Gt),
            ("/a>=1", Op::Ge),
            ("/a=~x", Op::Match),
        ];
        for (spec, op) in ops {
            let r = JsonRule::parse_all(&[spec]).unwrap();
            assert_eq!(r[0].pointer, "/a", "{spec}");
            let got = match &r[0].test {
                Test::AnyOf(_) => Op::Eq,
                Test::Cmp(op, _) => *op,
                Test::Match(_) => Op::Match,
            };
            assert_eq!(got, op, "{spec}");
        }
        // later operator characters belong to the value
        let r = JsonRule::parse_all(&["/a=<b>"]).unwrap();
        assert_eq!(r[0].test, Test::AnyOf(vec![json!("<b>")]));
        // `=` rules merge per pointer, the others stand alone
        assert_eq!(
            JsonRule::parse_all(&["/a=1", "/a=2", "/a>0", "/a<9"])
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn each_operator_names_the_actual_value() {
        let body = r#"{"progress":40,"status":"processing","name":"clip-7","n":null}"#;
        let cases = [
            ("/progress>=100", "/progress is 40, expected >= 100"),
            ("/progress>40", "/progress is 40, expected > 40"),
            ("/progress<=39", "/progress is 40, expected <= 39"),
            ("/progress<40", "/progress is 40, expected < 40"),
            ("/progress!=40", "/progress is 40, expected != 40"),
            ("/progress=100", "/progress is 40, expected 100"),
            (
                "/status=done",
                r#"/status is "processing", expected "done""#,
            ),
            (
                "/status!=processing",
                r#"/status is "processing", expected != "processing""#,
            ),
            (
                "/name=~^movie-",
                r#"/name is "clip-7", expected =~ "^movie-""#,
            ),
            (
                "/progress=~4",
                r#"/progress is 40, expected =~ "4" (not a string)"#,
            ),
            (
                "/status>=100",
                r#"/status is "processing", expected >= 100 (not a number)"#,
            ),
            ("/n<1", "/n is null, expected < 1 (not a number)"),
            ("/eta<5", "/eta is missing, expected < 5"),
        ];
        for (rule, msg) in cases {
            assert_eq!(why(&[rule], body).as_deref(), Some(msg), "{rule}");
        }
        for rule in [
            "/progress>=40",
            "/progress>39.5",
            "/progress<=40",
            "/progress<41",
            "/progress!=41",
            "/progress!=\"40\"",
            "/progress=40",
            "/status!=done",
            "/name=~^clip-[0-9]+$",
            "/name=~\"clip\"",
            "/status>=pro",
            "/status<q",
        ] {
            assert_eq!(why(&[rule], body), None, "{rule}");
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        assert_eq!(why(&["/p=100.0"], r#"{"p":100}"#), None);
        assert_eq!(why(&["/p=100"], r#"{"p":100.0}"#), None);
        assert_eq!(why(&["/p=1e2"], r#"{"p":100}"#), None);
        assert_eq!(why(&["/p>=100"], r#"{"p":100.0}"#), None);
        assert_eq!(
            why(&["/p!=100"], r#"{"p":100.0}"#).as_deref(),
            Some("/p is 100.0, expected != 100")
        );
        // the string "100" is not the number
        assert!(why(&["/p=\"100\""], r#"{"p":100}"#).is_some());
        // nested values compare numbers by value too
        assert_eq!(why(&["/a=[1,{\"b\":2}]"], r#"{"a":[1.0,{"b":2.0}]}"#), None);
        // integers beyond 2^53 compare exactly
        assert!(why(&["/p>9007199254740992"], r#"{"p":9007199254740993}"#).is_none());
        assert!(
            why(
                &["/p=18446744073709551615"],
                r#"{"p":18446744073709551614}"#
            )
            .is_some()
        );
    }

    #[test]
    fn all_rules_must_hold_and_eq_rules_are_any_of() {
        let rules = [
            "/status=done",
            "/status=ready",
            "/progress>=100",
            "/name=~^clip",
        ];
        assert_eq!(
            why(&rules, r#"{"status":"ready","progress":100,"name":"clip"}"#),
            None
        );
        assert_eq!(
            why(&rules, r#"{"status":"ready","progress":99,"name":"clip"}"#).as_deref(),
            Some("/progress is 99, expected >= 100")
        );
        assert_eq!(
            why(&rules, r#"{"status":"new","progress":100,"name":"clip"}"#).as_deref(),
            Some(r#"/status is "new", expected "done" or "ready""#)
        );
        // a range: both bounds must hold
        let range = ["/p>=10", "/p<20"];
        assert_eq!(why(&range, r#"{"p":15}"#), None);
        assert!(why(&range, r#"{"p":20}"#).is_some());
        assert!(why(&range, r#"{"p":9}"#).is_some());
    }

    #[test]
    fn jq_rules_alone_and_with_pointer_rules() {
        let jq = |f: &str| JqRule::compile("--expect-jq", f).unwrap();
        let mut e = expect("200", &[]);
        e.jq = vec![jq("(.renditions | length) >= 3")];
        assert!(needs_body(200, &e));
        assert_eq!(judge(200, br#"{"renditions":[1,2,3]}"#, &e), Judgement::Ok);
        assert_eq!(
            judge(200, br#"{"renditions":[1]}"#, &e),
            Judgement::StillFailed("jq '(.renditions | length) >= 3' gave false".into())
        );
        assert!(
            matches!(judge(200, b"{nope", &e), Judgement::Error(m) if m.contains("invalid JSON"))
        );
        // both kinds: pointer rules first, then jq on the same parsed document
        e.json = JsonRule::parse_all(&["/status=done"]).unwrap();
        assert_eq!(
            judge(200, br#"{"status":"done","renditions":[1,2,3]}"#, &e),
            Judgement::Ok
        );
        assert_eq!(
            judge(200, br#"{"status":"done","renditions":[]}"#, &e),
            Judgement::StillFailed("jq '(.renditions | length) >= 3' gave false".into())
        );
        assert!(matches!(
            judge(200, br#"{"status":"new","renditions":[1,2,3]}"#, &e),
            Judgement::StillFailed(m) if m.starts_with("/status")
        ));
        // serde_json's recursion limit guards jq's input too
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        e.json.clear();
        assert!(
            matches!(judge(200, deep.as_bytes(), &e), Judgement::Error(m) if m.contains("recursion"))
        );
    }

    #[test]
    fn dead_rules_come_first_and_name_what_held() {
        let jq = |f: &str| JqRule::compile("--dead-jq", f).unwrap();
        let mut e = expect("200", &["/status=done"]);
        e.dead_json =
            JsonRule::parse_flag("--dead-json", &["/status=failed", "/retries>=5"]).unwrap();
        assert!(e.has_dead_rules());
        assert_eq!(
            judge(200, br#"{"status":"failed"}"#, &e),
            Judgement::Dead(r#"dead: /status is "failed""#.into())
        );
        assert_eq!(
            judge(200, br#"{"status":"processing","retries":7}"#, &e),
            Judgement::Dead("dead: /retries is 7 (>= 5)".into())
        );
        // checked before the expect rules: a done answer that a dead rule matches is dead
        assert!(matches!(
            judge(200, br#"{"status":"done","retries":5}"#, &e),
            Judgement::Dead(_)
        ));
        // a missing pointer never makes an item dead
        assert_eq!(judge(200, br#"{"status":"done"}"#, &e), Judgement::Ok);
        assert!(matches!(
            judge(200, br#"{"status":"processing"}"#, &e),
            Judgement::StillFailed(_)
        ));
        // only answers with an expected status are judged dead
        assert_eq!(
            judge(404, br#"{"status":"failed"}"#, &e),
            Judgement::NotFound
        );
        // dead jq filters, alone and with pointer rules; one that fails does not hold
        for json in [vec![], vec!["/status=done"]] {
            let mut e = expect("200", &json);
            e.dead_jq = vec![
                jq(".error.code | startswith(\"E_\")"),
                jq(r#".status == "failed""#),
            ];
            assert_eq!(
                judge(200, br#"{"status":"failed"}"#, &e),
                Judgement::Dead(r#"dead: jq '.status == "failed"' gave true"#.into()),
                "{json:?}"
            );
            assert_eq!(
                judge(200, br#"{"status":"x","error":{"code":"E_CODEC"}}"#, &e),
                Judgement::Dead(r#"dead: jq '.error.code | startswith("E_")' gave true"#.into())
            );
            assert_eq!(
                judge(200, br#"{"status":"done"}"#, &e),
                Judgement::Ok,
                "{json:?}"
            );
        }
        // with jq expect rules, dead filters still come first
        let mut e = expect("200", &[]);
        e.jq = vec![jq(r#".status == "done""#)];
        e.dead_jq = vec![jq(".gone")];
        assert!(matches!(
            judge(200, br#"{"status":"done","gone":true}"#, &e),
            Judgement::Dead(_)
        ));
        assert_eq!(judge(200, br#"{"status":"done"}"#, &e), Judgement::Ok);
    }
}
