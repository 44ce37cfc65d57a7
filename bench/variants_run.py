#!/usr/bin/env python3
"""Driver of bench/variants: see that script for what it measures.

Usage: variants_run.py PMA_CACHE_BIN FIRST.csv NEXT.csv [NEXT.csv ...]
"""

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

KEY = "bench-variants-key-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base, accept):
    request = urllib.request.Request(
        base + "/fetch-data", headers={"X-API-Key": KEY, "Accept-Encoding": accept}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        body = r.read()
        return r.headers.get("ETag", ""), r.headers.get("Content-Encoding", "identity"), len(body)


def base_tag(etag):
    return re.sub(r"-(gzip|zstd)\"$", '"', etag)


def first_answer(base, accept, old, started, results):
    """Asks until the answer is of a version other than `old`; records when and how."""
    while True:
        etag, encoding, size = get(base, accept)
        if base_tag(etag) != old:
            results[accept] = (time.monotonic() - started, encoding, size)
            return


def main():
    binary, first, *nexts = sys.argv[1:]
    work = tempfile.mkdtemp(prefix="bench-variants-")
    cache = os.path.join(work, "data_cache.json")
    subprocess.run([binary, "import", first, "--cache-file", cache], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    log_path = os.path.join(work, "serve.log")
    env = dict(os.environ, ADMIN_API_KEY=KEY, PORT=str(port), HOST="127.0.0.1", CACHE_FILE=cache,
               RUST_LOG="pma_cache=debug", LOG_FORMAT="json")
    server = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(log_path, "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(base, "identity")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)
        rows = []
        for csv in nexts:
            # The previous version's variants at their chosen levels first, as hourly syncs would.
            time.sleep(2)
            while len(final_lines(log_path)) < 2 * (len(rows) + 1):
                time.sleep(0.2)
            old = base_tag(get(base, "gzip")[0])
            results = {}
            subprocess.run([binary, "import", csv, "--cache-file", cache], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.monotonic()
            clients = [threading.Thread(target=first_answer,
                                        args=(base, accept, old, started, results))
                       for accept in ("gzip", "zstd")]
            for c in clients:
                c.start()
            for c in clients:
                c.join()
            rows.append(results)
        while len(final_lines(log_path)) < 2 * (len(rows) + 1):
            time.sleep(0.2)
        timings = ready_lines(log_path)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"# Compressed variants of a new version ({os.path.basename(first)}, {len(nexts)} versions)\n")
    print(f"Command: `{os.environ.get('COMMAND', 'bench/variants')}`\n")
    print("| version | gzip client: first answer after the import | its encoding | zstd client | its encoding |")
    print("| --- | --- | --- | --- | --- |")
    for i, r in enumerate(rows, 1):
        g, z = r["gzip"], r["zstd"]
        print(f"| {i} | {g[0]*1000:.0f} ms | {g[1]} ({g[2]/1e6:.1f} MB) | {z[0]*1000:.0f} ms | {z[1]} ({z[2]/1e6:.1f} MB) |")
    print()
    print("Server's build of each variant, from its log (seconds from the start of the version's "
          "build; pieces compressed, and taken from the version before):\n")
    print("| version | encoding | level | ready after | MB | pieces compressed | pieces reused |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    version, seen = 0, set()
    for t in timings:
        if (t["encoding"], t["level"]) in seen:
            version, seen = version + 1, set()
        seen.add((t["encoding"], t["level"]))
        print(f"| {version} | {t['encoding']} | {t['level']} | {t['seconds']:.2f} s | "
              f"{t['bytes']/1e6:.1f} | {t['compressed']} | {t['reused']} |")
    encodings = {e for r in rows for e in (r["gzip"][1], r["zstd"][1])}
    print()
    print("identity answers to compressed clients:", "none" if "identity" not in encodings else "SOME")


def ready_lines(path):
    found = []
    with open(path) as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            fields = event.get("fields", event)
            if fields.get("message") == "compressed variant ready":
                found.append({"encoding": fields.get("encoding"), "level": fields.get("compression_level"),
                              "seconds": fields.get("seconds"), "bytes": fields.get("bytes"),
                              "compressed": fields.get("pieces_compressed"),
                              "reused": fields.get("pieces_reused")})
    return found


def final_lines(path):
    return [t for t in ready_lines(path) if t["level"] == 9]


if __name__ == "__main__":
    main()
