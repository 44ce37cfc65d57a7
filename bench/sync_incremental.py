#!/usr/bin/env python3
"""Incremental syncs for bench/sync:
sync_incremental.py BIN ENV_FILE WORK RUNS CHANGED OUT.json

For each mode (row digests, SYNC_CURSOR=updated_at, then the same cursor with an index on it,
added for that run and dropped after) a release `pma-cache serve` on the bed in
ENV_FILE (its own cache file in WORK, SYNC_FULL_EVERY=24h, a kept browser) makes a first, full
sync; then RUNS times, alternately: CHANGED random rows are changed with SQL (a new `note` and
`updated_at = NOW()`), an ordinary refresh (incremental) is timed, then `POST /refresh?full=true`
(a full export of the same table) is timed. Each refresh is timed from the
POST until /status shows the new success; /status gives its kind and the CSV bytes phpMyAdmin
produced. Before each refresh the server is left to finish its background work (its CPU time
still for 1 s). The server's memory is read around each refresh: its resident size settled
before it (VmRSS) and its peak from the POST until it is settled again (VmHWM, its own process, not
the browser's, reset through /proc/PID/clear_refs before the POST). Standard library only."""
import json, os, random, signal, socket, subprocess, sys, time, urllib.request

binary, env_file, work, runs, changed, out = sys.argv[1:7]
runs, changed = int(runs), int(changed)
KEY = "bench-admin-key-0123456789"

bed = {}
with open(env_file) as f:
    for line in f:
        if "=" in line:
            k, v = line.rstrip("\n").split("=", 1)
            bed[k] = v


def sql(query):
    subprocess.run(["mariadb", "--no-defaults", "--socket=" + bed["TESTBED_MARIADB_SOCKET"], "-uroot",
                    bed["PMA_DATABASE"], "-e", query], check=True)


def ids():
    out = subprocess.run(["mariadb", "--no-defaults", "--socket=" + bed["TESTBED_MARIADB_SOCKET"], "-uroot",
                          "--batch", "--skip-column-names", bed["PMA_DATABASE"], "-e",
                          "SELECT MIN(id), MAX(id) FROM `%s`" % bed["PMA_TABLE"]],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def settle(pid):
    """Waits until the server used under 5% of a core for a whole second (compression done)."""
    hz = os.sysconf("SC_CLK_TCK")
    deadline = time.time() + 600
    while time.time() < deadline:
        before = cpu_ticks(pid)
        time.sleep(1)
        if cpu_ticks(pid) - before <= 0.05 * hz:
            return
    raise SystemExit("sync_incremental: the server never went idle")


def status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid):
    """Sets VmHWM back to the current VmRSS (Linux 4.0 and later; the process's owner or root)."""
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")


def run_mode(mode):
    port = free_port()
    env = dict(os.environ)
    for k in ("PMA_URL", "PMA_USERNAME", "PMA_PASSWORD", "PMA_DATABASE", "PMA_TABLE"):
        env[k] = bed[k]
    env.update({
        "HOST": "127.0.0.1", "PORT": str(port), "ADMIN_API_KEY": KEY, "REFRESH_MIN_INTERVAL": "0",
        "BROWSER_IDLE_TIMEOUT": "30m", "SYNC_TIMEOUT": "30m", "SYNC_FULL_EVERY": "24h",
        "CACHE_FILE": os.path.join(work, "incremental-%s.json" % mode),
    })
    env.pop("WEBDRIVER_URL", None)
    env.pop("SYNC_CURSOR", None)
    if mode.startswith("cursor"):
        env["SYNC_CURSOR"] = "updated_at"
    if mode == "cursor_indexed":
        sql("ALTER TABLE `%s` ADD INDEX bench_updated_at (updated_at)" % bed["PMA_TABLE"])
    try:
        os.unlink(env["CACHE_FILE"])
    except FileNotFoundError:
        pass
    log = open(os.path.join(work, "serve-%s.log" % mode), "w")
    proc = subprocess.Popen([binary, "serve"], env=env, stderr=log)
    base = "http://127.0.0.1:%d" % port

    def call(method, path):
        req = urllib.request.Request(base + path, method=method, headers={"X-API-Key": KEY})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"{}")

    def refresh(query=""):
        settle(proc.pid)
        before = call("GET", "/status")["sync"]
        settled_kb = status_kb(proc.pid, "VmRSS")
        reset_peak(proc.pid)
        started = time.perf_counter()
        call("POST", "/refresh" + query)
        while True:
            s = call("GET", "/status")["sync"]
            if s.get("last_failure") != before.get("last_failure"):
                raise SystemExit("sync_incremental: a refresh failed: %s" % s.get("last_error"))
            if s.get("last_success") != before.get("last_success") and s.get("state") == "idle":
                wall = time.perf_counter() - started
                # The peak runs until the new version's variants are built and the old one is
                # let go.
                settle(proc.pid)
                return {"wall": wall, "server": s["last_duration_seconds"],
                        "kind": s.get("last_kind"), "export_bytes": s.get("last_export_bytes"),
                        "rows": s.get("last_rows"), "settled_before_kb": settled_kb,
                        "peak_kb": status_kb(proc.pid, "VmHWM")}
            time.sleep(0.02)

    try:
        for _ in range(300):
            try:
                call("GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        result = {"mode": mode, "first": refresh(), "incremental": [], "full": []}
        low, high = ids()
        rng = random.Random(42)
        for i in range(runs):
            chosen = rng.sample(range(low, high + 1), changed)
            sql("UPDATE `%s` SET note = CONCAT('bench %s ', id), updated_at = NOW() WHERE id IN (%s)"
                % (bed["PMA_TABLE"], "%d-%s" % (i, mode), ",".join(map(str, chosen))))
            result["incremental"].append(refresh())
            result["full"].append(refresh("?full=true"))
            print(json.dumps({"mode": mode, "incremental": result["incremental"][-1],
                              "full": result["full"][-1]}), file=sys.stderr)
        settle(proc.pid)
        result["json_bytes"] = os.path.getsize(env["CACHE_FILE"])
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        if mode == "cursor_indexed":
            sql("ALTER TABLE `%s` DROP INDEX bench_updated_at" % bed["PMA_TABLE"])


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2) if xs else float("nan")


def report(results):
    floor = []
    for name in sorted(os.listdir(work)):
        if name.startswith("plain-") and name.endswith(".json") and name[6:-5].isdigit():
            with open(os.path.join(work, name)) as f:
                floor.append(json.load(f)["total_seconds"])
    rows = results[0]["first"]["rows"]
    lines = ["", "### Incremental syncs: %s rows, %d changed between syncs, %d runs each" % (
        "{:,}".format(rows), changed, runs), "",
        "| sync | kind | warm sync, median | × full | CSV bytes from phpMyAdmin, median | % of full |",
        "|---|---|---:|---:|---:|---:|"]
    for r in results:
        full = median([x["wall"] for x in r["full"]])
        full_bytes = median([x["export_bytes"] for x in r["full"]])
        inc = median([x["wall"] for x in r["incremental"]])
        inc_bytes = median([x["export_bytes"] for x in r["incremental"]])
        kinds = sorted({x["kind"] for x in r["incremental"]})
        lines.append("| full export (`?full=true`), %s server | full | %.2f s | 1.00 | %s | 100%% |"
                     % (r["mode"], full, "{:,}".format(int(full_bytes))))
        lines.append("| incremental, %s | %s | %.2f s | %.2f | %s | %.2f%% |"
                     % (r["mode"], "/".join(kinds), inc, inc / full, "{:,}".format(int(inc_bytes)),
                        100.0 * inc_bytes / full_bytes))
    if floor:
        lines.append("| floor: full export over plain HTTP, no browser | – | %.2f s | – | – | – |"
                     % median(floor))
    lines += ["", "| server, sync | RSS settled before (median) | peak RSS through the sync (VmHWM, median / max) | × JSON (max) |",
              "|---|---:|---:|---:|"]
    for r in results:
        for kind in ("incremental", "full"):
            xs = r[kind]
            mb = lambda kb: kb * 1024 / 1e6
            peaks = [x["peak_kb"] for x in xs]
            lines.append("| %s, %s | %.0f MB | %.0f / %.0f MB | %.2f |" % (
                r["mode"], kind, mb(median([x["settled_before_kb"] for x in xs])), mb(median(peaks)),
                mb(max(peaks)), max(peaks) * 1024 / r["json_bytes"]))
        lines.append("| %s: the JSON | %.0f MB | | |" % (r["mode"], r["json_bytes"] / 1e6))
    return "\n".join(lines) + "\n"


results = [run_mode(m) for m in ("row_hash", "cursor", "cursor_indexed")]
with open(out, "w") as f:
    json.dump(results, f)
print(report(results))
