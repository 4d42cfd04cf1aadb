"""Fragile support networks, per patient: one carer doing (almost) everything, or a network lost.

Definitions (UTC days; "as of" an instant uses its UTC day ``D``, as in :mod:`monitor.core.state`)
-------------------------------------------------------------------------------------------------
* **Window**: the last ``window_days`` (28) days, days ``D-27 .. D``; an activity counts on the
  UTC day of its ``started_at`` (27 days before ``D`` is inside, 28 days before is outside).
* **Top share**: the care minutes of the patient's most active carer in the window divided by
  the patient's care minutes in the window (all carers). Only patients with an activity in the
  window have one.
* ``single_point_of_failure``: top share ``>= 90 %`` (compared exactly on integer milliseconds:
  ``100 * top >= 90 * total``), so a patient with a single active carer (share 100 %) has it.
* ``network_lost``: the patient has no registered carer as of ``D`` and the last registered
  carer left within the last ``lost_days`` (14) days: the latest leave has an effective UTC day
  in ``D-13 .. D``. Counting ``D`` as day 1, a leave on the 14th day (13 days before ``D``) is
  inside, one on the 15th day (14 days before) is outside. A *registered* carer is one whose
  latest care link (by ``effective_at``; at the same instant a leave wins) is a join - the
  support core's rule - so any join after the leave clears the flag. A pair whose only known
  link is a leave (its join predates the data) counts as a carer who left.

Idempotence, order independence, retention
------------------------------------------
Minutes are summed per (patient, day, carer) in integer milliseconds and an activity counts
once per (patient, ``activity_id``) and day (a set of 64-bit keys per retained day,
:func:`monitor.carers._common.activity_key`; an activity id is unique per patient, as in the
support core).
Only the ``window_days`` days up to the watermark day (the latest UTC day of any applied activity
or link) are kept: older cells and id sets are dropped as the watermark advances, and an older
activity is ignored (``too_old``), so the retained state is the same whatever the arrival order.
Care links keep the latest link per (patient, carer) - a maximum, idempotent and commutative -
and are kept for good (bounded by the number of pairs: dropping one could let an older,
late-arriving join resurrect a carer). :meth:`FragilityState.flags` refuses an as-of day before
the watermark day (:class:`~monitor.core.state.StaleAsOfError`): the days it would need may be
gone.

Incremental flags
-----------------
A pipeline evaluates every partition at every hour of event time, so :meth:`FragilityState.flags`
does not rescan every patient. It keeps a derived cache (:class:`_FlagCache`, never snapshotted;
rebuilt from the cells and links on first use and after :meth:`FragilityState.restore`):

* per patient and carer the running window totals ``[ms, activities, cells]`` of the days
  ``A-window+1 .. A`` for the cache day ``A`` (integer sums, so adding and subtracting is exact);
  an applied activity inside that window is added at once, the cells of a day dropped by the
  retention horizon are subtracted, and moving to another as-of day subtracts the days leaving
  the window and adds the days entering it (a full rebuild when the days are ``>= window`` apart);
* the set of patients with ``single_point_of_failure``, re-decided only for patients whose totals
  changed since the last call (the rule is exactly that of the full scan, on the same sums);
* per "all carers left" patient the day of its latest leave, bucketed by day, re-derived only for
  patients whose links changed, so ``network_lost`` reads ``lost_days`` buckets;
* the last answer, reused while neither the as-of day nor the state changed.

The answer is the same as a full scan over every patient, at every call (tested against it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from monitor.carers._common import (
    CarersInputError,
    activity_key,
    day_of_instant,
    decode_hashes,
    encode_hashes,
    minutes_to_ms,
    pack_snapshot,
    unpack_snapshot,
)
from monitor.contract.models import CareLink, CarerActivity, LinkAction
from monitor.core.state import SnapshotError, StaleAsOfError
from monitor.core.timeutil import day_of, epoch_seconds

__all__ = [
    "NETWORK_LOST",
    "PATIENT_FLAGS",
    "SINGLE_POINT_OF_FAILURE",
    "FragilityState",
]

SINGLE_POINT_OF_FAILURE = "single_point_of_failure"
NETWORK_LOST = "network_lost"
PATIENT_FLAGS: tuple[str, ...] = (NETWORK_LOST, SINGLE_POINT_OF_FAILURE)
"""The patient flags this module raises, sorted."""

_MAGIC = b"CMCARERFRAGILITY"
_VERSION = 2  # 2: the id sets hold activity_key(patient, id); version 1 held id hashes alone

# a cell: [milliseconds, activity count]; count, not ms > 0, tells an active carer (a tiny
# duration can round to 0 ms)
Cell = list[int]


class _FlagCache:
    """Derived state of :meth:`FragilityState.flags` (see the module docstring); never persisted."""

    __slots__ = ("day", "agg", "spof", "dirty", "lost_day", "lost_by_day", "links_dirty",
                 "result", "answer", "answer_lost", "spof_changed")

    def __init__(self, day: int) -> None:
        self.day = day  # the as-of day the window totals and ``spof`` are for
        # patient -> carer -> [ms, activities, cells] over days day-window+1 .. day
        self.agg: dict[str, dict[str, list[int]]] = {}
        self.spof: set[str] = set()
        self.dirty: set[str] = set()  # patients whose totals changed since ``spof`` was decided
        self.lost_day: dict[str, int] = {}  # every carer left: patient -> day of the last leave
        self.lost_by_day: dict[int, set[str]] = {}
        self.links_dirty: set[str] = set()  # patients whose links changed since indexed
        self.result: dict[str, list[str]] | None = None  # the answer for ``day`` if unchanged
        # the last answer built and the network_lost set it was built from: reused when neither
        # that set nor the spof set changed (``spof_changed``) since
        self.answer: dict[str, list[str]] | None = None
        self.answer_lost: set[str] = set()
        self.spof_changed = True


class FragilityState:
    """Per patient day-bucketed care minutes per carer (last ``window_days`` days) and the latest
    care link per (patient, carer). See the module docstring for every definition.

    ``apply(docs)`` takes validated contract documents (``CarerActivity``, ``CareLink``; anything
    else is ignored). Not thread-safe (one owner per partition).
    """

    def __init__(self, window_days: int = 28, lost_days: int = 14, spof_percent: int = 90) -> None:
        if not isinstance(window_days, int) or window_days < 1:
            raise CarersInputError("window_days must be an int >= 1")
        if not isinstance(lost_days, int) or lost_days < 1:
            raise CarersInputError("lost_days must be an int >= 1")
        if not isinstance(spof_percent, int) or not 0 < spof_percent <= 100:
            raise CarersInputError("spof_percent must be an int in 1..100")
        self.window_days = window_days
        self.lost_days = lost_days
        self.spof_percent = spof_percent
        self.watermark_day: int | None = None
        # patient -> day -> carer -> [ms, n]
        self._cells: dict[str, dict[int, dict[str, Cell]]] = {}
        self._ids: dict[int, set[int]] = {}
        self._day_patients: dict[int, set[str]] = {}
        # patient -> carer -> (effective_at epoch seconds, 1 if leave else 0): the max wins
        self._links: dict[str, dict[str, tuple[int, int]]] = {}
        self.stats: dict[str, int] = {"applied": 0, "duplicates": 0, "too_old": 0, "links": 0}
        self._cache: _FlagCache | None = None

    @property
    def horizon_day(self) -> int | None:
        """Oldest retained day (``None`` before any event)."""
        return None if self.watermark_day is None else self.watermark_day - self.window_days + 1

    # -- updates --------------------------------------------------------------------------

    def apply(self, docs: Iterable[Any]) -> dict[str, int]:
        """Apply a batch; returns this batch's ``{"applied", "duplicates", "too_old", "links"}``.

        The watermark advances to the batch's latest day before anything is applied.
        """
        acts: list[tuple[CarerActivity, int]] = []
        links: list[CareLink] = []
        for d in docs:
            if isinstance(d, CarerActivity):
                acts.append((d, day_of_instant(d.started_at)))
            elif isinstance(d, CareLink):
                links.append(d)
        counts = {"applied": 0, "duplicates": 0, "too_old": 0, "links": 0}
        days = [day for _, day in acts] + [day_of_instant(lk.effective_at) for lk in links]
        if not days:
            return counts
        self._advance(max(days))
        horizon = self.horizon_day
        assert horizon is not None
        cache = self._cache
        cache_first = 0 if cache is None else cache.day - self.window_days + 1
        for act, day in acts:
            if day < horizon:
                counts["too_old"] += 1
                continue
            ids = self._ids.setdefault(day, set())
            h = activity_key(act.patient_id, act.activity_id)
            if h in ids:
                counts["duplicates"] += 1
                continue
            ids.add(h)
            pid, cid = act.patient_id, act.carer_id
            carers = self._cells.setdefault(pid, {}).setdefault(day, {})
            cell = carers.get(cid)
            new_cell = cell is None
            if cell is None:
                cell = carers[cid] = [0, 0]
            ms = minutes_to_ms(act.duration_minutes)
            cell[0] += ms
            cell[1] += 1
            self._day_patients.setdefault(day, set()).add(pid)
            counts["applied"] += 1
            if cache is not None:
                cache.result = None
                if cache_first <= day <= cache.day:
                    a = cache.agg.setdefault(pid, {}).setdefault(cid, [0, 0, 0])
                    a[0] += ms
                    a[1] += 1
                    a[2] += new_cell
                    cache.dirty.add(pid)
        for lk in links:
            key = (epoch_seconds(lk.effective_at), 1 if lk.action is LinkAction.leave else 0)
            pairs = self._links.setdefault(lk.patient_id, {})
            if key > pairs.get(lk.carer_id, (-(2**62), 0)):
                pairs[lk.carer_id] = key
                if cache is not None:
                    cache.result = None
                    cache.links_dirty.add(lk.patient_id)
            counts["links"] += 1
        for k, v in counts.items():
            self.stats[k] += v
        return counts

    def _advance(self, day: int) -> None:
        if self.watermark_day is not None and day <= self.watermark_day:
            return
        self.watermark_day = day
        horizon = day - self.window_days + 1
        cache = self._cache
        if cache is not None:
            cache.result = None
        for old in [d for d in self._ids if d < horizon]:
            del self._ids[old]
        for old in [d for d in self._day_patients if d < horizon]:
            in_window = cache is not None and cache.day - self.window_days < old <= cache.day
            for pid in self._day_patients.pop(old):
                days = self._cells.get(pid)
                if days is None:
                    continue
                carers = days.pop(old, None)
                if in_window and carers:
                    assert cache is not None
                    self._agg_add(cache, pid, carers, -1)
                if not days:
                    del self._cells[pid]

    # -- queries --------------------------------------------------------------------------

    def _as_of_day(self, as_of: datetime | int) -> int:
        day = as_of if isinstance(as_of, int) else day_of_instant(as_of)
        if self.watermark_day is not None and day < self.watermark_day:
            raise StaleAsOfError(
                f"as-of day {day} is before the watermark day {self.watermark_day}; "
                "the fragility state keeps no history for it"
            )
        return day

    def window_cells(self, as_of: datetime | int) -> dict[str, dict[str, tuple[int, int]]]:
        """``{patient_id: {carer_id: (care ms, activities)}}`` over days ``D-window+1 .. D``
        (``as_of`` a datetime or a UTC day number); only patients and carers with an activity."""
        d = self._as_of_day(as_of)
        first = d - self.window_days + 1
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for pid, days in self._cells.items():
            acc: dict[str, list[int]] = {}
            for day, carers in days.items():
                if first <= day <= d:
                    for cid, (ms, n) in carers.items():
                        a = acc.setdefault(cid, [0, 0])
                        a[0] += ms
                        a[1] += n
            if acc:
                out[pid] = {c: (a[0], a[1]) for c, a in acc.items()}
        return out

    def top_share(self, as_of: datetime | int) -> dict[str, float]:
        """``{patient_id: share}`` (0..1) of the most active carer's minutes in the window."""
        out = {}
        for pid, carers in self.window_cells(as_of).items():
            total = sum(ms for ms, _ in carers.values())
            top = max(ms for ms, _ in carers.values())
            out[pid] = top / total if total else 1.0  # every activity rounded to 0 ms: one carer
        return dict(sorted(out.items()))

    def registered_carers(self, patient_id: str) -> list[str]:
        """Carers whose latest link to the patient is a join (sorted)."""
        return sorted(c for c, (_, leave) in self._links.get(patient_id, {}).items() if not leave)

    def flags(self, as_of: datetime | int) -> dict[str, list[str]]:
        """``{patient_id: sorted flags}`` of patients with any flag as of ``as_of``'s UTC day.

        Raises :class:`~monitor.core.state.StaleAsOfError` for a day before the watermark day.
        Incremental (see "Incremental flags" in the module docstring): the cost is that of the
        changes since the last call, not of every patient. A new dict with new lists each call.
        """
        d = self._as_of_day(as_of)
        cache = self._cache
        if cache is None or abs(d - cache.day) >= self.window_days:
            cache = self._rebuild(d)
        elif d != cache.day:
            self._move(cache, d)
        if cache.result is None:
            self._refresh(cache)
            cache.result = self._answer(cache, d)
        # callers may keep or change the answer: a copy, as a full scan would give
        return {pid: fl[:] for pid, fl in cache.result.items()}

    # -- the incremental cache ------------------------------------------------------------

    def _agg_add(self, cache: _FlagCache, pid: str, carers: dict[str, Cell], sign: int) -> None:
        """Add (``sign`` 1) or subtract (-1) one day's cells of a patient to its window totals."""
        acc = cache.agg.get(pid)
        if acc is None:
            acc = cache.agg[pid] = {}
        for cid, (ms, n) in carers.items():
            a = acc.get(cid)
            if a is None:
                a = acc[cid] = [0, 0, 0]
            a[0] += sign * ms
            a[1] += sign * n
            a[2] += sign
            if a[2] == 0:
                del acc[cid]
        if not acc:
            del cache.agg[pid]
        cache.dirty.add(pid)

    def _rebuild(self, d: int) -> _FlagCache:
        """A cache for day ``d`` from scratch: every patient's window totals and links dirty."""
        cache = _FlagCache(d)
        first = d - self.window_days + 1
        for pid, days in self._cells.items():
            for day, carers in days.items():
                if first <= day <= d and carers:
                    self._agg_add(cache, pid, carers, 1)
        cache.links_dirty.update(self._links)
        self._cache = cache
        return cache

    def _move(self, cache: _FlagCache, d: int) -> None:
        """Move the window totals from ``cache.day`` to ``d`` (fewer than ``window`` days apart):
        subtract the retained cells of the days leaving the window, add those entering it."""
        w = self.window_days
        old_first, new_first = cache.day - w + 1, d - w + 1
        leaving = [x for x in range(old_first, cache.day + 1) if not new_first <= x <= d]
        entering = [x for x in range(new_first, d + 1) if not old_first <= x <= cache.day]
        for sign, days in ((-1, leaving), (1, entering)):
            for day in days:
                for pid in self._day_patients.get(day, ()):
                    carers = self._cells.get(pid, {}).get(day)
                    if carers:
                        self._agg_add(cache, pid, carers, sign)
        cache.day = d
        cache.result = None

    def _refresh(self, cache: _FlagCache) -> None:
        """Re-decide ``single_point_of_failure`` of the dirty patients and re-index the
        ``network_lost`` candidates whose links changed."""
        pct = self.spof_percent
        spof = cache.spof
        for pid in cache.dirty:
            carers = cache.agg.get(pid)
            if not carers:
                flagged = False
            elif len(carers) == 1:
                # one carer: single if active, else 100 * top >= pct * total with top == total
                ((ms, n, _),) = carers.values()
                flagged = bool(n) or 100 * ms >= pct * ms
            else:
                total = sum(a[0] for a in carers.values())
                top = max(a[0] for a in carers.values())
                single = sum(1 for a in carers.values() if a[1]) == 1
                flagged = single or 100 * top >= pct * total
            if flagged:
                if pid not in spof:
                    spof.add(pid)
                    cache.spof_changed = True
            elif pid in spof:
                spof.discard(pid)
                cache.spof_changed = True
        cache.dirty.clear()
        for pid in cache.links_dirty:
            old = cache.lost_day.pop(pid, None)
            if old is not None:
                bucket = cache.lost_by_day[old]
                bucket.discard(pid)
                if not bucket:
                    del cache.lost_by_day[old]
            pairs = self._links.get(pid)
            if not pairs or any(not leave for _, leave in pairs.values()):
                continue
            day = day_of(max(t for t, _ in pairs.values()))
            cache.lost_day[pid] = day
            cache.lost_by_day.setdefault(day, set()).add(pid)
        cache.links_dirty.clear()

    def _answer(self, cache: _FlagCache, d: int) -> dict[str, list[str]]:
        first = d - self.lost_days + 1
        lost: set[str] = set()
        if len(cache.lost_by_day) <= self.lost_days:
            for day, pids in cache.lost_by_day.items():
                if first <= day <= d:
                    lost |= pids
        else:
            for day in range(first, d + 1):
                pids = cache.lost_by_day.get(day)
                if pids:
                    lost |= pids
        spof = cache.spof
        if cache.answer is not None and not cache.spof_changed and lost == cache.answer_lost:
            return cache.answer
        cache.spof_changed = False
        cache.answer_lost = lost
        if not lost:
            cache.answer = {pid: [SINGLE_POINT_OF_FAILURE] for pid in sorted(spof)}
            return cache.answer
        out: dict[str, list[str]] = {}
        for pid in sorted(spof | lost):
            if pid in lost:
                out[pid] = [NETWORK_LOST, SINGLE_POINT_OF_FAILURE] if pid in spof else [NETWORK_LOST]
            else:
                out[pid] = [SINGLE_POINT_OF_FAILURE]
        cache.answer = out
        return out

    # -- persistence ----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Versioned bytes (``b"CMCARERFRAGILITY"`` + uint16 version + zlib JSON; no pickle)."""
        body = {
            "window_days": self.window_days,
            "lost_days": self.lost_days,
            "spof_percent": self.spof_percent,
            "watermark_day": self.watermark_day,
            "stats": self.stats,
            "cells": {pid: {str(day): carers for day, carers in days.items()}
                      for pid, days in self._cells.items()},
            "ids": {str(day): encode_hashes(ids) for day, ids in self._ids.items()},
            "links": {pid: {c: list(v) for c, v in pairs.items()}
                      for pid, pairs in self._links.items()},
        }
        return pack_snapshot(_MAGIC, _VERSION, body)

    @classmethod
    def restore(cls, data: bytes) -> FragilityState:
        """Rebuild from :meth:`snapshot` bytes; :class:`~monitor.core.state.SnapshotError` if
        invalid."""
        body = unpack_snapshot(_MAGIC, _VERSION, data, "carer fragility")
        try:
            st = cls(int(body["window_days"]), int(body["lost_days"]), int(body["spof_percent"]))
            wm = body["watermark_day"]
            st.watermark_day = None if wm is None else int(wm)
            st.stats = {k: int(v) for k, v in body["stats"].items()}
            for pid, days in body["cells"].items():
                st._cells[pid] = {
                    int(day): {c: [int(v[0]), int(v[1])] for c, v in carers.items()}
                    for day, carers in days.items()
                }
                for day in st._cells[pid]:
                    st._day_patients.setdefault(day, set()).add(pid)
            st._ids = {int(day): decode_hashes(s) for day, s in body["ids"].items()}
            st._links = {pid: {c: (int(v[0]), int(v[1])) for c, v in pairs.items()}
                         for pid, pairs in body["links"].items()}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SnapshotError(f"corrupt carer fragility snapshot: {exc}") from None
        return st
