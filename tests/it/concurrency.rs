//! The bound on requests in flight holds, measured by the server's high-water mark.

use std::time::Duration;

use crate::support::{self, MockConfig, Sandbox};

fn high_water_for(concurrency: u32, latency_ms: u64) -> u64 {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(latency_ms),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    let ids: Vec<String> = (0..2000).map(|i| format!("ok-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&db, "t", &ids);
    let out = sb
        .run(&server, "t", "s.db")
        .args([
            "--concurrency",
            &concurrency.to_string(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 2000);
    assert_eq!(server.total_requests(), 2000);
    assert_eq!(server.per_id_max(), 1, "an item was requested twice");
    server.high_water()
}

#[test]
fn concurrency_1() {
    assert_eq!(high_water_for(1, 1), 1);
}

#[test]
fn concurrency_7() {
    let hw = high_water_for(7, 3);
    assert!(hw <= 7, "high water {hw} > 7");
    assert!(hw >= 5, "high water {hw}: the pool does not use its slots");
}

#[test]
fn concurrency_100() {
    let hw = high_water_for(100, 20);
    assert!(hw <= 100, "high water {hw} > 100");
    assert!(hw >= 80, "high water {hw}: the pool does not use its slots");
}
