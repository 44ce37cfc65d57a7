#!/usr/bin/env python3
"""Event streams under load; run by bench/sse, which prepares the binary and the CSVs.

Usage: sse_run.py PMA_CACHE_BIN CSV0 CSV1 ... (CSVk has k rows fewer than CSV0)
Settings from the environment: SUBSCRIBERS, FULL, STALLED (counts), COMMAND (for the report).
Prints a Markdown report on stdout; progress goes to stderr.

Subscribers are raw sockets driven by asyncio, so a thousand of them cost this process little.
Every `pma-cache serve` it starts listens on 127.0.0.1 port 0 and is stopped (SIGTERM, then
SIGKILL) before it exits.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

KEY = "bench-admin-key-0123456789"
BINARY = sys.argv[1]
CSVS = sys.argv[2:]
SUBSCRIBERS = int(os.environ.get("SUBSCRIBERS", "1000"))
FULL = int(os.environ.get("FULL", "50"))
STALLED = int(os.environ.get("STALLED", "20"))
VERSIONS = len(CSVS) - 1


def say(*args):
    print(*args, file=sys.stderr, flush=True)


def memory(pid):
    """VmRSS and VmHWM of `pid`, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def mb(n):
    return f"{n / 1e6:.1f} MB"


def import_csv(cache_file, csv):
    subprocess.run(
        [BINARY, "import", csv, "--cache-file", cache_file],
        check=True,
        env=dict(os.environ, RUST_LOG="warn"),
        stdout=subprocess.DEVNULL,
    )


class Server:
    """One `pma-cache serve` on a private cache file."""

    def __init__(self, work, csv, extra_env):
        self.cache_file = os.path.join(work, "data_cache.json")
        import_csv(self.cache_file, csv)
        self.log_path = os.path.join(work, "serve.log")
        env = dict(
            os.environ,
            HOST="127.0.0.1",
            PORT="0",
            ADMIN_API_KEY=KEY,
            MAX_STREAMS="100000",
            MAX_STREAMS_PER_KEY="100000",
            MAX_CONNECTIONS="15000",
            CACHE_FILE=self.cache_file,
            RUST_LOG="warn,pma_cache=info",
            **extra_env,
        )
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [BINARY, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=self.log
        )
        deadline = time.monotonic() + 60
        while True:
            with open(self.log_path) as f:
                found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
            if found:
                self.port = int(found.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"pma-cache serve did not start; see {self.log_path}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    async def get(self, path, accept="identity"):
        """GET `path`; returns the body (the server sends Content-Length, then closes)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n"
            f"Accept-Encoding: {accept}\r\nConnection: close\r\n\r\n".encode()
        )
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit(f"GET {path}: {head[:200]!r}")
        return body

    async def status(self):
        return json.loads(await self.get("/status"))

    async def subscribers(self):
        text = (await self.get("/metrics")).decode()
        return int(float(re.search(r"^pma_cache_sse_subscribers (\S+)", text, re.M).group(1)))

    async def wait_for(self, rows, limit=600):
        """Until the server serves `rows` rows with its gzip and zstd variants built."""
        deadline = time.monotonic() + limit
        while True:
            cache = (await self.status())["cache"]
            if cache["count"] == rows and len(cache["encodings"]) == 3:
                return cache
            if time.monotonic() > deadline:
                sys.exit(f"version of {rows} rows never served: {cache}")
            await asyncio.sleep(0.1)

    async def wait_for_subscribers(self, n, limit=120):
        deadline = time.monotonic() + limit
        while (open_ := await self.subscribers()) != n:
            if time.monotonic() > deadline:
                sys.exit(f"{open_} event streams open, expected {n}")
            await asyncio.sleep(0.1)


async def subscribe(server, query, accept="identity"):
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    writer.write(
        f"GET /fetch-data?stream=true{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-API-Key: {KEY}\r\nAccept-Encoding: {accept}\r\nConnection: close\r\n\r\n".encode()
    )
    return reader, writer


class Subscriber:
    """Reads one event stream to its end, noting when it held `cached` and `updated`.

    A notify-only stream is searched for the events; a gzip stream (the whole table) holds its
    `cached` event once as many bytes as the precompressed body arrived, and its `updated` (and
    `done`) when the server ends the stream.
    """

    def __init__(self, gzip_len=None):
        self.gzip_len = gzip_len
        self.cached = asyncio.get_running_loop().create_future()
        self.updated_at = None

    async def run(self, reader, writer):
        received, tail = 0, b""
        while chunk := await reader.read(1 << 20):
            received += len(chunk)
            if self.gzip_len is None:
                text = tail + chunk
                if b'"type":"cached"' in text and not self.cached.done():
                    self.cached.set_result(None)
                if b'"type":"updated"' in text and self.updated_at is None:
                    self.updated_at = time.monotonic()
                tail = text[-32:]
            elif received >= self.gzip_len and not self.cached.done():
                self.cached.set_result(None)
        if self.gzip_len is not None:
            self.updated_at = time.monotonic()
        writer.close()
        if not self.cached.done():
            self.cached.set_exception(RuntimeError("stream ended before its cached event"))


async def fan_out(work):
    """1,000 notify-only and FULL gzip subscribers, then one new version."""
    server = Server(work, CSVS[0], {})
    try:
        rows = (await server.status())["cache"]["count"]
        cache = await server.wait_for(rows)
        json_bytes = cache["size_bytes"]
        gzip_len = len(await server.get("/fetch-data", accept="gzip"))
        await asyncio.sleep(1)  # the variants' builders have just finished; let the heap settle
        before, _ = memory(server.proc.pid)

        say(f"fan-out: {SUBSCRIBERS} notify-only subscribers")
        tasks, notify, full = [], [], []
        for _ in range(SUBSCRIBERS):
            s = Subscriber()
            tasks.append(asyncio.create_task(s.run(*await subscribe(server, "&payload=none"))))
            notify.append(s)
        await asyncio.gather(*(s.cached for s in notify))
        await server.wait_for_subscribers(SUBSCRIBERS)
        with_notify, _ = memory(server.proc.pid)

        say(f"fan-out: {FULL} subscribers taking the table in gzip")
        for _ in range(FULL):
            s = Subscriber(gzip_len)
            tasks.append(asyncio.create_task(s.run(*await subscribe(server, "", "gzip"))))
            full.append(s)
        await asyncio.gather(*(s.cached for s in full))
        with_full, _ = memory(server.proc.pid)

        say("fan-out: a new version lands")
        await asyncio.get_running_loop().run_in_executor(
            None, import_csv, server.cache_file, CSVS[1]
        )
        landed = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), 600)
        _, peak = memory(server.proc.pid)
    finally:
        server.stop()

    def lags(group):
        times = sorted(s.updated_at - landed for s in group)
        return times[0], statistics.median(times), times[-1]

    per_notify = (with_notify - before) / SUBSCRIBERS
    per_full = (with_full - with_notify) / FULL if FULL else 0
    print(f"## Fan-out: {SUBSCRIBERS:,} notify-only + {FULL} full subscribers, "
          f"{rows:,} rows ({json_bytes:,} bytes of JSON, {gzip_len:,} in gzip)\n")
    print("| measure | value |\n| --- | --- |")
    for name, group in (("notify-only (`payload=none`)", notify), ("whole table in gzip", full)):
        if group:
            first, median, last = lags(group)
            print(f"| import done → `updated` at {name}: first / median / last | "
                  f"{first:.2f} s / {median:.2f} s / {last:.2f} s |")
    print(f"| server RSS before subscribers | {mb(before)} |")
    print(f"| memory per notify-only subscriber | {per_notify / 1024:.1f} KiB "
          f"(RSS {mb(with_notify)} with {SUBSCRIBERS:,}) |")
    if FULL:
        print(f"| memory per full gzip subscriber, idle after `cached` | {per_full / 1024:.1f} KiB "
              f"(RSS {mb(with_full)}) |")
    print(f"| peak RSS (VmHWM) | {mb(peak)} ({peak / json_bytes:.2f}× the JSON) |")
    print("\nThe times start when `pma-cache import` has put the file in place: they include the "
          "server noticing it (the file is checked every 0.5 s) and loading it. Memory per "
          "subscriber: the RSS growth while the subscribers are connected and idle, divided by "
          "their number.\n")


async def settled_rss(pid, limit=30):
    """VmRSS once it has not moved by 1 MB over 2 s (the allocator gives freed pages back
    within seconds), `limit` seconds at most."""
    started, samples = time.monotonic(), []
    while True:
        samples.append(memory(pid)[0])
        recent = samples[-5:]
        if len(recent) == 5 and max(recent) - min(recent) < 1 << 20:
            return recent[-1]
        if time.monotonic() - started > limit:
            return samples[-1]
        await asyncio.sleep(0.5)


async def stalled_versions(work, stalled):
    """`stalled` subscribers stop reading in the middle of the table; VERSIONS versions land."""
    server = Server(work, CSVS[0], {"SSE_WRITE_TIMEOUT": "1h"})
    try:
        rows0 = (await server.status())["cache"]["count"]
        cache = await server.wait_for(rows0)
        json_bytes = cache["size_bytes"]
        await asyncio.sleep(1)
        # Plain sockets: an asyncio stream would go on reading into its own buffer.
        sockets = []
        for _ in range(stalled):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(
                f"GET /fetch-data?stream=true HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n"
                "Accept-Encoding: identity\r\nConnection: close\r\n\r\n".encode()
            )
            sockets.append(sock)
        await server.wait_for_subscribers(stalled)
        rss = [await settled_rss(server.proc.pid)]
        for v in range(1, VERSIONS + 1):
            await asyncio.get_running_loop().run_in_executor(
                None, import_csv, server.cache_file, CSVS[v]
            )
            await server.wait_for(rows0 - v)
            rss.append(await settled_rss(server.proc.pid))
            say(f"stalled={stalled}: version {v + 1}: RSS {mb(rss[-1])}")
        still_open = await server.subscribers()
        _, peak = memory(server.proc.pid)
        for sock in sockets:
            sock.close()
    finally:
        server.stop()
    return json_bytes, rss, peak, still_open


async def main():
    work = tempfile.mkdtemp(prefix="pma-cache-bench-sse-")
    try:
        print(f"# Event streams under load\n\n`{os.environ.get('COMMAND', 'bench/sse')}`, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}, binary `{BINARY}`\n")
        for sub in ("fan", "s0", "s1"):
            os.mkdir(os.path.join(work, sub))
        if SUBSCRIBERS:
            await fan_out(os.path.join(work, "fan"))
        runs = {}
        for n, sub in ((0, "s0"), (STALLED, "s1")):
            say(f"stalled subscribers: {n}")
            runs[n] = await stalled_versions(os.path.join(work, sub), n)
        json_bytes = runs[STALLED][0]
        print(f"## RSS as {VERSIONS} new versions land, with {STALLED} stalled subscribers and "
              f"without ({json_bytes:,} bytes of JSON)\n")
        print("Stalled subscribers stop reading in the middle of the first version's `cached` "
              "event (16 KiB receive buffer, `SSE_WRITE_TIMEOUT=1h` so they stay); RSS once each "
              "version's gzip and zstd variants are built and the server's memory has settled "
              "(no move of 1 MB over 2 s, 30 s at most).\n")
        print(f"| version | RSS, {STALLED} stalled | RSS, none stalled |\n| ---: | ---: | ---: |")
        for v in range(VERSIONS + 1):
            a, b = runs[STALLED][1][v], runs[0][1][v]
            print(f"| {v + 1} | {mb(a)} ({a / json_bytes:.2f}×) | {mb(b)} ({b / json_bytes:.2f}×) |")
        a, b = runs[STALLED][2], runs[0][2]
        print(f"| peak (VmHWM) | {mb(a)} ({a / json_bytes:.2f}×) | {mb(b)} ({b / json_bytes:.2f}×) |")
        print(f"\nStalled subscribers still connected at the end: {runs[STALLED][3]} of {STALLED}.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


asyncio.run(main())
