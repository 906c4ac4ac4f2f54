"""What a cloud's rules-update with long windows costs the care desk: the engine's snapshot (written every
minute on the event loop, gateway/care.py) and each reading's evaluation.

``--rules`` rules (default 64, each a 7-day mean of heart rate: the second review's case, a 7.9 KB
rules-update) are fed a heart rate every ``--every-s`` seconds for ``--days`` days of capture time (fed as
fast as the engine takes them), then snapshotted as the care store writes it (``json.dumps`` of
``snapshot(alerts=False)``).

    nice -n 10 .venv/bin/python bench/rules_windows.py [--days 7] [--rules 64] [--every-s 5]

Before the windows kept buckets (gateway/rules/engine.py, ``_Window``), the same run gave a 155 MB
snapshot in 22.6 s with 2 GB peak RSS (x86, helper-33's measurement of the older engine).

Ends with ``RESULT snapshot_mb=... snapshot_ms=... us_per_rule_eval=... peak_rss_mb=...``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import result_line
from drivers import codes
from drivers.base import Measurement
from gateway.rules import RuleEngine, WatchSettings

T0 = 1_795_510_800.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=7.0, help="capture time fed (default: one whole window)")
    ap.add_argument("--rules", type=int, default=64)
    ap.add_argument("--every-s", type=float, default=5.0, help="one heart rate this often")
    ap.add_argument("--window-s", type=float, default=7 * 86400.0)
    args = ap.parse_args()
    rules = [
        {
            "id": f"hr-week-{i}",
            "kind": f"hr_week_{i}",
            "code": codes.HEART_RATE,
            "op": ">",
            "threshold": 200 + i,  # never reached: the windows fill, nothing else happens
            "severity": "low",
            "window_s": args.window_s,
        }
        for i in range(args.rules)
    ]
    payload = len(json.dumps({"person_id": "default", "rules": rules}))
    engine = RuleEngine(WatchSettings(timezone="UTC"))
    engine.set_device("wrist-1", T0 - 1, worn=True)
    engine.update_rules("default", rules)
    n = int(args.days * 86400 / args.every_s)
    t0 = time.perf_counter()
    for i in range(n):
        t = T0 + args.every_s * i
        engine.feed(Measurement("wrist-1", codes.HEART_RATE, 70.0 + (i % 31), "/min", t, quality=0.9), t)
    feed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    doc = json.dumps(engine.snapshot(alerts=False), separators=(",", ":"), allow_nan=False)
    snap_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_eval_us = feed_s / max(1, n * args.rules) * 1e6
    print(
        f"{args.rules} rules of a {args.window_s / 86400:g}-day window (a {payload} byte rules-update), "
        f"{n} readings over {args.days:g} days: {per_eval_us:.2f} us per rule evaluation; snapshot "
        f"{len(doc) / 1e6:.3f} MB in {snap_s * 1000:.1f} ms; peak RSS {rss_mb:.0f} MB"
    )
    print("machine: 2 cores shared with other work")
    print(
        result_line(
            snapshot_mb=round(len(doc) / 1e6, 3),
            snapshot_ms=round(snap_s * 1000, 1),
            us_per_rule_eval=round(per_eval_us, 2),
            peak_rss_mb=round(rss_mb),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
