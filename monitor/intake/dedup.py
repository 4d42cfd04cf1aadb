"""Dropping the same reading delivered more than once (several uploaders, retries, replays).

A reading is a duplicate of one already admitted for the same patient when

* it carries the same ``reading_id`` (the same record relayed by several uploaders or redelivered), or
* it has the same kind, event time (``measured_at``, exact) and value(s) - whether or not ids are
  present, because several uploaders (a phone app and a hub; xDrip+ and a follower app) give the
  same CGM value their own ids (Nightscout #3699). Turn this off with ``match_content=False``.

Distinct readings close in time (a different event time or a different value) are always kept:
losing a real reading to over-eager dedup is worse than a duplicate.

Memory is bounded by event time. Keys are held per patient and evicted once they are more than
``horizon`` older than the newest ``measured_at`` admitted for that patient (its watermark), and
never more than ``max_keys_per_patient`` are kept (the oldest go first). A reading already older than
its patient's watermark minus ``horizon`` is admitted but not remembered, so a duplicate of such a
stale reading passes: a possible duplicate is preferred to a possibly lost reading, and intake
validation (``too_old``) bounds how stale such readings can be. Pick ``horizon`` at least as long as
the longest backfill expected from an uploader that was offline. Pure in-memory logic: no I/O, no clock.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from monitor.intake.canonical import CanonicalReading


@dataclass
class _PatientKeys:
    watermark: datetime
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    # (measured_at, tie-breaker, keys): the tie-breaker keeps tuples with None from being compared.
    heap: list[tuple[datetime, int, tuple[tuple[Any, ...], ...]]] = field(default_factory=list)


class Deduplicator:
    """Admit each reading once. Not thread-safe; one instance per stream partition or replay."""

    def __init__(
        self,
        horizon: timedelta = timedelta(days=2),
        *,
        match_content: bool = True,
        max_keys_per_patient: int = 100_000,
    ) -> None:
        if horizon <= timedelta(0):
            raise ValueError("horizon must be positive")
        if max_keys_per_patient < 1:
            raise ValueError("max_keys_per_patient must be at least 1")
        self.horizon = horizon
        self.match_content = match_content
        self.max_keys_per_patient = max_keys_per_patient
        self._patients: dict[str, _PatientKeys] = {}
        self._counter = itertools.count()

    def _keys(self, r: CanonicalReading) -> tuple[tuple[Any, ...], ...]:
        keys = [r.dedup_key]
        if self.match_content and r.reading_id is not None:
            keys.append(r.content_key)
        return tuple(keys)

    def admit(self, r: CanonicalReading) -> bool:
        """True the first time a reading is seen (then it is remembered), False for a duplicate."""
        state = self._patients.get(r.patient_id)
        if state is None:
            state = self._patients[r.patient_id] = _PatientKeys(watermark=r.measured_at)
        keys = self._keys(r)
        if any(k in state.seen for k in keys):
            return False
        state.seen.update(keys)
        heapq.heappush(state.heap, (r.measured_at, next(self._counter), keys))
        if r.measured_at > state.watermark:
            state.watermark = r.measured_at
        self._evict(state)
        return True

    def _evict(self, state: _PatientKeys) -> None:
        cutoff = state.watermark - self.horizon
        while state.heap and (state.heap[0][0] < cutoff or len(state.heap) > self.max_keys_per_patient):
            _, _, keys = heapq.heappop(state.heap)
            state.seen.difference_update(keys)

    def __len__(self) -> int:
        """The number of readings currently remembered (all patients)."""
        return sum(len(s.heap) for s in self._patients.values())
