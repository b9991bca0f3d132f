//! Standalone mock item-status server (the one the integration tests use), for the demo and
//! the benchmarks.
//!
//! ```text
//! cargo run --release --example mock_server -- [--addr 127.0.0.1:0] [--latency 20ms]
//!     [--default ok|fail|404|410|s<code>|<code>x<n>|ra<secs>x<n>|hang|garbage|huge[<bytes>]|slow<ms>]
//!     [--require-header NAME:VALUE] [--overload-above N] [--tls CA_FILE [--tls-http1-only]]
//! ```
//!
//! With `--tls CA_FILE` it serves TLS (ALPN `h2` and `http/1.1`) with a certificate for
//! 127.0.0.1 made at start, and writes the CA to trust (`recheck run --cacert CA_FILE`) to
//! that file before printing its line; `--tls-http1-only` offers only `http/1.1` by ALPN, for
//! measuring TLS over HTTP/1.1 with a client (recheck) that takes h2 whenever it is offered.
//! Plain TCP serves HTTP/1.1 and h2c (`--http2`).
//!
//! On start it prints exactly one line, `listening on http://ADDR` (`https://` with
//! `--tls`), to stdout (flushed, so a
//! parent process can read the port) and then serves until killed (or Ctrl-C). Besides
//! `GET /items/{id}` and `GET /q?id={id}` it serves `GET /_stats` (`?ids=1` for the per-id
//! counts) and `POST /_reset`. See `tests/support/mock_server.rs` for the id prefixes.
//!
//! It runs on a multi-threaded runtime: benchmarks drive hundreds of thousands of requests
//! through it from many connections, and one thread would make the server the bottleneck
//! being measured. Connections are HTTP/1.1 keep-alive (hyper's default).

#[path = "../tests/support/mock_server.rs"]
mod mock_server;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use mock_server::{Behavior, MockConfig, MockServer, MockTls};

const USAGE: &str = "\
usage: mock_server [--addr ADDR] [--latency DURATION] [--default BEHAVIOUR] [--require-header NAME:VALUE]
                   [--overload-above N] [--tls CA_FILE [--tls-http1-only]]

  --addr ADDR                  address to bind (default 127.0.0.1:0)
  --latency DURATION           fixed delay before every item answer, e.g. 20ms, 1s (default 0)
  --default BEHAVIOUR          behaviour for ids without a recognised prefix (default ok):
                               ok, fail, 404, 410, s<code>, <code>x<times>, ra<secs>x<times>,
                               hang, garbage, huge[<bytes>], slow<ms>
  --require-header NAME:VALUE  answer 401 to item requests without this exact header
  --overload-above N           answer 429 to item requests that arrive while more than N are in flight
  --tls CA_FILE                serve TLS (h2 and http/1.1 by ALPN) with a certificate made at
                               start; the CA to trust is written to CA_FILE (PEM)
  --tls-http1-only             with --tls: offer only http/1.1 by ALPN (no h2)
";

struct Args {
    addr: SocketAddr,
    config: MockConfig,
    tls_ca_file: Option<std::path::PathBuf>,
    tls_http1_only: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (expected e.g. 20ms or 2s)");
    let (num, unit): (&str, fn(u64) -> Duration) = if let Some(n) = s.strip_suffix("ms") {
        (n, Duration::from_millis)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, Duration::from_micros)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, Duration::from_secs)
    } else if s == "0" {
        return Ok(Duration::ZERO);
    } else {
        return Err(bad());
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    num.parse().map(unit).map_err(|_| bad())
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        config: MockConfig::default(),
        tls_ca_file: None,
        tls_http1_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--addr" => {
                let v = value()?;
                args.addr = v
                    .parse()
                    .map_err(|e| format!("invalid --addr {v:?}: {e}"))?;
            }
            "--latency" => args.config.latency = parse_duration(&value()?)?,
            "--overload-above" => {
                let v = value()?;
                args.config.overload_above = Some(
                    v.parse()
                        .map_err(|_| format!("invalid --overload-above {v:?} (a count)"))?,
                );
            }
            "--default" => args.config.default = value()?.parse::<Behavior>()?,
            "--require-header" => {
                let v = value()?;
                let (name, val) = v
                    .split_once(':')
                    .ok_or_else(|| format!("invalid --require-header {v:?} (NAME:VALUE)"))?;
                args.config.require_header = Some((name.trim().to_owned(), val.trim().to_owned()));
            }
            "--tls" => args.tls_ca_file = Some(value()?.into()),
            "--tls-http1-only" if inline.is_none() => args.tls_http1_only = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    if args.tls_http1_only && args.tls_ca_file.is_none() {
        return Err("--tls-http1-only needs --tls CA_FILE".to_owned());
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mock_server: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bound = match &args.tls_ca_file {
        None => MockServer::bind(args.addr, args.config).await,
        Some(_) => {
            let tls = MockTls {
                http1_only: args.tls_http1_only,
                ..MockTls::default()
            };
            MockServer::bind_tls(args.addr, args.config, tls).await
        }
    };
    let server = match bound {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock_server: cannot bind {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.tls_ca_file
        && let Err(e) = std::fs::write(path, server.ca_pem())
    {
        eprintln!("mock_server: cannot write --tls {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let mut out = std::io::stdout().lock();
    // A parent process reads this one line to learn the port; flush so it is not buffered.
    if writeln!(out, "listening on {}", server.url())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(out);
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling available: just serve until killed.
        std::future::pending::<()>().await;
    }
    drop(server);
    ExitCode::SUCCESS
}
