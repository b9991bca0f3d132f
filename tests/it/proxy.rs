//! Proxies from the environment: requests go through `HTTP_PROXY` (the mock server sees
//! them in absolute form), `NO_PROXY` exempts hosts, and the proxy in use is logged once at
//! start with its password hidden.

use crate::support::{self, Sandbox};

fn store(sb: &Sandbox, n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("ok-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
}

#[test]
fn http_proxy_carries_the_requests_and_is_logged_without_its_password() {
    let proxy = support::default_server();
    let sb = Sandbox::new();
    store(&sb, 5);
    // A host that does not resolve: only the proxy can answer for it.
    let proxy_url = format!("http://ops:s3cret@{}", proxy.addr());
    let out = sb
        .cmd()
        .args([
            "run", "--task", "t", "--store", "s.db", "-v", "--format", "json",
        ])
        .args(["--url", "http://items.example.invalid/items/{id}"])
        .env("HTTP_PROXY", &proxy_url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 5);
    assert_eq!(proxy.absolute_form_requests(), 5);
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("requests go through a proxy"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("http://"), "{err}");
    assert!(
        lines[0].contains(&format!("ops:***@{}", proxy.addr())),
        "{err}"
    );
    assert!(lines[0].contains("HTTP_PROXY"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    // The summary and the store never show it either.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
}

#[test]
fn no_proxy_exempts_a_host_and_lower_case_works() {
    let server = support::default_server();
    let sb = Sandbox::new();
    store(&sb, 3);
    // The proxy is a closed port: an item sent to it would fail.
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--format", "json", "--retries", "0"])
        .env("http_proxy", "http://127.0.0.1:9")
        .env("no_proxy", "127.0.0.1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 3);
    assert_eq!(server.total_requests(), 3);
    assert_eq!(server.absolute_form_requests(), 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http_proxy") && err.contains("127.0.0.1"),
        "{err}"
    );
}

#[test]
fn without_proxy_variables_nothing_is_proxied_or_logged() {
    let server = support::default_server();
    let sb = Sandbox::new();
    store(&sb, 2);
    let out = sb.run(&server, "t", "s.db").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(server.absolute_form_requests(), 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("proxy"), "{err}");
}

#[test]
fn an_unusable_proxy_value_is_ignored_with_a_warning_that_hides_it() {
    let server = support::default_server();
    let sb = Sandbox::new();
    store(&sb, 2);
    let out = sb
        .run(&server, "t", "s.db")
        .env("HTTP_PROXY", "ftp://ops:s3cret@proxy.example.invalid:21")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(server.total_requests(), 2);
    assert_eq!(server.absolute_form_requests(), 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP_PROXY is not a proxy URL: ignored, http:// requests go direct"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn a_socks_proxy_is_not_supported_and_a_warning_says_so() {
    let server = support::default_server();
    let sb = Sandbox::new();
    store(&sb, 1);
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--retries", "0"])
        .env("ALL_PROXY", "socks5://ops:s3cret@127.0.0.1:9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ALL_PROXY is a SOCKS proxy, which recheck does not support"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    // reqwest still sends the request there (as to an HTTP proxy): it fails
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(server.total_requests(), 0);
}
