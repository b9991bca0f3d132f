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

#[test]
fn idle_connections_to_several_hosts_stay_within_the_open_files_limit() {
    // Three hosts (three ports: reqwest pools per scheme, host and port), their items one
    // host after the other, 60 in flight: each host in turn gets 60 connections, which
    // then sit idle while the next host gets its own. Bounded per host only, the idle ones
    // add up to 180 sockets under a limit of 124, and the run failed with "Too many open
    // files". Under `ulimit -n` the hard limit is 124 too, so nothing can be raised.
    let servers: Vec<_> = (0..3)
        .map(|_| {
            support::server(MockConfig {
                latency: Duration::from_millis(50),
                ..MockConfig::default()
            })
        })
        .collect();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    let mut ids = Vec::new();
    for host in ["a", "b", "c"] {
        for i in 0..120 {
            ids.push(format!("ok-{host}{i:03}"));
        }
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&db, "t", &refs);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for (host, server) in ["a", "b", "c"].iter().zip(&servers) {
            conn.execute(
                "UPDATE items SET url = ?1 || '/items/' || item_id WHERE item_id LIKE ?2",
                [server.url(), format!("ok-{host}%")],
            )
            .unwrap();
        }
    }
    let out = under_ulimit(
        &sb,
        "ulimit -n 124",
        &[
            "run",
            "--task",
            "t",
            "--store",
            "s.db",
            "--concurrency",
            "60",
            "--retries",
            "0",
            "--format",
            "json",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("Too many open files"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Too many open files"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 360);
    for s in &servers {
        assert_eq!(s.total_requests(), 120);
        // The test is only a test if each host had many connections at once.
        assert!(s.high_water() >= 30, "high water {}", s.high_water());
    }
}
