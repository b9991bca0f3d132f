//! The open-files limit: raised when --concurrency needs it, a clear refusal when it cannot be.

use std::time::Duration;

use crate::support::{self, MockConfig, Sandbox};

/// `recheck ARGS` under `ulimit` settings, through sh.
fn under_ulimit(sb: &Sandbox, limits: &str, args: &[&str]) -> std::process::Output {
    let script = format!("{limits} && exec \"$0\" \"$@\"");
    let bin = assert_cmd::cargo::cargo_bin("recheck");
    let mut sh = std::process::Command::new("sh");
    sh.current_dir(sb.dir.path())
        .arg("-c")
        .arg(script)
        .arg(bin)
        .args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RECHECK_") {
            sh.env_remove(k);
        }
    }
    for k in support::PROXY_VARS {
        sh.env_remove(k);
    }
    sh.output().unwrap()
}

#[test]
fn refuses_when_the_hard_limit_is_too_low() {
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
    let before = support::snapshot(&sb.path("s.db"));
    let out = under_ulimit(
        &sb,
        "ulimit -Sn 200 && ulimit -Hn 200",
        &[
            "run",
            "--task",
            "t",
            "--store",
            "s.db",
            "--concurrency",
            "1000",
            "--url",
            "http://127.0.0.1:9/{id}",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--concurrency 1000") && err.contains("RLIMIT_NOFILE"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(support::snapshot(&sb.path("s.db")), before);
}

#[test]
fn raises_the_soft_limit_when_the_hard_limit_allows() {
    // 600 sockets at once under a soft limit of 256: only works if recheck raised it.
    let server = support::server(MockConfig {
        latency: Duration::from_millis(500),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let ids: Vec<String> = (0..600).map(|i| format!("ok-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
    let tmpl = server.item_url_template();
    let out = under_ulimit(
        &sb,
        "ulimit -Sn 256",
        &[
            "run",
            "--task",
            "t",
            "--store",
            "s.db",
            "--concurrency",
            "600",
            "--format",
            "json",
            "--url",
            &tmpl,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 600);
    assert!(
        server.high_water() > 256,
        "high water {}",
        server.high_water()
    );
}
