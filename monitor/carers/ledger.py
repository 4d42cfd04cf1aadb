"""The compensation ledger: minutes of informal care per carer per ISO week, and carer overload.

Definitions
-----------
* **Week**: the ISO 8601 week (Monday 00:00 to Sunday 24:00 **UTC**) of an activity's
  ``started_at``; labels are ``"YYYY-Www"`` with the ISO year (``2026-W53`` runs from Monday
  2026-12-28 to Sunday 2027-01-03). The UTC day of ``started_at`` decides, and an activity is
  attributed **wholly** to the week it starts in, even when it runs past Sunday midnight.
* **Minutes**: the sum of ``duration_minutes`` over the carer's activities in the week, across
  every patient they support. Sums are kept in integer milliseconds (``round(minutes * 60000)``,
  half to even, as the support core does), so totals are exact and independent of the order of
  addition; rows report ``minutes = ms / 60000`` and ``hours`` rounded to 2 decimals.
* **Overloaded**: ``minutes >= 2100`` (35 hours, the UK Carer's Allowance threshold) in one week
  (``CarerLedger(overload_minutes=...)`` changes it).
* ``activities_by_kind``: number of activities per activity kind; ``patients``: number of
  distinct patients the carer did something for that week.

Idempotence, order independence, retention
------------------------------------------
An activity counts at most once per (patient, ``activity_id``) - an activity id is unique per
patient, as in the support core, so two patients' activities with the same id both count: each
retained week keeps the set of 64-bit keys (:func:`monitor.carers._common.activity_key`) of the
activities applied to it; the only inexactness is a collision between two different (patient,
id) pairs in one week, P ~= n**2 / 2**65 for n activities (1.1e-5 for 20 million). The first
delivery wins; two *different* activities of one patient sharing an id are a producer error.
Only the ``retention_weeks``
(default 8) most recent weeks up to the watermark week (the ISO week of the latest ``started_at``
applied) are kept; when the watermark advances, older weeks are dropped with their id sets, and
an activity of a week older than that horizon is ignored (counted as ``too_old``). The retained
state is therefore the same whatever the arrival order: an old activity that arrives early is
dropped when the watermark passes it, one that arrives late is ignored. :meth:`week_rows` of a
dropped week raises :class:`monitor.core.state.StaleAsOfError` rather than answer "no care".

Partitions
----------
Carers span patients, and patients are partitioned, so one partition's ledger holds a *part* of a
carer's week. The week total of a carer is the **sum over partitions**: :func:`merge_rows` sums
minutes and ``activities_by_kind`` per (week, carer), sums ``patients`` (exact: a patient lives in
exactly one partition, so the per-partition distinct counts are of disjoint sets) and recomputes
``overload`` after the merge. Overload notifications in a partitioned deployment must therefore
be decided on merged rows (:func:`notifications_from_rows`), at the merge point; a single-partition
:meth:`CarerLedger.overloaded_carers` is the special case of one partition.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    parse_week,
    unpack_snapshot,
    week_index_of_day,
    week_label,
)
from monitor.contract.models import CarerActivity
from monitor.core.state import SnapshotError, StaleAsOfError
from monitor.core.timeutil import MS_PER_MINUTE, epoch_seconds, iso_utc_s

__all__ = [
    "CARER_OVERLOAD",
    "DEFAULT_RETENTION_WEEKS",
    "OVERLOAD_MINUTES",
    "ROW_FIELDS",
    "CarerLedger",
    "CarerNotification",
    "merge_rows",
    "notification_id",
    "notifications_from_rows",
    "rows_from_json",
    "to_csv",
    "to_json",
    "week_of",
]

OVERLOAD_MINUTES = 2100
"""35 hours a week: the UK Carer's Allowance threshold; ``>=`` is overloaded."""
DEFAULT_RETENTION_WEEKS = 8
CARER_OVERLOAD = "carer_overload"
ROW_FIELDS: tuple[str, ...] = (
    "week", "carer_id", "minutes", "hours", "activities_by_kind", "patients", "overload",
)
"""Keys of a ledger row, in CSV column order."""

_MAGIC = b"CMCARERLEDGER"
_VERSION = 2  # 2: the id sets hold activity_key(patient, id); version 1 held id hashes alone


def week_of(t: datetime) -> str:
    """The ISO week label (``"YYYY-Www"``) of the UTC day of ``t`` (timezone-aware)."""
    return week_label(week_index_of_day(day_of_instant(t)))


def notification_id(carer_id: str, week: str, notification: str = CARER_OVERLOAD) -> str:
    """Deterministic id of a carer notification: ``sha256(carer|week|notification)``, 32 hex.

    The same overload evaluated again (another tick, a restart, a re-delivery) has the same id,
    so a consumer drops duplicates; it carries no readable carer id.
    """
    return hashlib.sha256(f"{carer_id}|{week}|{notification}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class CarerNotification:
    """A coordinator notification that a carer is overloaded in an ISO week.

    ``notification_id`` = :func:`notification_id` ``(carer_id, week, "carer_overload")``.
    ``minutes`` is the carer's total that week when evaluated (it may grow later in the week; the
    id does not change). ``as_of`` is the evaluation instant (ISO 8601 UTC).
    """

    notification_id: str
    carer_id: str
    notification: str
    week: str
    minutes: float
    threshold_minutes: float
    as_of: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id, "carer_id": self.carer_id,
            "notification": self.notification, "week": self.week, "minutes": self.minutes,
            "threshold_minutes": self.threshold_minutes, "as_of": self.as_of,
        }


@dataclass(slots=True)
class _CarerWeek:
    ms: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)


def _row(week: str, carer_id: str, ms: int, kinds: Mapping[str, int], patients: int,
         overload_ms: int) -> dict[str, Any]:
    return {
        "week": week,
        "carer_id": carer_id,
        "minutes": ms / MS_PER_MINUTE,
        "hours": round(ms / (60 * MS_PER_MINUTE), 2),
        "activities_by_kind": {k: int(kinds[k]) for k in sorted(kinds)},
        "patients": int(patients),
        "overload": ms >= overload_ms,
    }


def _overload_ms(overload_minutes: float) -> int:
    if not overload_minutes > 0:
        raise CarersInputError(f"overload_minutes must be > 0, got {overload_minutes!r}")
    return minutes_to_ms(overload_minutes)


class CarerLedger:
    """Per-carer ISO-week minutes, activity mix and patients of one partition (see the module doc).

    ``apply(docs)`` takes validated contract documents: ``CarerActivity`` is counted, anything
    else (``CareLink``, ``Patient``, readings) is ignored. Not thread-safe (one owner per
    partition, like the support state).
    """

    def __init__(self, retention_weeks: int = DEFAULT_RETENTION_WEEKS,
                 overload_minutes: float = OVERLOAD_MINUTES) -> None:
        if not isinstance(retention_weeks, int) or retention_weeks < 2:
            raise CarersInputError("retention_weeks must be an int >= 2 (current + last week)")
        self.retention_weeks = retention_weeks
        self.overload_minutes = float(overload_minutes)
        self._overload_ms = _overload_ms(overload_minutes)
        self.watermark_week: int | None = None
        self._weeks: dict[int, dict[str, _CarerWeek]] = {}
        self._ids: dict[int, set[int]] = {}
        self.stats: dict[str, int] = {"applied": 0, "duplicates": 0, "too_old": 0}

    # -- updates --------------------------------------------------------------------------

    @property
    def horizon_week(self) -> int | None:
        """Oldest retained week index (``None`` before any activity)."""
        if self.watermark_week is None:
            return None
        return self.watermark_week - self.retention_weeks + 1

    def apply(self, docs: Iterable[Any]) -> dict[str, int]:
        """Apply a batch; returns this batch's ``{"applied", "duplicates", "too_old"}`` counts.

        The watermark is advanced to the batch's latest week *before* the batch's activities are
        applied, so the outcome does not depend on the order inside a batch either.
        """
        acts = [d for d in docs if isinstance(d, CarerActivity)]
        counts = {"applied": 0, "duplicates": 0, "too_old": 0}
        if not acts:
            return counts
        weeks = [week_index_of_day(day_of_instant(a.started_at)) for a in acts]
        self._advance(max(weeks))
        horizon = self.horizon_week
        assert horizon is not None
        for act, wk in zip(acts, weeks, strict=True):
            if wk < horizon:
                counts["too_old"] += 1
                continue
            ids = self._ids.setdefault(wk, set())
            h = activity_key(act.patient_id, act.activity_id)
            if h in ids:
                counts["duplicates"] += 1
                continue
            ids.add(h)
            cw = self._weeks.setdefault(wk, {}).setdefault(act.carer_id, _CarerWeek())
            cw.ms += minutes_to_ms(act.duration_minutes)
            kind = str(getattr(act.kind, "value", act.kind))
            cw.kinds[kind] = cw.kinds.get(kind, 0) + 1
            cw.patients.add(act.patient_id)
            counts["applied"] += 1
        for k, v in counts.items():
            self.stats[k] += v
        return counts

    def _advance(self, week: int) -> None:
        if self.watermark_week is not None and week <= self.watermark_week:
            return
        self.watermark_week = week
        horizon = week - self.retention_weeks + 1
        for old in [w for w in self._weeks if w < horizon]:
            del self._weeks[old]
        for old in [w for w in self._ids if w < horizon]:
            del self._ids[old]

    # -- queries --------------------------------------------------------------------------

    def weeks(self) -> list[str]:
        """Labels of the retained weeks that hold any activity, oldest first."""
        return [week_label(w) for w in sorted(self._weeks)]

    def _week_index(self, week: str | int) -> int:
        wk = parse_week(week) if isinstance(week, str) else int(week)
        horizon = self.horizon_week
        if horizon is not None and wk < horizon:
            raise StaleAsOfError(
                f"week {week_label(wk)} is older than the ledger's retention "
                f"({self.retention_weeks} weeks up to {week_label(self.watermark_week or wk)})"
            )
        return wk

    def week_rows(self, week: str) -> list[dict[str, Any]]:
        """Rows of one ISO week (``"YYYY-Www"``), sorted by ``carer_id`` (keys :data:`ROW_FIELDS`).

        A week with no activity (or in the future) gives ``[]``; a week older than the retention
        raises :class:`~monitor.core.state.StaleAsOfError`; a malformed label
        :class:`~monitor.carers._common.CarersInputError`.
        """
        wk = self._week_index(week)
        label = week_label(wk)
        carers = self._weeks.get(wk, {})
        return [_row(label, c, cw.ms, cw.kinds, len(cw.patients), self._overload_ms)
                for c, cw in sorted(carers.items())]

    def minutes_by_week(self) -> dict[str, dict[str, float]]:
        """``{carer_id: {week: minutes}}`` over the retained weeks (sorted keys)."""
        out: dict[str, dict[str, float]] = {}
        for wk in sorted(self._weeks):
            for c, cw in self._weeks[wk].items():
                out.setdefault(c, {})[week_label(wk)] = cw.ms / MS_PER_MINUTE
        return {c: out[c] for c in sorted(out)}

    def overloaded_carers(self, as_of: datetime) -> list[CarerNotification]:
        """``carer_overload`` notifications for the current ISO week of ``as_of`` (UTC) and the
        last complete one (the week before), sorted by (week, carer_id).

        Only exact for a carer all of whose patients are in this ledger; with several
        partitions use :func:`notifications_from_rows` on :func:`merge_rows` of every partition.
        """
        current = week_index_of_day(day_of_instant(as_of))
        rows: list[dict[str, Any]] = []
        for wk in (current - 1, current):
            rows.extend(self.week_rows(week_label(wk)))
        return notifications_from_rows(rows, as_of, overload_minutes=self.overload_minutes)

    # -- persistence ----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Versioned bytes (``b"CMCARERLEDGER"`` + uint16 version + zlib JSON; no pickle)."""
        body = {
            "retention_weeks": self.retention_weeks,
            "overload_minutes": self.overload_minutes,
            "watermark_week": self.watermark_week,
            "stats": self.stats,
            "weeks": {
                str(w): {c: [cw.ms, cw.kinds, sorted(cw.patients)] for c, cw in carers.items()}
                for w, carers in self._weeks.items()
            },
            "ids": {str(w): encode_hashes(ids) for w, ids in self._ids.items()},
        }
        return pack_snapshot(_MAGIC, _VERSION, body)

    @classmethod
    def restore(cls, data: bytes) -> CarerLedger:
        """Rebuild a ledger from :meth:`snapshot` bytes; ``SnapshotError`` if invalid."""
        body = unpack_snapshot(_MAGIC, _VERSION, data, "carer ledger")
        try:
            led = cls(int(body["retention_weeks"]), float(body["overload_minutes"]))
            wm = body["watermark_week"]
            led.watermark_week = None if wm is None else int(wm)
            led.stats = {k: int(v) for k, v in body["stats"].items()}
            for w, carers in body["weeks"].items():
                led._weeks[int(w)] = {
                    c: _CarerWeek(int(v[0]), {k: int(n) for k, n in v[1].items()}, set(v[2]))
                    for c, v in carers.items()
                }
            led._ids = {int(w): decode_hashes(s) for w, s in body["ids"].items()}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SnapshotError(f"corrupt carer ledger snapshot: {exc}") from None
        return led


# ------------------------------------------------------------------------------------------
# rows: merge, notifications, CSV / JSON
# ------------------------------------------------------------------------------------------


def _row_ms(row: Mapping[str, Any]) -> int:
    # rows carry ms / 60000 as a float; rounding back recovers the integer exactly (far below 2**53)
    return round(float(row["minutes"]) * MS_PER_MINUTE)


def merge_rows(row_lists: Iterable[Sequence[Mapping[str, Any]]],
               overload_minutes: float = OVERLOAD_MINUTES) -> list[dict[str, Any]]:
    """Merge the ledger rows of several partitions: one row per (week, carer), sorted so.

    Minutes (exactly, through integer milliseconds) and ``activities_by_kind`` are summed;
    ``patients`` are summed, which is exact because a patient lives in exactly one partition (the
    per-partition distinct sets are disjoint); ``hours`` and ``overload`` are recomputed. Rows of
    one partition's ledger are never duplicated, so merging rows of the *same* ledger twice would
    double count: pass each partition once. Rows may come from :func:`rows_from_json`.
    """
    overload_ms = _overload_ms(overload_minutes)
    acc: dict[tuple[str, str], list[Any]] = {}
    for rows in row_lists:
        for r in rows:
            key = (str(r["week"]), str(r["carer_id"]))
            a = acc.setdefault(key, [0, {}, 0])
            a[0] += _row_ms(r)
            for k, n in dict(r["activities_by_kind"]).items():
                a[1][k] = a[1].get(k, 0) + int(n)
            a[2] += int(r["patients"])
    return [_row(w, c, a[0], a[1], a[2], overload_ms) for (w, c), a in sorted(acc.items())]


def notifications_from_rows(rows: Iterable[Mapping[str, Any]], as_of: datetime,
                            overload_minutes: float = OVERLOAD_MINUTES) -> list[CarerNotification]:
    """``carer_overload`` notifications of (merged) rows whose minutes reach the threshold.

    ``overload`` is recomputed from ``minutes`` (a partial row's flag means nothing). Sorted by
    (week, carer_id). Pass the rows of the current and last complete week as of ``as_of``.
    """
    overload_ms = _overload_ms(overload_minutes)
    stamp = iso_utc_s(epoch_seconds(as_of))
    out = [
        CarerNotification(notification_id(str(r["carer_id"]), str(r["week"])), str(r["carer_id"]),
                          CARER_OVERLOAD, str(r["week"]), _row_ms(r) / MS_PER_MINUTE,
                          float(overload_minutes), stamp)
        for r in rows if _row_ms(r) >= overload_ms
    ]
    return sorted(out, key=lambda n: (n.week, n.carer_id))


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as CSV with a header (:data:`ROW_FIELDS`); ``activities_by_kind`` is a compact JSON
    object in its cell, ``overload`` is ``true``/``false``. Line endings are ``\\n``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ROW_FIELDS)
    for r in rows:
        w.writerow([
            r["week"], r["carer_id"], repr(float(r["minutes"])), repr(float(r["hours"])),
            json.dumps(dict(r["activities_by_kind"]), sort_keys=True, separators=(",", ":")),
            int(r["patients"]), "true" if r["overload"] else "false",
        ])
    return buf.getvalue()


def to_json(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as a JSON array (keys sorted, one line)."""
    return json.dumps([dict(r) for r in rows], sort_keys=True)


def rows_from_json(text: str | bytes) -> list[dict[str, Any]]:
    """The rows of :func:`to_json` (e.g. received from another worker); ``CarersInputError`` if
    the text is not a JSON array of rows with every key of :data:`ROW_FIELDS`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CarersInputError(f"ledger rows are not JSON: {exc}") from None
    if not isinstance(data, list) or not all(
        isinstance(r, dict) and set(ROW_FIELDS) <= set(r) for r in data
    ):
        raise CarersInputError("ledger rows must be a JSON array of row objects")
    return data
