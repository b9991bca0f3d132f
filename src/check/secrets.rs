//! Stage "check": what must never be shown. One place decides how a URL (or a text that may
//! hold one, such as an error message) is shown: URL passwords, the values of secret query
//! parameters (`--secret-param` and a default list of common names), and every value that
//! came from a `${VAR}` are replaced by `***`. Reports, JUnit, logs, errors and the store's
//! `last_error` all show URLs through it.

use url::Url;

/// Query parameters whose values are always secret (case-insensitive; docs/reference.md §3.2).
pub const DEFAULT_SECRET_PARAMS: [&str; 13] = [
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "auth",
    "sig",
    "signature",
    "password",
    "secret",
    "x-amz-signature",
    "x-amz-credential",
    "x-goog-signature",
];

/// The run's secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// Secret query parameter names, lower case.
    params: Vec<String>,
    /// Values that came from `${VAR}` (and must not appear anywhere), longest first.
    values: Vec<String>,
}

impl Secrets {
    /// The default parameter names, `extra` ones (`--secret-param`), and `values` from the
    /// environment.
    pub fn new(extra: &[String], values: Vec<String>) -> Secrets {
        let mut params: Vec<String> = DEFAULT_SECRET_PARAMS
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.trim().to_ascii_lowercase()))
            .filter(|s| !s.is_empty())
            .collect();
        params.sort();
        params.dedup();
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        // Longest first: a value that contains another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Secrets { params, values }
    }

    /// Adds values that must never be shown.
    pub fn add_values(&mut self, more: impl IntoIterator<Item = String>) {
        self.values
            .extend(more.into_iter().filter(|v| !v.is_empty()));
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        self.values.dedup();
    }

    fn is_secret_param(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.params.contains(&name)
    }

    /// The URL as it may be shown: password and secret query values replaced by `***`,
    /// then every `${VAR}` value.
    pub fn url(&self, u: &Url) -> String {
        if u.password().is_none() && u.query().is_none() && self.values.is_empty() {
            // Nothing that could be secret (the common case, once per item).
            return u.as_str().to_string();
        }
        let mut shown = u.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        if let Some(q) = u.query()
            && u.query_pairs().any(|(k, _)| self.is_secret_param(&k))
        {
            // Rebuilt by hand, pair by pair, so the other parameters keep their encoding.
            let parts: Vec<String> = q
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if self.is_secret_param(&decode(k)) => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            shown.set_query(Some(&parts.join("&")));
        }
        self.text(shown.as_str())
    }

    /// A text (an error message, a log line) as it may be shown: every `${VAR}` value, and
    /// the value of `name=...` for every secret parameter name, replaced by `***`.
    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        if self.params.iter().any(|p| contains_ignore_case(&out, p)) {
            out = self.mask_params(&out);
        }
        out
    }

    /// `...name=value...` → `...name=***...` for secret names, where `name` starts a query
    /// parameter (after `?`, `&` or `;`).
    fn mask_params(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(at) = rest.find(['?', '&', ';']) {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let name_end = rest
                .find(|c: char| c == '=' || c == '&' || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = &rest[..name_end];
            if rest[name_end..].starts_with('=') && self.is_secret_param(&decode(name)) {
                out.push_str(name);
                out.push_str("=***");
                rest = &rest[name_end + 1..];
                let value_end = rest
                    .find(|c: char| {
                        c == '&' || c == '#' || c == ')' || c == '"' || c.is_whitespace()
                    })
                    .unwrap_or(rest.len());
                rest = &rest[value_end..];
            }
        }
        out.push_str(rest);
        out
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    hay.to_ascii_lowercase().contains(needle)
}

/// A `--url` template as error messages may show it: a password in it (`user:pass@`) and
/// the values of secret query parameters replaced by `***`. The template is shown with its
/// `${VAR}`s, never their values.
pub fn template_for_errors(template: &str, secrets: &Secrets) -> String {
    let mut shown = template.to_string();
    if let Some(scheme_end) = shown.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = shown[auth_start..]
            .find(['/', '?', '#'])
            .map_or(shown.len(), |e| auth_start + e);
        if let Some(at) = shown[auth_start..auth_end].rfind('@') {
            let userinfo = &shown[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = auth_start + colon + 1;
                shown.replace_range(start..auth_start + at, "***");
            }
        }
    }
    secrets.text(&shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new(&["Session".into()], vec!["s3cr3t-from-env".into()])
    }

    #[test]
    fn urls_lose_passwords_secret_params_and_env_values() {
        let s = secrets();
        let u = Url::parse(
            "https://bob:hunter2@api.test/v1/items/a%2Fb?API_KEY=k1&x=1&session=abc&p=s3cr3t-from-env",
        )
        .unwrap();
        assert_eq!(
            s.url(&u),
            "https://bob:***@api.test/v1/items/a%2Fb?API_KEY=***&x=1&session=***&p=***"
        );
        let plain = Url::parse("http://h/items/a?x=1").unwrap();
        assert_eq!(s.url(&plain), "http://h/items/a?x=1");
    }

    #[test]
    fn texts_lose_them_too() {
        let s = secrets();
        let e =
            "error sending request for url (http://h/a?token=t0k&x=2): refused; s3cr3t-from-env";
        assert_eq!(
            s.text(e),
            "error sending request for url (http://h/a?token=***&x=2): refused; ***"
        );
        assert_eq!(s.text("keyboard monkey"), "keyboard monkey");
    }

    #[test]
    fn templates_in_errors_show_no_password() {
        let s = secrets();
        assert_eq!(
            template_for_errors("https://u:hunter2@h/{nope?key=abc&t=${TOKEN}", &s),
            "https://u:***@h/{nope?key=***&t=${TOKEN}"
        );
        assert_eq!(template_for_errors("http://h/{id}", &s), "http://h/{id}");
    }
}
