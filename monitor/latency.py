"""A tiny fixed-bucket latency histogram for the pipeline (no Prometheus import, no I/O).

The pipeline observes once per *batch* (or once per batch of alerts), never per event, and the
collector (:mod:`monitor.metrics.collectors`) exposes it as a Prometheus histogram at scrape time.
It lives below both (it imports only the standard library), so :mod:`monitor.pipeline` does not
import :mod:`monitor.metrics`, which imports the pipeline. Durations are in seconds. Not
thread-safe: one driver thread owns the pipeline (as everything else in it).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

BATCH_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) for the processing time of one ingested batch."""

ALERT_DELAY_BUCKETS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                                            3600.0, 21600.0, 86400.0)
"""Upper bounds (seconds) for reading measured -> alert published (includes device upload delay)."""


class LatencyHistogram:
    """Counts of observations per bucket (``le`` upper bounds, seconds), their sum and count.

    ``observe`` with a negative value (a clock skew between a device and the worker) counts in the
    first bucket and adds 0 to the sum, so ``sum`` stays monotonic as Prometheus requires.
    """

    def __init__(self, buckets: Iterable[float] = BATCH_BUCKETS_S) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or any(b <= 0 for b in bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("buckets must be distinct positive upper bounds")
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        s = max(0.0, float(seconds))
        self._counts[bisect.bisect_left(self.bounds, s)] += 1
        self.sum += s
        self.count += 1

    def observe_many(self, values: Iterable[float]) -> None:
        for v in values:
            self.observe(v)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf`` (Prometheus histogram buckets)."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*(repr(b) for b in self.bounds), "+Inf"), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out


__all__ = ["ALERT_DELAY_BUCKETS_S", "BATCH_BUCKETS_S", "LatencyHistogram"]
