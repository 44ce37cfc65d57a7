#!/usr/bin/env python3
"""Warm syncs for bench/sync: sync_warm.py BASE_URL API_KEY RUNS SERVE_PID PLAIN_OUT OUT.json

Against a running `pma-cache serve` (phpMyAdmin settings set, BROWSER_IDLE_TIMEOUT not 0): one
refresh to start its browser (cold in serve), then RUNS times the floor (bench/plain_export.py,
environment as for it) and a refresh, alternately, so both see the same machine load. A refresh
is timed from POST /refresh until /status shows the new success; the server's own figure
(`last_duration_seconds`) is kept too. Then, after 5 s idle, the kept browser's memory: the summed
PSS and RSS of SERVE_PID's descendants (the supervisor, ChromeDriver and Chromium). Standard
library only."""
import json, os, subprocess, sys, time, urllib.request

base, key, runs, serve_pid, plain_out, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
here = os.path.dirname(os.path.abspath(__file__))


def call(method, path):
    req = urllib.request.Request(base + path, method=method, headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


def refresh():
    before = call("GET", "/status")["sync"]
    started = time.perf_counter()
    call("POST", "/refresh")
    while True:
        s = call("GET", "/status")["sync"]
        if s.get("last_failure") != before.get("last_failure"):
            raise SystemExit("sync_warm: a refresh failed: %s" % s.get("last_error"))
        if s.get("last_success") != before.get("last_success") and s.get("state") == "idle":
            return {"wall": time.perf_counter() - started, "server": s["last_duration_seconds"]}
        time.sleep(0.02)


def descendants(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], list(kids.get(root, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, []))
    return found


def memory_kb(pids, field):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                total += sum(int(l.split()[1]) for l in f if l.startswith(field + ":"))
        except OSError:
            pass
    return total


result = {"first": refresh(), "floor": [], "warm": []}
for _ in range(runs):
    plain = subprocess.run([sys.executable, os.path.join(here, "plain_export.py"), plain_out],
                           check=True, capture_output=True, text=True)
    result["floor"].append(json.loads(plain.stdout))
    result["warm"].append(refresh())
    print(json.dumps({"floor": result["floor"][-1]["total_seconds"], "warm": result["warm"][-1]}), file=sys.stderr)
time.sleep(5)
browser = descendants(serve_pid)
result["idle_processes"] = len(browser)
result["idle_pss_kb"] = memory_kb(browser, "Pss")
result["idle_rss_kb"] = memory_kb(browser, "Rss")
with open(out, "w") as f:
    json.dump(result, f)
