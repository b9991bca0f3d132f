//! Stage "check": the `--url` template, parsed once, filled in per item. Every value is
//! percent-encoded as one path segment or query value, so an id can never add a path
//! segment, a query or a fragment of its own; `{NAME:raw}` inserts the value as it is
//! (`/` included), for templates that append a stored path (docs/reference.md §3.1).
//!
//! An item whose URL cannot be built never becomes a request: an empty or NULL id, an
//! empty or NULL `{COLUMN}` value, a value the URL parser would silently rewrite (a dot
//! segment, a control character in a raw value), or a URL that does not parse is that
//! item's `error`, with the reason as its error text. Otherwise an empty id would ask for
//! the collection (`GET /items/`), and a 200 there would mark the item ok.

use anyhow::{Result, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use super::secrets::Secrets;
use crate::model::Item;
use crate::store::Ident;

/// Everything but RFC 3986 "unreserved" is encoded: safe in a path segment and a query value.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// `{id}`
    Id,
    /// `{task}`
    Task,
    /// `{COLUMN}`: index into [`Item::fields`].
    Field(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    /// A placeholder: `in_path` when it comes before any `?`/`#` of the template; `raw`
    /// for `{NAME:raw}` (inserted without percent-encoding).
    Hole {
        slot: Slot,
        in_path: bool,
        raw: bool,
    },
}

/// A parsed `--url` template.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    parts: Vec<Part>,
    /// Extra columns the template reads, in [`Item::fields`] order.
    columns: Vec<Ident>,
    /// The task id, percent-encoded once.
    task_encoded: String,
    /// The task id as given, for `{task:raw}`.
    task: String,
    /// Rough output size, to allocate once per item.
    size_hint: usize,
    /// The fixed start of every URL, parsed once, and the parts after it, when the first
    /// placeholder comes after the host and the start of the path: each item's URL is then
    /// the rest resolved against this base, which skips the scheme and the host (and its
    /// IDNA mapping), about half the work of parsing the whole URL (`Url::parse` ran three
    /// times per check, reqwest's two included). See [`fast_base`] for when
    /// the result is the same.
    base: Option<Box<(Url, Vec<Part>)>>,
}

impl UrlTemplate {
    /// Parses a template like `https://api/v1/items/{id}?task={task}`. `{{` and `}}` are
    /// literal braces. Fails when there is no per-item placeholder or the result would not
    /// be an http(s) URL.
    pub fn parse(template: &str, task: &str) -> Result<UrlTemplate> {
        Self::parse_env(template, task, &|_| None, &mut Secrets::default())
    }

    /// [`UrlTemplate::parse`], with `${VAR}` read from `env`: its value is inserted as it
    /// is and becomes a secret (added to `secrets`). Error messages show the template with
    /// its `${VAR}`s and without a password.
    pub fn parse_env(
        template: &str,
        task: &str,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: &mut Secrets,
    ) -> Result<UrlTemplate> {
        let shown = super::secrets::template_for_errors(template, secrets);
        let mut expanded: Vec<String> = Vec::new();
        let mut parts = Vec::new();
        let mut columns: Vec<Ident> = Vec::new();
        let mut lit = String::new();
        let mut in_path = true;
        let mut chars = template.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '$' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    let rest = &template[i + 2..];
                    let Some(end) = rest.find('}') else {
                        bail!("--url {shown:?}: unclosed '${{' at byte {i}");
                    };
                    let var = &rest[..end];
                    for _ in 0..=end + 1 {
                        chars.next();
                    }
                    let Some(value) = env(var) else {
                        bail!("--url {shown:?}: environment variable {var} is not set");
                    };
                    lit.push_str(&value);
                    expanded.push(value);
                }
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &template[i + 1..];
                    let Some(end) = rest.find('}') else {
                        bail!("--url {shown:?}: unclosed '{{' at byte {i}");
                    };
                    let inner = &rest[..end];
                    for _ in 0..=end {
                        chars.next();
                    }
                    let (name, raw) = match inner.split_once(':') {
                        None => (inner, false),
                        Some((name, "raw")) => (name, true),
                        Some((_, other)) => bail!(
                            "--url {shown:?}: unknown modifier {other:?} in {{{inner}}} \
                             (only \":raw\" exists)"
                        ),
                    };
                    let slot = match name {
                        "id" => Slot::Id,
                        "task" => Slot::Task,
                        _ => {
                            let ident = Ident::new(&format!("--url {shown:?}: placeholder"), name)?;
                            let idx = match columns.iter().position(|c| *c == ident) {
                                Some(idx) => idx,
                                None => {
                                    columns.push(ident);
                                    columns.len() - 1
                                }
                            };
                            Slot::Field(idx)
                        }
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Hole { slot, in_path, raw });
                }
                '}' => bail!("--url {shown:?}: unmatched '}}' at byte {i} (write '}}}}')"),
                _ => {
                    if c == '?' || c == '#' {
                        in_path = false;
                    }
                    lit.push(c);
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if !parts
            .iter()
            .any(|p| matches!(p, Part::Hole { slot, .. } if *slot != Slot::Task))
        {
            bail!(
                "--url {shown:?} has no {{id}} (or {{COLUMN}}) placeholder: every item would get the same URL"
            );
        }
        let task_in_path = parts.iter().any(|p| {
            matches!(
                p,
                Part::Hole {
                    slot: Slot::Task,
                    in_path: true,
                    ..
                }
            )
        });
        if task_in_path && (task == "." || task == "..") {
            bail!("--url {shown:?}: task {task:?} cannot be sent as a URL path segment");
        }
        let size_hint = template.len() + 32;
        let t = UrlTemplate {
            base: fast_base(&parts),
            parts,
            columns,
            task_encoded: encode(task),
            task: task.to_string(),
            size_hint,
        };
        // Validate the fixed parts once, with harmless sample values.
        let sample = t.render_with(|_| "x".into());
        match Url::parse(&sample) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => bail!(
                "--url {shown:?}: scheme {:?} is not http or https",
                u.scheme()
            ),
            Err(e) => bail!("--url {shown:?} is not a valid URL: {e}"),
        }
        secrets.add_values(expanded);
        Ok(t)
    }

    /// Columns the template reads besides `{id}` and `{task}`; the store must have them.
    pub fn columns(&self) -> &[Ident] {
        &self.columns
    }

    fn render_with(&self, mut value: impl FnMut(&Slot) -> String) -> String {
        let mut out = String::with_capacity(self.size_hint);
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Hole { slot, .. } => out.push_str(&value(slot)),
            }
        }
        out
    }

    /// The URL for one item, or why it cannot have one (an item error, not a run error):
    /// see the module docs for what is refused.
    pub fn render(&self, item: &Item) -> Result<Url, String> {
        match self.base.as_deref() {
            Some((base, rest)) => self.render_parts(item, rest, Some(base)),
            None => self.render_parts(item, &self.parts, None),
        }
    }

    /// Whether `rest`, resolved against the short way's base, is read as the same URL as
    /// the whole text: it must be a relative path, query or fragment (not a scheme, an
    /// authority or an absolute path), and start with nothing a parser trims.
    fn resolves_as_written(rest: &str) -> bool {
        let Some(first) = rest.chars().next() else {
            return true;
        };
        if first <= ' ' || first == '/' || first == '\\' {
            return false;
        }
        let segment_end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
        !rest[..segment_end].contains(':')
    }

    /// [`UrlTemplate::render`] of `parts`, parsed alone or resolved against `base`.
    fn render_parts(&self, item: &Item, parts: &[Part], base: Option<&Url>) -> Result<Url, String> {
        check_id(item)?;
        let mut out = String::with_capacity(self.size_hint);
        for part in parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Hole { slot, in_path, raw } => {
                    let value: &str = match slot {
                        Slot::Id => &item.id,
                        Slot::Task if !*raw => {
                            // Checked once at parse time (dot segments).
                            out.push_str(&self.task_encoded);
                            continue;
                        }
                        Slot::Task => &self.task,
                        Slot::Field(i) => match item.fields.get(*i).and_then(|v| v.as_deref()) {
                            Some("") => {
                                return Err(format!(
                                    "column {} is empty; the URL cannot be built",
                                    self.columns[*i]
                                ));
                            }
                            Some(v) => v,
                            None => {
                                return Err(format!(
                                    "column {} is NULL or missing; the URL cannot be built",
                                    self.columns[*i]
                                ));
                            }
                        },
                    };
                    let what = || match slot {
                        Slot::Id => "item id".to_string(),
                        Slot::Task => "task id".to_string(),
                        Slot::Field(i) => format!("column {}", self.columns[*i]),
                    };
                    if *raw {
                        check_raw(value, *in_path).map_err(|why| {
                            format!("{} {value:?} cannot be placed in the URL: {why}", what())
                        })?;
                        out.push_str(value);
                        continue;
                    }
                    // "." and ".." are dot segments: every URL parser (ours, curl's, the
                    // server's) would resolve them away, even percent-encoded.
                    if *in_path && (value == "." || value == "..") {
                        return Err(format!(
                            "{} {value:?} cannot be sent as a URL path segment",
                            what()
                        ));
                    }
                    out.extend(utf8_percent_encode(value, COMPONENT));
                }
            }
        }
        let parsed = match base {
            Some(base) if Self::resolves_as_written(&out) => {
                Url::options().base_url(Some(base)).parse(&out)
            }
            // The placeholders made something else of the rest (an empty task before a
            // `/`, a `:` in the first segment): the whole text, parsed alone.
            Some(_) => return self.render_parts(item, &self.parts, None),
            None => Url::parse(&out),
        };
        parsed.map_err(|e| format!("invalid URL: {e}"))
    }
}

/// The base for [`UrlTemplate::render`]'s short way, and the parts that follow it: the
/// template starts with text up to a `/` of the path (`https://api/v1/items/`), which
/// parses alone as an http(s) URL whose path ends there (no query, no fragment), then a
/// tail without `:`, `/`, `\`, `?` or `#`, then a percent-encoded placeholder. Each
/// rendered rest is also looked at ([`UrlTemplate::resolves_as_written`]): what the
/// placeholders put in it must leave it a relative path (no scheme in its first segment,
/// no leading `/` or space), else the whole text is parsed. Resolved, the rest is appended
/// to the base's path, and dot segments and everything after go through the same parser
/// states as in a whole parse (a test compares the two ways over templates, tasks and
/// random ids).
fn fast_base(parts: &[Part]) -> Option<Box<(Url, Vec<Part>)>> {
    let [Part::Lit(prefix), Part::Hole { raw: false, .. }, ..] = parts else {
        return None;
    };
    let split = prefix.rfind('/')?;
    let (head, tail) = prefix.split_at(split + 1);
    if head.contains(['?', '#']) || tail.contains([':', '\\', '/', '?', '#']) {
        return None;
    }
    let base = Url::parse(head).ok()?;
    let usable = matches!(base.scheme(), "http" | "https")
        && base.path().ends_with('/')
        && base.query().is_none()
        && base.fragment().is_none()
        && !base.cannot_be_a_base();
    if !usable {
        return None;
    }
    let mut rest = Vec::with_capacity(parts.len());
    if !tail.is_empty() {
        rest.push(Part::Lit(tail.to_string()));
    }
    rest.extend(parts[1..].iter().cloned());
    Some(Box::new((base, rest)))
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// An empty id (SQL `''` or NULL, JSON `""` or `null`) is an item error whatever the URL
/// source: it names no item, and in a template it would address the collection.
fn check_id(item: &Item) -> Result<(), String> {
    if item.id.is_empty() {
        return Err("empty item id (empty or NULL in the store); no request sent".into());
    }
    Ok(())
}

/// Why a `:raw` value cannot be inserted as it is, if it cannot: empty; a control
/// character (the URL parser drops tabs and newlines silently, so the request would not be
/// for the stored value); in the path, a backslash (read as `/`) or a dot segment (resolved
/// away, so the request would go to another path).
fn check_raw(value: &str, in_path: bool) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if value.chars().any(char::is_control) {
        return Err("it contains a control character");
    }
    if in_path {
        if value.contains('\\') {
            return Err("it contains a backslash");
        }
        let path = value.split(['?', '#']).next().unwrap_or_default();
        let dot = |seg: &str| {
            let seg = seg.to_ascii_lowercase().replace("%2e", ".");
            seg == "." || seg == ".."
        };
        if path.split('/').any(dot) {
            return Err("it contains a dot segment (. or ..)");
        }
    }
    Ok(())
}

/// Checks an item's own URL (no `--url`): an item error when the id is empty, or the url
/// is empty, NULL or not http(s).
pub fn item_url(item: &Item) -> Result<Url, String> {
    check_id(item)?;
    let Some(raw) = item.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        return Err("item has no url".into());
    };
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(u),
        Ok(u) => Err(format!("url scheme {:?} is not http or https", u.scheme())),
        Err(e) => Err(format!("invalid url: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> Item {
        Item {
            key: 1,
            id: id.into(),
            url: None,
            fields: vec![],
            checks: 0,
            first_checked_at: None,
        }
    }

    /// The short way (the rest resolved against the parsed start) gives the URL a whole
    /// parse gives, for templates that take it, whatever the id; others do not take it.
    #[test]
    fn the_short_way_gives_the_same_urls() {
        let fast = [
            "http://h/items/{id}",
            "https://api.example.com:8443/v1/items/{id}?task={task}",
            "http://127.0.0.1:1/a/b-{id}/c",
            "http://h/{id}",
            "http://h/x/{id}#frag",
            "http://h/x/{id}/../y",
            "http://h/x%2F/{id}",
            "http://XN--bcher-kva.example/{id}",
            "https://bücher.example/ü/{id}",
            "http://h/a/p{id}?q={id}",
            "http://h/{id}{id}",
            "http://h/x/.{id}",
            "http://h/x/..{id}",
            "http://u:p@h/{id}",
            "http://h/a b/{id}",
        ];
        let slow = [
            "http://{id}.example/x",
            "http://h/x?id={id}",
            "http://h/a:b{id}",
            "http://h/x/{id:raw}",
            "http://h/p?next=/x/{id}",
        ];
        for t in slow {
            let tpl = UrlTemplate::parse(t, "task 1").unwrap();
            assert!(tpl.base.is_none(), "{t} must not take the short way");
        }
        let mut ids: Vec<String> = [
            "a", ".", "..", "...", "a/b", "a?b#c", "%2e%2e", "ü", " ", "a:b", "\\x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let len = rng.usize(1..12);
            ids.push((0..len).map(|_| char::from(rng.u8(32..127))).collect());
        }
        let tricky = [
            "http://h/a/{id}/{task}/x",
            "http://h/a/{id}{task}:b/",
            "http://h/t/{task}/i/{id}",
            "http://h/a/{task}{id}",
            "http://h/a/{id} x",
            "http://h/a/{task} {id}",
            "http://h/a/{id}\\x",
        ];
        for t in fast.iter().chain(&tricky) {
            for task in ["task 1", "", "a:b", "%", "/"] {
                let tpl = UrlTemplate::parse(t, task).unwrap();
                assert!(tpl.base.is_some(), "{t} should take the short way");
                for id in &ids {
                    let it = item(id);
                    let whole = tpl.render_parts(&it, &tpl.parts, None);
                    assert_eq!(
                        tpl.render(&it),
                        whole,
                        "template {t}, task {task:?}, id {id:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn fills_and_encodes() {
        let t = UrlTemplate::parse("http://h/items/{id}?t={task}", "task 1").unwrap();
        assert_eq!(
            t.render(&item("a/b c%?#..ü")).unwrap().as_str(),
            "http://h/items/a%2Fb%20c%25%3F%23..%C3%BC?t=task%201"
        );
        let u = t.render(&item("../x")).unwrap();
        assert_eq!(u.path(), "/items/..%2Fx");
    }

    #[test]
    fn dot_segments_are_item_errors() {
        let t = UrlTemplate::parse("http://h/items/{id}", "t").unwrap();
        assert!(t.render(&item("..")).is_err());
        assert!(t.render(&item(".")).is_err());
        // in a query they are plain values
        let q = UrlTemplate::parse("http://h/q?id={id}", "t").unwrap();
        assert_eq!(q.render(&item("..")).unwrap().as_str(), "http://h/q?id=..");
    }

    #[test]
    fn a_dot_task_in_the_path_is_refused() {
        let err = UrlTemplate::parse("http://h/tasks/{task}/{id}", "..").unwrap_err();
        assert!(err.to_string().contains("path segment"), "{err}");
        assert!(UrlTemplate::parse("http://h/{id}?task={task}", "..").is_ok());
    }

    #[test]
    fn columns_and_braces() {
        let t = UrlTemplate::parse("http://h/{{x}}/{content}/{content}/{kind}", "t").unwrap();
        assert_eq!(
            t.columns().iter().map(Ident::as_str).collect::<Vec<_>>(),
            ["content", "kind"]
        );
        let mut it = item("i");
        it.fields = vec![Some("c 1".into()), Some("k".into())];
        assert_eq!(
            t.render(&it).unwrap().as_str(),
            "http://h/%7Bx%7D/c%201/c%201/k"
        );
        it.fields[1] = None;
        assert!(t.render(&it).unwrap_err().contains("kind"));
    }

    #[test]
    fn refuses_bad_templates() {
        for (bad, fragment) in [
            ("http://h/items", "no {id}"),
            ("http://h/{task}", "no {id}"),
            ("http://h/{id", "unclosed"),
            ("http://h/id}", "unmatched"),
            ("http://h/{a b}", "placeholder"),
            ("ftp://h/{id}", "scheme"),
            ("not a url {id}", "not a valid URL"),
        ] {
            let err = UrlTemplate::parse(bad, "t").unwrap_err().to_string();
            assert!(err.contains(fragment), "{bad}: {err}");
        }
    }

    #[test]
    fn item_urls() {
        let mut it = item("i");
        assert!(item_url(&it).is_err());
        it.url = Some("https://x/y".into());
        assert!(item_url(&it).is_ok());
        it.url = Some("file:///etc/passwd".into());
        assert!(item_url(&it).is_err());
    }

    #[test]
    fn empty_or_null_values_are_item_errors_never_the_collection() {
        let t = UrlTemplate::parse("http://h/items/{id}", "t").unwrap();
        // An empty id (SQL '' or NULL, JSON "" or null all arrive as "") would be
        // `GET /items/`.
        let err = t.render(&item("")).unwrap_err();
        assert!(err.contains("empty item id"), "{err}");
        // Even when the template does not use {id}.
        let c = UrlTemplate::parse("http://h/items/{content}", "t").unwrap();
        let mut it = item("");
        it.fields = vec![Some("x".into())];
        assert!(c.render(&it).unwrap_err().contains("empty item id"));
        it.id = "i".into();
        it.fields = vec![Some(String::new())];
        let err = c.render(&it).unwrap_err();
        assert!(err.contains("column content is empty"), "{err}");
        it.fields = vec![None];
        let err = c.render(&it).unwrap_err();
        assert!(err.contains("column content is NULL"), "{err}");
        // The item's own url: an empty id is refused before the url is looked at.
        let mut own = item("");
        own.url = Some("http://h/items/x".into());
        assert!(item_url(&own).unwrap_err().contains("empty item id"));
        own.id = "x".into();
        own.url = Some("  ".into());
        assert_eq!(item_url(&own).unwrap_err(), "item has no url");
    }

    #[test]
    fn raw_placeholders_insert_as_is_or_refuse() {
        let t = UrlTemplate::parse("http://h/files/{content:raw}?t={task:raw}", "a b").unwrap();
        let mut it = item("i");
        it.fields = vec![Some("dir/sub/f.mp4".into())];
        assert_eq!(
            t.render(&it).unwrap().as_str(),
            "http://h/files/dir/sub/f.mp4?t=a%20b"
        );
        for (bad, why) in [
            ("", "empty"),
            ("a/../b", "dot segment"),
            ("./b", "dot segment"),
            ("a/%2E%2e", "dot segment"),
            ("a\nb", "control character"),
            ("a\tb", "control character"),
            ("a\\b", "backslash"),
        ] {
            it.fields = vec![Some(bad.into())];
            let err = t.render(&it).unwrap_err();
            assert!(
                err.contains(why) && err.contains("column content"),
                "{bad:?}: {err}"
            );
        }
        let id = UrlTemplate::parse("http://h/{id:raw}", "t").unwrap();
        assert!(id.render(&item("")).unwrap_err().contains("empty item id"));
        assert_eq!(id.render(&item("x/y")).unwrap().as_str(), "http://h/x/y");
        // In the query, dots are plain text.
        let q = UrlTemplate::parse("http://h/q?p={id:raw}", "t").unwrap();
        assert_eq!(
            q.render(&item("../x")).unwrap().as_str(),
            "http://h/q?p=../x"
        );
        let err = UrlTemplate::parse("http://h/{id:enc}", "t").unwrap_err();
        assert!(err.to_string().contains("modifier"), "{err}");
    }
}
