#!/usr/bin/env python3
"""Helpers for bench/fetch-data: reads wrk output and renders the results as Markdown.

  fetch_data_report.py wrk FILE          one tab-separated line: req/s, latency avg, p50, p99 (ms),
                                          errors (socket errors + non-2xx), transfer/s
  fetch_data_report.py run CMD...        runs CMD; prints wall seconds and max RSS (KiB) of it
  fetch_data_report.py table RESULTS FACTS
                                          RESULTS: lines "encoding server round <wrk fields>"
                                          FACTS: lines "key<TAB>value"; prints the Markdown report
"""

import re
import resource
import statistics
import subprocess
import sys
import time

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def parse_wrk(text):
    def grab(pattern):
        m = re.search(pattern, text, re.M)
        if not m:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{text}")
        return m.group(1)

    rps = float(grab(r"^Requests/sec:\s+([\d.]+)"))
    avg = to_ms(grab(r"^\s+Latency\s+(\S+)"))
    p50 = to_ms(grab(r"^\s+50%\s+(\S+)"))
    p99 = to_ms(grab(r"^\s+99%\s+(\S+)"))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(non2xx.group(1)) if non2xx else 0
    transfer = grab(r"^Transfer/sec:\s+(\S+)")
    return [f"{rps:.2f}", f"{avg:.1f}", f"{p50:.1f}", f"{p99:.1f}", str(errors), transfer]


def run_measured(cmd):
    started = time.monotonic()
    code = subprocess.call(cmd)
    wall = time.monotonic() - started
    if code != 0:
        sys.exit(code)
    print(f"{wall:.2f}\t{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")


def median(rows, field):
    return statistics.median(float(r[field]) for r in rows)


def table(results_path, facts_path):
    facts = dict(line.rstrip("\n").split("\t", 1) for line in open(facts_path) if "\t" in line)
    keys = ["encoding", "server", "round", "rps", "avg", "p50", "p99", "errors", "transfer"]
    rows = [dict(zip(keys, line.split())) for line in open(results_path) if line.strip()]
    json_mb = int(facts["json_bytes"]) / 1e6
    out = []
    say = out.append

    say("# /fetch-data: pma-cache against nginx (`gzip_static`)")
    say("")
    say(f"- Command: `{facts['command']}`")
    say(f"- Machine: {facts['machine']}")
    say(f"- Tools: {facts['tools']}")
    say(f"- Load average (1, 5, 15 min) before / after the wrk runs: {facts['load_before']} / "
        f"{facts['load_after']} (wrk and both servers share the same CPUs; other work on the "
        "machine skews the figures, which is why rounds alternate and medians are shown)")
    say(f"- Data: {facts['rows']} rows, {facts['columns']} columns; cache JSON "
        f"{int(facts['json_bytes']):,} bytes ({json_mb:.1f} MB); served body "
        f"{int(facts['body_bytes']):,} bytes, gzip -6 {int(facts['gzip_bytes']):,} bytes")
    say(f"- Import (`pma-cache import`, release): {facts['import_wall']} s wall, "
        f"max RSS {int(facts['import_rss_kib']) / 1024:.0f} MiB")
    say(f"- wrk: {facts['wrk']}")
    say("")
    say("| Encoding | Server | req/s (median) | req/s per round | latency avg (ms) | p50 (ms) "
        "| p99 (ms) | errors | pma-cache / nginx req/s | target ≥ 0.9× |")
    say("|---|---|---:|---|---:|---:|---:|---:|---:|---|")
    for encoding in ("identity", "gzip"):
        by_server = {server: [r for r in rows if r["encoding"] == encoding and r["server"] == server]
                     for server in ("pma-cache", "nginx")}
        medians = {server: median(rs, "rps") for server, rs in by_server.items() if rs}
        for server, rs in by_server.items():
            if not rs:
                continue
            ratio = verdict = ""
            if server == "pma-cache" and medians.get("nginx"):
                r = medians["pma-cache"] / medians["nginx"]
                ratio, verdict = f"{r:.2f}×", ("met" if r >= 0.9 else "**missed**")
            say(f"| {encoding} | {server} | {medians[server]:.2f} | {', '.join(r['rps'] for r in rs)} "
                f"| {median(rs, 'avg'):.1f} | {median(rs, 'p50'):.1f} | {median(rs, 'p99'):.1f} "
                f"| {sum(int(r['errors']) for r in rs)} | {ratio} | {verdict} |")
    say("")
    say(f"Peak memory of pma-cache with {facts['downloads']} concurrent downloads of `/fetch-data` "
        f"(target: < 3× the JSON size = {3 * json_mb:.0f} MB):")
    say("")
    say("| Batch | VmRSS before (MB) | max VmRSS during (MB) | × JSON | VmHWM after (MB) | × JSON "
        "| downloads OK | target < 3× |")
    say("|---|---:|---:|---:|---:|---:|---:|---|")
    for batch in ("identity", "gzip"):
        before, during, hwm = (int(facts[f"rss_{batch}_{k}"]) * 1024 / 1e6 for k in ("before", "max", "hwm"))
        worst = max(during, hwm) / json_mb
        say(f"| {facts['downloads']} × {batch} | {before:.1f} | {during:.1f} | {during / json_mb:.2f}× "
            f"| {hwm:.1f} | {hwm / json_mb:.2f}× | {facts[f'rss_{batch}_ok']} "
            f"| {'met' if worst < 3 else '**missed**'} |")
    say("")
    say("VmHWM is the peak over the whole life of the process, including building the gzip and zstd "
        "variants at start; the sampled VmRSS (every 50 ms during the batch) is the download peak. "
        "MB = 10^6 bytes.")
    print("\n".join(out))


def main():
    match sys.argv[1:]:
        case ["wrk", path]:
            print("\t".join(parse_wrk(open(path).read())))
        case ["run", *cmd] if cmd:
            run_measured(cmd)
        case ["table", results, facts]:
            table(results, facts)
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
