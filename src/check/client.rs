//! Stage "check", set-up part: the HTTP clients every check sends through. TLS trust
//! (`--cacert`, `--insecure`), the client certificate (`--cert`/`--key`), HTTP/2 (`--http2`,
//! ALPN), the proxy in use, and the idle-connection bound that keeps the open-files budget.
//! Reads the certificate files once at start; knows nothing of stores or items.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Notify;
use url::Url;

use crate::limits::FdBudget;

/// Everything about how requests go out, as validated from the flags (no file read yet).
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// Time limit for opening a connection.
    pub connect_timeout: Duration,
    /// `--cacert`: extra trusted roots (PEM, one or more certificates).
    pub cacert: Option<PathBuf>,
    /// `--cert` and `--key`: the client certificate (chain) and its private key, both PEM.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `--insecure`: accept any server certificate.
    pub insecure: bool,
    /// `--http2`: HTTP/2 with prior knowledge on `http://` URLs.
    pub http2_prior_knowledge: bool,
}

/// The TLS settings of every client, built once: trust (system roots, Mozilla's, and
/// `--cacert`), the client certificate, `--insecure`, ALPN.
///
/// Why built here and not by reqwest: reqwest would read the system's roots from disk for
/// every client it builds (about 20 ms), and there is one client per origin, rebuilt when a
/// run moves between more hosts than the idle budget keeps.
#[derive(Clone)]
struct Tls {
    config: rustls::ClientConfig,
}

/// The HTTP clients of a run: one per origin (scheme, host, port), at most
/// [`FdBudget::pooled_hosts`] of them at once.
///
/// Why one per origin: reqwest bounds idle connections per host only, so with one client
/// the sockets of a run are `--concurrency` busy ones plus `hosts × idle-per-host` idle
/// ones, and the number of hosts is not known up front (item URLs come from the store).
/// Each client here keeps at most [`FdBudget::idle_per_host`] idle connections to its one
/// origin, and when a new origin needs a client while [`FdBudget::pooled_hosts`] are held,
/// the least recently used one is dropped, closing its idle connections (requests still in
/// flight on it finish first: they hold the client). So idle connections never exceed
/// `pooled_hosts × idle_per_host`, the reserve the start-up check set aside, whatever the
/// number of hosts. A run against one host (the usual case) keeps one client and full
/// connection reuse; a run over more hosts than the budget allows pays new connections when
/// it moves between them instead of failing with "Too many open files".
pub struct Clients {
    cfg: HttpConfig,
    /// No proxy variable is set: clients are built without reqwest's system proxy, which
    /// would otherwise be asked about every request (twice) in case a variable holds a
    /// password.
    direct: bool,
    tls: Tls,
    budget: FdBudget,
    pool: Mutex<Lru>,
    /// Built at start with the same settings, for the unexpected case where building one
    /// later fails: (plain, prior knowledge).
    spare: (Client, Client),
}

/// Clients by origin, with a use counter for least-recently-used eviction.
#[derive(Default)]
struct Lru {
    tick: u64,
    by_origin: HashMap<String, Origin>,
}

/// One origin's client.
struct Origin {
    client: Client,
    used: u64,
    first: Arc<FirstContact>,
}

/// The first request to an `https://` origin goes alone.
///
/// Why: whether a TLS server speaks HTTP/2 is only known once ALPN has run, so the
/// connection pool cannot know that one connection will do; 100 checks starting at once
/// would open 100 connections (and TLS handshakes), of which HTTP/2 then keeps one. Letting
/// the first request finish before the others start (at most `max_wait`, so one hanging
/// answer delays the start by that much, not the run) leaves one HTTP/2 connection in the
/// pool for all of them, or, for an HTTP/1.1 server, costs one round trip at start.
/// Plain `http://` needs none of it: HTTP/1.1 opens connections as needed, and h2c with
/// prior knowledge is already one connection per origin in the pool.
///
/// After the first answer, a request to an `https://` origin also waits (at most
/// `max_wait`) while the origin's client is opening connections. Why: the pool starts a
/// connection for every request that finds no idle one, and keeps it when another
/// request's connection frees up first; while the first wave's handshakes run, every
/// request admitted meanwhile would open one more (101–116 handshakes for 100 requests in
/// flight, BENCHMARKS.md "tls"). Once the handshakes are done the connections are idle or
/// busy with fewer requests than there are connections, so the request finds one.
pub struct FirstContact {
    done: AtomicBool,
    /// A request took the first turn.
    taken: AtomicBool,
    /// Wakes every request waiting for the first answer at once, so their connections
    /// start together (one by one, a request admitted in a gap would open an extra one).
    answered: Notify,
    /// The connections the origin's client is opening (`None`: plain `http://`, where a
    /// connection costs no handshake).
    connecting: Option<Arc<Connecting>>,
}

/// The connections one client is opening right now, counted by [`CountConnects`] around
/// its connector, and whether its first wave of them is in.
struct Connecting {
    now: AtomicUsize,
    none: Notify,
    /// Connections started so far.
    started: AtomicUsize,
    /// The most the pool keeps for the origin: the first wave.
    wave: usize,
    /// The first wave's connections are all open (or failed): from then on no request
    /// waits. (A server that closes its connections then costs handshakes as it always
    /// does, instead of holding requests back behind each other's.)
    wave_done: AtomicBool,
}

impl Connecting {
    fn new(wave: usize) -> Connecting {
        Connecting {
            now: AtomicUsize::new(0),
            none: Notify::new(),
            started: AtomicUsize::new(0),
            wave,
            wave_done: AtomicBool::new(false),
        }
    }

    /// Returns when no connection is being opened, or after `max_wait`; at once after the
    /// first wave.
    async fn settled(&self, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        while !self.wave_done.load(Ordering::Relaxed) && self.now.load(Ordering::SeqCst) > 0 {
            let none = super::wait_until(&self.none, || self.now.load(Ordering::SeqCst) == 0);
            if tokio::time::timeout_at(deadline, none).await.is_err() {
                return;
            }
            // The pool gets a new connection a few task turns after its handshake (hyper's
            // HTTP/1 handshake, the dispatcher's first poll, then the put): until then a
            // checkout finds nothing idle and would open one more. Then look again: another
            // request released with this one may have started a connection meanwhile.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// One connection being opened: counted from the connector's call to its end (done,
/// failed or dropped).
struct Opening(Arc<Connecting>);

impl Opening {
    fn new(c: Arc<Connecting>) -> Opening {
        c.started.fetch_add(1, Ordering::Relaxed);
        c.now.fetch_add(1, Ordering::SeqCst);
        Opening(c)
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if self.0.now.fetch_sub(1, Ordering::SeqCst) == 1 {
            if self.0.started.load(Ordering::Relaxed) >= self.0.wave {
                self.0.wave_done.store(true, Ordering::Relaxed);
            }
            self.0.none.notify_waiters();
        }
    }
}

/// The connector layer that counts a client's connections being opened ([`Connecting`]).
#[derive(Clone)]
struct CountConnects(Arc<Connecting>);

impl<S> tower_layer::Layer<S> for CountConnects {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            count: Arc::clone(&self.0),
        }
    }
}

/// A connector whose calls are counted.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    count: Arc<Connecting>,
}

impl<S, R> tower_service::Service<R> for Counted<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let opening = Opening::new(Arc::clone(&self.count));
        let connect = self.inner.call(req);
        Box::pin(async move {
            let conn = connect.await;
            drop(opening);
            conn
        })
    }
}

/// Held by the first request to an origin until its answer (or failure) is in.
pub struct FirstTurn<'a> {
    contact: &'a FirstContact,
}

impl Drop for FirstTurn<'_> {
    fn drop(&mut self) {
        self.contact.done.store(true, Ordering::Release);
        self.contact.answered.notify_waiters();
    }
}

impl FirstContact {
    fn new(done: bool, connecting: Option<Arc<Connecting>>) -> FirstContact {
        FirstContact {
            done: AtomicBool::new(done),
            taken: AtomicBool::new(false),
            answered: Notify::new(),
            connecting,
        }
    }

    /// Waits (at most `max_wait`) until the origin's first request is answered, and then
    /// while its connections are being opened. `Some` when this request is that first one:
    /// the others wait while it is held.
    pub async fn wait(&self, max_wait: Duration) -> Option<FirstTurn<'_>> {
        if self.done.load(Ordering::Acquire) {
            if let Some(c) = &self.connecting {
                c.settled(max_wait).await;
            }
            return None;
        }
        if !self.taken.swap(true, Ordering::AcqRel) {
            return Some(FirstTurn { contact: self });
        }
        let answered = super::wait_until(&self.answered, || self.done.load(Ordering::Acquire));
        // A first request that takes long holds the others back at most `max_wait`.
        let _ = tokio::time::timeout(max_wait, answered).await;
        None
    }
}

impl Clients {
    /// Reads and checks the TLS files and builds the first client, so a bad file or flag
    /// fails the run before anything is written (exit 2), naming the flag and the file.
    pub fn new(cfg: HttpConfig, budget: FdBudget) -> Result<Clients> {
        let tls = Tls::load(&cfg)?;
        if cfg.insecure {
            tracing::warn!(
                "--insecure: server certificates are not checked; anyone on the path can \
                 answer for the API"
            );
        }
        log_proxies(&|k| std::env::var(k).ok());
        let direct = proxy_env(&|k| std::env::var(k).ok()).is_empty();
        // Built now, so a builder error stops the run before the first item.
        let plain = build_client(&cfg, &tls, direct, budget.idle_per_host, false, None)?;
        let h2c = if cfg.http2_prior_knowledge {
            build_client(&cfg, &tls, direct, budget.idle_per_host, true, None)?
        } else {
            plain.clone()
        };
        Ok(Clients {
            cfg,
            direct,
            tls,
            budget,
            pool: Mutex::new(Lru::default()),
            spare: (plain, h2c),
        })
    }

    /// The client for `url`'s origin, and its first-contact gate.
    pub fn for_url(&self, url: &Url) -> (Client, Arc<FirstContact>) {
        let key = origin_key(url);
        let mut lru = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        lru.tick += 1;
        let tick = lru.tick;
        if let Some(o) = lru.by_origin.get_mut(key.as_ref()) {
            o.used = tick;
            return (o.client.clone(), Arc::clone(&o.first));
        }
        let origin = key.into_owned();
        if lru.by_origin.len() >= self.budget.pooled_hosts.max(1)
            && let Some(oldest) = lru
                .by_origin
                .iter()
                .min_by_key(|(_, o)| o.used)
                .map(|(o, _)| o.clone())
        {
            lru.by_origin.remove(&oldest);
            tracing::trace!(origin = %oldest, "dropped the client of the least recently used host");
        }
        // The same settings built fine in `new`: a failure now is not expected, but it must
        // not take a check down either; the spare client has the same settings (only its
        // pool is shared with the other origins that fell back on it).
        let prior_knowledge = self.prior_knowledge_for(url);
        let tls = url.scheme() == "https";
        let connecting = tls.then(|| Arc::new(Connecting::new(self.budget.idle_per_host)));
        let client = self
            .build(prior_knowledge, connecting.clone())
            .unwrap_or_else(|e| {
                tracing::warn!("cannot build an HTTP client: {e:#}");
                if prior_knowledge {
                    self.spare.1.clone()
                } else {
                    self.spare.0.clone()
                }
            });
        let first = Arc::new(FirstContact::new(!tls, connecting));
        lru.by_origin.insert(
            origin,
            Origin {
                client: client.clone(),
                used: tick,
                first: Arc::clone(&first),
            },
        );
        (client, first)
    }

    fn build(&self, prior_knowledge: bool, connecting: Option<Arc<Connecting>>) -> Result<Client> {
        build_client(
            &self.cfg,
            &self.tls,
            self.direct,
            self.budget.idle_per_host,
            prior_knowledge,
            connecting,
        )
    }
}

/// `url`'s origin as text (`https://api:8443`): the client pool's key. Without user info
/// that is the start of the URL itself (the parser already lowercased the host and dropped
/// a default port), so the lookup made for every request allocates nothing.
fn origin_key(url: &Url) -> std::borrow::Cow<'_, str> {
    if url.username().is_empty() && url.password().is_none() && url.has_host() {
        std::borrow::Cow::Borrowed(&url[..url::Position::AfterPort])
    } else {
        std::borrow::Cow::Owned(url.origin().ascii_serialization())
    }
}

/// One reqwest client with the run's settings.
fn build_client(
    cfg: &HttpConfig,
    tls: &Tls,
    direct: bool,
    idle_per_host: usize,
    prior_knowledge: bool,
    connecting: Option<Arc<Connecting>>,
) -> Result<Client> {
    let mut b = Client::builder()
        .user_agent(concat!("recheck/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(cfg.connect_timeout)
        .pool_max_idle_per_host(idle_per_host)
        .tcp_nodelay(true)
        // Redirects are followed by `fetch`, which drops secret headers across origins.
        .redirect(reqwest::redirect::Policy::none())
        // Retries are `fetch`'s (counted, with backoff). reqwest's default policy (HTTP/2
        // protocol NACKs) copies every request's headers in case it retries: measurable
        // CPU per check (BENCHMARKS.md, "Analysis"); a refused stream is retried by ours.
        // `never()` alone still copies each request (its scope is asked only before a
        // second try); no tries beyond the first is what skips the copy.
        .retry(reqwest::retry::never().max_retries_per_request(0));
    b = b.tls_backend_preconfigured(tls.config.clone());
    if direct {
        // The same as reqwest's system proxy with no variable set (it reads nothing
        // else: no `system-proxy` feature), minus its look-up on every request.
        b = b.no_proxy();
    }
    if let Some(c) = connecting {
        b = b.connector_layer(CountConnects(c));
    }
    if prior_knowledge {
        // reqwest's prior knowledge also limits ALPN to h2 on https://, which would break
        // servers that only speak HTTP/1.1 over TLS; `--http2` is about http:// only, so
        // https:// origins get a client without it (ALPN offers h2 and http/1.1).
        b = b.http2_prior_knowledge();
    }
    b.build().context("cannot build the HTTP client")
}

impl Clients {
    /// Whether `url` goes through the prior-knowledge settings (`--http2` on `http://`).
    fn prior_knowledge_for(&self, url: &Url) -> bool {
        self.cfg.http2_prior_knowledge && url.scheme() == "http"
    }
}

impl Tls {
    fn load(cfg: &HttpConfig) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .context("TLS: no protocol version")?;
        let builder = if cfg.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            // The system's store may hold certificates rustls cannot use (old, odd ones):
            // those are skipped, as curl and reqwest do.
            let native = rustls_native_certs::load_native_certs();
            let (added, skipped) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, skipped, errors = native.errors.len(), "system roots");
            if let Some(path) = &cfg.cacert {
                for root in load_roots(path)? {
                    roots
                        .add(root)
                        .with_context(|| format!("--cacert {}", path.display()))?;
                }
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&provider),
            )
            .build()
            .context("TLS: cannot build the certificate verifier")?;
            // The usual verification, only with a better name for one of its refusals.
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamingVerifier { webpki, provider }))
        };
        let mut config = match &cfg.client_cert {
            Some((cert, key)) => {
                let (chain, key_der) = load_identity(cert, key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .with_context(|| {
                        format!("--cert {} / --key {}", cert.display(), key.display())
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        // What reqwest would offer: HTTP/2 when the server has it, else HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { config })
    }
}

/// What a refused certificate turned out to be when rustls says only "unknown issuer": its
/// own issuer. Carried in `CertificateError::Other` for `fetch` to name.
#[derive(Debug)]
pub struct SelfSigned;

impl std::fmt::Display for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("self-signed certificate")
    }
}

impl std::error::Error for SelfSigned {}

/// rustls's WebPKI verification, telling a self-signed certificate apart from one signed
/// by an unknown CA (rustls calls both "unknown issuer"), so the message can say which.
#[derive(Debug)]
struct NamingVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl NamingVerifier {
    /// Whether `cert` verifies with itself as the only trust anchor: it signed itself.
    /// Only asked on the refusal path, so its cost is one item's.
    fn is_self_signed(
        &self,
        cert: &CertificateDer<'_>,
        name: &rustls::pki_types::ServerName<'_>,
        now: rustls::pki_types::UnixTime,
    ) -> bool {
        use rustls::CertificateError as C;
        use rustls::client::danger::ServerCertVerifier as _;
        let mut own = rustls::RootCertStore::empty();
        if own.add(cert.clone().into_owned()).is_err() {
            return false;
        }
        let Ok(alone) = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(own),
            Arc::clone(&self.provider),
        )
        .build() else {
            return false;
        };
        match alone.verify_server_cert(cert, &[], name, &[], now) {
            Ok(_) => true,
            // Signed by itself, with another problem besides.
            Err(rustls::Error::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. }
                | C::NotValidForName
                | C::NotValidForNameContext { .. },
            )) => true,
            Err(_) => false,
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for NamingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(C::UnknownIssuer))
                if intermediates.is_empty()
                    && self.is_self_signed(end_entity, server_name, now) =>
            {
                Err(rustls::Error::InvalidCertificate(C::Other(
                    rustls::OtherError(Arc::new(SelfSigned)),
                )))
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

/// `--insecure`: any server certificate is accepted. The handshake signature is still
/// checked, so the server must hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
}

/// Every certificate of a PEM file (a bundle is fine), each one checked to be usable as a
/// trust anchor.
fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read("--cacert", path)?;
    let ders = pem_certs("--cacert", path, &pem)?;
    let mut store = rustls::RootCertStore::empty();
    for (i, der) in ders.iter().enumerate() {
        store.add(der.clone()).map_err(|e| {
            anyhow!(
                "--cacert {}: certificate #{} cannot be a trusted root: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(ders)
}

/// The certificates of a PEM file; none at all, or a file that is not PEM, is an error.
fn pem_certs(flag: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{flag} {}: not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{flag} {}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// `--cert` and `--key`: the certificate chain and its key, after checking the key is the
/// certificate's.
fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_pem = read("--cert", cert)?;
    let key_pem = read("--key", key)?;
    let chain = pem_certs("--cert", cert, &cert_pem)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow!(
            "--key {}: no private key in it (expected PEM: PKCS#8, RSA or EC): {e}",
            key.display()
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => anyhow!(
                "--key {} is not the key of the certificate in --cert {}",
                key.display(),
                cert.display()
            ),
            e => anyhow!("--key {}: unusable key: {e}", key.display()),
        },
    )?;
    Ok((chain, key_der))
}

/// The proxy environment as reqwest (hyper-util) reads it, one `(scheme, variable, value)`
/// per proxied scheme: of each pair the upper-case variable wins when it is set at all (set
/// but empty means no proxy), `ALL_PROXY` stands in for a scheme without its own, and
/// `HTTP_PROXY` is ignored under CGI (`REQUEST_METHOD` set).
pub fn proxy_env(env: &dyn Fn(&str) -> Option<String>) -> Vec<(&'static str, String, String)> {
    let first = |names: [&'static str; 2]| {
        names
            .into_iter()
            .find_map(|n| env(n).map(|v| (n.to_string(), v)))
            .filter(|(_, v)| !v.trim().is_empty())
    };
    let all = first(["ALL_PROXY", "all_proxy"]);
    let https = first(["HTTPS_PROXY", "https_proxy"]).or_else(|| all.clone());
    let cgi = env("REQUEST_METHOD").is_some();
    let http = if cgi {
        None
    } else {
        first(["HTTP_PROXY", "http_proxy"])
    }
    .or(all);
    let mut out = Vec::new();
    if let Some((var, value)) = https {
        out.push(("https", var, value));
    }
    if let Some((var, value)) = http {
        out.push(("http", var, value));
    }
    out
}

/// A proxy URL for logs, any password replaced by `***`; `None` when reqwest would not
/// take it (not a URL, a scheme other than http, https or socks, no host).
pub fn redact_proxy(value: &str) -> Option<String> {
    // reqwest takes `host:port` as `http://host:port`; parse it the same way.
    let parsed = if value.contains("://") {
        Url::parse(value.trim())
    } else {
        Url::parse(&format!("http://{}", value.trim()))
    }
    .ok()?;
    // reqwest also takes socks schemes, but is built without SOCKS here: such a proxy
    // would fail every request, so it is reported like a value reqwest skips.
    let usable = matches!(parsed.scheme(), "http" | "https")
        && parsed.host_str().is_some_and(|h| !h.is_empty());
    usable.then(|| super::fetch::redacted(parsed))
}

/// Logs, once at start, which proxy each scheme goes through and what `NO_PROXY` exempts.
fn log_proxies(env: &dyn Fn(&str) -> Option<String>) {
    let proxies = proxy_env(env);
    if proxies.is_empty() {
        tracing::debug!("no proxy (HTTPS_PROXY, HTTP_PROXY and ALL_PROXY are unset)");
        return;
    }
    let no_proxy = ["NO_PROXY", "no_proxy"].into_iter().find_map(env);
    for (scheme, var, value) in proxies {
        match redact_proxy(&value) {
            Some(proxy) => tracing::info!(
                %proxy,
                from = %var,
                no_proxy = no_proxy.as_deref().unwrap_or(""),
                "{scheme}:// requests go through a proxy"
            ),
            // Without the value: it may hold a password.
            None if value.trim_start().to_ascii_lowercase().starts_with("socks") => {
                tracing::warn!(
                    "{var} is a SOCKS proxy, which recheck does not support: {scheme}:// \
                     requests sent to it will fail"
                )
            }
            None => {
                tracing::warn!("{var} is not a proxy URL: ignored, {scheme}:// requests go direct")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_pool_key_is_the_origin() {
        for u in [
            "http://API.example:80/items/1?x=1",
            "https://api.example:8443/a",
            "https://user:pw@api.example/a",
            "http://[::1]:8080/",
            "http://127.0.0.1/x#f",
            "https://bücher.example/x",
        ] {
            let url = Url::parse(u).unwrap();
            assert_eq!(origin_key(&url), url.origin().ascii_serialization(), "{u}");
        }
        let borrowed = Url::parse("https://api.example:8443/a").unwrap();
        assert!(matches!(
            origin_key(&borrowed),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn proxy_env_follows_reqwest_precedence() {
        let e = env(&[
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:1"),
            ("ALL_PROXY", "http://all:1"),
        ]);
        let got = proxy_env(&e);
        assert_eq!(
            got,
            [
                ("https", "HTTPS_PROXY".into(), "http://upper:1".into()),
                ("http", "ALL_PROXY".into(), "http://all:1".into())
            ]
        );
        let cgi = env(&[("HTTP_PROXY", "http://p:1"), ("REQUEST_METHOD", "GET")]);
        assert!(proxy_env(&cgi).is_empty());
        // set but empty: no proxy, also when the lower-case one has a value
        let empty = env(&[("HTTP_PROXY", ""), ("http_proxy", "http://p:1")]);
        assert!(proxy_env(&empty).is_empty());
    }

    #[test]
    fn proxy_passwords_are_redacted() {
        assert_eq!(
            redact_proxy("http://u:s3cret@proxy:3128").as_deref(),
            Some("http://u:***@proxy:3128/")
        );
        assert_eq!(
            redact_proxy("u:s3cret@proxy:3128").as_deref(),
            Some("http://u:***@proxy:3128/")
        );
        assert_eq!(redact_proxy("http://[::1:s3cret"), None);
        assert_eq!(redact_proxy("ftp://proxy:21"), None);
        assert_eq!(redact_proxy("socks5://proxy:1080"), None);
    }

    #[test]
    fn bad_tls_files_name_the_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello, not a certificate\n").unwrap();
        let cfg = |cacert: &Path| HttpConfig {
            cacert: Some(cacert.to_path_buf()),
            ..HttpConfig::default()
        };
        let missing = dir.path().join("missing.pem");
        for (path, fragment) in [(&missing, "cannot read"), (&junk, "no certificate")] {
            let err = format!("{:#}", Tls::load(&cfg(path)).err().unwrap());
            assert!(err.starts_with("--cacert "), "{err}");
            assert!(err.contains(&*path.to_string_lossy()), "{err}");
            assert!(err.contains(fragment), "{err}");
        }
    }

    #[test]
    fn at_most_pooled_hosts_clients_are_kept() {
        let c = Clients::new(
            HttpConfig::default(),
            FdBudget {
                idle_per_host: 4,
                pooled_hosts: 2,
            },
        )
        .unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        let (_, a1) = c.for_url(&url("https://a.example/1"));
        let (_, a2) = c.for_url(&url("https://a.example/2"));
        assert!(Arc::ptr_eq(&a1, &a2), "one origin, one client");
        // the first https:// request waits its turn; http:// never does
        assert!(!a1.done.load(Ordering::Acquire));
        let (_, b) = c.for_url(&url("http://b.example/1"));
        assert!(b.done.load(Ordering::Acquire));
        c.for_url(&url("http://c.example:8080/1"));
        let lru = c.pool.lock().unwrap();
        assert_eq!(lru.by_origin.len(), 2);
        // a.example was the least recently used: its client (and idle connections) went
        assert!(!lru.by_origin.contains_key("https://a.example"));
        assert!(lru.by_origin.contains_key("http://c.example:8080"));
    }

    #[tokio::test]
    async fn the_first_contact_goes_alone_then_everyone() {
        let f = FirstContact::new(false, None);
        let first = f.wait(Duration::from_secs(5)).await;
        assert!(first.is_some());
        // while the first is out, others wait (here: up to 50 ms, then go anyway)
        let started = std::time::Instant::now();
        assert!(f.wait(Duration::from_millis(50)).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(first);
        assert!(f.wait(Duration::from_secs(5)).await.is_none());
        assert!(f.done.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn every_request_waiting_for_the_first_answer_goes_at_once() {
        let f = Arc::new(FirstContact::new(false, None));
        let first = f.wait(Duration::from_secs(5)).await;
        assert!(first.is_some());
        let gone = Arc::new(AtomicUsize::new(0));
        let mut waiting = Vec::new();
        for _ in 0..20 {
            let (f, gone) = (Arc::clone(&f), Arc::clone(&gone));
            waiting.push(tokio::spawn(async move {
                assert!(f.wait(Duration::from_secs(30)).await.is_none());
                gone.fetch_add(1, Ordering::SeqCst);
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            gone.load(Ordering::SeqCst),
            0,
            "they wait for the first answer"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), async {
            for w in waiting {
                w.await.unwrap();
            }
        })
        .await
        .expect("all released by the first answer, not by their 30 s wait");
        assert_eq!(gone.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn after_the_first_answer_requests_wait_for_the_first_wave_of_connections() {
        let c = Arc::new(Connecting::new(2));
        let f = FirstContact::new(true, Some(Arc::clone(&c)));
        // nothing being opened: no wait
        tokio::time::timeout(Duration::from_millis(500), f.wait(Duration::from_secs(30)))
            .await
            .expect("no wait while nothing is being opened");
        let one = Opening::new(Arc::clone(&c));
        let started = std::time::Instant::now();
        assert!(f.wait(Duration::from_millis(50)).await.is_none());
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "waits while one opens"
        );
        let waiter = {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.settled(Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(one);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released when the connection is open")
            .unwrap();
        assert!(!c.wave_done.load(Ordering::Relaxed), "one of a wave of two");
        // the second connection of the wave: once it is open, nobody waits again
        drop(Opening::new(Arc::clone(&c)));
        assert!(c.wave_done.load(Ordering::Relaxed));
        let _third = Opening::new(Arc::clone(&c));
        tokio::time::timeout(
            Duration::from_millis(500),
            c.settled(Duration::from_secs(30)),
        )
        .await
        .expect("no wait after the first wave");
    }

    #[test]
    fn prior_knowledge_is_for_http_only() {
        let c = Clients::new(
            HttpConfig {
                http2_prior_knowledge: true,
                ..HttpConfig::default()
            },
            FdBudget {
                idle_per_host: 1,
                pooled_hosts: 2,
            },
        )
        .unwrap();
        assert!(c.prior_knowledge_for(&Url::parse("http://h/").unwrap()));
        assert!(!c.prior_knowledge_for(&Url::parse("https://h/").unwrap()));
    }
}
