//! Self-test of the mock status server other tests, the demo and the benchmarks rely on.
//!
//! Uses a tiny raw HTTP/1.1 client over `TcpStream` so that paths reach the server exactly
//! as written (no client-side normalisation) and so a test can abandon a request by just
//! dropping the socket.

#[path = "support/mock_server.rs"]
mod mock_server;

use std::time::{Duration, Instant};

use mock_server::{Behavior, MockConfig, MockServer, MockTls, settled_high_water_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

/// `GET path` on a fresh connection with `Connection: close`; reads the whole answer.
async fn get(server: &MockServer, path: &str) -> Reply {
    get_with(server, path, &[]).await
}

async fn get_with(server: &MockServer, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", server.addr());
    for (name, value) in extra {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..end]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

#[tokio::test]
async fn prefixes_choose_behaviours() {
    let server = MockServer::start(MockConfig::default()).await;

    let r = get(&server, "/items/ok-17").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), r#"{"id":"ok-17","status":"done","ok":true}"#);

    let r = get(&server, "/items/fail-3").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        r#"{"id":"fail-3","status":"processing","ok":false}"#
    );

    let r = get(&server, "/items/404-1").await;
    assert_eq!((r.status, r.text()), (404, r#"{"error":"not found"}"#));
    assert_eq!(get(&server, "/items/410-1").await.status, 410);
    let r = get(&server, "/items/s418-1").await;
    assert_eq!((r.status, r.text()), (418, r#"{"error":"status 418"}"#));

    // 503x2: 503, 503, then Ok; never a Retry-After.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = get(&server, "/items/503x2-9").await;
        assert_eq!(r.header("retry-after"), None);
        seen.push(r.status);
    }
    assert_eq!(seen, [503, 503, 200]);
    assert_eq!(server.requests("503x2-9"), 3);

    // ra1x1: one 429 with Retry-After: 1, then Ok.
    let r = get(&server, "/items/ra1x1-1").await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
    let r = get(&server, "/items/ra1x1-1").await;
    assert_eq!((r.status, r.header("retry-after")), (200, None));

    let r = get(&server, "/items/garbage-1").await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());

    // No `-`: no prefix, so the default (Ok), even for a numeric id like 404.
    assert_eq!(get(&server, "/items/404").await.status, 200);
    assert_eq!(get(&server, "/items/item-1").await.status, 200);

    // JSON escaping of the id; the query is ignored for behaviour.
    let r = get(&server, "/items/%22q%22?x=fail-1").await;
    assert_eq!(r.text(), r#"{"id":"\"q\"","status":"done","ok":true}"#);

    // The id in the query.
    let r = get(&server, "/q?x=1&id=fail-2%2B").await;
    assert_eq!(
        r.text(),
        r#"{"id":"fail-2+","status":"processing","ok":false}"#
    );

    // Override wins over the prefix; reset keeps it but clears counters.
    server.set("ok-5", Behavior::Status(500));
    assert_eq!(get(&server, "/items/ok-5").await.status, 500);
    server.set(
        "r-1",
        Behavior::Redirect {
            to: "/items/ok-1".into(),
        },
    );
    let r = get(&server, "/items/r-1").await;
    assert_eq!((r.status, r.header("location")), (302, Some("/items/ok-1")));

    let r = get(&server, "/elsewhere").await;
    assert_eq!((r.status, r.text()), (404, r#"{"error":"no route"}"#));
    assert_eq!(server.requests("/elsewhere"), 0);

    let answered = server.answered();
    assert_eq!(
        answered.first().map(|a| (a.0.as_str(), a.1)),
        Some(("ok-17", 200))
    );
    assert!(answered.windows(2).all(|w| w[0].2 <= w[1].2));

    let stats: serde_json::Value =
        serde_json::from_slice(&get(&server, "/_stats?ids=1").await.body).unwrap();
    assert_eq!(stats["total_requests"], server.total_requests());
    assert_eq!(stats["per_id_max"], 3);
    assert_eq!(stats["requests"]["503x2-9"], 3);
    assert_eq!(stats["connections"], server.connections());
    assert!(
        server.connections() > 1,
        "the raw client opens one per request"
    );
    assert_eq!(stats["tls_handshakes"], 0);
    assert_eq!(stats["h2_requests"], 0);

    server.reset();
    assert_eq!(server.total_requests(), 0);
    assert!(server.all_requests().is_empty());
    assert!(server.raw_paths().is_empty() && server.answered().is_empty());
    assert_eq!(get(&server, "/items/ok-5").await.status, 500);
    // FailThenOk state restarts with the counters.
    assert_eq!(get(&server, "/items/503x2-9").await.status, 503);
}

#[test]
fn prefix_parsing() {
    use Behavior as B;
    let cases = [
        ("ok", Some(B::Ok)),
        ("fail", Some(B::StillFailed)),
        ("404", Some(B::NotFound)),
        ("410", Some(B::Gone)),
        ("s500", Some(B::Status(500))),
        ("s99", None),
        (
            "503x2",
            Some(B::FailThenOk {
                status: 503,
                times: 2,
            }),
        ),
        (
            "429x3",
            Some(B::FailThenOk {
                status: 429,
                times: 3,
            }),
        ),
        ("ra1x1", Some(B::RetryAfter { secs: 1, times: 1 })),
        ("hang", Some(B::Hang)),
        ("garbage", Some(B::Garbage)),
        (
            "huge",
            Some(B::Huge {
                bytes: mock_server::DEFAULT_HUGE_BYTES,
            }),
        ),
        ("huge1000", Some(B::Huge { bytes: 1000 })),
        (
            "hugechunked",
            Some(B::HugeChunked {
                bytes: mock_server::DEFAULT_HUGE_BYTES,
            }),
        ),
        ("hugechunked1000", Some(B::HugeChunked { bytes: 1000 })),
        ("hugechunkedx", None),
        ("hugex", None),
        (
            "dribble",
            Some(B::Dribble {
                interval: mock_server::DEFAULT_DRIBBLE_INTERVAL,
            }),
        ),
        (
            "dribble50",
            Some(B::Dribble {
                interval: Duration::from_millis(50),
            }),
        ),
        ("dribblex", None),
        ("reset", Some(B::Reset)),
        ("badlen", Some(B::BadLength)),
        ("loop", Some(B::RedirectLoop)),
        (
            "slow300",
            Some(B::Slow {
                delay: Duration::from_millis(300),
            }),
        ),
        ("slow", None),
        ("item", None),
        ("+503x2", None),
        ("", None),
    ];
    for (prefix, want) in cases {
        assert_eq!(Behavior::from_prefix(prefix), want, "prefix {prefix:?}");
    }
    assert_eq!(Behavior::for_id("hang"), None);
    assert_eq!(Behavior::for_id("hang-1-2"), Some(B::Hang));
}

#[tokio::test]
async fn id_is_one_decoded_path_segment() {
    let server = MockServer::start(MockConfig::default()).await;

    let r = get(&server, "/items/a%2Fb").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"id":"a/b","status":"done","ok":true}"#);
    assert_eq!(server.requests("a/b"), 1);

    let r = get(&server, "/items/a/b").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), r#"{"error":"id must be one path segment"}"#);
    assert_eq!(
        server.requests("a/b"),
        1,
        "two segments must not count as a/b"
    );
    assert_eq!(get(&server, "/items/").await.status, 400);

    let r = get(&server, "/items/caf%C3%A9%20x").await;
    assert_eq!(r.text(), r#"{"id":"café x","status":"done","ok":true}"#);

    assert_eq!(
        server.raw_paths(),
        [
            "/items/a%2Fb",
            "/items/a/b",
            "/items/",
            "/items/caf%C3%A9%20x"
        ]
    );
    assert_eq!(server.total_requests(), 4);
}

#[tokio::test]
async fn required_header_and_headers_seen() {
    let server = MockServer::start(MockConfig {
        require_header: Some(("Authorization".into(), "Bearer t0k".into())),
        ..MockConfig::default()
    })
    .await;
    assert_eq!(get(&server, "/items/ok-1").await.status, 401);
    let r = get_with(
        &server,
        "/items/ok-1",
        &[("Authorization", "Bearer t0k"), ("X-Trace", "7")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(server.requests("ok-1"), 2);
    let headers = server.headers_seen("ok-1");
    assert!(headers.contains(&("authorization".into(), "Bearer t0k".into())));
    assert!(headers.contains(&("x-trace".into(), "7".into())));
    let statuses: Vec<u16> = server.answered().iter().map(|a| a.1).collect();
    assert_eq!(statuses, [401, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_water_counts_concurrent_requests() {
    let server = MockServer::start(MockConfig::default()).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let addr = server.addr();
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req =
                format!("GET /items/slow200-{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.unwrap();
            parse_reply(&raw).status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    let hw = server.high_water();
    assert!((15..=20).contains(&hw), "high_water {hw}");
    // 200 ms answers overlap far longer than the settling time: they count.
    let settled = server.settled_high_water().unwrap();
    assert!(
        (15..=hw).contains(&settled),
        "settled {settled}, high water {hw}"
    );
    let stats: serde_json::Value = serde_json::from_str(&server.stats_json(false, true)).unwrap();
    assert_eq!(stats["settled_high_water"], settled);
    assert_eq!(server.in_flight(), 0);
    assert_eq!(server.total_requests(), 20);
    assert_eq!(server.all_requests().len(), 20);
}

/// The settled high-water leaves out overlaps shorter than `SETTLE` (a hang the client
/// closed just as it sent its next request) and counts every longer one.
#[test]
fn settled_high_water_leaves_out_short_overlaps() {
    let ms = |n: u64| n * 1_000_000;
    let settle = Duration::from_millis(5);
    // A hang [0, 5000 ms] closed 1 ms after the next request arrived: one at a time.
    let raced = [(ms(0), ms(5000)), (ms(4999), ms(5020))];
    assert_eq!(settled_high_water_of(&raced, settle), 1);
    // The same with 10 ms of overlap: two at once.
    let overlapping = [(ms(0), ms(5000)), (ms(4990), ms(5020))];
    assert_eq!(settled_high_water_of(&overlapping, settle), 2);
    // Three 20 ms answers at once, then one: three.
    let three = [
        (ms(0), ms(20)),
        (ms(1), ms(21)),
        (ms(2), ms(22)),
        (ms(30), ms(50)),
    ];
    assert_eq!(settled_high_water_of(&three, settle), 3);
    // Spans shorter than the settling time count for nothing; none at all is zero.
    assert_eq!(settled_high_water_of(&[(ms(0), ms(3))], settle), 0);
    assert_eq!(settled_high_water_of(&[], settle), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_hanging_request_leaves_in_flight() {
    let server = MockServer::start(MockConfig::default()).await;
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"GET /items/hang-1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.in_flight() != 1 {
        assert!(Instant::now() < deadline, "hang request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.requests("hang-1"), 1);
    // Other requests are not blocked by the hanging one.
    assert_eq!(get(&server, "/items/ok-1").await.status, 200);

    drop(s);
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.in_flight() != 0 {
        assert!(
            Instant::now() < deadline,
            "in_flight stuck at {}",
            server.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(server.answered().iter().all(|a| a.0 != "hang-1"));
    assert_eq!(server.high_water(), 2);
}

#[tokio::test]
async fn huge_body_is_streamed_with_content_length() {
    let server = MockServer::start(MockConfig::default()).await;
    let r = get(&server, "/items/huge1000000-1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000000"));
    assert_eq!(r.body.len(), 1_000_000);
    assert!(r.body.starts_with(br#"{"pad":"aaa"#) && r.body.ends_with(br#"aaa"}"#));
    serde_json::from_slice::<serde_json::Value>(&r.body).expect("valid JSON");

    let r = get(&server, "/items/huge-1").await;
    assert_eq!(r.body.len() as u64, mock_server::DEFAULT_HUGE_BYTES);
    assert_eq!(r.header("content-length"), Some("8388608"));

    assert_eq!(get(&server, "/items/huge5-1").await.body, b"aaaaa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_client_and_latency() {
    let server = MockServer::start(MockConfig {
        latency: Duration::from_millis(20),
        default: Behavior::StillFailed,
        require_header: None,
        overload_above: None,
    })
    .await;
    let client = reqwest_client().build().unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let (client, url) = (client.clone(), format!("{}/items/x{i}", server.url()));
        tasks.spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() });
    }
    while let Some(body) = tasks.join_next().await {
        assert!(body.unwrap().contains(r#""status":"processing""#));
    }
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert_eq!(server.total_requests(), 500);
    assert_eq!(server.in_flight(), 0);
    assert_eq!(
        server.item_url_template(),
        format!("http://127.0.0.1:{}/items/{{id}}", server.addr().port())
    );
}

/// Sends `GET path` on a fresh connection (keep-alive, as a pooling client would) and
/// returns the socket to read the answer from.
async fn send(server: &MockServer, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr());
    stream.write_all(req.as_bytes()).await.expect("write");
    stream
}

/// Reads whatever arrives within `window` (or until EOF / an error).
async fn read_for(stream: &mut TcpStream, window: Duration) -> (Vec<u8>, std::io::Result<()>) {
    let mut raw = Vec::new();
    let until = tokio::time::Instant::now() + window;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return (raw, Ok(())),
            Ok(Ok(0)) => return (raw, Ok(())),
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (raw, Err(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribble_sends_one_byte_per_interval() {
    let server = MockServer::start(MockConfig::default()).await;
    let mut s = send(&server, "/items/dribble-1").await;
    let (raw, res) = read_for(&mut s, Duration::from_millis(450)).await;
    res.expect("no error while dribbling");
    let r = parse_reply(&raw);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    // Bytes at 0, 100, 200, 300, 400 ms: about five in 450 ms, give or take scheduling.
    assert!(
        (2..=6).contains(&r.body.len()),
        "{} bytes in 450 ms",
        r.body.len()
    );
    assert!(br#"{"pad":"aaa"#.starts_with(&r.body));
    drop(s);

    // dribble0: no pause, so the whole (valid JSON) body arrives at once.
    let r = get(&server, "/items/dribble0-1").await;
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.body.len(), 1000);
    serde_json::from_slice::<serde_json::Value>(&r.body).expect("valid JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_sends_a_rst_and_nothing_else() {
    let server = MockServer::start(MockConfig::default()).await;
    let mut s = send(&server, "/items/reset-1").await;
    let (raw, res) = read_for(&mut s, Duration::from_secs(5)).await;
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    let err = res.expect_err("a reset, not a clean close or a timeout");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(server.requests("reset-1"), 1);
    assert!(server.answered().is_empty());
    // Other connections are unaffected.
    assert_eq!(get(&server, "/items/ok-1").await.status, 200);

    // A client sees a connection error, not an answer.
    let e = reqwest_client()
        .build()
        .unwrap()
        .get(format!("{}/items/reset-2", server.url()))
        .send()
        .await
        .expect_err("no answer");
    assert!(e.is_request() && !e.is_status(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badlen_closes_short_of_its_content_length() {
    let server = MockServer::start(MockConfig::default()).await;
    let mut s = send(&server, "/items/badlen-1").await;
    let (raw, res) = read_for(&mut s, Duration::from_secs(5)).await;
    res.expect("a clean close");
    let r = parse_reply(&raw);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(mock_server::BADLEN_DECLARED.to_string().as_str())
    );
    assert_eq!(r.body.len() as u64, mock_server::BADLEN_SENT);
    assert!(r.body.starts_with(br#"{"pad":"aaa"#));

    // A client fails while reading the body.
    let resp = reqwest_client()
        .build()
        .unwrap()
        .get(format!("{}/items/badlen-2", server.url()))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let e = resp.bytes().await.expect_err("short body");
    assert!(e.is_body() || e.is_decode(), "{e:?}");
}

#[tokio::test]
async fn loop_redirects_to_itself_and_hugechunked_has_no_length() {
    let server = MockServer::start(MockConfig::default()).await;
    for _ in 0..3 {
        let r = get(&server, "/items/loop-1?x=1").await;
        assert_eq!(
            (r.status, r.header("location")),
            (302, Some("/items/loop-1?x=1"))
        );
    }
    assert_eq!(server.requests("loop-1"), 3);
    let r = get(&server, "/q?id=loop-2").await;
    assert_eq!(r.header("location"), Some("/q?id=loop-2"));

    let r = get(&server, "/items/hugechunked100000-1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let body = reqwest_client()
        .build()
        .unwrap()
        .get(format!("{}/items/hugechunked100000-2", server.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 100_000);
    serde_json::from_slice::<serde_json::Value>(&body).expect("valid JSON");
}

/// A reqwest client builder. reqwest is built without a crypto provider of its own
/// (`rustls-no-provider`, so no aws-lc-rs): a client it configures itself uses the process
/// default, ring here, as in recheck's own clients.
fn reqwest_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

// ---------------------------------------------------------------------------------------
// transports: TLS (ALPN h2 / http/1.1, mutual TLS, broken certificates), h2c, HEAD, proxy form

/// A reqwest client trusting only `server`'s CA (no system roots, no proxy).
fn tls_client(server: &MockServer) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(server.ca_pem().as_bytes()).expect("CA PEM");
    reqwest_client().no_proxy().tls_certs_only([ca])
}

async fn tls_server(tls: MockTls) -> MockServer {
    MockServer::start_tls(MockConfig::default(), tls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_h2_by_alpn_and_counts_one_connection() {
    let server = tls_server(MockTls::default()).await;
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let client = tls_client(&server).build().unwrap();
    for i in 0..20 {
        let r = client
            .get(format!("{}/items/ok-{i}", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert!(r.text().await.unwrap().contains("done"));
    }
    assert_eq!(server.h2_requests(), 20);
    assert_eq!(server.connections(), 1);
    assert_eq!(server.tls_handshakes(), 1);
    assert_eq!(server.tls_failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_http1_only_speaks_http11() {
    let server = tls_server(MockTls {
        http1_only: true,
        ..MockTls::default()
    })
    .await;
    let client = tls_client(&server).build().unwrap();
    let r = client
        .get(format!("{}/items/ok-1", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(server.h2_requests(), 0);
    assert_eq!(server.total_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_server_speaks_h2c_with_prior_knowledge() {
    let server = MockServer::start(MockConfig::default()).await;
    let client = reqwest_client()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for i in 0..5 {
        let r = client
            .get(format!("{}/items/ok-{i}", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
    }
    assert_eq!(server.h2_requests(), 5);
    assert_eq!(server.connections(), 1);
    assert_eq!(server.tls_handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_demands_the_client_certificate() {
    let server = tls_server(MockTls {
        require_client_cert: true,
        ..MockTls::default()
    })
    .await;
    let url = format!("{}/items/ok-1", server.url());
    let without = tls_client(&server).build().unwrap().get(&url).send().await;
    assert!(without.is_err(), "{without:?}");
    let pem = format!("{}\n{}", server.client_cert_pem(), server.client_key_pem());
    let id = reqwest::Identity::from_pem(pem.as_bytes()).expect("identity");
    let with = tls_client(&server).identity(id).build().unwrap();
    assert_eq!(with.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        server.total_requests(),
        1,
        "only the client with a certificate got in"
    );
    assert!(server.tls_handshakes() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificates_are_refused_by_a_client_trusting_the_ca() {
    for (what, tls) in [
        (
            "expired",
            MockTls {
                expired: true,
                ..MockTls::default()
            },
        ),
        (
            "another name",
            MockTls {
                names: vec!["api.example.invalid".into()],
                ..MockTls::default()
            },
        ),
    ] {
        let server = tls_server(tls).await;
        let r = tls_client(&server)
            .build()
            .unwrap()
            .get(format!("{}/items/ok-1", server.url()))
            .send()
            .await;
        assert!(r.is_err(), "{what}: {r:?}");
        assert_eq!(server.total_requests(), 0, "{what}");
    }
    // Self-signed: unknown to a client trusting nothing, fine once the certificate itself
    // is trusted.
    let server = tls_server(MockTls {
        self_signed: true,
        ..MockTls::default()
    })
    .await;
    let url = format!("{}/items/ok-1", server.url());
    let untrusting = reqwest_client()
        .no_proxy()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(untrusting.get(&url).send().await.is_err());
    let trusting = tls_client(&server).build().unwrap();
    assert_eq!(trusting.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn head_is_get_without_a_body() {
    let server = MockServer::start(MockConfig::default()).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let req = format!(
        "HEAD /items/huge1000-1 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let reply = parse_reply(&raw);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("1000"));
    assert!(reply.body.is_empty());
    assert_eq!(get(&server, "/items/404-1").await.status, 404);
    assert_eq!(server.head_requests(), 1);
    assert_eq!(server.requests("huge1000-1"), 1);
}

#[tokio::test]
async fn absolute_form_requests_are_served_and_counted() {
    let server = MockServer::start(MockConfig::default()).await;
    let r = get(&server, "http://api.example.invalid/items/ok-7").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("ok-7"));
    assert_eq!(server.absolute_form_requests(), 1);
    get(&server, "/items/ok-8").await;
    assert_eq!(server.absolute_form_requests(), 1);
    assert_eq!(server.total_requests(), 2);
}
