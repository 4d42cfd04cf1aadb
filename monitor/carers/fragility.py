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
            cell = (self._cells.setdefault(act.patient_id, {}).setdefault(day, {})
                    .setdefault(act.carer_id, [0, 0]))
            cell[0] += minutes_to_ms(act.duration_minutes)
            cell[1] += 1
            self._day_patients.setdefault(day, set()).add(act.patient_id)
            counts["applied"] += 1
        for lk in links:
            key = (epoch_seconds(lk.effective_at), 1 if lk.action is LinkAction.leave else 0)
            pairs = self._links.setdefault(lk.patient_id, {})
            if key > pairs.get(lk.carer_id, (-(2**62), 0)):
                pairs[lk.carer_id] = key
            counts["links"] += 1
        for k, v in counts.items():
            self.stats[k] += v
        return counts

    def _advance(self, day: int) -> None:
        if self.watermark_day is not None and day <= self.watermark_day:
            return
        self.watermark_day = day
        horizon = day - self.window_days + 1
        for old in [d for d in self._ids if d < horizon]:
            del self._ids[old]
        for old in [d for d in self._day_patients if d < horizon]:
            for pid in self._day_patients.pop(old):
                days = self._cells.get(pid)
                if days is None:
                    continue
                days.pop(old, None)
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
        """
        d = self._as_of_day(as_of)
        out: dict[str, list[str]] = {}
        for pid, carers in self.window_cells(d).items():
            total = sum(ms for ms, _ in carers.values())
            top = max(ms for ms, _ in carers.values())
            single = sum(1 for _, n in carers.values() if n) == 1
            if single or 100 * top >= self.spof_percent * total:
                out.setdefault(pid, []).append(SINGLE_POINT_OF_FAILURE)
        first = d - self.lost_days + 1
        for pid, pairs in self._links.items():
            # every stored link has a day <= watermark day <= d, so "latest" needs no filtering
            if not pairs or any(not leave for _, leave in pairs.values()):
                continue
            last_leave_day = day_of(max(t for t, _ in pairs.values()))
            if first <= last_leave_day <= d:
                out.setdefault(pid, []).append(NETWORK_LOST)
        return {pid: sorted(fl) for pid, fl in sorted(out.items())}

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
