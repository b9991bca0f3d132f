#!/usr/bin/env python3
"""What does judging cost? The same throughput run (every item `ok-N`, answered
`{"id":..,"status":"done","ok":true}` by the mock server) with different rules:
`--expect-json /status=done` against `--expect-jq '.status == "done"'` (and no rule at all,
for reference), same release binary, same mock server, runs interleaved.

    cargo build --release --bin recheck --example mock_server
    python3 bench/rules.py [--items 100000] [--repeat 3] [--rule '--expect-jq=.ok']

Prints one Markdown table (medians of --repeat runs): wall time, verdicts/s, CPU seconds of
recheck, and verdicts/s relative to the first rule set.
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

from journal_mode import template  # the same store, in delete mode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECHECK = os.path.join(ROOT, "target", "release", "recheck")
MOCK = os.path.join(ROOT, "target", "release", "examples", "mock_server")

RULES = [
    ["--expect-json", "/status=done"],
    ["--expect-jq", '.status == "done"'],
    [],
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rule", action="append", default=[],
                    help="an extra rule set, FLAG=VALUE (e.g. '--expect-jq=.ok')")
    args = ap.parse_args()
    rule_sets = RULES + [r.split("=", 1) for r in args.rule]
    for exe in (RECHECK, MOCK):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: cargo build --release --bin recheck --example mock_server")
    tmp = tempfile.mkdtemp(prefix="recheck-rules-")
    mock = subprocess.Popen([MOCK, "--addr", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    try:
        line = mock.stdout.readline()
        url = next(w for w in line.split() if w.startswith("http://")).rstrip("/")
        tpl = os.path.join(tmp, "template.db")
        template(tpl, args.items)
        walls = {i: [] for i in range(len(rule_sets))}
        cpus = {i: [] for i in range(len(rule_sets))}
        for _ in range(args.repeat):
            # Interleaved: a slow moment of the machine hits every rule set alike.
            for i, rules in enumerate(rule_sets):
                db = os.path.join(tmp, "s.db")
                for suffix in ("", "-wal", "-shm", "-journal"):
                    if os.path.exists(db + suffix):
                        os.remove(db + suffix)
                shutil.copy(tpl, db)
                t0 = time.monotonic()
                p = subprocess.Popen(
                    [RECHECK, "run", "--task", "b", "--store", db, "--url", url + "/items/{id}",
                     "--concurrency", str(args.concurrency), "--progress", "never", "-q",
                     *rules],
                    stdout=subprocess.DEVNULL)
                _, status, usage = os.wait4(p.pid, 0)
                walls[i].append(time.monotonic() - t0)
                cpus[i].append(usage.ru_utime + usage.ru_stime)
                if os.waitstatus_to_exitcode(status) != 0:
                    sys.exit(f"recheck exited {status} with {rules}")
                conn = sqlite3.connect(db)
                ok = conn.execute("SELECT COUNT(*) FROM items WHERE status = 'ok'").fetchone()[0]
                conn.close()
                if ok != args.items:
                    sys.exit(f"{rules}: {ok} of {args.items} items ok")
        print(f"| rules | wall (median of {args.repeat}) | verdicts/s | recheck CPU s | vs first |")
        print("| --- | --- | --- | --- | --- |")
        base = None
        for i, rules in enumerate(rule_sets):
            wall = statistics.median(walls[i])
            rate = args.items / wall
            base = base or rate
            shown = " ".join(f"'{r}'" if " " in r else r for r in rules) or "(none)"
            print(f"| `{shown}` | {wall:.2f} s | {rate:,.0f} | {statistics.median(cpus[i]):.2f} "
                  f"| {rate / base:.1%} |")
    finally:
        mock.terminate()
        mock.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
