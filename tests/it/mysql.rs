//! What only the MySQL / MariaDB store has, against a real server
//! (`RECHECK_TEST_MYSQL_URL`, e.g. `mysql://root@127.0.0.1:3306/test`): the one-run lock
//! (`GET_LOCK`) of a table without lease columns, bad tables and columns, and a password that
//! never shows. What every SQL backend shares (outcomes, mapping, leases, takeover,
//! conflicts, `init`, `import`, faults) is in the scenario table, `scenarios.rs`. Each test
//! works in a database of its own, dropped at the end (support/db.rs, `My`). Without the
//! variable every test says it is skipped and passes.

use std::time::{Duration, Instant};

use crate::support::db::{Db, My, mysql_exec_on as exec_on};
use crate::support::{self, MockConfig, Sandbox};

fn one_line(stderr: &[u8]) -> String {
    let err = String::from_utf8_lossy(stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn mysql_a_table_without_lease_columns_allows_one_run_per_task() {
    let Some(db) = My::new("mysql_a_table_without_lease_columns_allows_one_run_per_task") else {
        return;
    };
    let server = support::server(MockConfig {
        latency: Duration::from_millis(300),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    db.exec(
        "CREATE TABLE data(task_id VARCHAR(20), content VARCHAR(100), status VARCHAR(20)); \
         INSERT INTO data VALUES ('t', 'ok-1', 'failed'), ('u', 'ok-2', 'failed');",
    );
    let tmpl = server.item_url_template();
    let args = |task: &'static str| {
        vec![
            "run".to_string(),
            "--task".into(),
            task.into(),
            "--store".into(),
            db.url.clone(),
            "--table".into(),
            "data".into(),
            "--id-column".into(),
            "content".into(),
            "--url".into(),
            tmpl.clone(),
        ]
    };
    let first = sb.spawn(&strs(&args("t")));
    support::wait_until("the first run to ask", Duration::from_secs(30), || {
        server.total_requests() >= 1
    });
    let started = Instant::now();
    let out = sb.cmd().args(args("t")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not fail fast"
    );
    let err = one_line(&out.stderr);
    assert!(
        err.contains("task t")
            && err.contains("another recheck run holds the task's lock")
            && err.contains("recheck init --store")
            && err.contains("--table data"),
        "{err}"
    );
    // Another task of the same table is not held up.
    sb.cmd().args(args("u")).assert().code(0);
    assert_eq!(first.wait(Duration::from_secs(30)).status.code(), Some(0));
    assert_eq!(server.requests("ok-1"), 1);
    // The lock went with the first run: the task can run again (nothing left to check).
    sb.cmd().args(args("t")).assert().code(0);
}

#[test]
fn mysql_bad_table_or_column_is_one_line_and_writes_nothing() {
    let Some(db) = My::new("mysql_bad_table_or_column_is_one_line_and_writes_nothing") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    db.default_schema();
    db.insert_failed("t", &["ok-1".to_string(), "ok-2".to_string()]);
    let snapshot = || {
        db.rows(
            "SELECT task_id, item_id, status, CAST(attempts AS CHAR), CAST(checked_at AS CHAR), \
             lease_owner FROM items ORDER BY item_id",
        )
    };
    let before = snapshot();
    let cases: &[(&[&str], &str)] = &[
        (&["--table", "nope"], "table nope not found (tables: items)"),
        (
            &["--status-column", "state"],
            "has no column state (--status-column",
        ),
        (&["--id-column", "id"], "has no column id (--id-column"),
        (
            &["--task-column", "job"],
            "has no column job (--task-column",
        ),
        (&["--table", "bad-name"], "--table \"bad-name\""),
    ];
    for (extra, fragment) in cases {
        let out = sb.run(&server, "t", &db.url).args(*extra).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        let err = one_line(&out.stderr);
        assert!(err.contains(fragment), "{extra:?}: {err}");
    }
    // The url column is needed only without --url.
    let out = sb
        .cmd()
        .args([
            "run",
            "--task",
            "t",
            "--store",
            &db.url,
            "--url-column",
            "link",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(one_line(&out.stderr).contains("no column link (--url-column"));
    // A placeholder in --url names a column too.
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--store", &db.url, "--url"])
        .arg(format!("{}?r={{region}}", server.item_url_template()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(one_line(&out.stderr).contains("no column region"));
    assert_eq!(server.total_requests(), 0);
    assert_eq!(snapshot(), before, "the table changed");
}

#[test]
fn mysql_password_never_shows() {
    let Some(db) = My::new("mysql_password_never_shows") else {
        return;
    };
    const PASSWORD: &str = "hunter2-Zq9";
    let server = support::default_server();
    let sb = Sandbox::new();
    db.default_schema();
    db.insert_failed("t", &["ok-1".to_string(), "s500-1".to_string()]);
    let user = format!("rc_u_{:08x}", fastrand::u32(..));
    let created = std::panic::catch_unwind(|| {
        for host in ["%", "localhost", "127.0.0.1"] {
            exec_on(
                &db.admin,
                &format!(
                    "CREATE USER '{user}'@'{host}' IDENTIFIED BY '{PASSWORD}'; \
                     GRANT ALL ON `{}`.* TO '{user}'@'{host}'",
                    db.name
                ),
            );
        }
    })
    .is_ok();
    let mut u = url::Url::parse(&db.url).unwrap();
    u.set_username(&user).unwrap();
    u.set_password(Some(PASSWORD)).unwrap();
    let good = u.to_string();
    u.set_password(Some("wrong-Pw-77")).unwrap();
    let wrong = u.to_string();
    let check = |out: &std::process::Output, secret: &str| {
        let all =
            String::from_utf8_lossy(&[&out.stdout[..], &out.stderr[..]].concat()).into_owned();
        assert!(!all.contains(secret), "password leaked: {all}");
        all
    };
    // A wrong password: one line naming the server, not the password.
    let out = sb
        .run(&server, "t", &wrong)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    check(&out, "wrong-Pw-77");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot connect") && last.contains("***"),
        "{err}"
    );
    if created {
        for (args, code) in [
            (vec!["--format", "json"], 1),
            (vec!["--format", "text", "-v"], 1),
        ] {
            let out = sb
                .run(&server, "t", &good)
                .args(&args)
                .args(["--retries", "0"])
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(code), "{out:?}");
            let all = check(&out, PASSWORD);
            assert!(all.contains("***"), "{all}");
        }
        let out = sb
            .cmd()
            .args(["status", "--task", "t", "--store", &good])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        check(&out, PASSWORD);
        // An error after connecting (a missing table) does not show it either.
        let out = sb
            .run(&server, "t", &good)
            .args(["--table", "nope"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        check(&out, PASSWORD);
        for host in ["%", "localhost", "127.0.0.1"] {
            let _ = std::panic::catch_unwind(|| {
                exec_on(&db.admin, &format!("DROP USER IF EXISTS '{user}'@'{host}'"))
            });
        }
    } else {
        eprintln!("mysql_password_never_shows: cannot create a user; checked the refusal only");
    }
}
