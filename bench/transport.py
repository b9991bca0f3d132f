#!/usr/bin/env python3
"""What does the transport cost? The same run (every item `ok-N`) over plain HTTP/1.1,
h2c (`--http2`), and TLS with HTTP/2 negotiated by ALPN (`--cacert`), same release binary,
a fresh mock server per case (`--tls` for the TLS one), runs interleaved.

    cargo build --release --bin recheck --example mock_server
    python3 bench/transport.py [--items 50000] [--repeat 3] [--latency 20ms]

Prints one Markdown table (medians of --repeat runs): wall time, verdicts/s, CPU seconds of
recheck, and the connections and TLS handshakes the mock server accepted in the last run.
"""

import argparse
import json
import os
import shutil
import sqlite3
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

# (name, mock_server flags, recheck flags); "CA" is replaced by the CA file's path.
CASES = [
    ("HTTP/1.1 (http://)", [], []),
    ("h2c (`--http2`)", [], ["--http2"]),
    ("TLS, h2 by ALPN (`--cacert`)", ["--tls", "CA"], ["--cacert", "CA"]),
]


def start_mock(flags, latency):
    mock = subprocess.Popen([MOCK, "--addr", "127.0.0.1:0", "--latency", latency, *flags],
                            stdout=subprocess.PIPE, text=True)
    line = mock.stdout.readline()
    url = next(w for w in line.split() if w.startswith("http")).rstrip("/")
    return mock, url


def stats(url, ca):
    # The control endpoint over plain HTTP only; for TLS read it with the CA.
    if url.startswith("https"):
        import ssl
        ctx = ssl.create_default_context(cafile=ca)
        return json.load(urllib.request.urlopen(url + "/_stats", context=ctx))
    return json.load(urllib.request.urlopen(url + "/_stats"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--latency", default="20ms")
    args = ap.parse_args()
    for exe in (RECHECK, MOCK):
        if not os.path.exists(exe):
            sys.exit(f"{exe} missing: cargo build --release --bin recheck --example mock_server")
    tmp = tempfile.mkdtemp(prefix="recheck-transport-")
    ca = os.path.join(tmp, "ca.pem")
    try:
        tpl = os.path.join(tmp, "template.db")
        template(tpl, args.items)
        walls = {i: [] for i in range(len(CASES))}
        cpus = {i: [] for i in range(len(CASES))}
        conns = {}
        for _ in range(args.repeat):
            # Interleaved: a slow moment of the machine hits every case alike.
            for i, (name, mock_flags, flags) in enumerate(CASES):
                mock, url = start_mock([ca if f == "CA" else f for f in mock_flags],
                                       args.latency)
                try:
                    db = os.path.join(tmp, "s.db")
                    for suffix in ("", "-wal", "-shm", "-journal"):
                        if os.path.exists(db + suffix):
                            os.remove(db + suffix)
                    shutil.copy(tpl, db)
                    t0 = time.monotonic()
                    p = subprocess.Popen(
                        [RECHECK, "run", "--task", "b", "--store", db,
                         "--url", url + "/items/{id}", "--concurrency", str(args.concurrency),
                         "--progress", "never", "-q",
                         *[ca if f == "CA" else f for f in flags]],
                        stdout=subprocess.DEVNULL)
                    _, status, usage = os.wait4(p.pid, 0)
                    walls[i].append(time.monotonic() - t0)
                    cpus[i].append(usage.ru_utime + usage.ru_stime)
                    if os.waitstatus_to_exitcode(status) != 0:
                        sys.exit(f"recheck exited {status} in case {name}")
                    conn = sqlite3.connect(db)
                    ok = conn.execute(
                        "SELECT COUNT(*) FROM items WHERE status = 'ok'").fetchone()[0]
                    conn.close()
                    if ok != args.items:
                        sys.exit(f"{name}: {ok} of {args.items} items ok")
                    s = stats(url, ca)
                    # the /_stats request's own connection (and handshake) is not recheck's
                    tls = 1 if url.startswith("https") else 0
                    conns[i] = (s["connections"] - 1, s["tls_handshakes"] - tls,
                                s["h2_requests"])
                finally:
                    mock.terminate()
                    mock.wait()
        print(f"{args.items:,} items, --concurrency {args.concurrency}, server latency "
              f"{args.latency}, median of {args.repeat}:\n")
        print("| transport | wall | verdicts/s | recheck CPU s | connections | TLS handshakes "
              "| HTTP/2 requests |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for i, (name, _, _) in enumerate(CASES):
            wall = statistics.median(walls[i])
            c, h, h2 = conns[i]
            print(f"| {name} | {wall:.2f} s | {args.items / wall:,.0f} | "
                  f"{statistics.median(cpus[i]):.2f} | {c} | {h} | {h2:,} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
