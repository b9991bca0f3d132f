//! Ids reach the server as exactly one percent-encoded path segment.

use crate::support::{self, Sandbox};

const HOSTILE: &[&str] = &[
    "a/b",
    "../../etc/passwd",
    "with space",
    "100%",
    "%2F",
    "what?x=1",
    "frag#ment",
    "a..b",
    "..x",
    "ünïcødé-日本",
    "plus+and&amp=",
    "semi;colon",
    "back\\slash",
];

#[test]
fn hostile_ids_are_one_segment() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", HOSTILE);
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], HOSTILE.len());
    for id in HOSTILE {
        assert_eq!(server.requests(id), 1, "{id:?} did not arrive as itself");
        assert_eq!(support::sqlite_row(&db, "t", id).status, "ok");
    }
    for path in server.raw_paths() {
        let rest = path
            .strip_prefix("/items/")
            .unwrap_or_else(|| panic!("{path}"));
        assert!(
            !rest.contains('/') && !rest.contains('?') && !rest.contains('#'),
            "{path}"
        );
    }
}

#[test]
fn ids_in_a_query_value() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["a&b=c", "x y", ".."]);
    sb.cmd()
        .args(["run", "--task", "t", "--store", "s.db", "--url"])
        .arg(server.query_url_template())
        .assert()
        .code(0);
    for id in ["a&b=c", "x y", ".."] {
        assert_eq!(server.requests(id), 1, "{id}");
    }
}

#[test]
fn dot_segments_are_an_item_error_not_a_wrong_request() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["..", ".", "ok-1"]);
    sb.run(&server, "t", "s.db").assert().code(1);
    assert_eq!(server.total_requests(), 1);
    let row = support::sqlite_row(&db, "t", "..");
    assert_eq!(row.status, "failed");
    assert!(row.last_error.unwrap().contains("path segment"));
}
