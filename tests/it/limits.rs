//! The open-files limit: raised when --concurrency needs it, a clear refusal when it cannot be.
//! Memory: freed pages go back to the system soon, so a long run's size does not grow with
//! its length.

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

/// 120 items on each of `hosts` mock servers (hosts: three ports on 127.0.0.1, as reqwest
/// pools per scheme, host and port), checked one host after the other at `--concurrency 60`
/// under `ulimit -n LIMIT` (soft and hard: nothing can be raised).
fn items_over_hosts_under_a_limit(limit: u32, hosts: usize) {
    let servers: Vec<_> = (0..hosts)
        .map(|_| {
            support::server(MockConfig {
                latency: Duration::from_millis(50),
                ..MockConfig::default()
            })
        })
        .collect();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    let names: Vec<String> = (0..hosts).map(|h| format!("h{h}")).collect();
    let mut ids = Vec::new();
    for host in &names {
        for i in 0..120 {
            ids.push(format!("ok-{host}x{i:03}"));
        }
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&db, "t", &refs);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for (host, server) in names.iter().zip(&servers) {
            conn.execute(
                "UPDATE items SET url = ?1 || '/items/' || item_id WHERE item_id LIKE ?2",
                [server.url(), format!("ok-{host}x%")],
            )
            .unwrap();
        }
    }
    let out = under_ulimit(
        &sb,
        &format!("ulimit -n {limit}"),
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
    assert_eq!(support::summary(&out)["ok"], 120 * hosts);
    for s in &servers {
        assert_eq!(s.total_requests(), 120);
        // The test is only a test if each host had many connections at once.
        assert!(s.high_water() >= 30, "high water {}", s.high_water());
    }
}

#[test]
fn idle_connections_to_several_hosts_stay_within_the_open_files_limit() {
    // Each host in turn gets 60 connections, which then sit idle while the next host gets
    // its own. Bounded per host only, the idle ones added up to 180 sockets under a limit
    // of 124, and the run failed with "Too many open files". 124 leaves no room for idle
    // connections at all (60 busy + 64 others): no keep-alive, but every item checked.
    items_over_hosts_under_a_limit(124, 3);
}

#[test]
fn with_room_for_one_hosts_idle_connections_the_others_are_closed() {
    // 200 leaves 76 for idle connections: one host's 60. Four hosts in turn would keep
    // 240 idle if nothing closed them; the least recently used host's are closed instead.
    items_over_hosts_under_a_limit(200, 4);
}

/// The allocator's settings compiled into the binary (src/main.rs): freed pages are returned
/// after 0.5 s, not jemalloc's 10 s, which kept a 1,000,000-item run's peak above a short
/// run's, and each thread caches 32 blocks of a size (BENCHMARKS.md, "memory flat with the
/// run's length"). jemalloc prints the options it runs with when asked to print its
/// statistics at exit.
#[test]
fn freed_memory_goes_back_to_the_system_within_half_a_second() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opt.dirty_decay_ms: 500 ")
            && stderr.contains("opt.tcache_nslots_small_min: 32\n"),
        "jemalloc's options: {}",
        stderr
            .lines()
            .filter(|l| l.contains("decay") || l.contains("malloc_conf") || l.contains("tcache"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
