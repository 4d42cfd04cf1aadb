"""Dedup streams: per ``(patient, kind)`` the latest event time, the readings at it, body weights.

Late, replayed, backfilled and duplicated readings
    Per ``(patient, kind)`` the engine keeps the latest ``measured_at`` seen. A reading older than
    that - or older than the newest reading of its kind **in the same batch** - never opens an
    episode and never resolves one (a gateway that uploads six hours of backfill does not page
    anyone for a value that is hours old); it still counts as a body-weight baseline. A reading
    with exactly the latest time may open an episode but never resolves one, so the outcome does not
    depend on the order of equal-time readings. Exact duplicates (same ``dedup_key`` or same
    content) of a reading at the latest time are dropped; older duplicates are old by definition.
Keys
    A reading at a stream's latest time is kept as itself or as its :data:`Material` (id and
    values), from which its duplicate keys (hashes, whose encoding never changes: they are
    persisted in snapshots and compared across restarts) are rebuilt only when a later reading at
    the same time needs them. Times are aware UTC; snapshot rows carry them as integer
    microseconds since the Unix epoch.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.core.timeutil import to_us
from monitor.intake.canonical import CanonicalReading

NO_KEYS: frozenset[str] = frozenset()
NO_ROWS: list[Any] = []
"""A shared empty list in cached snapshot rows (never mutated)."""
_MATERIAL_FIELDS = operator.attrgetter("reading_id", "measured_at", "value", "systolic", "diastolic")

STR: frozenset[type] = frozenset({str})
NONE: frozenset[type] = frozenset({type(None)})
STR_OR_NONE: frozenset[type] = STR | NONE
FLOAT_OR_NONE: frozenset[type] = frozenset({float}) | NONE

Material = tuple[str | None, float | None, float | None, float | None]
"""A reading at a stream's latest time reduced to what its duplicate keys depend on besides the
stream's patient, kind and latest time: ``(reading_id, value, systolic, diastolic)``."""


def key_strings(r: CanonicalReading) -> tuple[str, ...]:
    """The sorted, distinct hashes of a reading's content and dedup keys (persisted in snapshots
    and compared across restarts: the encoding must never change)."""

    def enc(key: tuple[Any, ...]) -> str:
        # repr of a tuple of str/float/None/aware datetime is deterministic across processes and
        # ~10x cheaper than json.dumps with a default hook
        return hashlib.blake2b(repr(key).encode("utf-8"), digest_size=12).hexdigest()

    return tuple(sorted({enc(r.content_key), enc(r.dedup_key)}))


def _material_order(m: Material) -> str:
    return repr(m)


@dataclass(slots=True, eq=False)
class Stream:
    """Per (patient, kind): the latest event time, the readings at that time, weights.

    The duplicate keys at the latest time are ``opaque`` (keys known only as hashes: restored from a
    version-1 snapshot) plus the keys of every entry of ``readings`` (the fresh readings at the
    latest time, or their :data:`Material` once snapshotted or restored). Keys are hashed only when
    needed (a later reading at exactly the latest time), since most readings are never compared
    with anything; ``hashed`` caches the keys of ``opaque`` and of ``readings[:n_hashed]``.
    ``row`` caches the stream's snapshot encoding; ``None`` means changed since (every change goes
    through :meth:`advance`, :meth:`add` or :meth:`set_weights`).
    """

    patient_id: str
    kind: str
    latest: datetime | None = None
    weights: Sequence[tuple[datetime, float]] = ()
    readings: list[CanonicalReading | Material] = field(default_factory=list)
    opaque: frozenset[str] = frozenset()
    hashed: set[str] | None = None
    n_hashed: int = 0
    row: tuple[Any, ...] | None = None

    def keys(self) -> set[str]:
        """Every duplicate key at the latest time (hashes the readings not hashed yet first)."""
        hashed = self.hashed
        if hashed is None:
            hashed = self.hashed = set(self.opaque)
        readings = self.readings
        if self.n_hashed < len(readings):
            for entry in readings[self.n_hashed :]:
                hashed.update(self._entry_keys(entry))
            self.n_hashed = len(readings)
        return hashed

    def _entry_keys(self, entry: CanonicalReading | Material) -> tuple[str, ...]:
        if type(entry) is not tuple:
            return key_strings(entry)  # type: ignore[arg-type]
        rid, value, systolic, diastolic = entry
        return key_strings(
            CanonicalReading(
                reading_id=rid,
                patient_id=self.patient_id,
                device_id=None,
                gateway_id=None,
                kind=self.kind,
                value=value,
                systolic=systolic,
                diastolic=diastolic,
                unit="",
                original_unit="",
                original_code=None,
                measured_at=self.latest,  # type: ignore[arg-type]
                source="native",
            )
        )

    def advance(self, latest: datetime) -> None:
        """A newer latest time: forget the readings (and keys) of the previous one."""
        self.latest = latest
        if self.readings:
            self.readings = []
        self.opaque = NO_KEYS
        self.hashed = None
        self.n_hashed = 0
        self.row = None

    def add(self, reading: CanonicalReading | Material, keys: tuple[str, ...] | None = None) -> None:
        """Record a fresh reading (or its material) at the latest time; ``keys``: its keys if
        already hashed."""
        readings = self.readings
        if keys is not None and self.n_hashed == len(readings):
            if self.hashed is None:
                self.hashed = set(self.opaque)
            self.hashed.update(keys)
            self.n_hashed += 1
        readings.append(reading)
        self.row = None

    def set_weights(self, weights: Sequence[tuple[datetime, float]]) -> None:
        self.weights = weights
        self.row = None

    def snapshot_row(self) -> tuple[Any, ...]:
        """``(latest_us, materials, hashes, weight_times_us, weight_kgs)``, cached until a change.

        ``materials`` are the sorted :data:`Material` rows of the readings at the latest time,
        ``hashes`` the sorted keys of ``opaque`` and of any reading that has no material row (a
        reading whose duplicate keys could not be rebuilt exactly from one). Readings are replaced
        by their material rows in memory (the same keys, without the whole reading).
        """
        row = self.row
        if row is not None:
            return row
        latest = self.latest
        readings = self.readings
        hashes: list[str] = NO_ROWS
        if not readings:
            materials: list[Any] = NO_ROWS
        elif len(readings) == 1:
            r = readings[0]
            if type(r) is not tuple:
                rid, at, value, systolic, diastolic = _MATERIAL_FIELDS(r)
                if (
                    at is latest  # the same object: the same repr in the keys
                    and type(latest) is datetime
                    and latest.tzinfo is UTC
                    and not latest.fold
                    and type(rid) in STR_OR_NONE
                    and type(value) in FLOAT_OR_NONE
                    and type(systolic) in FLOAT_OR_NONE
                    and type(diastolic) in FLOAT_OR_NONE
                ):
                    self.readings = readings = [(rid, value, systolic, diastolic)]
            if type(readings[0]) is tuple:
                materials = readings
            else:
                materials, hashes = self._materialise()
        else:
            materials, hashes = self._materialise()
        if self.opaque:
            hashes = sorted({*hashes, *self.opaque})
        weights = self.weights
        row = self.row = (
            None if latest is None else to_us(latest),
            materials,
            hashes,
            [to_us(t) for t, _ in weights] if weights else NO_ROWS,
            [w for _, w in weights] if weights else NO_ROWS,
        )
        return row

    def _materialise(self) -> tuple[list[Any], list[str]]:
        """Replace the readings by their material rows where their keys are rebuilt exactly from
        one (by :meth:`_entry_keys`); return the sorted material rows and the sorted keys of the
        other readings."""
        latest = self.latest
        simple = type(latest) is datetime and latest.tzinfo is UTC and not latest.fold
        readings = self.readings
        materials: list[Any] = []
        keep: list[CanonicalReading] = []
        for entry in readings:
            if type(entry) is tuple:
                materials.append(entry)
                continue
            rid, at, value, systolic, diastolic = _MATERIAL_FIELDS(entry)
            # a reading of this stream has its patient and kind; its time equals the latest time
            # and must repr the same: the same object, or a plain UTC datetime (fold 0)
            if (
                simple
                and type(rid) in STR_OR_NONE
                and (
                    at is latest
                    or (type(at) is datetime and at.tzinfo is UTC and not at.fold and at == latest)
                )
                and type(value) in FLOAT_OR_NONE
                and type(systolic) in FLOAT_OR_NONE
                and type(diastolic) in FLOAT_OR_NONE
            ):
                materials.append((rid, value, systolic, diastolic))
            else:
                keep.append(entry)  # type: ignore[arg-type]
        if len(materials) > 1:
            materials.sort(key=_material_order)
        if self.n_hashed < len(readings):  # the cache follows the order of readings
            self.hashed = None
            self.n_hashed = 0
        self.readings = [*materials, *keep]
        hashes = sorted({k for r in keep for k in key_strings(r)}) if keep else NO_ROWS
        return materials if materials else NO_ROWS, hashes
