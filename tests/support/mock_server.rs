//! A mock "item status" HTTP server for integration tests, the demo and the benchmarks.
//!
//! The server answers `GET /items/{id}` (and `GET /q?id={id}`) with a behaviour chosen per
//! id, so one run of `recheck` can exercise successes, still-failed items, HTTP errors,
//! retries, hangs, garbage and huge bodies at once, just by how the ids are named:
//!
//! | id prefix (before the first `-`) | behaviour                                              |
//! |----------------------------------|--------------------------------------------------------|
//! | `ok`                             | [`Behavior::Ok`]: 200 `{"id":..,"status":"done","ok":true}` |
//! | `fail`                           | [`Behavior::StillFailed`]: 200 `{"id":..,"status":"processing","ok":false}` |
//! | `404` / `410`                    | [`Behavior::NotFound`] / [`Behavior::Gone`]             |
//! | `s<code>` (`s500`, `s418`)       | [`Behavior::Status`]: that status, `{"error":"status N"}` |
//! | `<code>x<n>` (`503x2`, `429x3`)  | [`Behavior::FailThenOk`]: `code` for the first `n` requests of the id, then Ok |
//! | `ra<secs>x<n>` (`ra1x1`)         | [`Behavior::RetryAfter`]: 429 + `Retry-After: secs` `n` times, then Ok |
//! | `hang`                           | [`Behavior::Hang`]: never answers                      |
//! | `garbage`                        | [`Behavior::Garbage`]: 200 with a body that is not JSON |
//! | `huge` / `huge<bytes>`           | [`Behavior::Huge`]: 200 with a streamed body (default 8 MiB) |
//! | `hugechunked` / `hugechunked<bytes>` | [`Behavior::HugeChunked`]: the same body without Content-Length (chunked) |
//! | `slow<ms>` (`slow300`)           | [`Behavior::Slow`]: extra delay, then Ok               |
//! | `dribble` / `dribble<ms>`        | [`Behavior::Dribble`]: 200, Content-Length 1000, one body byte every 100 ms (or `ms`) |
//! | `reset`                          | [`Behavior::Reset`]: reads the request, then resets the TCP connection (RST), no answer |
//! | `badlen`                         | [`Behavior::BadLength`]: 200, Content-Length 1000, sends 100 bytes, then closes |
//! | `loop`                           | [`Behavior::RedirectLoop`]: 302 to the very same path and query, forever |
//! | `job<n>` / `jobf<n>` (`job40`)   | [`Behavior::Job`]: 200 `{"id":..,"status":..,"progress":n,"renditions":[..]}`; status `failed` at 0, `processing` below 100, else `done`; one rendition per full 25 of progress; `jobf` writes progress as `n.0` |
//!
//! An id without a `-` has no prefix (so purely numeric ids such as `404` are *not*
//! "not found"); ids without a recognised prefix get [`MockConfig::default`]. A per-id
//! override set with [`MockServer::set`] wins over the prefix (and is the only way to get
//! [`Behavior::Redirect`]).
//!
//! `HEAD` is answered like `GET` (same status and headers, no body) and counted in
//! [`MockServer::head_requests`]. A request in absolute form (`GET http://host/items/x`, what
//! a client sends to an HTTP proxy) is routed by its path like any other and counted in
//! [`MockServer::absolute_form_requests`], so a test can point `HTTP_PROXY` at the server.
//!
//! Transports: plain TCP serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c);
//! [`MockServer::start_tls`] serves TLS with a certificate made at start by a CA of its own
//! ([`MockServer::ca_pem`] is what a client passes as `--cacert`), offering `h2` and
//! `http/1.1` by ALPN (only `http/1.1` with [`MockTls::http1_only`], the standalone binary's
//! `--tls-http1-only`), optionally demanding a client certificate from that CA
//! ([`MockServer::client_cert_pem`], [`MockServer::client_key_pem`]) or presenting a
//! broken one (expired, another name, self-signed). [`MockServer::connections`],
//! [`MockServer::tls_handshakes`] and [`MockServer::h2_requests`] show connection reuse.
//!
//! Besides the item routes the server answers `GET /_stats` (JSON counters, add `?ids=1` for
//! the per-id map, `?settled=1` for `settled_high_water`: the high-water over the requests
//! that have ended, overlaps shorter than [`SETTLE`] left out) and `POST /_reset`; those two
//! are control endpoints and are not counted.
//! Every other path gets 404 `{"error":"no route"}`.
//!
//! The hostile behaviours (`hang`, `dribble`, `reset`, `badlen`, `loop`, `huge…`,
//! `garbage`, and a [`Behavior::Redirect`] to another server) are what a misbehaving API
//! does to a client; `tests/it/hostile.rs` runs `recheck` against each of them.
//!
//! The module is self-contained (no `recheck` imports) so it can be `#[path]`-included by
//! integration tests, examples and benches alike.
//!
//! Performance notes: benchmarks push hundreds of thousands of requests through this, from
//! many connections at once, so the per-request bookkeeping is a handful of atomics plus
//! three short critical sections (a sharded per-id map, and two append-only logs that grow
//! in fixed-size chunks so no push ever copies the whole log while holding the lock).
//! Nothing slow (allocation of big buffers, sleeping, JSON building) happens under a lock.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

/// Default size of a `huge` body without an explicit byte count.
pub const DEFAULT_HUGE_BYTES: u64 = 8 * 1024 * 1024;
/// Default pause between two bytes of a `dribble` body.
pub const DEFAULT_DRIBBLE_INTERVAL: Duration = Duration::from_millis(100);
/// Size of a `dribble` body (and its Content-Length).
pub const DRIBBLE_BYTES: u64 = 1000;
/// Content-Length a `badlen` answer declares.
pub const BADLEN_DECLARED: u64 = 1000;
/// Bytes a `badlen` answer actually sends before closing the connection.
pub const BADLEN_SENT: u64 = 100;
/// How many raw request paths [`MockServer::raw_paths`] keeps (the first ones win).
pub const RAW_PATHS_CAP: usize = 100_000;
/// How many entries [`MockServer::answered`] keeps (the first ones win).
pub const ANSWERED_CAP: usize = 1_000_000;
/// Most request spans kept for the settled high-water (`/_stats`).
pub const SPANS_CAP: usize = 2_000_000;
/// Overlaps shorter than this are left out of the settled high-water: the time the server
/// may take to notice that a client closed a connection whose request it was still holding
/// (a client that gives up on a hang closes it and sends its next request at once; which of
/// the two the server sees first is a race). A request really sent beyond a client's bound
/// overlaps the others for as long as it is answered, far longer than this.
pub const SETTLE: Duration = Duration::from_millis(5);

/// What the server does for one id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200 `{"id":"<id>","status":"done","ok":true}`.
    Ok,
    /// 200 `{"id":"<id>","status":"processing","ok":false}`.
    StillFailed,
    /// 404 `{"error":"not found"}`.
    NotFound,
    /// 410 `{"error":"gone"}`.
    Gone,
    /// That status with body `{"error":"status N"}` (an invalid code gives 500).
    Status(u16),
    /// `status` for the first `times` requests of the id, then the Ok answer. No `Retry-After`.
    FailThenOk { status: u16, times: u32 },
    /// 429 with `Retry-After: <secs>` for the first `times` requests of the id, then Ok.
    RetryAfter { secs: u64, times: u32 },
    /// Accept the request and never answer (the handler sleeps an hour; other requests are
    /// unaffected). Dropping the connection ends it.
    Hang,
    /// 200, `application/json`, body `{"id": not json at all <<<`.
    Garbage,
    /// 200 with a streamed body of exactly `bytes` bytes (`{"pad":"aaaa…"}`, or just `a`s when
    /// shorter than 10 bytes), produced lazily in 64 KiB static chunks, with Content-Length.
    Huge { bytes: u64 },
    /// Like [`Behavior::Huge`] but without Content-Length (`Transfer-Encoding: chunked`), so
    /// a client only learns the size by counting.
    HugeChunked { bytes: u64 },
    /// Sleep `delay` (on top of [`MockConfig::latency`]), then the Ok answer.
    Slow { delay: Duration },
    /// 302 with `Location: <to>` (only via [`MockServer::set`]).
    Redirect { to: String },
    /// 200 with `Content-Length: 1000` ([`DRIBBLE_BYTES`]) and the [`Behavior::Huge`] body of
    /// that size, sent one byte every `interval` (the first one right away).
    Dribble { interval: Duration },
    /// Read the request, then reset the connection (TCP RST: `SO_LINGER` 0 and close)
    /// without sending a single byte. Other connections are unaffected.
    Reset,
    /// 200 declaring `Content-Length: 1000` ([`BADLEN_DECLARED`]) but sending only the first
    /// 100 bytes ([`BADLEN_SENT`]) of that body, then closing the connection.
    BadLength,
    /// 302 with `Location:` the request's own path and query, forever.
    RedirectLoop,
    /// 200 with a transcode-job body for rules with operators and jq filters:
    /// `{"id":..,"status":S,"progress":P,"renditions":["r0",..]}` with S `failed` at
    /// progress 0, `processing` below 100, else `done`, and `progress / 25` renditions.
    /// `float` writes the progress as `P.0` (for "numbers compare by value").
    Job { progress: u32, float: bool },
}

impl Behavior {
    /// The behaviour spelled by a prefix (`ok`, `fail`, `404`, `410`, `s500`, `503x2`,
    /// `ra1x1`, `hang`, `garbage`, `huge`, `huge1000`, `hugechunked`, `hugechunked1000`,
    /// `slow300`, `dribble`, `dribble50`, `reset`, `badlen`, `loop`), or `None`.
    pub fn from_prefix(prefix: &str) -> Option<Behavior> {
        match prefix {
            "ok" => return Some(Behavior::Ok),
            "fail" => return Some(Behavior::StillFailed),
            "404" => return Some(Behavior::NotFound),
            "410" => return Some(Behavior::Gone),
            "hang" => return Some(Behavior::Hang),
            "garbage" => return Some(Behavior::Garbage),
            "reset" => return Some(Behavior::Reset),
            "badlen" => return Some(Behavior::BadLength),
            "loop" => return Some(Behavior::RedirectLoop),
            "huge" => {
                return Some(Behavior::Huge {
                    bytes: DEFAULT_HUGE_BYTES,
                });
            }
            "hugechunked" => {
                return Some(Behavior::HugeChunked {
                    bytes: DEFAULT_HUGE_BYTES,
                });
            }
            "dribble" => {
                return Some(Behavior::Dribble {
                    interval: DEFAULT_DRIBBLE_INTERVAL,
                });
            }
            _ => {}
        }
        if let Some(ms) = prefix.strip_prefix("slow") {
            return Some(Behavior::Slow {
                delay: Duration::from_millis(digits(ms)?),
            });
        }
        if let Some(ms) = prefix.strip_prefix("dribble") {
            return Some(Behavior::Dribble {
                interval: Duration::from_millis(digits(ms)?),
            });
        }
        // Before `huge<bytes>`, whose digits would refuse `chunked…` anyway.
        if let Some(n) = prefix.strip_prefix("hugechunked") {
            return Some(Behavior::HugeChunked { bytes: digits(n)? });
        }
        if let Some(n) = prefix.strip_prefix("huge") {
            return Some(Behavior::Huge { bytes: digits(n)? });
        }
        if let Some(n) = prefix.strip_prefix("jobf") {
            return Some(Behavior::Job {
                progress: digits(n)?,
                float: true,
            });
        }
        if let Some(n) = prefix.strip_prefix("job") {
            return Some(Behavior::Job {
                progress: digits(n)?,
                float: false,
            });
        }
        if let Some(rest) = prefix.strip_prefix("ra") {
            let (secs, times) = rest.split_once('x')?;
            return Some(Behavior::RetryAfter {
                secs: digits(secs)?,
                times: digits(times)?,
            });
        }
        if let Some(code) = prefix.strip_prefix('s') {
            return Some(Behavior::Status(status_code(code)?));
        }
        let (status, times) = prefix.split_once('x')?;
        Some(Behavior::FailThenOk {
            status: status_code(status)?,
            times: digits(times)?,
        })
    }

    /// The behaviour chosen by an id's prefix (the part before the first `-`), if any.
    /// An id without `-` has no prefix.
    pub fn for_id(id: &str) -> Option<Behavior> {
        let (prefix, _) = id.split_once('-')?;
        Behavior::from_prefix(prefix)
    }
}

/// Parses the prefix spellings of [`Behavior::from_prefix`] (used by `--default`).
impl FromStr for Behavior {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Behavior::from_prefix(s).ok_or_else(|| {
            format!(
                "unknown behaviour {s:?}; expected one of ok, fail, 404, 410, s<code>, \
                 <code>x<times>, ra<secs>x<times>, hang, garbage, huge[<bytes>], \
                 hugechunked[<bytes>], slow<ms>, dribble[<ms>], reset, badlen, loop, \
                 job<progress>, jobf<progress>"
            )
        })
    }
}

/// All-ASCII-digit number (`str::parse` alone would also take a leading `+`).
fn digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A status code `http` accepts (100..=999).
fn status_code(s: &str) -> Option<u16> {
    digits::<u16>(s).filter(|c| (100..=999).contains(c))
}

/// Server configuration.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Fixed sleep applied to every id request after it is counted, before it is answered.
    pub latency: Duration,
    /// Behaviour for ids with no override and no recognised prefix.
    pub default: Behavior,
    /// If set, every id request without exactly this header value gets 401
    /// `{"error":"unauthorized"}` (the request is still counted). The name is matched
    /// case-insensitively, the value exactly.
    pub require_header: Option<(String, String)>,
    /// If set, an id request that arrives while more than this many requests are in flight
    /// is answered 429 (no `Retry-After`) after the usual latency: a host that pushes back
    /// when it is overloaded.
    pub overload_above: Option<u64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            default: Behavior::Ok,
            require_header: None,
            overload_above: None,
        }
    }
}

/// TLS settings of [`MockServer::start_tls`]. The default: a certificate for `127.0.0.1`
/// and `localhost`, valid now, signed by the server's own CA, ALPN `h2` and `http/1.1`, no
/// client certificate asked for.
#[derive(Clone, Debug, Default)]
pub struct MockTls {
    /// Names (DNS names or IP addresses) the server certificate is for; empty: `127.0.0.1`
    /// and `localhost`.
    pub names: Vec<String>,
    /// The server certificate expired (valid 2020-01-01 to 2021-01-01).
    pub expired: bool,
    /// The server certificate is self-signed (no CA; [`MockServer::ca_pem`] is then that
    /// certificate itself).
    pub self_signed: bool,
    /// With `self_signed`: the certificate says it is a CA (`CA:TRUE`), as the ones
    /// `openssl req -x509` makes by default.
    pub ca_flag: bool,
    /// Demand a client certificate signed by the server's CA (mutual TLS).
    pub require_client_cert: bool,
    /// Offer only `http/1.1` by ALPN (no HTTP/2).
    pub http1_only: bool,
}

/// The certificates of a TLS mock server, made at start.
struct Pki {
    /// What a client trusts: the CA certificate (or the self-signed server certificate).
    trust_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn make(tls: &MockTls) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let named = |cn: &str, names: Vec<String>| {
            let mut p = CertificateParams::new(names).expect("mock TLS: certificate names");
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            p.distinguished_name = dn;
            p
        };
        let mut ca_params = named("recheck mock CA", Vec::new());
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("mock TLS: CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("mock TLS: CA");

        let names = if tls.names.is_empty() {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        } else {
            tls.names.clone()
        };
        let mut leaf = named("recheck mock server", names);
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if tls.expired {
            leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        if tls.ca_flag {
            leaf.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let leaf_key = KeyPair::generate().expect("mock TLS: server key");
        let leaf_cert = if tls.self_signed {
            leaf.self_signed(&leaf_key)
        } else {
            leaf.signed_by(&leaf_key, &ca)
        }
        .expect("mock TLS: server certificate");
        let trust_pem = if tls.self_signed {
            leaf_cert.pem()
        } else {
            ca.pem()
        };

        let mut client = named("recheck test client", Vec::new());
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("mock TLS: client key");
        let client_cert = client
            .signed_by(&client_key, &ca)
            .expect("mock TLS: client certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("mock TLS: protocol versions");
        let builder = if tls.require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone()).expect("mock TLS: CA as root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("mock TLS: client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut config = builder
            .with_single_cert(vec![leaf_cert.der().clone()], key)
            .expect("mock TLS: server certificate and key");
        config.alpn_protocols = if tls.http1_only {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Pki {
            trust_pem,
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            config: Arc::new(config),
        }
    }
}

/// A running mock server. It serves on the tokio runtime it was started on until this
/// handle is dropped (then it stops accepting and closes idle connections), so keep it alive
/// for as long as the test needs the server.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    pki: Option<Arc<Pki>>,
    /// Dropping this sender triggers the graceful shutdown of the serve task.
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Binds `127.0.0.1:0` and spawns the server on the current tokio runtime (either flavour).
    ///
    /// # Panics
    /// If the loopback port cannot be bound.
    pub async fn start(config: MockConfig) -> MockServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        MockServer::bind(addr, config)
            .await
            .expect("mock server: bind 127.0.0.1:0")
    }

    /// Like [`MockServer::start`] on a chosen address (the standalone binary's `--addr`).
    pub async fn bind(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockServer> {
        MockServer::serve(addr, config, None).await
    }

    /// Like [`MockServer::start`], serving TLS (HTTP/2 or HTTP/1.1 by ALPN) with
    /// certificates made now; `https://` in [`MockServer::url`] and the templates.
    ///
    /// # Panics
    /// If the loopback port cannot be bound or the certificates cannot be made.
    pub async fn start_tls(config: MockConfig, tls: MockTls) -> MockServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        MockServer::serve(addr, config, Some(Arc::new(Pki::make(&tls))))
            .await
            .expect("mock server: bind 127.0.0.1:0")
    }

    /// Like [`MockServer::start_tls`] on a chosen address (the standalone binary's `--tls`).
    pub async fn bind_tls(
        addr: SocketAddr,
        config: MockConfig,
        tls: MockTls,
    ) -> std::io::Result<MockServer> {
        MockServer::serve(addr, config, Some(Arc::new(Pki::make(&tls)))).await
    }

    async fn serve(
        addr: SocketAddr,
        config: MockConfig,
        pki: Option<Arc<Pki>>,
    ) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let listener = match &pki {
            None => MockListener::Plain(listener, Arc::clone(&shared)),
            Some(pki) => MockListener::tls(listener, Arc::clone(&pki.config), Arc::clone(&shared)),
        };
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared))
            .into_make_service_with_connect_info::<ConnHandle>();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // axum::serve uses hyper's auto builder: HTTP/1.1 with keep-alive by default (so a
        // pooling client reuses connections instead of burning an ephemeral port per
        // request, which matters at 200k requests) and HTTP/2 with prior knowledge.
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        tokio::spawn(serve.into_future());
        Ok(MockServer {
            addr,
            shared,
            pki,
            _shutdown: tx,
        })
    }

    /// PEM of the certificate a client must trust for a TLS server (`--cacert`): its CA,
    /// or the server certificate itself when [`MockTls::self_signed`].
    ///
    /// # Panics
    /// If the server does not serve TLS.
    pub fn ca_pem(&self) -> String {
        self.pki().trust_pem.clone()
    }

    /// PEM of a client certificate signed by the server's CA (for `--cert`).
    ///
    /// # Panics
    /// If the server does not serve TLS.
    pub fn client_cert_pem(&self) -> String {
        self.pki().client_cert_pem.clone()
    }

    /// PEM (PKCS#8) of the key of [`MockServer::client_cert_pem`] (for `--key`).
    ///
    /// # Panics
    /// If the server does not serve TLS.
    pub fn client_key_pem(&self) -> String {
        self.pki().client_key_pem.clone()
    }

    fn pki(&self) -> &Pki {
        self.pki.as_deref().expect("mock server: not a TLS server")
    }

    /// TCP connections accepted since start, those of control requests included (not
    /// cleared by [`MockServer::reset`]; also `connections` in `/_stats`, with
    /// `tls_handshakes` and `h2_requests`).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// TLS handshakes completed since start (0 for a plain server).
    pub fn tls_handshakes(&self) -> u64 {
        self.shared.tls_handshakes.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed since start (a client that refused the certificate, or
    /// brought no client certificate when one is required).
    pub fn tls_failures(&self) -> u64 {
        self.shared.tls_failures.load(Ordering::Relaxed)
    }

    /// Requests that came over HTTP/2 (h2 by ALPN, or h2c), since start or the last reset.
    pub fn h2_requests(&self) -> u64 {
        self.shared.h2_requests.load(Ordering::Relaxed)
    }

    /// `HEAD` requests, since start or the last reset.
    pub fn head_requests(&self) -> u64 {
        self.shared.head_requests.load(Ordering::Relaxed)
    }

    /// HTTP/1 requests in absolute form (`GET http://host/path`, as sent to a proxy), since
    /// start or the last reset.
    pub fn absolute_form_requests(&self) -> u64 {
        self.shared.absolute_form.load(Ordering::Relaxed)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/items/{id}` (`https://` for a TLS server).
    pub fn item_url_template(&self) -> String {
        format!("{}/items/{{id}}", self.url())
    }

    /// `http://127.0.0.1:PORT/q?id={id}` (the id in the query; `https://` for TLS).
    pub fn query_url_template(&self) -> String {
        format!("{}/q?id={{id}}", self.url())
    }

    /// Per-id override; wins over the prefix rule. Survives [`MockServer::reset`].
    pub fn set(&self, id: &str, behavior: Behavior) {
        let mut shard = self.shared.shard(id);
        match shard.get_mut(id) {
            Some(e) => e.behavior = Some(behavior),
            None => {
                shard.insert(
                    id.to_owned(),
                    IdEntry {
                        behavior: Some(behavior),
                        ..IdEntry::default()
                    },
                );
            }
        }
    }

    /// How many requests arrived for this (decoded) id.
    pub fn requests(&self, id: &str) -> u64 {
        self.shared.shard(id).get(id).map_or(0, |e| e.count)
    }

    /// Request count per (decoded) id, for every id requested at least once.
    pub fn all_requests(&self) -> HashMap<String, u64> {
        let mut all = HashMap::new();
        for shard in &self.shared.shards {
            let shard = lock(shard);
            all.extend(
                shard
                    .iter()
                    .filter(|(_, e)| e.count > 0)
                    .map(|(id, e)| (id.clone(), e.count)),
            );
        }
        all
    }

    /// Every request the server got except the control endpoints (`/_stats`, `/_reset`),
    /// including ones answered 400/404/405.
    pub fn total_requests(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// The most requests ever in flight at once (since start or the last reset).
    pub fn high_water(&self) -> u64 {
        self.shared.high_water.load(Ordering::Relaxed)
    }

    /// Requests currently being handled (a dropped client connection ends its request).
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The highest request count of any single id (since start or the last reset).
    pub fn per_id_max(&self) -> u64 {
        self.shared.per_id_max.load(Ordering::Relaxed)
    }

    /// Raw request path + query of every counted request, as received (not decoded), in
    /// arrival order; only the first [`RAW_PATHS_CAP`] are kept.
    pub fn raw_paths(&self) -> Vec<String> {
        lock(&self.shared.raw_paths).to_vec()
    }

    /// Headers of the last request for this id (names lowercased), in received order.
    pub fn headers_seen(&self, id: &str) -> Vec<(String, String)> {
        let shard = self.shared.shard(id);
        shard
            .get(id)
            .and_then(|e| e.headers.as_deref())
            .map_or_else(Vec::new, unpack_headers)
    }

    /// One entry per completed id response: decoded id, status sent, and when the handler
    /// handed the response (headers) to hyper, which is when the headers go on the wire.
    /// Requests that never got an answer (hung, or abandoned by the client before the answer)
    /// are absent. Only the first [`ANSWERED_CAP`] are kept.
    pub fn answered(&self) -> Vec<(String, u16, Instant)> {
        lock(&self.shared.answered).to_vec()
    }

    /// Clears the counters and logs (request counts, last headers, raw paths, answered,
    /// totals; `high_water` restarts from the current in-flight count). Overrides stay,
    /// and `in_flight` is a live gauge, so it is not touched.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// The `/_stats` JSON document (`?ids=1`: `with_ids`; `?settled=1`: `with_settled`).
    pub fn stats_json(&self, with_ids: bool, with_settled: bool) -> String {
        self.shared.stats_json(with_ids, with_settled)
    }

    /// [`MockServer::high_water`] over the requests that have ended, overlaps shorter than
    /// [`SETTLE`] left out (`None`: more than [`SPANS_CAP`] requests).
    pub fn settled_high_water(&self) -> Option<u64> {
        self.shared.settled_high_water()
    }
}

// ---------------------------------------------------------------------------------------
// connections

/// The server's listener: TCP with `TCP_NODELAY`, each connection wrapped in a [`MockConn`]
/// so that a handler can reset its own connection ([`Behavior::Reset`]). For TLS, a task of
/// its own accepts and runs each handshake in a task, so a slow or failing handshake never
/// holds up the others; finished ones arrive on a channel.
enum MockListener {
    Plain(TcpListener, Arc<Shared>),
    Tls {
        ready: tokio::sync::mpsc::Receiver<(MockConn, SocketAddr)>,
        local: SocketAddr,
    },
}

/// Most time a TLS handshake may take before the mock server drops the connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl MockListener {
    fn tls(listener: TcpListener, config: Arc<rustls::ServerConfig>, shared: Arc<Shared>) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, ready) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                // The server stopping drops the receiver: stop accepting then.
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, shared) = (acceptor.clone(), tx.clone(), Arc::clone(&shared));
                tokio::spawn(async move {
                    let accept = acceptor.accept(tcp).into_fallible();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(tls)) => {
                            shared.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                            let conn = MockConn {
                                stream: Stream::Tls(Box::new(tls)),
                                reset: Arc::new(AtomicBool::new(false)),
                            };
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err((_, tcp))) => {
                            shared.tls_failures.fetch_add(1, Ordering::Relaxed);
                            linger_close(tcp).await;
                        }
                        Err(_) => {
                            shared.tls_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        MockListener::Tls { ready, local }
    }
}

impl Listener for MockListener {
    type Io = MockConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (MockConn, SocketAddr) {
        match self {
            MockListener::Plain(listener, shared) => {
                // axum's impl retries (and backs off on) accept errors.
                let (tcp, peer) = Listener::accept(listener).await;
                shared.connections.fetch_add(1, Ordering::Relaxed);
                // Small responses are written in one go, but without NODELAY Nagle's
                // algorithm can still delay a response behind the peer's delayed ACK
                // (~40 ms) and wreck latencies.
                let _ = tcp.set_nodelay(true);
                let conn = MockConn {
                    stream: Stream::Plain(tcp),
                    reset: Arc::new(AtomicBool::new(false)),
                };
                (conn, peer)
            }
            MockListener::Tls { ready, .. } => match ready.recv().await {
                Some(c) => c,
                // The accepting task only ends once this receiver is gone.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            MockListener::Plain(l, _) => l.local_addr(),
            MockListener::Tls { local, .. } => Ok(*local),
        }
    }
}

/// Closes a connection whose handshake failed the way a real server does: the alert rustls
/// wrote goes out, then a FIN, and what the client still sends (its request, under TLS 1.3
/// the client's handshake is over before the server refuses its certificate) is read and
/// dropped for a moment. Dropping the socket with unread data would send a RST instead, and
/// the client could lose the alert that says why.
async fn linger_close(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The byte stream of a connection: TCP, or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(t) => t.get_ref().0,
        }
    }
}

/// One accepted connection. Once its `reset` flag is raised (by the handler of a request
/// on it), every write fails without touching the socket, so hyper gives up on the
/// connection and drops it, and the drop closes the socket with `SO_LINGER` 0: the peer
/// gets a TCP RST instead of an answer.
struct MockConn {
    stream: Stream,
    reset: Arc<AtomicBool>,
}

impl MockConn {
    fn is_reset(&self) -> bool {
        self.reset.load(Ordering::Relaxed)
    }
}

fn reset_error() -> std::io::Error {
    std::io::ErrorKind::ConnectionReset.into()
}

impl Drop for MockConn {
    fn drop(&mut self) {
        if self.is_reset() {
            let _ = self.stream.tcp().set_zero_linger();
        }
    }
}

impl AsyncRead for MockConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MockConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        match &mut self.stream {
            Stream::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        match &mut self.stream {
            Stream::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(t) => t.is_write_vectored(),
            Stream::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        match &mut self.stream {
            Stream::Plain(t) => Pin::new(t).poll_flush(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_reset() {
            // No FIN: the drop sends the RST.
            return Poll::Ready(Ok(()));
        }
        match &mut self.stream {
            Stream::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a handler knows of its connection (axum's `ConnectInfo`).
#[derive(Clone)]
struct ConnHandle {
    reset: Arc<AtomicBool>,
}

impl Connected<IncomingStream<'_, MockListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, MockListener>) -> Self {
        ConnHandle {
            reset: Arc::clone(&stream.io().reset),
        }
    }
}

// ---------------------------------------------------------------------------------------
// shared state

/// Number of per-id map shards (a power of two). Sharding keeps a multi-threaded runtime's
/// workers from queueing on one mutex at high request rates.
const SHARDS: usize = 32;

#[derive(Default)]
struct IdEntry {
    count: u64,
    /// The last request's headers, packed (see [`pack_headers`]).
    headers: Option<Box<[u8]>>,
    behavior: Option<Behavior>,
}

/// Packs headers as `name\0value\0…` in one allocation. Keeping hyper's `HeaderMap` instead
/// would pin each request's whole read buffer (its values are slices of it): about 1 GB
/// for 200k ids instead of a few tens of MB.
fn pack_headers(headers: &HeaderMap) -> Box<[u8]> {
    let len = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 2)
        .sum();
    let mut out = Vec::with_capacity(len);
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out.into_boxed_slice()
}

/// Inverse of [`pack_headers`] (a header value never contains NUL, `http` rejects it).
fn unpack_headers(packed: &[u8]) -> Vec<(String, String)> {
    let mut parts = packed.split(|&b| b == 0);
    let mut out = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    out
}

struct Shared {
    config: MockConfig,
    shards: Box<[Mutex<HashMap<String, IdEntry>>]>,
    total: AtomicU64,
    in_flight: AtomicU64,
    high_water: AtomicU64,
    per_id_max: AtomicU64,
    raw_paths: Mutex<CappedLog<String>>,
    answered: Mutex<CappedLog<(String, u16, Instant)>>,
    /// When the server started: request spans are kept in nanoseconds from it.
    epoch: Instant,
    /// Every ended request's (arrival, end), for the settled high-water.
    spans: Mutex<CappedLog<(u64, u64)>>,
    connections: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_failures: AtomicU64,
    h2_requests: AtomicU64,
    head_requests: AtomicU64,
    absolute_form: AtomicU64,
}

/// Locks, ignoring poisoning (a panicking test thread must not take every later check down).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(config: MockConfig) -> Shared {
        Shared {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            total: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
            per_id_max: AtomicU64::new(0),
            raw_paths: Mutex::new(CappedLog::new(RAW_PATHS_CAP)),
            answered: Mutex::new(CappedLog::new(ANSWERED_CAP)),
            epoch: Instant::now(),
            spans: Mutex::new(CappedLog::new(SPANS_CAP)),
            connections: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            h2_requests: AtomicU64::new(0),
            head_requests: AtomicU64::new(0),
            absolute_form: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, HashMap<String, IdEntry>> {
        // FNV-1a: cheap, and only needs to spread ids over a few shards.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        lock(&self.shards[(h % SHARDS as u64) as usize])
    }

    /// Counts an arriving request; the guard un-counts it from `in_flight` when dropped,
    /// including when hyper drops the handler future because the client went away.
    fn arrive(&self, raw_path: String) -> InFlight<'_> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.high_water.fetch_max(now, Ordering::Relaxed);
        lock(&self.raw_paths).push(raw_path);
        InFlight(self, self.nanos())
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The most requests in flight at once over the requests that have ended, leaving out
    /// overlaps shorter than [`SETTLE`] (each span's end moved that much earlier); `None`
    /// when more spans came than [`SPANS_CAP`] keeps.
    fn settled_high_water(&self) -> Option<u64> {
        let spans = lock(&self.spans);
        if spans.len >= spans.cap {
            return None;
        }
        let all = spans.to_vec();
        drop(spans);
        Some(settled_high_water_of(&all, SETTLE))
    }

    /// Counts a request for `id`, stores its headers, and returns its 1-based ordinal for
    /// that id together with the behaviour to apply.
    fn count_id(&self, id: &str, headers: Box<[u8]>) -> (u64, Behavior) {
        let (n, behavior, old_headers) = {
            let mut shard = self.shard(id);
            if !shard.contains_key(id) {
                shard.insert(id.to_owned(), IdEntry::default());
            }
            let e = shard.get_mut(id).expect("just inserted");
            e.count += 1;
            (e.count, e.behavior.clone(), e.headers.replace(headers))
        };
        drop(old_headers); // freed outside the lock
        self.per_id_max.fetch_max(n, Ordering::Relaxed);
        let behavior = behavior
            .or_else(|| Behavior::for_id(id))
            .unwrap_or_else(|| self.config.default.clone());
        (n, behavior)
    }

    fn reset(&self) {
        for shard in &self.shards {
            // Entries with an override stay (zeroed); the rest go.
            let mut shard = lock(shard);
            shard.retain(|_, e| e.behavior.is_some());
            for e in shard.values_mut() {
                e.count = 0;
                e.headers = None;
            }
        }
        for c in [&self.h2_requests, &self.head_requests, &self.absolute_form] {
            c.store(0, Ordering::Relaxed);
        }
        let paths = std::mem::replace(&mut *lock(&self.raw_paths), CappedLog::new(RAW_PATHS_CAP));
        let answered = std::mem::replace(&mut *lock(&self.answered), CappedLog::new(ANSWERED_CAP));
        let spans = std::mem::replace(&mut *lock(&self.spans), CappedLog::new(SPANS_CAP));
        drop((paths, answered, spans));
        self.total.store(0, Ordering::Relaxed);
        self.per_id_max.store(0, Ordering::Relaxed);
        self.high_water
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn stats_json(&self, with_ids: bool, with_settled: bool) -> String {
        let mut ids = 0u64;
        let mut requests = serde_json::Map::new();
        for shard in &self.shards {
            let shard = lock(shard);
            for (id, e) in shard.iter().filter(|(_, e)| e.count > 0) {
                ids += 1;
                if with_ids {
                    requests.insert(id.clone(), e.count.into());
                }
            }
        }
        // Written by hand to keep the documented key order (serde_json's map sorts keys).
        let mut doc = format!(
            r#"{{"total_requests":{},"high_water":{},"in_flight":{},"per_id_max":{},"ids":{ids},"connections":{},"tls_handshakes":{},"h2_requests":{}"#,
            self.total.load(Ordering::Relaxed),
            self.high_water.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.per_id_max.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            self.tls_handshakes.load(Ordering::Relaxed),
            self.h2_requests.load(Ordering::Relaxed),
        );
        // Only computed for a look at the end (`?settled=1`): it sorts every span.
        if with_settled {
            match self.settled_high_water() {
                Some(n) => doc.push_str(&format!(r#","settled_high_water":{n}"#)),
                None => doc.push_str(r#","settled_high_water":null"#),
            }
        }
        if with_ids {
            doc.push_str(r#","requests":"#);
            doc.push_str(&serde_json::Value::Object(requests).to_string());
        }
        doc.push('}');
        doc
    }
}

/// The most of `spans` (arrival, end, in nanoseconds) that overlap at once, each span's end
/// moved `settle` earlier: overlaps shorter than `settle` do not count.
pub fn settled_high_water_of(spans: &[(u64, u64)], settle: Duration) -> u64 {
    let settle = u64::try_from(settle.as_nanos()).unwrap_or(u64::MAX);
    let mut events: Vec<(u64, i64)> = Vec::with_capacity(spans.len() * 2);
    for &(arrived, ended) in spans {
        let until = ended.saturating_sub(settle);
        if until > arrived {
            events.push((arrived, 1));
            events.push((until, -1));
        }
    }
    // At the same instant an end comes before an arrival.
    events.sort_unstable();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, step) in events {
        now += step;
        most = most.max(now);
    }
    most.max(0).unsigned_abs()
}

/// A request being handled, since when (nanoseconds from the server's start).
struct InFlight<'a>(&'a Shared, u64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // The span first: once `in_flight` reads 0, every span is there.
        let ended = self.0.nanos();
        lock(&self.0.spans).push((self.1, ended));
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Append-only log keeping the first `cap` entries. Stored in fixed-size chunks so a push
/// (done under a mutex) never reallocates and copies everything logged so far.
struct CappedLog<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
    cap: usize,
}

const LOG_CHUNK: usize = 4096;

impl<T: Clone> CappedLog<T> {
    fn new(cap: usize) -> Self {
        CappedLog {
            chunks: Vec::new(),
            len: 0,
            cap,
        }
    }

    fn push(&mut self, value: T) {
        if self.len >= self.cap {
            return;
        }
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < LOG_CHUNK => chunk.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(LOG_CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    fn to_vec(&self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// request handling

/// Where a request goes, decided on the raw (undecoded) URI.
enum Route {
    Id(String),
    NotOneSegment,
    MissingId,
    Unrouted,
}

fn route(uri: &Uri) -> Route {
    let path = uri.path();
    if let Some(seg) = path.strip_prefix("/items/") {
        // Split on the raw path: `/items/a%2Fb` is the one segment `a/b`, while
        // `/items/a/b` is two segments and must not be read as the id `a/b`.
        if seg.is_empty() || seg.contains('/') {
            return Route::NotOneSegment;
        }
        return Route::Id(percent_decode(seg));
    }
    if path == "/q" {
        // Percent-decoding only: a literal `+` stays `+` (ids are not form-encoded).
        let id = uri.query().and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("id="))
                .map(percent_decode)
        });
        return match id {
            Some(id) if !id.is_empty() => Route::Id(id),
            _ => Route::MissingId,
        };
    }
    Route::Unrouted
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    req: Request,
) -> Response {
    let (parts, _body) = req.into_parts();
    match parts.uri.path() {
        "/_stats" if parts.method == Method::GET => {
            let flag = |name: &str| {
                parts.uri.query().is_some_and(|q| {
                    q.split('&')
                        .any(|p| p == format!("{name}=1") || p == format!("{name}=true"))
                })
            };
            return json(
                StatusCode::OK,
                shared.stats_json(flag("ids"), flag("settled")),
            );
        }
        "/_reset" if parts.method == Method::POST => {
            shared.reset();
            return json(StatusCode::OK, r#"{"reset":true}"#);
        }
        "/_stats" | "/_reset" => return method_not_allowed(),
        _ => {}
    }

    let raw = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let _in_flight = shared.arrive(raw);
    let overloaded = shared
        .config
        .overload_above
        .is_some_and(|k| shared.in_flight.load(Ordering::Relaxed) > k);
    if parts.version == Version::HTTP_2 {
        shared.h2_requests.fetch_add(1, Ordering::Relaxed);
    } else if parts.uri.authority().is_some() {
        // HTTP/2 always carries the authority; in HTTP/1 only a proxy request does.
        shared.absolute_form.fetch_add(1, Ordering::Relaxed);
    }
    if parts.method == Method::HEAD {
        shared.head_requests.fetch_add(1, Ordering::Relaxed);
    }

    let id = match route(&parts.uri) {
        Route::Id(id) => id,
        Route::NotOneSegment => {
            return json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"id must be one path segment"}"#,
            );
        }
        Route::MissingId => return json(StatusCode::BAD_REQUEST, r#"{"error":"missing id"}"#),
        Route::Unrouted => return json(StatusCode::NOT_FOUND, r#"{"error":"no route"}"#),
    };
    // HEAD is GET without the body, which hyper leaves out by itself.
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return method_not_allowed();
    }

    let authorized = match &shared.config.require_header {
        None => true,
        Some((name, value)) => parts
            .headers
            .get(name.as_str())
            .is_some_and(|v| v.as_bytes() == value.as_bytes()),
    };
    let (ordinal, behavior) = shared.count_id(&id, pack_headers(&parts.headers));
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    if overloaded {
        lock(&shared.answered).push((id, 429, Instant::now()));
        return json(StatusCode::TOO_MANY_REQUESTS, r#"{"error":"overloaded"}"#);
    }
    if authorized && behavior == Behavior::Reset {
        // Nothing of this answer reaches the wire: its first write fails and the connection
        // is dropped with a RST (see `MockConn`). Not an answer, so not in `answered`.
        conn.reset.store(true, Ordering::Relaxed);
        return json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"reset"}"#);
    }
    let response = if authorized {
        respond(&id, &parts.uri, ordinal, behavior).await
    } else {
        json(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#)
    };
    let status = response.status().as_u16();
    lock(&shared.answered).push((id, status, Instant::now()));
    response
}

async fn respond(id: &str, uri: &Uri, ordinal: u64, behavior: Behavior) -> Response {
    match behavior {
        Behavior::Ok => ok(id),
        Behavior::StillFailed => json(
            StatusCode::OK,
            format!(
                r#"{{"id":{},"status":"processing","ok":false}}"#,
                json_string(id)
            ),
        ),
        Behavior::NotFound => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
        Behavior::Gone => json(StatusCode::GONE, r#"{"error":"gone"}"#),
        Behavior::Status(code) => status(code),
        Behavior::FailThenOk {
            status: code,
            times,
        } => {
            if ordinal <= u64::from(times) {
                status(code)
            } else {
                ok(id)
            }
        }
        Behavior::RetryAfter { secs, times } => {
            if ordinal <= u64::from(times) {
                let mut r = status(429);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            } else {
                ok(id)
            }
        }
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json(StatusCode::GATEWAY_TIMEOUT, r#"{"error":"hang elapsed"}"#)
        }
        Behavior::Garbage => json(StatusCode::OK, r#"{"id": not json at all <<<"#),
        Behavior::Huge { bytes } => {
            let mut r = json(StatusCode::OK, Body::new(HugeBody::new(bytes)));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes));
            r
        }
        Behavior::HugeChunked { bytes } => {
            json(StatusCode::OK, Body::new(HugeBody::new(bytes).chunked()))
        }
        Behavior::Dribble { interval } => {
            let body = DribbleBody {
                data: pad_body(DRIBBLE_BYTES),
                interval,
                sleep: None,
            };
            let mut r = json(StatusCode::OK, Body::new(body));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(DRIBBLE_BYTES));
            r
        }
        // Handled in `handle` (it needs the connection); unreachable from there.
        Behavior::Reset => json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"reset"}"#),
        Behavior::BadLength => {
            let mut data = pad_body(BADLEN_DECLARED);
            data.truncate(BADLEN_SENT as usize);
            let body = ShortBody {
                data: Some(data),
                flushed: false,
            };
            let mut r = json(StatusCode::OK, Body::new(body));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(BADLEN_DECLARED));
            r
        }
        Behavior::RedirectLoop => {
            let here = uri
                .path_and_query()
                .map_or_else(|| uri.path(), |pq| pq.as_str());
            match HeaderValue::try_from(here) {
                Ok(location) => {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::FOUND;
                    r.headers_mut().insert(header::LOCATION, location);
                    r
                }
                Err(_) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"error":"invalid redirect target"}"#,
                ),
            }
        }
        Behavior::Slow { delay } => {
            tokio::time::sleep(delay).await;
            ok(id)
        }
        Behavior::Job { progress, float } => {
            let state = match progress {
                0 => "failed",
                1..=99 => "processing",
                _ => "done",
            };
            let renditions: Vec<String> =
                (0..progress / 25).map(|i| format!(r#""r{i}""#)).collect();
            let p = if float {
                format!("{progress}.0")
            } else {
                progress.to_string()
            };
            json(
                StatusCode::OK,
                format!(
                    r#"{{"id":{},"status":"{state}","progress":{p},"renditions":[{}]}}"#,
                    json_string(id),
                    renditions.join(",")
                ),
            )
        }
        Behavior::Redirect { to } => match HeaderValue::try_from(to) {
            Ok(location) => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::FOUND;
                r.headers_mut().insert(header::LOCATION, location);
                r
            }
            Err(_) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":"invalid redirect target"}"#,
            ),
        },
    }
}

fn ok(id: &str) -> Response {
    json(
        StatusCode::OK,
        format!(r#"{{"id":{},"status":"done","ok":true}}"#, json_string(id)),
    )
}

fn status(code: u16) -> Response {
    match StatusCode::from_u16(code) {
        Ok(s) => json(s, format!(r#"{{"error":"status {code}"}}"#)),
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(r#"{{"error":"invalid status {code} in Behavior"}}"#),
        ),
    }
}

fn method_not_allowed() -> Response {
    let mut r = json(
        StatusCode::METHOD_NOT_ALLOWED,
        r#"{"error":"method not allowed"}"#,
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serialises")
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 64 KiB of `a`: every `huge` chunk is a zero-copy slice of this.
static PAD: [u8; 64 * 1024] = [b'a'; 64 * 1024];

/// The `huge` body: `{"pad":"` + `a`×(n−10) + `"}`, streamed, never allocated whole.
/// Its exact size hint lets hyper frame it with Content-Length.
struct HugeBody {
    prefix: &'static [u8],
    pad: u64,
    suffix: &'static [u8],
    /// No size hint, so hyper frames it chunked (no Content-Length).
    chunked: bool,
}

impl HugeBody {
    fn new(bytes: u64) -> HugeBody {
        const PREFIX: &[u8] = br#"{"pad":""#;
        const SUFFIX: &[u8] = br#""}"#;
        let frame = (PREFIX.len() + SUFFIX.len()) as u64;
        if bytes >= frame {
            HugeBody {
                prefix: PREFIX,
                pad: bytes - frame,
                suffix: SUFFIX,
                chunked: false,
            }
        } else {
            HugeBody {
                prefix: b"",
                pad: bytes,
                suffix: b"",
                chunked: false,
            }
        }
    }

    fn chunked(self) -> HugeBody {
        HugeBody {
            chunked: true,
            ..self
        }
    }

    fn remaining(&self) -> u64 {
        self.prefix.len() as u64 + self.pad + self.suffix.len() as u64
    }
}

impl HttpBody for HugeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let chunk = if !this.prefix.is_empty() {
            Bytes::from_static(std::mem::take(&mut this.prefix))
        } else if this.pad > 0 {
            let n = usize::try_from(this.pad).map_or(PAD.len(), |p| p.min(PAD.len()));
            this.pad -= n as u64;
            Bytes::from_static(&PAD[..n])
        } else if !this.suffix.is_empty() {
            Bytes::from_static(std::mem::take(&mut this.suffix))
        } else {
            return Poll::Ready(None);
        };
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.chunked {
            http_body::SizeHint::default()
        } else {
            http_body::SizeHint::with_exact(self.remaining())
        }
    }
}

/// The bytes of a [`HugeBody`] of `n` bytes, in one buffer (for small `n` only).
fn pad_body(n: u64) -> Bytes {
    let n = usize::try_from(n).expect("a small body");
    let mut out = Vec::with_capacity(n);
    if n >= 10 {
        out.extend_from_slice(br#"{"pad":""#);
        out.resize(n - 2, b'a');
        out.extend_from_slice(br#""}"#);
    } else {
        out.resize(n, b'a');
    }
    Bytes::from(out)
}

/// The `dribble` body: one byte of `data` every `interval`, the first one at once.
struct DribbleBody {
    data: Bytes,
    interval: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HttpBody for DribbleBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        if let Some(sleep) = self.sleep.as_mut()
            && sleep.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
        let interval = self.interval;
        self.sleep = Some(Box::pin(tokio::time::sleep(interval)));
        let byte = self.data.split_to(1);
        Poll::Ready(Some(Ok(http_body::Frame::data(byte))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.len() as u64)
    }
}

/// The `badlen` body: `data`, then (once hyper had a chance to flush it) an error, so hyper
/// closes the connection short of the declared Content-Length.
struct ShortBody {
    data: Option<Bytes>,
    flushed: bool,
}

impl HttpBody for ShortBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if !self.flushed {
            // Pending once: hyper flushes what it has before polling the body again.
            self.flushed = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(std::io::Error::other(
            "mock badlen: body shorter than its Content-Length",
        ))))
    }
}
