//! Stage "check", I/O part: one item, start to verdict. Sends the GET through the shared
//! client, bounds each attempt by `--timeout`, streams the body up to `--max-body`, follows
//! redirects (dropping secret headers when the origin changes), and retries retryable
//! failures with full-jitter backoff or the server's `Retry-After`. Holds a request permit
//! only while a request is in flight, never while it sleeps. Knows nothing of stores.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, LOCATION, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::client::Clients;
use super::gate::{Gate, Refused};
use super::hosts::Signal;
use super::judge::{self, Expectations, Judgement};
use crate::model::{Item, Outcome, Verdict};

/// Most redirects followed within one attempt (curl's and reqwest's usual bound).
pub const MAX_REDIRECTS: usize = 10;
/// The longest `Retry-After` carried into `next_check_at`.
pub const MAX_CARRIED_WAIT: Duration = Duration::from_secs(7 * 86_400);
/// Bytes of an unexpected answer's body read to keep the connection reusable.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// How one item is fetched and judged; shared by every check of the run.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// One attempt, connect to last body byte.
    pub timeout: Duration,
    /// Further attempts after the first, for retryable failures.
    pub retries: u32,
    /// Lower bound of the backoff between attempts.
    pub backoff_min: Duration,
    /// Upper bound of the backoff, also the cap on `Retry-After`.
    pub backoff_max: Duration,
    /// Largest body read; larger is an error for the item.
    pub max_body: u64,
    /// What counts as OK.
    pub expect: Expectations,
    /// Headers sent with every request (secret ones marked sensitive).
    pub headers: HeaderMap,
    /// Header names never sent to another origin after a redirect.
    pub secret_headers: Vec<HeaderName>,
    /// How URLs and errors are shown (passwords, secret parameters, `${VAR}` values).
    pub secrets: super::secrets::Secrets,
    /// `--method`: GET, or HEAD (existence only: no body is read or judged).
    pub method: Method,
    /// Most time a request waits for the first answer of a new `https://` origin
    /// (see `client::FirstContact`).
    pub first_contact_wait: Duration,
}

/// Checks items: the shared HTTP clients, the admission gate and the config.
pub struct Fetcher {
    clients: Clients,
    cfg: FetchConfig,
    gate: std::sync::Arc<Gate>,
}

/// Why one attempt did not produce an answer.
#[derive(Debug)]
enum Failure {
    /// No answer within `--timeout`: worth another attempt.
    Timeout(String),
    /// Worth another attempt (connection refused or reset, a connect timeout).
    Retryable(String),
    /// Final (body too large, redirect loop, bad redirect), with the status if one came.
    Fatal(String, Option<u16>),
}

/// What the attempts of one item found.
struct Found {
    outcome: Outcome,
    /// HTTP status of the last answer.
    status: Option<u16>,
    attempts: u32,
    error: Option<String>,
    /// The last answer's `Retry-After`, when the item ended on it (carried into
    /// `next_check_at`).
    retry_after: Option<Duration>,
    /// Deferred by an open circuit: when it may be probed again.
    deferred_until: Option<SystemTime>,
    /// The host's limit when the last attempt was admitted.
    host_limit: Option<usize>,
}

impl Found {
    fn error(status: Option<u16>, attempts: u32, why: String) -> Found {
        Found {
            outcome: Outcome::Error,
            status,
            attempts,
            error: Some(why),
            retry_after: None,
            deferred_until: None,
            host_limit: None,
        }
    }
}

/// An answer to one attempt.
struct Answer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
}

impl Fetcher {
    /// A fetcher sending through `clients` whatever `gate` admits.
    pub fn new(clients: Clients, cfg: FetchConfig, gate: std::sync::Arc<Gate>) -> Fetcher {
        Fetcher { clients, cfg, gate }
    }

    /// Checks one item. `None` when the run was cancelled before the item got an outcome:
    /// its status must stay as it is.
    pub async fn check(
        &self,
        item: Item,
        url: Result<Url, String>,
        mut slot: super::pool::Slot,
        cancel: &CancellationToken,
    ) -> Option<Verdict> {
        let (url, found, elapsed) = match url {
            Ok(url) => {
                let mut first_sent = None;
                let found = self
                    .retry_loop(&url, &mut slot, cancel, &mut first_sent)
                    .await?;
                let elapsed = first_sent.map_or(Duration::ZERO, |t: Instant| t.elapsed());
                (Some(url), found, elapsed)
            }
            Err(why) => (None, Found::error(None, 0, why), Duration::ZERO),
        };
        let checked_at = SystemTime::now();
        Some(Verdict {
            key: item.key,
            id: item.id,
            outcome: found.outcome,
            http_status: found.status,
            attempts: found.attempts,
            // Error texts may quote the URL (a connection error's does).
            error: found.error.map(|e| self.cfg.secrets.text(&e)),
            checked_at,
            elapsed,
            url: url.as_ref().map(|u| self.cfg.secrets.url(u)),
            // The server said when to come back, or the host's circuit did: the next run
            // honours it (a server's word for at most a week: its header must not push an
            // item out of every run, or past the times a store can hold).
            next_check_at: found.deferred_until.or_else(|| {
                found
                    .retry_after
                    .map(|d| checked_at + d.min(MAX_CARRIED_WAIT))
            }),
            host_limit: found.host_limit,
        })
    }

    /// Attempts until an answer is final or the retries are spent. `first_sent` is when
    /// the first request was admitted (the latency of an item does not count its wait for
    /// a request slot).
    async fn retry_loop(
        &self,
        url: &Url,
        slot: &mut super::pool::Slot,
        cancel: &CancellationToken,
        first_sent: &mut Option<Instant>,
    ) -> Option<Found> {
        let mut attempts = 0u32;
        let (mut host_limit, mut last_seen) = (None, None);
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            attempts += 1;
            let result = {
                let admitted = match self.gate.admit(url, attempts, cancel).await {
                    Ok(a) => a,
                    Err(Refused::Cancelled) => return None,
                    Err(Refused::Deferred(d)) => {
                        return Some(Found {
                            outcome: Outcome::Deferred,
                            status: last_seen,
                            attempts: attempts - 1,
                            error: Some(d.why),
                            retry_after: None,
                            deferred_until: Some(d.until),
                            host_limit,
                        });
                    }
                };
                host_limit = admitted.host_limit();
                first_sent.get_or_insert_with(Instant::now);
                // Boxed: the attempt's large state lives on the heap only while it runs, so
                // an item waiting out a backoff is small (many can wait at once).
                let attempt = Box::pin(self.attempt(url));
                let r = match tokio::time::timeout(self.cfg.timeout, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::Timeout(format!(
                        "timed out after {}",
                        humantime::format_duration(self.cfg.timeout)
                    ))),
                };
                let signal = match &r {
                    Ok(answer) => Signal::Answer(answer.status),
                    Err(Failure::Timeout(_)) => Signal::Timeout,
                    Err(Failure::Retryable(_)) => Signal::Connect,
                    Err(Failure::Fatal(_, Some(status))) => Signal::Answer(*status),
                    Err(Failure::Fatal(_, None)) => Signal::Neutral,
                };
                admitted.done(signal, attempts > 1);
                r
            };
            let (why, retry_after, last_status) = match result {
                Ok(answer) => {
                    let status = Some(answer.status);
                    let final_answer =
                        match judge::judge(answer.status, &answer.body, &self.cfg.expect) {
                            Judgement::Retry(why) => Err((why, answer.retry_after, status)),
                            Judgement::Ok => Ok((Outcome::Ok, None)),
                            Judgement::StillFailed(why) => Ok((Outcome::StillFailed, Some(why))),
                            Judgement::Dead(why) => Ok((Outcome::Dead, Some(why))),
                            Judgement::NotFound => {
                                Ok((Outcome::NotFound, Some(judge::status_text(answer.status))))
                            }
                            Judgement::Error(why) => Ok((Outcome::Error, Some(why))),
                        };
                    match final_answer {
                        Ok((outcome, error)) => {
                            return Some(Found {
                                outcome,
                                status,
                                attempts,
                                error,
                                retry_after: None,
                                deferred_until: None,
                                host_limit,
                            });
                        }
                        Err(retry) => retry,
                    }
                }
                Err(Failure::Fatal(why, status)) => {
                    let mut found = Found::error(status, attempts, why);
                    found.host_limit = host_limit;
                    return Some(found);
                }
                Err(Failure::Retryable(why) | Failure::Timeout(why)) => (why, None, None),
            };
            last_seen = last_status.or(last_seen);
            if attempts > self.cfg.retries {
                let why = if attempts > 1 {
                    format!("{why} (after {attempts} attempts)")
                } else {
                    why
                };
                let mut found = Found::error(last_status, attempts, why);
                found.host_limit = host_limit;
                // A Retry-After longer than the capped waits of this run: the next run
                // comes back then (next_check_at).
                found.retry_after = retry_after;
                return Some(found);
            }
            if let Some(d) = retry_after {
                // The whole host asked for a break, not just this item.
                self.gate.pause_host(url, d.min(self.cfg.backoff_max));
            }
            let delay = retry_after
                .map(|d| d.min(self.cfg.backoff_max))
                .unwrap_or_else(|| {
                    backoff(self.cfg.backoff_min, self.cfg.backoff_max, attempts - 1)
                });
            tracing::debug!(url = %self.cfg.secrets.url(url), attempt = attempts, error = %self.cfg.secrets.text(&why), delay_ms = delay.as_millis() as u64, "retrying");
            let wait = async {
                // The wait leaves the item's place to a new item.
                slot.to_retry().await;
                tokio::time::sleep(delay).await;
            };
            tokio::select! {
                _ = wait => {}
                _ = cancel.cancelled() => return None,
            }
        }
    }

    /// One attempt: the request and its redirects, up to the judged answer.
    async fn attempt(&self, first: &Url) -> Result<Answer, Failure> {
        let mut url = first.clone();
        for hop in 0..=MAX_REDIRECTS {
            let (client, contact) = self.clients.for_url(&url);
            let mut request = client.request(self.cfg.method.clone(), url.clone());
            if !self.cfg.headers.is_empty() {
                let mut headers = self.cfg.headers.clone();
                if hop > 0 && url.origin() != first.origin() {
                    // A redirect to another host must not carry credentials there.
                    for name in &self.cfg.secret_headers {
                        headers.remove(name);
                    }
                }
                request = request.headers(headers);
            }
            let first_turn = contact.wait(self.cfg.first_contact_wait).await;
            let sent = request.send().await;
            drop(first_turn);
            let mut resp = sent.map_err(|e| classify(e, &url))?;
            let status = resp.status();
            if status.is_redirection()
                && let Some(next) = redirect_target(&resp, &url)?
            {
                drain(&mut resp, DRAIN_LIMIT).await;
                url = next;
                continue;
            }
            let code = status.as_u16();
            let retry_after = if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                retry_after(&resp)
            } else {
                None
            };
            let body = if self.cfg.method == Method::HEAD {
                // No body follows a HEAD answer, whatever its Content-Length says.
                Vec::new()
            } else if self.cfg.expect.status.contains(code) {
                // Read (or count) every byte: the cap applies to answers we judge.
                read_body(
                    &mut resp,
                    code,
                    self.cfg.max_body,
                    judge::needs_body(code, &self.cfg.expect),
                )
                .await?
            } else {
                drain(&mut resp, DRAIN_LIMIT).await;
                Vec::new()
            };
            return Ok(Answer {
                status: code,
                body,
                retry_after,
            });
        }
        Err(Failure::Fatal(
            format!("too many redirects (more than {MAX_REDIRECTS})"),
            None,
        ))
    }
}

/// A URL for reports and logs: a password in it is replaced by `***`. Takes the URL by
/// value: without a password its text is reused, not copied.
pub fn redacted(mut u: Url) -> String {
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.into()
}

/// Where a 3xx answer points, or `None` when it is not a redirect we follow (304, no Location).
fn redirect_target(resp: &Response, base: &Url) -> Result<Option<Url>, Failure> {
    if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return Ok(None);
    }
    let Some(loc) = resp.headers().get(LOCATION) else {
        return Ok(None);
    };
    let loc = loc
        .to_str()
        .map_err(|_| Failure::Fatal("redirect Location is not text".into(), None))?;
    let next = base
        .join(loc)
        .map_err(|e| Failure::Fatal(format!("bad redirect Location: {e}"), None))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(Failure::Fatal(
            format!("redirect to a {} URL refused", next.scheme()),
            None,
        ));
    }
    Ok(Some(next))
}

/// Reads the body of a `status` answer up to `max` bytes, keeping it only when `keep`.
async fn read_body(
    resp: &mut Response,
    status: u16,
    max: u64,
    keep: bool,
) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::Fatal(
            format!("body larger than --max-body ({max} bytes)"),
            Some(status),
        )
    };
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    if keep {
        let hint = resp.content_length().unwrap_or(0).min(max).min(1 << 20);
        body.reserve(hint as usize);
    }
    let declared = resp.content_length();
    let mut seen = 0u64;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            // reqwest calls every failure of the body stream a "decode" error; without
            // decompression it is the connection breaking mid-body: retryable, like a reset.
            Err(e) => {
                let cause = describe(&e.without_url());
                let cause = cause
                    .strip_prefix("error decoding response body: ")
                    .unwrap_or(&cause);
                let got = declared.map_or_else(|| seen.to_string(), |n| format!("{seen} of {n}"));
                return Err(Failure::Retryable(format!(
                    "body cut short after {got} bytes: {cause}"
                )));
            }
        };
        seen += chunk.len() as u64;
        if seen > max {
            return Err(too_large());
        }
        if keep {
            body.extend_from_slice(&chunk);
        }
    }
    Ok(body)
}

/// Reads and drops up to `limit` bytes so a small body does not cost the connection.
async fn drain(resp: &mut Response, limit: u64) {
    let mut seen = 0u64;
    while seen <= limit {
        match resp.chunk().await {
            Ok(Some(c)) => seen += c.len() as u64,
            _ => return,
        }
    }
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Full-jitter exponential backoff: uniform in `[min, min(max, min·2^(n+1))]` before retry n
/// (0-based), so waits spread out instead of hitting the server in waves.
pub fn backoff(min: Duration, max: Duration, n: u32) -> Duration {
    let ceiling = min
        .checked_mul(1u32.checked_shl(n + 1).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
        .max(min);
    let span = ceiling.saturating_sub(min).as_nanos() as u64;
    min + Duration::from_nanos(if span == 0 {
        0
    } else {
        fastrand::u64(0..=span)
    })
}

/// Turns a client error into a retryable or final failure with a message that holds no URL
/// (URLs may carry tokens in their query) and none of the HTTP stack's internal layers:
/// what happened, then the root cause (`cannot connect: Connection refused (os error 111)`).
/// A TLS certificate problem is final: another attempt would meet the same certificate.
fn classify(e: reqwest::Error, url: &Url) -> Failure {
    if let Some(why) = find_rustls_error(&e).and_then(|tls| tls_message(&tls, url)) {
        tracing::debug!(error = %describe(&e.without_url()), "TLS failure");
        return Failure::Fatal(why, None);
    }
    let retryable = e.is_timeout() || e.is_connect() || e.is_request() || e.is_body();
    let fatal = e.is_builder() || e.is_redirect() || e.is_decode();
    let what = if e.is_connect() && e.is_timeout() {
        "connect timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_request() || e.is_body() {
        "connection failed"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let msg = match root_cause(&e) {
        Some(root) if !what.ends_with("timed out") => format!("{what}: {root}"),
        _ if what.ends_with("timed out") => what.to_string(),
        _ => describe(&e),
    };
    tracing::debug!(error = %describe(&e), "request failed");
    if retryable && !fatal {
        Failure::Retryable(msg)
    } else {
        Failure::Fatal(msg, None)
    }
}

/// The rustls error somewhere in an error's chain. `std::io::Error` hides the error it
/// wraps from `source()` (it returns the wrapped error's own source), and hyper passes TLS
/// failures up as such io errors, so each io link is opened by hand. An alert read after
/// the handshake (a server refusing the client certificate, under TLS 1.3) comes up as
/// text only, so that one is recognised by rustls's wording of it.
fn find_rustls_error(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        let io_inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if let Some(alert) = io_inner.and_then(|inner| alert_from_text(&inner.to_string())) {
            return Some(rustls::Error::AlertReceived(alert));
        }
        // io errors nest (hyper-rustls wraps tokio-rustls's), so go into each one.
        cur = match io_inner {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    None
}

/// The certificate alerts, by the name rustls's "received fatal alert: NAME" uses.
fn alert_from_text(text: &str) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    let name = text.strip_prefix("received fatal alert: ")?.trim();
    [
        A::CertificateRequired,
        A::BadCertificate,
        A::UnknownCA,
        A::CertificateUnknown,
        A::AccessDenied,
        A::CertificateExpired,
        A::CertificateRevoked,
        A::UnsupportedCertificate,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name)
}

/// A message for people about a TLS failure that no retry can fix, or `None` for the
/// others (they stay connection errors, retried).
fn tls_message(e: &rustls::Error, url: &Url) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError as C};
    let host = url.host_str().unwrap_or("the server");
    let fix = "use --cacert FILE with the CA that signed it (or --insecure)";
    let untrusted = |why: &str| format!("certificate for {host} is not trusted: {why}; {fix}");
    let msg = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                untrusted("unknown issuer (signed by a CA that is not in the trust store)")
            }
            C::Other(o) if o.0.downcast_ref::<super::client::SelfSigned>().is_some() => format!(
                "certificate for {host} is not trusted: self-signed; use --cacert FILE with that \
                 certificate (or --insecure)"
            ),
            C::Expired | C::ExpiredContext { .. } => {
                format!(
                    "certificate for {host} has expired ({c}); the server must renew it (or --insecure)"
                )
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!(
                    "certificate for {host} is not valid yet ({c}); check the clock (or --insecure)"
                )
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "certificate is not valid for the name {host} ({c}); use the name the certificate \
                 was issued for (or --insecure)"
            ),
            C::BadSignature => untrusted("bad signature"),
            C::Revoked => format!("certificate for {host} is revoked"),
            // webpki's "a CA certificate as the server's own": the usual self-signed
            // certificate made with `openssl req -x509`, which rustls refuses even when
            // trusted. Only its Debug text names it without depending on webpki.
            C::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => untrusted(
                "self-signed (the server presents a CA certificate as its own, which is \
                 refused even with --cacert; give the server a leaf certificate, or --insecure)",
            ),
            other => untrusted(&other.to_string()),
        },
        rustls::Error::AlertReceived(
            a @ (Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::AccessDenied
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate),
        ) => format!(
            "{host} refused the TLS client certificate ({a:?}); give the one it accepts with \
             --cert FILE --key FILE"
        ),
        _ => return None,
    };
    Some(msg)
}

/// The innermost error of a chain, when there is more than one link.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = e.source()?;
    while let Some(next) = cur.source() {
        cur = next;
    }
    Some(cur.to_string())
}

/// An error with its chain of causes, `a: b: c`, without repeats.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_in_bounds_and_grows() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        for n in 0..40 {
            let d = backoff(min, max, n);
            assert!(d >= min && d <= max, "retry {n}: {d:?}");
            let ceiling = (min * 2u32.saturating_pow((n + 1).min(20))).min(max);
            assert!(d <= ceiling, "retry {n}: {d:?} > {ceiling:?}");
        }
        // jitter: not always the same value
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(min, max, 3)).collect();
        assert!(spread.len() > 10);
        // degenerate bounds
        assert_eq!(backoff(max, max, 5), max);
        assert_eq!(backoff(Duration::ZERO, Duration::ZERO, 5), Duration::ZERO);
    }

    #[test]
    fn tls_failures_get_messages_for_people() {
        use rustls::CertificateError as C;
        let url = Url::parse("https://api.example.com/items/1").unwrap();
        let msg = |e: rustls::Error| tls_message(&e, &url).unwrap();
        assert_eq!(
            msg(rustls::Error::InvalidCertificate(C::UnknownIssuer)),
            "certificate for api.example.com is not trusted: unknown issuer (signed by a CA \
             that is not in the trust store); use --cacert FILE with the CA that signed it (or \
             --insecure)"
        );
        let self_signed = C::Other(rustls::OtherError(std::sync::Arc::new(
            super::super::client::SelfSigned,
        )));
        assert_eq!(
            msg(rustls::Error::InvalidCertificate(self_signed)),
            "certificate for api.example.com is not trusted: self-signed; use --cacert FILE \
             with that certificate (or --insecure)"
        );
        assert!(msg(rustls::Error::InvalidCertificate(C::Expired)).contains("has expired"));
        assert!(
            msg(rustls::Error::InvalidCertificate(C::NotValidForName))
                .contains("not valid for the name api.example.com")
        );
        // a transient TLS problem is not a certificate error: stays retryable
        assert!(tls_message(&rustls::Error::DecryptError, &url).is_none());
        // the alert that only comes up as text
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        let found = find_rustls_error(&io).unwrap();
        assert!(msg(found).contains("--cert FILE --key FILE"));
        let other = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: DecodeError",
        );
        assert!(find_rustls_error(&other).is_none());
    }

    #[test]
    fn describe_chains_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = anyhow::Error::new(io).context("reading body");
        let s = describe(e.as_ref());
        assert_eq!(s, "reading body: reset by peer");
    }
}
