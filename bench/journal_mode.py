#!/usr/bin/env python3
"""Does a SQLite store need WAL for speed? recheck keeps the journal mode a file has (a user's
file stays in `delete` mode), so this measures a run on the same items in a `delete`-mode file
and in a `wal`-mode file, with the same release binary and the same mock server.

    cargo build --release --bin recheck --example mock_server
    python3 bench/journal_mode.py [--items 200000] [--repeat 3]

Prints one Markdown table (medians of --repeat runs): wall time, checks/s, CPU seconds of
recheck, and the mode the file has after the run (it must be unchanged).
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECHECK = os.path.join(ROOT, "target", "release", "recheck")
MOCK = os.path.join(ROOT, "target", "release", "examples", "mock_server")


def template(path, n, mode="delete"):
    """A store with the default schema holding `n` failed items `ok-0`.. of task `b`."""
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.executescript(
        """
        CREATE TABLE items(task_id TEXT NOT NULL, item_id TEXT NOT NULL, status TEXT NOT NULL,
              url TEXT NULL, http_status INTEGER NULL, attempts INTEGER NOT NULL DEFAULT 0,
              last_error TEXT NULL, checked_at TEXT NULL, lease_owner TEXT NULL,
              lease_until TEXT NULL, PRIMARY KEY (task_id, item_id));
        CREATE INDEX items_task_status ON items(task_id, status);
        """)
    conn.executemany("INSERT INTO items(task_id, item_id, status) VALUES ('b', ?, 'failed')",
                     ((f"ok-{i}",) for i in range(n)))
    conn.commit()
    conn.close()


def mode_of(path):
    conn = sqlite3.connect(path)
    m = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    for exe in (RECHECK, MOCK):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: cargo build --release --bin recheck --example mock_server")
    tmp = tempfile.mkdtemp(prefix="recheck-journal-")
    mock = subprocess.Popen([MOCK, "--addr", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    try:
        line = mock.stdout.readline()
        url = next(w for w in line.split() if w.startswith("http://")).rstrip("/")
        rows = []
        for mode in ("delete", "wal"):
            tpl = os.path.join(tmp, f"template-{mode}.db")
            template(tpl, args.items, mode)
            walls, cpus, after = [], [], None
            for _ in range(args.repeat):
                db = os.path.join(tmp, "s.db")
                for suffix in ("", "-wal", "-shm", "-journal"):
                    if os.path.exists(db + suffix):
                        os.remove(db + suffix)
                shutil.copy(tpl, db)
                t0 = time.monotonic()
                p = subprocess.Popen(
                    [RECHECK, "run", "--task", "b", "--store", db, "--url", url + "/items/{id}",
                     "--concurrency", str(args.concurrency), "--progress", "never", "-q"],
                    stdout=subprocess.DEVNULL)
                _, status, usage = os.wait4(p.pid, 0)
                walls.append(time.monotonic() - t0)
                cpus.append(usage.ru_utime + usage.ru_stime)
                if os.waitstatus_to_exitcode(status) != 0:
                    sys.exit(f"recheck exited {status} in {mode} mode")
                after = mode_of(db)
            wall = statistics.median(walls)
            rows.append((mode, wall, args.items / wall, statistics.median(cpus), after))
        print(f"| journal mode | wall (median of {args.repeat}) | checks/s | recheck CPU s | mode after the run |")
        print("| --- | --- | --- | --- | --- |")
        for mode, wall, rate, cpu, after in rows:
            print(f"| {mode} | {wall:.2f} s | {rate:,.0f} | {cpu:.2f} | {after} |")
    finally:
        mock.terminate()
        mock.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
