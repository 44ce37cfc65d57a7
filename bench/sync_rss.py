#!/usr/bin/env python3
"""Memory sampler for bench/sync: sync_rss.py PID OUT.json

Every 20 ms reads PID's VmHWM (its own peak RSS, kept by the kernel) and the summed VmRSS of PID
and all its descendants (pma-cache + ChromeDriver + Chromium). Writes {"self_hwm_kb", "tree_peak_kb"}
when PID is gone. VmHWM is exact up to the last sample before exit; the tree sum is sampled."""
import json, os, sys, time

pid, out = int(sys.argv[1]), sys.argv[2]


def status(p):
    try:
        with open("/proc/%d/status" % p) as f:
            return {l.split(":")[0]: l.split()[1] for l in f if l.startswith(("VmHWM", "VmRSS", "PPid"))}
    except (OSError, IndexError):
        return None


self_hwm = tree_peak = 0
tick = 0
while True:
    s = status(pid)
    if s is None:
        break
    self_hwm = max(self_hwm, int(s.get("VmHWM", 0)))
    if tick % 3 == 0:  # the whole tree every 60 ms: walking /proc costs a little CPU
        kids = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = status(int(d))
                if st and "PPid" in st:
                    kids.setdefault(int(st["PPid"]), []).append((int(d), int(st.get("VmRSS", 0))))
        total, todo = int(s.get("VmRSS", 0)), [pid]
        while todo:
            for c, rss in kids.get(todo.pop(), []):
                total += rss
                todo.append(c)
        tree_peak = max(tree_peak, total)
    tick += 1
    time.sleep(0.02)
with open(out, "w") as f:
    json.dump({"self_hwm_kb": self_hwm, "tree_peak_kb": tree_peak}, f)
