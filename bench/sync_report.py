#!/usr/bin/env python3
"""Turns bench/sync's measurements (WORK dir) into the Markdown report on stdout.

    sync_report.py WORK COMMAND NPROC RUNS ROWS"""
import glob, json, os, re, statistics, sys

work, command, nproc, runs, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
PHASES = ["starting_browser", "logging_in", "exporting", "downloading", "converting", "writing"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read(name):
    with open(os.path.join(work, name)) as f:
        return f.read()


def sync_run(i):
    text = ANSI.sub("", read("run-%d.log" % i))
    r = {p: float(s) for p, s in re.findall(r'sync phase done phase="(\w+)" seconds=([0-9.]+)', text)}
    m = re.search(r"sync succeeded rows=(\d+) bytes=(\d+) seconds=([0-9.]+)", text)
    r["rows"], r["json"], r["logged"] = int(m.group(1)), int(m.group(2)), float(m.group(3))
    t = re.search(r"last byte to the durable cache file seconds=([0-9.]+)", text)
    r["tail"] = float(t.group(1)) if t else float("nan")
    d = re.search(r"downloaded bytes: (\d+)", text)
    r["csv"] = int(d.group(1)) if d else 0
    wall, rss = read("run-%d.time" % i).split()[-2:]
    r["wall"], r["time_rss_kb"] = float(wall), int(rss)
    try:
        r.update(json.loads(read("run-%d.rss" % i)))
    except (OSError, ValueError):
        r["self_hwm_kb"] = r["tree_peak_kb"] = 0
    php = read("run-%d.php.log" % i)
    reqs = re.findall(r"\]: (GET|POST) (\S+)", php)
    r["requests"] = len(reqs)
    r["static"] = sum(1 for _, p in reqs if re.search(r"\.(js|css|png|gif|svg|ico|woff2?|ttf)(\?|$)", p))
    return r


cold = sync_run(0)
warm = [sync_run(i) for i in range(1, runs)]
med = lambda key, rs=warm: statistics.median(r[key] for r in rs)
plain = [json.loads(read("plain-%d.json" % i)) for i in range(runs)]
plainnull = [json.loads(read("plainnull-%d.json" % i)) for i in range(runs)]
pmed = lambda key, rs: statistics.median(r[key] for r in rs[1:])
imports = [tuple(map(float, read("import-%d.time" % i).split()[-2:])) for i in range(1, 6)]
imp_s = statistics.median(t for t, _ in imports)
imp_rss = max(m for _, m in imports)
json_bytes = int(read("json.bytes"))
plain_bytes, plainnull_bytes = int(read("plain.bytes")), int(read("plain-null.bytes"))
MB = lambda b: b / 1e6
KB_MB = lambda kb: kb * 1024 / 1e6

sync_total = med("wall")
floor_total = pmed("total_seconds", plain)
conv_write = med("converting") + med("writing")
self_peak = max(r["self_hwm_kb"] for r in warm)
time_peak = max(r["time_rss_kb"] for r in warm)
ok = lambda c: "**met**" if c else "**not met**"

out = []
w = out.append
w("## Sync benchmark: %s rows on the local test bed" % format(rows, ","))
w("")
w("Command: `%s` · `nproc` = %s · %d sync runs (run 0 cold, medians over the %d warm runs) · "
  "phpMyAdmin 5.2.1 on `php -S` (4 workers), MariaDB, Chromium + ChromeDriver started by the sync itself."
  % (command, nproc, runs, runs - 1))
w("")
w("| | cold run | warm median |")
w("|---|---:|---:|")
for p in PHASES:
    w("| %s (s) | %.3f | %.3f |" % (p, cold.get(p, 0), med(p)))
w("| download's last byte → durable cache file (s) | %.3f | %.3f |" % (cold["tail"], med("tail")))
w("| sync total, as logged (s) | %.3f | %.3f |" % (cold["logged"], med("logged")))
w("| **sync total, process wall (s)** | %.2f | **%.2f** |" % (cold["wall"], sync_total))
w("| peak RSS, `/usr/bin/time %%M` (MB) | %.0f | %.0f |" % (KB_MB(cold["time_rss_kb"]), KB_MB(med("time_rss_kb"))))
w("| peak RSS of pma-cache itself, VmHWM (MB) | %.0f | %.0f |" % (KB_MB(cold["self_hwm_kb"]), KB_MB(med("self_hwm_kb"))))
w("| peak RSS, pma-cache + ChromeDriver + Chromium summed (MB) | %.0f | %.0f |" % (KB_MB(cold["tree_peak_kb"]), KB_MB(med("tree_peak_kb"))))
w("| HTTP requests to phpMyAdmin per sync (static files) | %d (%d) | %d (%d) |" % (cold["requests"], cold["static"], med("requests"), med("static")))
w("")
w("| floor: plain HTTP export (`bench/plain_export.py`) | first run | median of the other %d |" % (runs - 1))
w("|---|---:|---:|")
w("| login: GET login page + POST credentials + home page (s) | %.3f | %.3f |" % (plain[0]["login_seconds"], pmed("login_seconds", plain)))
w("| export: POST + download to file (s) | %.3f | %.3f |" % (plain[0]["export_seconds"], pmed("export_seconds", plain)))
w("| **total (s)** | %.3f | **%.3f** |" % (plain[0]["total_seconds"], floor_total))
w("| total with phpMyAdmin's default `NULL` token (s) | %.3f | %.3f |" % (plainnull[0]["total_seconds"], pmed("total_seconds", plainnull)))
w("")
w("| sizes | |")
w("|---|---:|")
w("| CSV downloaded by the browser (the sync's random NULL token) | %.1f MB |" % MB(med("csv")))
w("| CSV of the plain export, same token length | %.1f MB |" % MB(plain_bytes))
w("| CSV of the plain export, `NULL` token | %.1f MB |" % MB(plainnull_bytes))
w("| JSON cache file | %.1f MB |" % MB(json_bytes))
w("")
w("| conversion alone: `pma-cache import` of the floor's CSV, 5 runs | |")
w("|---|---:|")
w("| process wall, median (conversion + atomic write + start/exit) (s) | %.3f |" % imp_s)
w("| peak RSS, max (MB) | %.0f |" % KB_MB(imp_rss))
w("")
w("| ratios and targets (issue 3) | value | target | |")
w("|---|---:|---:|---|")
w("| sync total / plain export total | %.2f× | | |" % (sync_total / floor_total))
w("| browser overhead = sync total − floor | %.2f s | | |" % (sync_total - floor_total))
w("| converting + writing phases in the sync, from the completed download (median) | %.3f s | < 0.3 s | %s |" % (conv_write, ok(conv_write < 0.3)))
w("| conversion + write alone (`import`, median wall) | %.3f s | < 0.3 s | %s |" % (imp_s, ok(imp_s < 0.3)))
w("| whole sync (process wall, warm median) | %.2f s | < 4 s | %s |" % (sync_total, ok(sync_total < 4)))
w("| whole sync, cold run | %.2f s | < 4 s | %s |" % (cold["wall"], ok(cold["wall"] < 4)))
w("| peak RSS of pma-cache / JSON size (VmHWM, max of warm runs) | %.2f× | < 2× | %s |" % (KB_MB(self_peak) / MB(json_bytes), ok(KB_MB(self_peak) < 2 * MB(json_bytes))))
w("| peak RSS `/usr/bin/time %%M` / JSON size (max of warm runs; counts Chromium, see note) | %.2f× | < 2× | %s |" % (KB_MB(time_peak) / MB(json_bytes), ok(KB_MB(time_peak) < 2 * MB(json_bytes))))
w("")
w("`/usr/bin/time %M` is the largest RSS of pma-cache *or of any descendant it reaped* (ChromeDriver, "
  "and Chromium processes ChromeDriver reaped), so it is not pma-cache's own peak; VmHWM is pma-cache's "
  "own, read every 20 ms until it exits. MB = 10^6 bytes.")

# The four targets of issue 10, each against the floor measured in the same run.
warm_runs = json.loads(read("warm.json"))
warm_med = statistics.median(r["wall"] for r in warm_runs["warm"])
warm_server = statistics.median(r["server"] for r in warm_runs["warm"])
warm_floor = statistics.median(r["total_seconds"] for r in warm_runs["floor"])
timings = []
for i in range(1, 6):
    m = re.search(r"convert_seconds=([0-9.]+) write_seconds=([0-9.]+)", ANSI.sub("", read("import-%d.log" % i)))
    if m:
        timings.append(float(m.group(1)) + float(m.group(2)))
# `import` logs its conversion and write apart at debug level when it does; else the sync's own
# converting + writing phases (median of the `pma-cache sync` runs) stand for them.
conv, conv_how = (statistics.median(timings), "`import`'s own timings, median of %d" % len(timings)) \
    if timings else (conv_write, "the sync's converting + writing phases, median")
w("")
w("### Targets (issue 10)")
w("")
w("| target | measured | floor (same run) | ratio | goal | |")
w("|---|---:|---:|---:|---:|---|")
w("| warm sync: refresh in a running `serve`, median of %d, POST to done (server's own figure %.2f s) | %.2f s | %.2f s | %.2f× | ≤ 1.5× | %s |"
  % (len(warm_runs["warm"]), warm_server, warm_med, warm_floor, warm_med / warm_floor, ok(warm_med <= 1.5 * warm_floor)))
w("| cold `pma-cache sync` (run 0, process wall) | %.2f s | %.2f s | %.2f× | ≤ 3× | %s |"
  % (cold["wall"], floor_total, cold["wall"] / floor_total, ok(cold["wall"] <= 3 * floor_total)))
w("| conversion + durable write of the whole CSV (pma-cache import), %s rows (%s) | %.3f s | | | < 0.3 s | %s |"
  % (format(rows, ","), conv_how, conv, ok(conv < 0.3)))
tails = [float(t) for t in re.findall(r"last byte to the durable cache file seconds=([0-9.]+)", ANSI.sub("", read("serve.log")))]
tail_sync = med("tail")
w("| download's last byte → durable cache file (conversion tail + durable write; the CSV is converted while it downloads), median of the %d warm `pma-cache sync` runs%s | %.3f s | | | < 0.3 s | %s |"
  % (runs - 1, "; %.3f s in the `serve` refreshes, where it also counts building the served snapshot" % statistics.median(tails[1:] or tails) if tails else "", tail_sync, ok(tail_sync < 0.3)))
w("| kept browser idle, %d processes: summed PSS (summed RSS) | %.0f MB (%.0f MB) | | | reported | |"
  % (warm_runs["idle_processes"], KB_MB(warm_runs["idle_pss_kb"]), KB_MB(warm_runs["idle_rss_kb"])))
w("")
w("The first refresh of the `serve` (starting its browser and logging in) took %.2f s." % warm_runs["first"]["wall"])
print("\n".join(out))
