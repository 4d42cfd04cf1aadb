"""Offline replay throughput: NDJSON lines per second through :func:`monitor.replay.replay`, as a
ratio to ``json.loads`` of the same lines in the same run (the floor any JSON replay pays).

Workload: the simulator's file for 2,000 patients over 30 days (seed 1), about 180,000 lines of
every document type; the whole replay (decode, support core, carers, alerts with hourly event-time
ticks, the final evaluation and equity). Best of 3 runs after one warm-up (numba compilation).
Target: at least 100,000 lines/s.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from datetime import UTC, datetime

from bench.results import merge_section
from monitor.replay import replay
from monitor.simulate import SimConfig, write_ndjson

CONFIG = SimConfig(patients=2_000, days=30, seed=1, end=datetime(2026, 11, 1, tzinfo=UTC))


def _lines() -> list[bytes]:
    buf = io.StringIO()
    write_ndjson(CONFIG, buf)
    return [line.encode() for line in buf.getvalue().splitlines()]


def _best(fn, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    lines = _lines()
    mix = Counter(json.loads(line)["type"] for line in lines)
    replay(lines[:20_000])  # warm-up: numba kernels compiled or loaded from cache
    t_loads = _best(lambda: [json.loads(line) for line in lines])
    t_replay = _best(lambda: replay(lines))
    n = len(lines)
    values = {
        "lines": n,
        "mix": dict(sorted(mix.items())),
        "json_loads_per_s": round(n / t_loads),
        "lines_per_s": round(n / t_replay),
        "ratio": round(t_loads / t_replay, 4),
        "target_lines_per_s": 100_000,
        "workload": f"simulate {CONFIG.patients} patients x {CONFIG.days} days (seed {CONFIG.seed}); "
                    "replay() of the whole file, best of 3 after a warm-up",
    }
    print(merge_section("replay", values))


if __name__ == "__main__":
    main()
