#!/usr/bin/env python3
"""What do the adaptive limit and the circuit breaker cost, and what do they save?

    cargo build --release --bin recheck --example mock_server
    python3 bench/kindness.py [--repeat 3]

Three tables (medians of --repeat runs, runs interleaved so a slow moment of the machine
hits every variant alike):

- **healthy**: a host that never pushes back (20,000 items at 20 ms, concurrency 100; and
  100,000 items with no latency, concurrency 64): the default (`--adaptive --circuit 20`)
  against `--no-adaptive --circuit 0`. They should take the same time.
- **overloaded**: a host that answers 429 whenever more than 10 requests are in flight
  (5,000 items at 20 ms, `--per-host 50`): requests sent, 429s received and wall time with
  and without `--adaptive`.
- **down**: the API refuses connections (a closed port on 127.0.0.1; 2,000 items): time to
  the end of the run and connection attempts with the circuit breaker against `--circuit 0`.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from journal_mode import template  # the same store, in delete mode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECHECK = os.path.join(ROOT, "target", "release", "recheck")
MOCK = os.path.join(ROOT, "target", "release", "examples", "mock_server")


def start_mock(*flags):
    p = subprocess.Popen([MOCK, "--addr", "127.0.0.1:0", *flags], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    url = next(w for w in line.split() if w.startswith("http://")).rstrip("/")
    return p, url


def run(tmp, tpl, url, args):
    db = os.path.join(tmp, "s.db")
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    shutil.copy(tpl, db)
    out_path = os.path.join(tmp, "summary.json")
    t0 = time.monotonic()
    with open(out_path, "w") as out:
        p = subprocess.Popen(
            [RECHECK, "run", "--task", "b", "--store", db, "--url", url + "/items/{id}",
             "--progress", "never", "-q", "--format", "json", *args],
            stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    with open(out_path) as f:
        summary = json.load(f)
    return wall, summary, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused
    return port


def healthy(tmp, repeat):
    variants = [("default (`--adaptive --circuit 20`)", []),
                ("`--no-adaptive --circuit 0`", ["--no-adaptive", "--circuit", "0"])]
    print("healthy host:\n")
    print(f"| case | variant | wall (median of {repeat}) | checks/s | recheck CPU s |")
    print("| --- | --- | --- | --- | --- |")
    for name, items, latency, conc in [("20,000 items, 20 ms, c=100", 20_000, "20ms", 100),
                                       ("100,000 items, no latency, c=64", 100_000, "0", 64)]:
        mock, url = start_mock("--latency", latency)
        tpl = os.path.join(tmp, f"t{items}.db")
        template(tpl, items)
        walls = {i: [] for i in range(len(variants))}
        cpus = {i: [] for i in range(len(variants))}
        for _ in range(repeat):
            for i, (_, extra) in enumerate(variants):
                wall, s, code, cpu = run(tmp, tpl, url, ["--concurrency", str(conc), *extra])
                if code != 0 or s["ok"] != items:
                    sys.exit(f"{name} {extra}: exit {code}, {s['ok']} ok")
                walls[i].append(wall)
                cpus[i].append(cpu)
        mock.terminate()
        mock.wait()
        for i, (vname, _) in enumerate(variants):
            w = statistics.median(walls[i])
            print(f"| {name} | {vname} | {w:.2f} s | {items / w:,.0f} | {statistics.median(cpus[i]):.2f} |")


def overloaded(tmp, repeat):
    print("\noverloaded host (429 above 10 in flight), 5,000 items at 20 ms, --per-host 50:\n")
    print(f"| variant | wall (median of {repeat}) | requests | 429 answers | items ok |")
    print("| --- | --- | --- | --- | --- |")
    mock, url = start_mock("--latency", "20ms", "--overload-above", "10")
    tpl = os.path.join(tmp, "t5000.db")
    template(tpl, 5_000)
    rows = {}
    for _ in range(repeat):
        for vname, extra in [("`--adaptive` (default)", ["--adaptive"]),
                             ("`--no-adaptive`", ["--no-adaptive"])]:
            wall, s, _, _ = run(tmp, tpl, url, ["--concurrency", "100", "--per-host", "50",
                                                "--retries", "20", "--backoff", "20ms..1s",
                                                "--circuit", "0", *extra])
            rows.setdefault(vname, []).append(
                (wall, s["requests"], s["hosts"][0]["answers"]["4xx"], s["ok"]))
    mock.terminate()
    mock.wait()
    for vname, rs in rows.items():
        med = lambda k: statistics.median(r[k] for r in rs)
        print(f"| {vname} | {med(0):.2f} s | {med(1):,.0f} | {med(2):,.0f} | {med(3):,.0f} |")


def down(tmp, repeat):
    print("\nAPI down (connections refused), 2,000 items, concurrency 100, default --retries 5 "
          "--backoff 200ms..30s:\n")
    print(f"| variant | time to the end (median of {repeat}) | connection attempts | exit |")
    print("| --- | --- | --- | --- |")
    tpl = os.path.join(tmp, "t2000.db")
    template(tpl, 2_000)
    url = f"http://127.0.0.1:{closed_port()}"
    rows = {}
    for _ in range(repeat):
        for vname, extra in [("`--circuit 20` (default)", []), ("`--circuit 0`", ["--circuit", "0"])]:
            wall, s, code, _ = run(tmp, tpl, url, ["--concurrency", "100", *extra])
            rows.setdefault(vname, []).append((wall, s["requests"], code))
    for vname, rs in rows.items():
        print(f"| {vname} | {statistics.median(r[0] for r in rs):.1f} s "
              f"| {statistics.median(r[1] for r in rs):,.0f} | {rs[0][2]} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--case", action="append", choices=["healthy", "overloaded", "down"],
                    help="run only these cases (default: all)")
    args = ap.parse_args()
    for exe in (RECHECK, MOCK):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: cargo build --release --bin recheck --example mock_server")
    tmp = tempfile.mkdtemp(prefix="recheck-kind-")
    try:
        for case in args.case or ["healthy", "overloaded", "down"]:
            {"healthy": healthy, "overloaded": overloaded, "down": down}[case](tmp, args.repeat)
            sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
