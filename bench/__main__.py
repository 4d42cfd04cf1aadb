"""``make bench``: run every benchmark; each merges its own section into ``bench/results.json``.

Usage: ``python -m bench [NAME ...]`` (default: all). Numbers are throughputs and ratios against a
baseline run in the same process, never absolute pass/fail timings.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

BENCHMARKS = ["bench_core", "bench_decode", "bench_replay", "bench_alert_load", "bench_e2e", "bench_soak"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    failed = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            module.main()
        except Exception as exc:  # report and go on with the other benchmarks
            print(f"{name} failed: {exc!r}", file=sys.stderr)
            failed.append(name)
        print(f"== {name} took {time.perf_counter() - t0:.1f} s", flush=True)
    from bench.results import RESULTS

    print(json.dumps(json.loads(RESULTS.read_text()), indent=2) if RESULTS.exists() else "no results")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
