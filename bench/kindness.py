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
import urllib.request

from journal_mode import template  # the same store, in delete mode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECHECK = os.path.join(ROOT, "target", "release", "recheck")
MOCK = os.path.join(ROOT, "target", "release", "examples", "mock_server")


def start_mock(*flags):
    p = subprocess.Popen([MOCK, "--addr", "127.0.0.1:0", *flags], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    url = next(w for w in line.split() if w.startswith("http://")).rstrip("/")
    return p, url


def stats(url):
    with urllib.request.urlopen(url + "/_stats") as r:
        return json.loads(r.read())


def reset(url):
    urllib.request.urlopen(urllib.request.Request(url + "/_reset", method="POST")).read()


def run(tmp, tpl, url, args):
    db = os.path.join(tmp, "s.db")
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    shutil.copy(tpl, db)
    t0 = time.monotonic()
    p = subprocess.Popen(
        [RECHECK, "run", "--task", "b", "--store", db, "--url", url + "/items/{id}",
         "--progress", "never", "-q", "--format", "json", *args],
        stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate()
    wall = time.monotonic() - t0
    return wall, json.loads(out), p.returncode


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for exe in (RECHECK, MOCK):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: cargo build --release --bin recheck --example mock_server")
    tmp = tempfile.mkdtemp(prefix="recheck-kind-")
    try:
        variants = [("default (`--adaptive --circuit 20`)", []),
                    ("`--no-adaptive --circuit 0`", ["--no-adaptive", "--circuit", "0"])]
        print("healthy host:\n")
        print(f"| case | variant | wall (median of {args.repeat}) | checks/s |")
        print("| --- | --- | --- | --- |")
        for name, items, latency, conc in [("20,000 items, 20 ms, c=100", 20_000, "20ms", 100),
                                           ("100,000 items, no latency, c=64", 100_000, "0", 64)]:
            mock, url = start_mock("--latency", latency)
            tpl = os.path.join(tmp, f"t{items}.db")
            template(tpl, items)
            walls = {i: [] for i in range(len(variants))}
            for _ in range(args.repeat):
                for i, (_, extra) in enumerate(variants):
                    wall, s, code = run(tmp, tpl, url, ["--concurrency", str(conc), *extra])
                    if code != 0 or s["ok"] != items:
                        sys.exit(f"{name} {extra}: exit {code}, {s['ok']} ok")
                    walls[i].append(wall)
            mock.terminate()
            mock.wait()
            for i, (vname, _) in enumerate(variants):
                w = statistics.median(walls[i])
                print(f"| {name} | {vname} | {w:.2f} s | {items / w:,.0f} |")

        print("\noverloaded host (429 above 10 in flight), 5,000 items at 20 ms, --per-host 50:\n")
        print(f"| variant | wall (median of {args.repeat}) | requests | 429 answers | items ok |")
        print("| --- | --- | --- | --- | --- |")
        mock, url = start_mock("--latency", "20ms", "--overload-above", "10")
        tpl = os.path.join(tmp, "t5000.db")
        template(tpl, 5_000)
        rows = {}
        for _ in range(args.repeat):
            for vname, extra in [("`--adaptive` (default)", ["--adaptive"]),
                                 ("`--no-adaptive`", ["--no-adaptive"])]:
                reset(url)
                wall, s, _ = run(tmp, tpl, url, ["--concurrency", "100", "--per-host", "50",
                                                 "--retries", "20", "--backoff", "20ms..1s",
                                                 "--circuit", "0", *extra])
                st = stats(url)
                rows.setdefault(vname, []).append((wall, s["requests"], s["hosts"][0]["answers"]["4xx"], s["ok"]))
        mock.terminate()
        mock.wait()
        for vname, rs in rows.items():
            med = lambda k: statistics.median(r[k] for r in rs)
            print(f"| {vname} | {med(0):.2f} s | {med(1):,.0f} | {med(2):,.0f} | {med(3):,.0f} |")

        print("\nAPI down (connections refused), 2,000 items, default --retries 5 --backoff 200ms..30s:\n")
        print(f"| variant | time to the end (median of {args.repeat}) | connection attempts | exit |")
        print("| --- | --- | --- | --- |")
        tpl = os.path.join(tmp, "t2000.db")
        template(tpl, 2_000)
        down = f"http://127.0.0.1:{closed_port()}"
        rows = {}
        for _ in range(args.repeat):
            for vname, extra in [("`--circuit 20` (default)", []), ("`--circuit 0`", ["--circuit", "0"])]:
                wall, s, code = run(tmp, tpl, down, ["--concurrency", "100", *extra])
                rows.setdefault(vname, []).append((wall, s["requests"], code))
        for vname, rs in rows.items():
            print(f"| {vname} | {statistics.median(r[0] for r in rs):.1f} s "
                  f"| {statistics.median(r[1] for r in rs):,.0f} | {rs[0][2]} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
