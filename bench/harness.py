#!/usr/bin/env python3
"""recheck benchmark harness (standard library only).

    python3 bench/harness.py [CASE...] [--quick] [--timeout SECS] [--no-write]

Cases: latency-bound, throughput-bound, memory, flaky, storage, tls, h2, down (default:
all, in that order). For every case it builds one SQLite store template (the default schema,
N failed items whose ids pick the mock server's behaviour), then runs each contestant ONE AT
A TIME against a fresh copy of that store and a fresh `mock_server` (so server counters are
the contestant's own):

  * recheck (target/release/recheck);
  * the seed-style Python peer (bench/peers/seed_style.py: asyncio + aiohttp), as the seed
    wrote it (a ClientSession per attempt, a commit per item) and in its better form (one
    shared session, commits batched);
  * oha (bench/.tools/bin/oha) with the same concurrency, as the ceiling of an HTTP client
    on this machine (no store, no judging).

The transport cases: `tls` serves HTTPS offering only http/1.1 by ALPN (`mock_server --tls CA
--tls-http1-only`; recheck takes h2 whenever it is offered and has no flag against it), recheck
trusting the server's CA (`--cacert`) against oha `--insecure`; `h2` serves HTTPS offering h2
(ALPN), recheck the same way against oha `--http2 --insecure` (one connection carrying all the
streams, as recheck does). Their tables add the server's TCP connections and TLS handshakes
(`/_stats`, the harness's own /_stats request taken off). `down` runs no server: the URL is a
closed port on 127.0.0.1 (connections refused), recheck with its default circuit breaker
against `--circuit 0`; its table has the attempts (the summary's `requests`), the items
deferred and the exit code.

Each contestant is reaped with wait4(2), which gives that child's own peak RSS and CPU
time; wall time is time.monotonic() around it; the mock server's /_stats gives the requests
it saw and its in-flight high-water mark. "CPU µs/check" is the contestant's user+sys CPU
time ÷ the items it checked (deferred ones included; for oha ÷ its requests). The store is
checked afterwards (every `ok-*` and `503x2-*` item must be `ok`, every `hang-*` item still
`failed`, on `down` every item still `failed`; nothing written on a dry run); a contestant
whose result is wrong gets a warning in its row.

Prints one markdown table per case and the targets met or missed, and writes them (with the
date and machine) between the `<!-- bench:begin -->` / `<!-- bench:end -->` markers of
BENCHMARKS.md; text outside the markers is kept. Running a subset of cases replaces only
those cases' sections. `--quick` is a scaled-down smoke run (N/20, at least 100 items; 1 s
timeouts on the flaky case; 1,000 items on `down`, where fewer would all start before the
circuit opens) and writes bench/out/BENCHMARKS.quick.md instead.

`bench/run` installs what this needs (aiohttp in bench/.venv, oha in bench/.tools, the
release binaries) and calls this.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
OUT = os.path.join(BENCH, "out")
RECHECK = os.path.join(ROOT, "target", "release", "recheck")
MOCK = os.path.join(ROOT, "target", "release", "examples", "mock_server")
OHA = os.path.join(BENCH, ".tools", "bin", "oha")
PEER = os.path.join(BENCH, "peers", "seed_style.py")
VENV_PY = os.path.join(BENCH, ".venv", "bin", "python")
DOC = os.path.join(ROOT, "BENCHMARKS.md")

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TASK = "bench"

# recheck's defaults (docs/reference.md §3), passed explicitly so the references below always match.
TIMEOUT_S = 5.0
RETRIES = 5
BACKOFF = (0.2, 30.0)

# Why a high-water of C+1 can show on the flaky case without the client breaking its bound.
HANG_RACE = (" (the server un-counts a timed-out hang only when it notices the client's close, "
             "so a new request can arrive just before: likely a measurement race, not a breach)")

SEED_NAME = "python seed (session/attempt, commit/item)"
SHARED_NAME = "python shared session, batched commits"

CASE_ORDER = ["latency-bound", "throughput-bound", "memory", "flaky", "storage", "tls", "h2",
              "down"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- cases


def make_cases(quick):
    """The workloads. `quick` divides every N by 20 (and shortens the flaky timeouts).

    Optional keys: `tls` ("http1": HTTPS offering only http/1.1 by ALPN; "h2": HTTPS offering
    h2 and http/1.1), `down` (no server; the URL is a closed port), `extra` (more columns:
    "connections", "handshakes", "attempts", "deferred", "exit"), `note` (a line above the
    table)."""
    s = 20 if quick else 1

    def n(x):
        return max(100, x // s)

    timeout = 1.0 if quick else TIMEOUT_S
    cases = {
        "latency-bound": dict(
            title="latency-bound: 20,000 items, 20 ms server latency, concurrency 100",
            n=n(20_000), latency_ms=20, c=100, mix="ok", timeout=timeout,
            runs=[("recheck", {}), ("seed", {}), ("shared", {}), ("oha", {})]),
        "throughput-bound": dict(
            title="throughput-bound: 200,000 items, no latency, concurrency 64",
            n=n(200_000), latency_ms=0, c=64, mix="ok", timeout=timeout,
            runs=[("recheck", {}), ("shared", {}),
                  # The seed's shape opens a connection per request: 1/10 of N, marked.
                  ("seed", {"n": n(20_000)}), ("oha", {})]),
        "memory": dict(
            title="memory: 1,000,000 items in SQLite, no latency, concurrency 256",
            n=n(1_000_000), latency_ms=0, c=256, mix="ok", timeout=timeout,
            runs=[("recheck", {}), ("recheck", {"n": n(20_000)}),
                  ("shared", {}), ("shared", {"n": n(20_000)}), ("oha", {})]),
        "flaky": dict(
            title=("flaky: 20,000 items, 20 ms latency, 10% answer 503 twice then 200, "
                   "1% hang, concurrency 100"
                   + (f" (quick: {timeout:g} s timeouts)" if quick else "")),
            n=n(20_000), latency_ms=20, c=100, mix="flaky", timeout=timeout,
            # `--circuit 0`: ids 1-10 of every hundred answer 503 twice, 20 failures in a row,
            # which opens recheck's default breaker (--circuit 20) within the first second;
            # it then defers nearly every item and exits 5. `--no-adaptive`: with the
            # adaptive limit the host's slots are where requests wait, and first attempts go
            # before retries only at the global slots. This case measures how retries are
            # scheduled against a host that is up (the peers have neither); `down` and
            # bench/kindness.py measure the rest.
            note=("recheck runs with `--no-adaptive --circuit 0`: the 503 items come ten in "
                  "a row, so its default breaker opens and defers the rest of the run (the "
                  "`down` case measures the breaker); with the adaptive limit on, requests "
                  "wait for the host's slots, where first attempts do not go before retries "
                  "(88 s in one run)."),
            runs=[("recheck", {"circuit": 0, "no_adaptive": True}), ("seed", {}),
                  ("shared", {})]),
        "storage": dict(
            title=("storage only: 1,000,000 items, no latency, concurrency 256, "
                   "with and without --dry-run"),
            n=n(1_000_000), latency_ms=0, c=256, mix="ok", timeout=timeout,
            runs=[("recheck", {"dry_run": True}), ("recheck", {})]),
        "tls": dict(
            title=("tls: 20,000 items, 20 ms latency, concurrency 100, HTTPS with the mock's own "
                   "CA, HTTP/1.1 (the server offers only http/1.1 by ALPN)"),
            n=n(20_000), latency_ms=20, c=100, mix="ok", timeout=timeout, tls="http1",
            extra=["connections", "handshakes"],
            note=("recheck trusts the server's CA (`--cacert`), oha skips the check "
                  "(`--insecure --http-version 1.1`); both speak HTTP/1.1, as the server "
                  "offers nothing else. Connections and handshakes are the server's "
                  "(`/_stats`)."),
            runs=[("recheck", {}), ("oha", {})]),
        "h2": dict(
            title=("h2: 20,000 items, 20 ms latency, concurrency 100, HTTPS with HTTP/2 "
                   "negotiated by ALPN"),
            n=n(20_000), latency_ms=20, c=100, mix="ok", timeout=timeout, tls="h2",
            extra=["connections", "handshakes"],
            note=("The same transport for both: TLS with h2 by ALPN. recheck (`--cacert`) "
                  "multiplexes its 100 requests in flight over the connections its pool keeps; "
                  "oha runs `--http2 --insecure -c 1 -p 100` (one connection, "
                  "100 streams: the same 100 in flight)."),
            runs=[("recheck", {}), ("oha", {"http2": True})]),
        "down": dict(
            title=("down: the API refuses connections (a closed port on 127.0.0.1), 2,000 items, "
                   "concurrency 100, the circuit breaker against `--circuit 0`"),
            # Not N/20 in quick mode: at 100 items every item has started before the circuit
            # opens, so the breaker could save nothing.
            n=1_000 if quick else 2_000, latency_ms=0, c=100, mix="down", timeout=timeout,
            down=True, extra=["attempts", "deferred", "exit"],
            note=("No server runs: every connection is refused. \"attempts\" is the summary's "
                  "`requests`; an item the open circuit kept from being tried is deferred "
                  "(status kept). Exit 5 is what the breaker should end with, 1 without it."),
            runs=[("recheck", {"label": "(the default circuit breaker, --circuit 20)"}),
                  ("recheck", {"circuit": 0})]),
    }
    if quick:
        for case in cases.values():
            case["title"] += f" — quick: {case['n']:,} items"
    return cases


def kind_of(i, mix):
    if mix == "flaky":
        r = i % 100
        if r == 0:
            return "hang"
        if r <= 10:
            return "503x2"
    return "ok"


def build_template(path, n, mix):
    """A new SQLite store with the default schema (README "Stores") and n failed items."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    conn = sqlite3.connect(path)
    # WAL, as every store is once recheck has opened it (the mode is kept in the file): the
    # Python peers then commit into the same kind of file recheck does.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        """
        CREATE TABLE items(task_id TEXT NOT NULL, item_id TEXT NOT NULL, status TEXT NOT NULL,
              url TEXT NULL, http_status INTEGER NULL, attempts INTEGER NOT NULL DEFAULT 0,
              last_error TEXT NULL, checked_at TEXT NULL, lease_owner TEXT NULL,
              lease_until TEXT NULL, PRIMARY KEY (task_id, item_id));
        CREATE INDEX items_task_status ON items(task_id, status);
        """)
    conn.executemany(
        "INSERT INTO items(task_id, item_id, status) VALUES (?, ?, 'failed')",
        ((TASK, f"{kind_of(i, mix)}-{i}") for i in range(n)))
    conn.commit()
    conn.close()


def fresh_copy(template, path):
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    shutil.copy(template, path)


def verify_store(path, dry_run, mix="ok"):
    """None when the store holds what a correct run writes, else what is wrong. With the API
    down (`mix` "down") every item stays `failed`: an attempted one gets `checked_at` and its
    error, a deferred one is left as it was, so `checked_at` is not checked."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT substr(item_id, 1, instr(item_id, '-') - 1), status, count(*), "
            "sum(checked_at IS NOT NULL) FROM items WHERE task_id = ? GROUP BY 1, 2",
            (TASK,)).fetchall()
    finally:
        conn.close()
    wrong = []
    for kind, status, count, checked in rows:
        want = "failed" if dry_run or kind == "hang" or mix == "down" else "ok"
        if status != want:
            wrong.append(f"{count} {kind}-* items are {status!r} (want {want!r})")
        if mix == "down":
            continue
        if not dry_run and checked != count:
            wrong.append(f"{count - checked} {kind}-* items have no checked_at")
        if dry_run and checked:
            wrong.append(f"dry run wrote checked_at on {checked} {kind}-* items")
    return "; ".join(wrong) or None


# ---------------------------------------------------------------- processes


def busy_builds():
    """Other engineers' cargo/rustc processes (their builds would skew the numbers)."""
    r = subprocess.run(["pgrep", "-f", r"(^|/)(cargo|rustc)( |$)"],
                       capture_output=True, text=True)
    return [p for p in r.stdout.split() if p.strip() and int(p) != os.getpid()]


def cpu_busy(seconds=1.0):
    """Fraction of all CPUs busy over the next `seconds` (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def cpu_times():
    """(busy seconds of all CPUs, steal seconds) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def proc_cpu(pid):
    """CPU seconds (user + sys, all threads) a live process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


QUIET_CPU = 0.15  # of all CPUs: above that, someone else is using the machine


def wait_quiet(max_wait):
    """Waits (up to max_wait s) until no cargo/rustc runs and the CPUs are idle.
    Returns (quiet, busy fraction just before the run)."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        builds = busy_builds()
        busy = cpu_busy()
        if not builds and busy <= QUIET_CPU:
            return True, busy
        if time.monotonic() >= deadline:
            log(f"still busy ({busy:.0%} CPU, {len(builds)} cargo/rustc): running anyway (row marked)")
            return False, busy
        if not said:
            log(f"machine busy ({busy:.0%} CPU, {len(builds)} cargo/rustc processes): "
                f"waiting up to {max_wait:.0f} s")
            said = True
        time.sleep(4)


def clean_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RECHECK_") and k not in ("RUST_LOG", "http_proxy",
                                                        "https_proxy", "HTTP_PROXY",
                                                        "HTTPS_PROXY", "ALL_PROXY",
                                                        "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


class Mock:
    """A fresh mock_server with the given latency; reads its `listening on URL` line.

    `tls` "h2" serves HTTPS (ALPN h2 and http/1.1), "http1" HTTPS offering only http/1.1; the
    server writes the CA to trust to `ca_path` (`self.ca`) before it prints its line."""

    def __init__(self, latency_ms, log_path, tls=None, ca_path=None):
        self.err = open(log_path, "wb")
        argv = [MOCK, "--latency", f"{latency_ms}ms" if latency_ms else "0"]
        self.ca, self.ctx = None, None
        if tls:
            self.ca = ca_path
            argv += ["--tls", ca_path] + (["--tls-http1-only"] if tls == "http1" else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.err,
                                     env=clean_env())
        line = self.proc.stdout.readline().decode().strip()
        m = re.match(r"listening on (https?://127\.0\.0\.1:(\d+))", line)
        if not m:
            self.stop()
            raise RuntimeError(f"mock_server said {line!r}")
        self.url, self.port = m.group(1), int(m.group(2))
        if tls:
            self.ctx = ssl.create_default_context(cafile=ca_path)

    def stats(self):
        """The server's counters, or None when it cannot be asked (it died). Asking costs the
        server one connection (and one TLS handshake over HTTPS): taken off here, so the
        counters are the contestant's."""
        try:
            # settled=1: also the high-water with overlaps under 5 ms left out (the mock
            # server's SETTLE), which a client's close racing its next request cannot reach.
            with urllib.request.urlopen(self.url + "/_stats?settled=1", timeout=30,
                                        context=self.ctx) as r:
                stats = json.load(r)
        except OSError:
            return None
        stats["connections"] = stats.get("connections", 1) - 1
        stats["tls_handshakes"] = stats.get("tls_handshakes", 0) - (1 if self.ctx else 0)
        return stats

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def closed_port():
    """A loopback port nothing listens on (connections to it are refused). Taken below the
    ephemeral range when one is free there: a port in that range could be picked as the source
    port of one of the contestant's own connections to it (a TCP self-connect, which succeeds)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in list(range(low - 1, max(1024, low - 200), -1)) + [0]:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return s.getsockname()[1]
        except OSError:
            continue
        finally:
            s.close()  # nothing listens there any more
    raise RuntimeError("no free loopback port")


def run_measured(argv, cwd, out_path, err_path, timeout_s):
    """Runs argv, reaps it with wait4: (wall s, rusage, exit code, timed out)."""
    with open(out_path, "wb") as so, open(err_path, "wb") as se:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=cwd, stdout=so, stderr=se, env=clean_env(),
                             start_new_session=True)
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return wall, ru, p.returncode, timed_out.is_set()


# ---------------------------------------------------------------- contestants


def contestant_argv(kind, opts, case, db, url_base, n, ca=None):
    c, timeout = case["c"], case["timeout"]
    item_url = url_base + "/items/{id}"
    if kind == "recheck":
        argv = [RECHECK, "run", "--task", TASK, "--store", db, "--url", item_url,
                "--concurrency", str(c), "--format", "json", "--expect-json", "/status=done",
                "--timeout", f"{int(timeout * 1000)}ms", "--retries", str(RETRIES),
                "--backoff", f"{int(BACKOFF[0] * 1000)}ms..{int(BACKOFF[1])}s"]
        if opts.get("dry_run"):
            argv.append("--dry-run")
        if "circuit" in opts:
            argv += ["--circuit", str(opts["circuit"])]
        if opts.get("no_adaptive"):
            argv.append("--no-adaptive")
        if ca:
            argv += ["--cacert", ca]
        return argv
    if kind in ("seed", "shared"):
        return [VENV_PY, PEER, "--task", TASK, "--store", db, "--url", item_url,
                "--concurrency", str(c), "--timeout", str(timeout), "--retries", str(RETRIES),
                "--session", "per-attempt" if kind == "seed" else "shared",
                "--commit", "per-item" if kind == "seed" else "batched"]
    if kind == "oha":
        # Random ids (`ok-` + 9 digits): almost every request a new id, as the others make.
        # (oha's regex URLs take `.` literally.)
        argv = [OHA, "-n", str(n), "--no-tui", "--output-format", "json"]
        if opts.get("http2"):
            # oha's -c is connections; with --http2 each carries -p streams. One connection
            # with all c streams, as recheck's pool does over h2.
            argv += ["--http2", "-c", "1", "-p", str(c)]
        else:
            argv += ["-c", str(c)]
        if case.get("tls") == "http1":
            argv += ["--http-version", "1.1"]
        if case.get("tls"):
            argv.append("--insecure")
        return argv + ["--rand-regex-url", url_base + "/items/ok-[0-9]{9}"]
    raise ValueError(kind)


def contestant_name(kind, opts, case_n, n, tls=None):
    base = {"recheck": "recheck", "seed": SEED_NAME, "shared": SHARED_NAME,
            "oha": "oha (HTTP only, no store)"}[kind]
    if kind == "oha" and (tls or opts.get("http2")):
        base = ("oha" + (" --http2" if opts.get("http2") else "")
                + (" --insecure" if tls else "") + " (HTTP only, no store)")
    if opts.get("dry_run"):
        base += " --dry-run"
    if opts.get("no_adaptive"):
        base += " --no-adaptive"
    if "circuit" in opts:
        base += f" --circuit {opts['circuit']}"
    if opts.get("label"):
        base += " " + opts["label"]
    if n != case_n:
        base += f" [{n:,} items]"
    return base


def median_run(runs):
    """The run with the median wall time of one contestant's repetitions; every wall time is
    kept in `walls`, and a wrong result in any repetition stays visible. Its peak RSS is the
    median of the repetitions' own (`rss_all` keeps them): a run's peak depends on when the
    allocator last gave pages back, not on its speed, so the run with the median time need
    not have the median size."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["wall"])
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen["walls"] = [r["wall"] for r in runs]
    chosen["rss_all"] = [r["rss_kib"] for r in runs]
    chosen["rss_kib"] = sorted(chosen["rss_all"])[(len(runs) - 1) // 2]
    for r in runs:
        for w in r["warnings"]:
            if w not in chosen["warnings"]:
                chosen["warnings"].append(w)
    log(f"  {chosen['name']}: median of {len(runs)}: {chosen['wall']:.2f} s "
        f"(all: {', '.join(f'{w:.2f}' for w in chosen['walls'])}), "
        f"{chosen['rss_kib'] / 1024:.1f} MiB "
        f"(all: {', '.join(f'{k / 1024:.1f}' for k in chosen['rss_all'])})")
    return chosen


def measure_once(case_name, case, kind, opts, template_for, timeout_s, max_wait):
    n = opts.get("n", case["n"])
    name = contestant_name(kind, opts, case["n"], n, case.get("tls"))
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]
    cdir = os.path.join(OUT, case_name)
    os.makedirs(cdir, exist_ok=True)
    db = os.path.join(cdir, f"{slug}.db")
    for attempt in (1, 2):
        if kind != "oha":
            fresh_copy(template_for(n), db)
        quiet, busy = wait_quiet(max_wait)
        if case.get("down"):
            mock, url = None, f"http://127.0.0.1:{closed_port()}"  # the API is down
        else:
            mock = Mock(case["latency_ms"], os.path.join(cdir, f"{slug}.server.log"),
                        tls=case.get("tls"), ca_path=os.path.join(cdir, f"{slug}.ca.pem"))
            url = mock.url
        try:
            argv = contestant_argv(kind, opts, case, db, url, n, ca=mock and mock.ca)
            log(f"{case_name}: {name} ...")
            busy0, steal0 = cpu_times()
            server0 = proc_cpu(mock.proc.pid) if mock else 0.0
            wall, ru, code, timed_out = run_measured(
                argv, cdir, os.path.join(cdir, f"{slug}.out"),
                os.path.join(cdir, f"{slug}.err"), timeout_s)
            busy1, steal1 = cpu_times()
            if mock:
                server_cpu = proc_cpu(mock.proc.pid) - server0
                stats = mock.stats()
                server_exit = mock.proc.poll()
            else:
                server_cpu, server_exit = 0.0, None
                stats = {"total_requests": 0, "high_water": 0, "connections": 0,
                         "tls_handshakes": 0}
        finally:
            if mock:
                mock.stop()
        if stats is not None and server_exit is None:
            break
        # Something outside the benchmark ended the server (a test's cleanup, a signal):
        # this run measured nothing useful, so it is done again once.
        log(f"  WARNING {name}: the mock server died during the run (exit {server_exit})"
            + ("; running it again" if attempt == 1 else ""))
    server_died = stats is None or server_exit is not None
    stats = stats or {"total_requests": 0, "high_water": 0}
    res = dict(name=name, kind=kind, n=n, wall=wall, rss_kib=ru.ru_maxrss,
               utime=ru.ru_utime, stime=ru.ru_stime, exit=code, timed_out=timed_out,
               requests=stats["total_requests"], high_water=stats["high_water"],
               settled_high_water=stats.get("settled_high_water"),
               connections=stats.get("connections"), handshakes=stats.get("tls_handshakes"),
               circuit=opts.get("circuit"),
               quiet=quiet, busy_before=busy, dry_run=bool(opts.get("dry_run")),
               argv=argv, warnings=[], server_cpu=server_cpu, steal=steal1 - steal0,
               # CPU time nobody in this benchmark used: other work on the machine.
               other_cpu=max(0.0, (busy1 - busy0) - server_cpu - ru.ru_utime - ru.ru_stime))
    if server_died:
        res["warnings"].append(f"the mock server died during the run (exit {server_exit})")
    out_text = open(os.path.join(cdir, f"{slug}.out"), errors="replace").read()
    if timed_out:
        res["warnings"].append(f"killed after {timeout_s / 60:g} min")
        res["checks"] = None
        return res
    summary = None
    try:  # oha pretty-prints one document; the others print one line last
        summary = json.loads(out_text)
    except ValueError:
        try:
            summary = json.loads(out_text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            pass
    res["summary"] = summary
    if kind == "oha":
        codes = (summary or {}).get("statusCodeDistribution", {})
        res["checks"] = int(codes.get("200", 0))
        res["oha_rps"] = (summary or {}).get("summary", {}).get("requestsPerSec")
        if res["checks"] != n:
            res["warnings"].append(f"oha: {res['checks']} of {n} answered 200 ({codes})")
    else:
        if not summary:
            res["warnings"].append(f"no JSON summary on stdout (exit {code})")
            res["checks"] = None
        else:
            res["checks"] = summary.get("checked")
            res["deferred"] = summary.get("deferred") or 0
            res["attempts"] = summary.get("requests")
            if (res["checks"] or 0) + res["deferred"] != n:
                res["warnings"].append(f"checked {res['checks']}"
                                       + (f" and deferred {res['deferred']}" if res["deferred"]
                                          else "") + f" of {n}")
        want_exit = 1 if case["mix"] == "flaky" and kind == "recheck" else 0
        if case.get("down"):
            # The breaker defers what it kept from being tried (exit 5); without it every item
            # ends failed (exit 1).
            want_exit = 1 if opts.get("circuit") == 0 else 5
        if code != want_exit:
            res["warnings"].append(f"exit {code} (want {want_exit})")
        wrong = verify_store(db, res["dry_run"], case["mix"])
        if wrong:
            res["warnings"].append("store: " + wrong)
    settled = stats.get("settled_high_water")
    if kind == "recheck" and stats["high_water"] > case["c"] and (settled is None
                                                                   or settled > case["c"]):
        res["warnings"].append(f"server saw {stats['high_water']} in flight > --concurrency {case['c']}"
                               + (f" ({settled} with overlaps under 5 ms left out)"
                                  if settled is not None else "")
                               + (HANG_RACE if case["mix"] == "flaky" else ""))
    # Noise: the numbers may be off, the result is still right.
    res["noise"] = []
    if not quiet:
        res["noise"].append(f"machine busy before the run ({busy:.0%} CPU or a build)")
    if res["other_cpu"] > max(0.5, 0.1 * wall):
        res["noise"].append(f"other processes used {res['other_cpu']:.1f} CPU s meanwhile")
    if res["steal"] > max(0.5, 0.1 * wall):
        res["noise"].append(f"the hypervisor stole {res['steal']:.1f} CPU s meanwhile")
    for w in res["warnings"]:
        log(f"  WARNING {name}: {w}")
    for w in res["noise"]:
        log(f"  noisy run {name}: {w}")
    log(f"  {name}: {wall:.2f} s, {ru.ru_maxrss / 1024:.1f} MiB, "
        f"CPU {ru.ru_utime:.2f}u+{ru.ru_stime:.2f}s, "
        + (f"{res.get('attempts')} attempts, {res.get('deferred')} deferred, exit {code}"
           if case.get("down") else
           f"{stats['total_requests']} requests, high-water {stats['high_water']}"
           + (f", {res['connections']} connections, {res['handshakes']} TLS handshakes"
              if case.get("tls") else "")))
    return res


# ---------------------------------------------------------------- references & targets


def references(case):
    """Ideal wall times for the case (None where no latency makes them meaningless)."""
    n, c, lat = case["n"], case["c"], case["latency_ms"] / 1000
    refs = {"ideal": n / c * lat if lat else None}
    if case["mix"] == "flaky":
        t, r = case["timeout"], RETRIES
        backoff_max = sum(min(BACKOFF[1], BACKOFF[0] * 2 ** (k + 1)) for k in range(r))
        slowest = (r + 1) * t + backoff_max
        n_hang = sum(1 for i in range(n) if kind_of(i, "flaky") == "hang")
        n_503 = sum(1 for i in range(n) if kind_of(i, "flaky") == "503x2")
        n_ok = n - n_hang - n_503
        # Request-slot time every correct client must spend: hangs hold a slot until the
        # timeout on each of their r+1 attempts.
        slot_s = n_ok * lat + n_503 * 3 * lat + n_hang * (r + 1) * t
        refs.update(slowest_delays=slowest, backoff_max=backoff_max,
                    ideal_plus_slowest=refs["ideal"] + slowest,
                    slot_bound=max(slot_s / c, slowest + lat),
                    n_hang=n_hang, n_503=n_503)
    return refs


def rate(r):
    return r["checks"] / r["wall"] if r.get("checks") else None


def cpu_per_check(r):
    """The contestant's user+sys CPU µs per item checked (deferred ones included: the run
    handled them), for oha per request; None when it did not finish."""
    if r["timed_out"]:
        return None
    units = r["n"] if r["kind"] == "oha" else (r.get("checks") or 0) + r.get("deferred", 0)
    return (r["utime"] + r["stime"]) / units * 1e6 if units else None


def find(results, kind, n=None, dry=False):
    for r in results:
        if r["kind"] == kind and (n is None or r["n"] == n) and r["dry_run"] == dry:
            return r
    return None


def case_targets(name, case, results):
    """[(target, met: bool|None, detail)] for this case."""
    out = []
    rc = find(results, "recheck", case["n"])
    refs = references(case)
    # (On `down` the breaker may defer every item: none checked is then right.)
    ok_run = rc is not None and not rc["warnings"] and (rc.get("checks") or rc.get("deferred"))

    def add(target, met, detail):
        out.append((target, met, detail))

    oha = find(results, "oha")

    def wall_vs_oha(factor, oha_name="oha"):
        """The target "recheck's wall ≤ factor × oha's wall", when both finished."""
        if not (oha and rate(oha)) or rc["timed_out"]:
            return
        limit = factor * oha["wall"]
        add(f"{name} wall ≤ {factor:.2f} × {oha_name}'s wall ({limit:.2f} s)",
            bool(ok_run) and rc["wall"] <= limit,
            f"{rc['wall']:.2f} vs {oha['wall']:.2f} s = "
            f"{rc['wall'] / oha['wall']:.3f} × {oha_name}")

    if name == "latency-bound" and rc:
        limit = 1.05 * refs["ideal"]
        add(f"latency-bound wall ≤ 1.05 × ideal ({limit:.2f} s)",
            bool(ok_run) and rc["wall"] <= limit,
            f"{rc['wall']:.2f} s = {rc['wall'] / refs['ideal']:.2f} × ideal "
            f"({'within' if rc['wall'] <= limit else 'over'} by {abs(limit - rc['wall']):.2f} s)")
        wall_vs_oha(1.03)
    if name == "throughput-bound" and rc:
        if oha and rate(oha) and rate(rc):
            ratio = rate(rc) / rate(oha)
            add("throughput-bound checks/s ≥ 0.6 × oha's requests/s",
                bool(ok_run) and ratio >= 0.6,
                f"{rate(rc):,.0f} vs {rate(oha):,.0f} req/s = {ratio:.2f} × oha")
        mine, theirs = cpu_per_check(rc), oha and cpu_per_check(oha)
        if mine and theirs:
            add("throughput-bound CPU per check ≤ 2 × oha's CPU per request",
                bool(ok_run) and mine <= 2 * theirs,
                f"{mine:.1f} vs {theirs:.1f} µs = {mine / theirs:.2f} × oha")
        py = find(results, "shared", case["n"])
        if py and rate(rc):
            if rate(py):
                ratio = rate(rc) / rate(py)
                add("throughput-bound ≥ 10 × the checks/s of the Python peer (shared session, batched)",
                    bool(ok_run) and ratio >= 10,
                    f"{rate(rc):,.0f} vs {rate(py):,.0f} checks/s = {ratio:.1f} ×")
            else:
                add("throughput-bound ≥ 10 × the checks/s of the Python peer (shared session, batched)",
                    bool(ok_run), "the peer did not finish: " + "; ".join(py["warnings"]))
    if name == "memory" and rc:
        mib = rc["rss_kib"] / 1024
        add(f"memory: peak RSS ≤ 64 MiB at {case['n']:,} items", bool(ok_run) and mib <= 64,
            f"{mib:.1f} MiB ({'under' if mib <= 64 else 'over'} by {abs(64 - mib):.1f} MiB)")
        small = next((r for r in results if r["kind"] == "recheck" and r["n"] != case["n"]), None)
        if small:
            smib = small["rss_kib"] / 1024
            add(f"memory: RSS at {case['n']:,} items within 10% of the {small['n']:,}-item run",
                bool(ok_run) and mib <= 1.10 * smib,
                f"{mib:.1f} vs {smib:.1f} MiB = {mib / smib:.2f} ×")
        py = find(results, "shared", case["n"])
        if py:
            pmib = py["rss_kib"] / 1024
            done = py.get("checks") is not None
            add("memory: ≥ 10 × less memory than the Python peer (shared session, batched)",
                bool(ok_run) and pmib >= 10 * mib,
                f"{pmib:.1f} vs {mib:.1f} MiB = {pmib / mib:.1f} ×"
                + ("" if done else " (peer killed before the end: its peak is a lower bound)"))
    if name == "flaky" and rc:
        # Against the request-slot bound, the least time any client that keeps to
        # --concurrency needs (ideal + the slowest item's delays is below it: no client can
        # meet that one).
        bound = refs["slot_bound"]
        limit = 1.05 * bound
        add(f"flaky wall ≤ 1.05 × the request-slot bound ({limit:.1f} s)",
            bool(ok_run) and rc["wall"] <= limit,
            f"{rc['wall']:.1f} s = {rc['wall'] / bound:.2f} × the bound ({bound:.1f} s; "
            f"{'within' if rc['wall'] <= limit else 'over'} by {abs(limit - rc['wall']):.1f} s)")
    if name == "storage":
        dry = find(results, "recheck", case["n"], dry=True)
        if rc and dry:
            extra = rc["wall"] - dry["wall"]
            add(f"storage: writing back {case['n']:,} items adds ≤ 3 s over --dry-run",
                bool(ok_run) and not dry["warnings"] and extra <= 3,
                f"{rc['wall']:.2f} − {dry['wall']:.2f} = {extra:+.2f} s")
    if name == "tls" and rc:
        wall_vs_oha(1.05)
        hs = rc.get("handshakes")
        add(f"tls: TLS handshakes ≤ concurrency ({case['c']})",
            bool(ok_run) and hs is not None and hs <= case["c"],
            f"{fmt(hs, ',')} (oha's: {fmt(oha.get('handshakes'), ',')})" if oha else fmt(hs, ','))
    if name == "h2" and rc:
        wall_vs_oha(1.05, "oha --http2")
        conns = rc.get("connections")
        add("h2: server connections ≤ 4", bool(ok_run) and conns is not None and conns <= 4,
            f"{fmt(conns, ',')} (oha's: {fmt(oha.get('connections'), ',')})" if oha
            else fmt(conns, ','))
    if name == "down" and rc:
        off = next((r for r in results if r["kind"] == "recheck" and r["circuit"] == 0), None)
        if off:
            # The breaker's run lasts its 5 s cool-down and one probe whatever the rest
            # does, so time alone says little; the attempts (the load on a down API) do.
            ratio = rc["wall"] / off["wall"]
            fewer = (rc.get("attempts") or 0) * 10 <= (off.get("attempts") or 0)
            add("down: with the circuit breaker ≤ 1/10 of the `--circuit 0` attempts, in less time",
                bool(ok_run) and not off["warnings"] and fewer and ratio < 1,
                f"{rc['wall']:.1f} vs {off['wall']:.1f} s = {ratio:.2f} ×; "
                f"{fmt(rc.get('attempts'), ',')} vs {fmt(off.get('attempts'), ',')} attempts, "
                f"exit {rc['exit']} vs {off['exit']}")
    for r in results:
        if r["kind"] == "recheck" and (r["high_water"] > case["c"] or case["mix"] == "flaky"):
            # The server counts a hang until it notices the client's close, which can come
            # just after the client's next request: the settled high-water leaves out
            # overlaps under 5 ms, far shorter than any answer a client really waits for.
            settled = r.get("settled_high_water")
            within = settled is not None and settled <= case["c"]
            add(f"{name}: in-flight requests never above --concurrency {case['c']}", within,
                f"server high-water {r['high_water']}"
                + (f"; {settled} with overlaps under 5 ms left out (a hang the client had "
                   "given up on, counted until the server noticed the closed connection)"
                   if settled is not None else HANG_RACE))
    return out


# ---------------------------------------------------------------- output


def fmt(x, spec, dash="—"):
    return dash if x is None else format(x, spec)


EXTRA_COLUMNS = {  # optional columns of a case's table (its `extra`): header, value
    "connections": ("server connections", lambda r: fmt(r.get("connections"), ",")),
    "handshakes": ("server TLS handshakes", lambda r: fmt(r.get("handshakes"), ",")),
    "attempts": ("attempts (summary `requests`)", lambda r: fmt(r.get("attempts"), ",")),
    "deferred": ("deferred", lambda r: fmt(r.get("deferred"), ",")),
    "exit": ("exit", lambda r: str(r["exit"])),
}


def case_table(name, case, results):
    refs = references(case)
    main_rc = find(results, "recheck", case["n"])
    extra = case.get("extra", [])
    served = not case.get("down")  # no server on `down`: its columns are empty there
    cols = (["contestant", "items", "wall s", "checks/s", "peak RSS MiB", "CPU s (user+sys)",
             "CPU µs/check", "server requests", "server high-water", "server CPU s"]
            + [EXTRA_COLUMNS[e][0] for e in extra]
            + ["× ideal", "recheck's speed ×", "RSS ÷ recheck's"])

    def key(col):  # a cell's keyword: its column's name, anything but letters turned into `_`
        return re.sub(r"[^a-z]+", "_", col.lower()).strip("_")

    def row(**cells):
        return "| " + " | ".join(str(cells.get(key(c), "")) for c in cols) + " |"

    lines = ["| " + " | ".join(cols) + " |",
             "| --- |" + " ---: |" * (len(cols) - 1)]
    if refs["ideal"] is not None:
        lines.append(row(contestant="ideal: items ÷ concurrency × latency",
                         items=f"{case['n']:,}", wall_s=f"{refs['ideal']:.2f}",
                         checks_s=f"{case['n'] / refs['ideal']:,.0f}",
                         server_high_water=case["c"], ideal="1.00"))
    if "ideal_plus_slowest" in refs:
        lines.append(row(
            contestant=(f"ideal + slowest item's delays ({RETRIES + 1} × {case['timeout']:g} s "
                        f"timeouts + ≤ {refs['backoff_max']:.1f} s backoff)"),
            items=f"{case['n']:,}", wall_s=f"{refs['ideal_plus_slowest']:.2f}",
            ideal=f"{refs['ideal_plus_slowest'] / refs['ideal']:.2f}"))
        lines.append(row(
            contestant=(f"request-slot bound ({refs['n_hang']} hangs × {RETRIES + 1} × "
                        f"{case['timeout']:g} s + the rest, ÷ {case['c']})"),
            items=f"{case['n']:,}", wall_s=f"{refs['slot_bound']:.2f}",
            ideal=f"{refs['slot_bound'] / refs['ideal']:.2f}"))
    for r in results:
        if r["timed_out"]:
            wall, cps = f"> {r['wall'] / 60:.0f} min", "—"
        else:
            wall, cps = f"{r['wall']:.2f}", fmt(rate(r), ",.0f")
            if len(r.get("walls", [])) > 1:
                wall += f" ({min(r['walls']):.2f}–{max(r['walls']):.2f})"
        x_ideal = (f"{r['wall'] / refs['ideal']:.2f}" if refs["ideal"] and not r["timed_out"]
                   else "—")
        speed = rss_ratio = "—"
        # Compared with recheck on the same number of items when there is such a run.
        rc = find(results, "recheck", r["n"]) or main_rc
        if r["kind"] == "recheck" and not r["dry_run"]:
            rc = None
        if rc and r is not rc and rate(rc):
            if rate(r):
                speed = f"{rate(rc) / rate(r):.2f}"
            elif r["timed_out"] and r["kind"] != "recheck":
                speed = f"> {rate(rc) / (r['n'] / r['wall']):.1f}"
            if r["rss_kib"]:
                rss_ratio = f"{r['rss_kib'] / rc['rss_kib']:.2f}"
        name = r["name"]
        if r["warnings"]:
            name = "⚠ " + name + " — " + "; ".join(r["warnings"])
        if r.get("noise"):
            name += " (noisy: " + "; ".join(r["noise"]) + ")"
        cells = dict(
            contestant=name, items=f"{r['n']:,}", wall_s=wall, checks_s=cps,
            peak_rss_mib=f"{r['rss_kib'] / 1024:.1f}",
            cpu_s_user_sys=f"{r['utime'] + r['stime']:.2f} ({r['utime']:.2f}+{r['stime']:.2f})",
            cpu_s_check=fmt(cpu_per_check(r), ",.1f"),
            server_requests=f"{r['requests']:,}" if served else "—",
            server_high_water=r["high_water"] if served else "—",
            server_cpu_s=f"{r.get('server_cpu', 0):.2f}" if served else "—",
            ideal=x_ideal, recheck_s_speed=speed, rss_recheck_s=rss_ratio)
        for e in extra:
            header, value = EXTRA_COLUMNS[e]
            cells[key(header)] = value(r)
        lines.append(row(**cells))
    return "\n".join(lines)


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              cwd=ROOT).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine():
    model = "?"
    mem = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    head = sh(["git", "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
    aiohttp_v = sh([VENV_PY, "-c", "import aiohttp; print(aiohttp.__version__)"])
    return {
        "cpus": os.cpu_count(), "model": model, "memory": mem,
        "kernel": platform.release(), "rustc": sh(["rustc", "--version"]),
        "python": sh([VENV_PY, "--version"]), "aiohttp": aiohttp_v,
        "oha": sh([OHA, "--version"]), "sqlite": sqlite3.sqlite_version,
        "commit": head + (" (src/ modified in the work tree)" if dirty else ""),
    }


def machine_line(m):
    return (f"{m['cpus']} × {m['model']}, {m['memory']} RAM, Linux {m['kernel']}; "
            f"{m['rustc']}; {m['python']} + aiohttp {m['aiohttp']}; {m['oha']}; "
            f"recheck at {m['commit']}")


def case_section(name, case, results, targets, stamp, m, quick):
    refs = references(case)
    out = [f"<!-- bench:case {name} -->", f"### {case['title']}", "",
           f"_{stamp}{' (--quick)' if quick else ''} — {machine_line(m)}_", ""]
    if refs["ideal"] is None and not case.get("down"):
        out.append("No server latency: the ideal time is not meaningful; oha is the reference.")
        out.append("")
    if case.get("note"):
        out += [case["note"], ""]
    out.append(case_table(name, case, results))
    out.append("")
    if targets:
        for t, met, detail in targets:
            out.append(f"- {'✅ met' if met else '❌ missed'}: {t} — {detail}")
        out.append("")
    data = {"case": name, "stamp": stamp, "quick": quick,
            "targets": [{"target": t, "met": met, "detail": d} for t, met, d in targets]}
    out.append(f"<!-- bench:data {json.dumps(data, ensure_ascii=False)} -->")
    out.append(f"<!-- bench:case-end {name} -->")
    return "\n".join(out)


def parse_sections(region):
    found = {}
    for m in re.finditer(r"<!-- bench:case (\S+) -->.*?<!-- bench:case-end \1 -->", region, re.S):
        found[m.group(1)] = m.group(0)
    return found


def render_region(sections, m, stamp, argv_text):
    lines = [BEGIN, "",
             "<!-- Generated by bench/harness.py: edits between bench:begin and bench:end "
             "are replaced on the next run. -->", "",
             f"Last run: {stamp}, `{argv_text}`", "",
             f"Machine: {m['cpus']} CPUs ({m['model']}), {m['memory']} RAM, Linux {m['kernel']}, "
             f"{m['rustc']}, SQLite {m['sqlite']} (harness), {m['python']}, aiohttp {m['aiohttp']}, "
             f"{m['oha']}; recheck at {m['commit']}.", "",
             "## Targets", "",
             "| case | target | result | detail |", "| --- | --- | --- | --- |"]
    for name in CASE_ORDER:
        sec = sections.get(name)
        if not sec:
            continue
        dm = re.search(r"<!-- bench:data (.*?) -->", sec)
        if not dm:
            continue
        data = json.loads(dm.group(1))
        for t in data["targets"]:
            lines.append(f"| {name} ({data['stamp'][:10]}) | {t['target']} | "
                         f"{'✅ met' if t['met'] else '❌ missed'} | {t['detail']} |")
    lines += ["", "## Results", ""]
    for name in CASE_ORDER:
        if name in sections:
            lines += [sections[name], ""]
    lines.append(END)
    return "\n".join(lines)


DOC_HEAD = """# Benchmarks

`recheck` against the script it replaces (Python asyncio + aiohttp, the seed's shape), an
HTTP load generator (`oha`, the ceiling of an HTTP client here), and the ideal time, on one
machine, in one run, against the repo's mock server (`examples/mock_server.rs`).

## How to run

```sh
bench/run                      # every case (about 25-40 min on 2 cores); rewrites the results below
bench/run latency-bound flaky  # some cases; only their sections below are replaced
bench/run tls h2 down          # TLS over HTTP/1.1, HTTP/2 over TLS, the API down (circuit breaker)
bench/run storage --repeat 3   # 3 rounds of every contestant, the median run reported (range in brackets)
bench/run --quick              # scaled-down smoke run (~2-3 min), written to bench/out/BENCHMARKS.quick.md
```

`bench/run` installs what is missing (aiohttp into `bench/.venv`, `oha` from crates.io into
`bench/.tools`, the release build of `recheck` and `mock_server`), then runs
`bench/harness.py` (standard library only; `--help` for its options).

How it measures:

- Contestants run one at a time, each against a fresh copy of the same SQLite store (the
  default schema in WAL mode, as recheck leaves every store it opens) and a fresh mock server,
  from binaries copied to `bench/out/bin` when the run starts (builds in `target/` meanwhile
  change nothing).
- Wall time includes starting the process, opening the store and writing every result back.
  Peak RSS and CPU seconds are the contestant's own (`wait4(2)`); "server CPU s" is the mock
  server's, which shares the same 2 cores. "server high-water" is the most requests the server
  had in flight at once (with no latency it is the server's own concurrency, not the client's).
  The bound check (flaky, and any case where the high-water passes `--concurrency`) uses the
  server's settled high-water (`/_stats?settled=1`): the same count over the requests that
  ended, overlaps under 5 ms left out, since the server keeps counting a hang the client gave
  up on until it notices the closed connection, which can come just after the client's next
  request; a request really sent beyond the bound overlaps the others for its whole answer.
- "recheck's speed ×" is recheck's checks/s ÷ that contestant's (against the recheck run with
  the same number of items when there is one); "RSS ÷ recheck's" is that contestant's peak
  RSS ÷ recheck's. "CPU µs/check" is the contestant's user+sys CPU time ÷ the items it
  checked (for oha ÷ its requests).
- Cases: latency-bound, throughput-bound, memory, flaky (recheck with `--circuit 0`: the
  mock's 503 items come ten in a row, which would open the breaker), storage, then `tls`
  (HTTPS with the mock server's own CA, the server offering only http/1.1 by ALPN,
  `mock_server --tls CA --tls-http1-only`: recheck always takes h2 when offered), `h2` (HTTPS
  with h2 by ALPN; oha `--http2` with all its streams on one connection) and `down` (no
  server, the URL a closed port: recheck's default circuit breaker against `--circuit 0`).
  Those add columns: the server's TCP connections and TLS handshakes (`/_stats`, the harness's
  own request taken off), and on `down` the attempts (the summary's `requests`), the items
  deferred and the exit code (5 with the breaker, 1 without).
- The harness waits while a `cargo`/`rustc` build runs or the CPUs are busy, and marks a row
  "noisy" when other processes or the hypervisor took CPU time during it. A row marked ⚠ has a
  wrong result (the store is checked after every run). Raw outputs: `bench/out/<case>/`,
  `bench/out/results.json`.

"""


def write_doc(path, new_sections, m, stamp, argv_text, replace_all=False):
    text = open(path).read() if os.path.exists(path) else DOC_HEAD + BEGIN + "\n" + END + "\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + END + "\n"
    pre, rest = text.split(BEGIN, 1)
    region, post = rest.split(END, 1)
    sections = {} if replace_all else parse_sections(region)
    sections.update(new_sections)
    with open(path + ".tmp", "w") as f:
        f.write(pre + render_region(sections, m, stamp, argv_text) + post)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------- main


def one_run_at_a_time():
    """Two harness runs at once would share the 2 CPUs and bench/out/: the second one waits
    for the first. Returns the open lock file (the lock lasts as long as the process)."""
    import fcntl
    f = open(os.path.join(OUT, ".harness.lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        log(f"another benchmark run holds bench/out/.harness.lock ({holder}): waiting for it")
        fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}: {' '.join(sys.argv[1:]) or 'all cases'}\n")
    f.flush()
    return f


def snapshot_binaries():
    """Copies the release binaries to bench/out/bin: other people building in target/
    meanwhile must not change the program between two contestants of one run."""
    global RECHECK, MOCK
    bindir = os.path.join(OUT, "bin")
    os.makedirs(bindir, exist_ok=True)
    for src in (RECHECK, MOCK):
        dst = os.path.join(bindir, os.path.basename(src))
        shutil.copy2(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    RECHECK = os.path.join(bindir, "recheck")
    MOCK = os.path.join(bindir, "mock_server")



def main():
    ap = argparse.ArgumentParser(
        description="recheck benchmark harness (bench/run installs what it needs, then runs it)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases (default: all, in this order):\n" + "\n".join(
            f"  {name:<17} {case['title'].split(': ', 1)[-1]}"
            for name, case in make_cases(False).items()))
    ap.add_argument("cases", nargs="*", metavar="CASE", help=", ".join(CASE_ORDER))
    ap.add_argument("--quick", action="store_true", help="scaled-down smoke run (N/20; down: 1,000 items)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="kill a contestant after this many seconds (default 900; 120 with --quick)")
    ap.add_argument("--max-wait", type=float, default=1200,
                    help="longest wait for other cargo/rustc builds before a run (s)")
    ap.add_argument("--repeat", type=int, default=1, metavar="K",
                    help="K rounds, each running every contestant once; report each one's median wall time")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    cases = make_cases(args.quick)
    chosen = args.cases or CASE_ORDER
    for c in chosen:
        if c not in cases:
            ap.error(f"unknown case {c!r} (cases: {', '.join(CASE_ORDER)})")
    for path in (RECHECK, MOCK, VENV_PY):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: run bench/run (it installs and builds what is needed)")
    timeout_s = args.timeout or (120 if args.quick else 900)
    os.makedirs(OUT, exist_ok=True)
    lock = one_run_at_a_time()  # noqa: F841 (held until exit)
    snapshot_binaries()
    m = machine()
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    argv_text = " ".join(["bench/run"] + sys.argv[1:])
    started = time.monotonic()
    sections = {}
    all_targets = []
    raw = {"machine": m, "stamp": stamp, "quick": args.quick, "cases": {}}
    doc = os.path.join(OUT, "BENCHMARKS.quick.md") if args.quick else DOC
    if args.quick and not args.no_write and os.path.exists(doc):
        os.remove(doc)  # a quick run's file holds that run only
    for name in chosen:
        case = cases[name]
        if any(k == "oha" for k, _ in case["runs"]) and not os.path.exists(OHA):
            sys.exit(f"missing {OHA}: run bench/run (cargo install oha --root bench/.tools)")
        templates = {}

        def template_for(n, name=name, case=case, templates=templates):
            if n not in templates:
                path = os.path.join(OUT, name, f"template-{n}.db")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                log(f"{name}: building the store template ({n:,} items)")
                build_template(path, n, case["mix"])
                templates[n] = path
            return templates[n]

        # In rounds, every contestant once per round: the machine's speed drifts over
        # minutes here (other tenants of the host), and a slow spell then falls on every
        # contestant of a round instead of on all the runs of one.
        runs = [[] for _ in case["runs"]]
        for rnd in range(args.repeat):
            if args.repeat > 1:
                log(f"{name}: round {rnd + 1} of {args.repeat}")
            for i, (kind, opts) in enumerate(case["runs"]):
                runs[i].append(measure_once(name, case, kind, opts, template_for, timeout_s,
                                            args.max_wait))
        results = [median_run(r) for r in runs]
        targets = case_targets(name, case, results)
        all_targets += [(name, *t) for t in targets]
        sections[name] = case_section(name, case, results, targets, stamp, m, args.quick)
        raw["cases"][name] = {"case": {k: v for k, v in case.items() if k != "runs"},
                              "refs": references(case), "results": results}
        print("\n" + sections[name].split("\n", 1)[1].rsplit("\n", 2)[0] + "\n", flush=True)
        for template in templates.values():
            os.remove(template)
        # After every case, so a later crash or kill keeps what was measured.
        with open(os.path.join(OUT, "results-quick.json" if args.quick else "results.json"),
                  "w") as f:
            json.dump(raw, f, indent=1, default=str)
        if not args.no_write:
            write_doc(doc, {name: sections[name]}, m, stamp, argv_text)
    print("## Targets\n")
    for name, t, met, detail in all_targets:
        print(f"- {'✅ met' if met else '❌ missed'} [{name}] {t} — {detail}")
    print(f"\n(harness took {(time.monotonic() - started) / 60:.1f} min)")
    if not args.no_write:
        log(f"wrote {os.path.relpath(doc, ROOT)}")


if __name__ == "__main__":
    main()
