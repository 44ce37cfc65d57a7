#!/usr/bin/env python3
"""The measuring half of bench/deltas (see there). Standard library only.

Usage: deltas_run.py BASE KEY BIN CSV CACHE VERSIONS SUBSCRIBERS SERVE_LOG COMMAND
"""

import asyncio
import csv
import gzip
import http.client
import json
import random
import statistics
import subprocess
import sys
import time
import urllib.parse

BASE, KEY, BIN, CSV, CACHE, VERSIONS, SUBSCRIBERS, SERVE_LOG, COMMAND = sys.argv[1:]
VERSIONS, SUBSCRIBERS = int(VERSIONS), int(SUBSCRIBERS)
HOST, PORT = urllib.parse.urlsplit(BASE).hostname, urllib.parse.urlsplit(BASE).port
UPDATED, INSERTED, DELETED = 60, 30, 10


def get(path, headers=None):
    """GET path: status, headers, body bytes as sent (not decoded)."""
    conn = http.client.HTTPConnection(HOST, PORT, timeout=120)
    conn.request("GET", path, headers={"X-API-Key": KEY, **(headers or {})})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def bare(etag):
    tag = etag.strip().removeprefix("W/").strip('"')
    for suffix in ("-gzip", "-zstd"):
        tag = tag.removesuffix(suffix)
    return tag


class Table:
    """The table as CSV rows, changed 100 rows at a time."""

    def __init__(self, path):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            self.header = next(reader)
            self.rows = list(reader)
        self.note = self.header.index("note")
        self.next_id = max(int(r[0]) for r in self.rows) + 1
        self.rnd = random.Random(18)

    def change(self, version):
        for i in self.rnd.sample(range(len(self.rows)), UPDATED):
            self.rows[i] = list(self.rows[i])
            self.rows[i][self.note] = f"updated in version {version}, row {self.rows[i][0]}"
        for i in sorted(self.rnd.sample(range(len(self.rows)), DELETED), reverse=True):
            del self.rows[i]
        for _ in range(INSERTED):
            row = list(self.rnd.choice(self.rows))
            row[0] = str(self.next_id)
            row[self.note] = f"inserted in version {version}"
            self.next_id += 1
            self.rows.append(row)

    def write(self, path):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(self.header)
            writer.writerows(self.rows)


class Subscriber:
    """One event stream, read with the HTTP/1.1 chunked framing undone; the time each
    `updated` event arrives."""

    def __init__(self):
        self.updates = []
        self.first = asyncio.Event()
        self.error = None

    async def run(self, since):
        try:
            reader, writer = await asyncio.open_connection(HOST, PORT)
            path = f"/fetch-data?stream=true&payload=delta&follow=true&since={urllib.parse.quote(since)}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {KEY}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace").splitlines()[0])
            buf = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    return
                buf += await reader.readexactly(size)
                await reader.readexactly(2)
                while (end := buf.find(b"\n\n")) >= 0:
                    event, buf = buf[:end], buf[end + 2:]
                    if b'"type":"cached"' in event:
                        self.first.set()
                    elif b'"type":"updated"' in event:
                        self.updates.append(time.monotonic())
        except Exception as e:  # reported in the summary; the run goes on
            self.error = repr(e)
            self.first.set()


def change_set_logs():
    """Seconds and bytes of each change set the server computed, from its JSON log."""
    found = []
    with open(SERVE_LOG, encoding="utf-8") as f:
        for line in f:
            if "change set computed" not in line:
                continue
            record = json.loads(line)
            fields = record.get("fields", record)
            found.append((float(fields["seconds"]), int(fields["bytes"])))
    return found


async def main():
    table = Table(CSV)
    status, headers, body = get("/fetch-data")
    assert status == 200, status
    whole_identity = len(body)
    etag = headers["etag"]
    del body
    # The whole table's gzip as clients get it once its variant settles (a new version is
    # served at level 1 first, then at level 9): asked until two answers 2 s apart agree.
    whole_gzip = None
    for _ in range(60):
        status, _, body = get("/fetch-data", {"Accept-Encoding": "gzip"})
        if len(body) == whole_gzip:
            break
        whole_gzip = len(body)
        del body
        time.sleep(2)

    subscribers = [Subscriber() for _ in range(SUBSCRIBERS)]
    tasks = [asyncio.create_task(s.run(bare(etag))) for s in subscribers]
    await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in subscribers)), 120)
    failed = [s.error for s in subscribers if s.error]
    if failed:
        sys.exit(f"{len(failed)} subscribers failed: {failed[0]}")

    rows = []
    loop = asyncio.get_running_loop()
    for version in range(1, VERSIONS + 1):
        table.change(version)
        path = f"{CACHE}.v.csv"
        table.write(path)
        await loop.run_in_executor(
            None,
            lambda: subprocess.run([BIN, "import", path, "--cache-file", CACHE], check=True,
                                   stderr=subprocess.DEVNULL),
        )
        landed = time.monotonic()
        deadline = landed + 120
        while any(len(s.updates) < version for s in subscribers):
            if time.monotonic() > deadline:
                sys.exit(f"version {version}: not every subscriber got it within 120 s")
            await asyncio.sleep(0.005)
        arrivals = sorted(s.updates[version - 1] - landed for s in subscribers)
        since = etag
        status, headers, body = await loop.run_in_executor(None, lambda: get("/fetch-data?since=" + urllib.parse.quote(since)))
        assert status == 200, (status, body[:200])
        delta = json.loads(body)
        assert (len(delta["upserted"]), len(delta["deleted"])) == (UPDATED + INSERTED, DELETED), \
            (len(delta["upserted"]), len(delta["deleted"]))
        identity = len(body)
        status, _, zipped = await loop.run_in_executor(
            None, lambda: get("/fetch-data?since=" + urllib.parse.quote(since), {"Accept-Encoding": "gzip"}))
        assert gzip.decompress(zipped) == body
        etag = delta["etag"]
        rows.append((identity, len(zipped), arrivals[0], statistics.median(arrivals), arrivals[-1]))
        print(f"version {version}: delta {identity} B, gzip {len(zipped)} B, "
              f"subscribers {arrivals[0]:.3f}..{arrivals[-1]:.3f} s", file=sys.stderr)

    _, _, tables = get("/tables")
    deltas = json.loads(tables)["tables"][0]["deltas"]
    for t in tasks:
        t.cancel()
    computed = change_set_logs()

    def med(i):
        return statistics.median(r[i] for r in rows)

    print(f"Command: `{COMMAND}`; {len(table.rows):,} orders after {VERSIONS} versions of "
          f"{UPDATED} updated, {INSERTED} inserted and {DELETED} deleted rows; "
          f"{SUBSCRIBERS} subscribers.\n")
    print("| per version | median | max |")
    print("| --- | ---: | ---: |")
    print(f"| delta, identity bytes | {med(0):,.0f} | {max(r[0] for r in rows):,} |")
    print(f"| delta, gzip bytes | {med(1):,.0f} | {max(r[1] for r in rows):,} |")
    print(f"| whole table, identity / gzip bytes | {whole_identity:,} / {whole_gzip:,} | |")
    print(f"| delta gzip / whole gzip | {med(1) / whole_gzip:.3%} | {max(r[1] for r in rows) / whole_gzip:.3%} |")
    secs = [c[0] for c in computed]
    print(f"| change set computed, s | {statistics.median(secs):.3f} | {max(secs):.3f} |")
    print(f"| import ended → first subscriber holds it, s | {med(2):.3f} | {max(r[2] for r in rows):.3f} |")
    print(f"| import ended → median subscriber, s | {med(3):.3f} | {max(r[3] for r in rows):.3f} |")
    print(f"| import ended → last subscriber, s | {med(4):.3f} | {max(r[4] for r in rows):.3f} |")
    print(f"| first → last subscriber, s | {statistics.median(r[4] - r[2] for r in rows):.3f} | "
          f"{max(r[4] - r[2] for r in rows):.3f} |")
    print(f"\nKept change sets: {deltas['change_sets_kept']}, holding {deltas['bytes'] / 1e6:.2f} MB.")


asyncio.run(main())
