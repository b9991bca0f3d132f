#!/usr/bin/env python3
"""The seed script's shape, as a benchmark peer for recheck.

The seed (../shared/seeds/000_3230f331277f3651.txt) loads a task's failed rows with one
query, builds one coroutine per row, and runs them all with ``asyncio.gather`` under an
``asyncio.Semaphore(100)``; each coroutine holds the semaphore for its whole life, opens a
new ``aiohttp.ClientSession`` per attempt, GETs with a 5 s timeout in a retry loop, parses
the JSON, judges it, and updates the row (one ORM update, i.e. one commit, per item).

This peer keeps that shape and fixes only what would make the comparison unfair:

* it retries the way recheck does (timeouts, connection errors, 408/429/5xx; at most
  ``--retries`` further attempts, sleeping ``0.2 s * 2**n`` capped at 30 s — still inside
  the semaphore, as the seed sleeps inside it), instead of the seed's 100 attempts on
  timeouts only;
* it writes what recheck writes (status when OK, http_status, attempts, last_error,
  checked_at) to the item's own row (the seed's update hit every failed row of the task).

Variants (named in the benchmark table):

* ``--session per-attempt --commit per-item``: the seed as written.
* ``--session shared --commit batched``: its better form: one ClientSession for the whole
  run (connector ``limit=C``), ``executemany`` + one commit per 1,000 rows.

Prints one JSON summary on stdout: checked, ok, still_failed, errors, requests, retries,
duration_ms.
"""

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from datetime import datetime, timezone

import aiohttp

RETRYABLE = {408, 429, 500, 502, 503, 504}
BATCH_ROWS = 1000


class Writer:
    """Writes verdicts to the store: one UPDATE + commit per item, or batched."""

    SQL = (
        "UPDATE items SET status = COALESCE(?, status), http_status = ?, "
        "attempts = attempts + ?, last_error = ?, checked_at = ? "
        "WHERE task_id = ? AND item_id = ?"
    )

    def __init__(self, conn, batched):
        self.conn = conn
        self.batched = batched
        self.rows = []

    def write(self, row):
        if self.batched:
            self.rows.append(row)
            if len(self.rows) >= BATCH_ROWS:
                self.flush()
        else:
            self.conn.execute(self.SQL, row)
            self.conn.commit()

    def flush(self):
        if self.rows:
            self.conn.executemany(self.SQL, self.rows)
            self.conn.commit()
            self.rows = []


class Stats:
    def __init__(self):
        self.checked = self.ok = self.still_failed = self.errors = 0
        self.requests = self.retries = 0


async def fetch_once(session, url, timeout):
    async with session.get(url, timeout=timeout) as response:
        status = response.status
        if status != 200:
            await response.read()
            return status, None
        return status, await response.json(content_type=None)


async def check(semaphore, shared, item_id, args, writer, stats, timeout):
    url = args.url.replace("{id}", item_id)
    async with semaphore:
        attempt = 0
        http_status = None
        error = ""
        result = None
        while True:
            attempt += 1
            stats.requests += 1
            retryable = False
            try:
                if shared is not None:
                    http_status, result = await fetch_once(shared, url, timeout)
                else:
                    async with aiohttp.ClientSession() as session:
                        http_status, result = await fetch_once(session, url, timeout)
                if http_status == 200:
                    error = ""
                    break
                error = "HTTP %d" % http_status
                retryable = http_status in RETRYABLE
            except asyncio.TimeoutError:
                error, retryable = "timeout", True
            except aiohttp.ClientConnectionError as e:
                error, retryable = "connection: %s" % e, True
            except (aiohttp.ClientError, ValueError) as e:
                error = "invalid answer: %s" % e
            if not retryable or attempt > args.retries:
                break
            stats.retries += 1
            await asyncio.sleep(min(30.0, 0.2 * 2 ** (attempt - 1)))
    # "一堆逻辑判断": the seed judges the parsed answer.
    ok = http_status == 200 and isinstance(result, dict) and result.get("status") == "done"
    stats.checked += 1
    if ok:
        stats.ok += 1
    elif http_status == 200 and not error:
        stats.still_failed += 1
        error = "status is %r" % (result.get("status") if isinstance(result, dict) else None)
    else:
        stats.errors += 1
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    writer.write((args.ok_status if ok else None, http_status, attempt, error, now,
                  args.task, item_id))


async def main_async(args, conn):
    # The seed: Data.objects.filter(task_id=taskid, status=5) -- every row at once.
    rows = conn.execute(
        "SELECT item_id FROM items WHERE task_id = ? AND status = ?",
        (args.task, args.failed_status),
    ).fetchall()
    semaphore = asyncio.Semaphore(args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    writer = Writer(conn, batched=args.commit == "batched")
    stats = Stats()
    shared = None
    if args.session == "shared":
        shared = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency))
    try:
        tasks_list = [check(semaphore, shared, r[0], args, writer, stats, timeout) for r in rows]
        await asyncio.gather(*tasks_list)
    finally:
        if shared is not None:
            await shared.close()
    writer.flush()
    return stats


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--store", required=True, help="SQLite file with the default schema")
    p.add_argument("--url", required=True, help="template with {id}")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--failed-status", default="failed")
    p.add_argument("--ok-status", default="ok")
    p.add_argument("--session", choices=["per-attempt", "shared"], default="per-attempt")
    p.add_argument("--commit", choices=["per-item", "batched"], default="per-item")
    args = p.parse_args()
    started = time.monotonic()
    conn = sqlite3.connect(args.store)
    stats = asyncio.run(main_async(args, conn))
    conn.close()
    json.dump({
        "checked": stats.checked, "ok": stats.ok, "still_failed": stats.still_failed,
        "errors": stats.errors, "requests": stats.requests, "retries": stats.retries,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
