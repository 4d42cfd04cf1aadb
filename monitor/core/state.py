"""The per-patient support-coverage state: its configuration, the logic object and its snapshot.

Shape (bytewax style): :class:`SupportConfig` is a small frozen config; :class:`SupportState` is the
logic object holding numpy arrays; drivers (``monitor.replay``, the faust worker) build an
:class:`~monitor.core.batch.EventBatch` per batch of canonical events
(:func:`~monitor.core.batch.batch_from_documents`) and call :meth:`SupportState.apply`, then
:meth:`SupportState.evaluate` / :meth:`SupportState.partial_summary` (both answer with the types
of :mod:`monitor.core.summary`). The kernels live in :mod:`monitor.core.support`, time
conventions in :mod:`monitor.core.timeutil`.

Definitions (day resolution)
----------------------------
A *day* is a UTC calendar day. Evaluation "as of" an instant ``t`` uses its day ``D``; every event
of day ``D`` counts, whatever its time of day, and "the last N days" means days ``D-N+1 .. D``
(``days_ago = D - day(event)`` in ``0 .. N-1``). With the defaults:

* an **active carer** has at least one activity for the patient in the last 28 days: an activity
  27 days before the as-of day (the 28th day counting the as-of day as day 1) is inside, one 28
  days before (the 29th day) is outside;
* a **registered carer** is one whose latest care link with an effective day <= D is a join
  (latest by ``effective_at``; at the same instant a leave wins over a join);
* ``no_support_network``: no registered carer and no active carer;
* ``support_lapsed``: a registered carer, or any carer contact ever, but no carer contact in the
  last 14 days (a contact 13 days back - the 14th day - prevents it, 14 days back - the 15th - does
  not). It can hold together with ``no_support_network`` (a network that lapsed completely);
* ``single_carer``: exactly one active carer;
* **covered**: at least one carer contact in the last 7 days (6 days back yes, 7 days back no).

A carer activity counts on the UTC day of ``started_at``; a reading on the day of ``measured_at``.

Idempotence and order independence
----------------------------------
Re-deliveries are harmless by construction: maxima (last contact/reading, per-pair last contact
day), bit-or (a contact-day bit per day of the coverage window) and "latest link wins" are
idempotent and commutative. The only sums (care minutes and readings per day, kept in a ring of
day cells per patient) admit an event at most once through an **exact duplicate table**: an
open-addressing hash set of 64-bit event keys, holding only events of the last ``coverage_days``
days before the watermark day. A duplicate is the same **(patient, kind, id)**: a carer activity
id is unique per patient, a reading id per patient and reading kind, so two patients' events
with the same id both count. The key (:func:`monitor.core.support.dedup_key`) is the id hash
(blake2b of ``"a:" + activity_id`` / ``"r:" + reading_id``,
:func:`monitor.core.idhash.id_hash`) XOR the splitmix64 mix of an injective (patient slot, kind)
tag. Older events cannot appear in any window that
can still be evaluated (``evaluate`` refuses an as-of day before the watermark day), so their
sums are skipped and their keys purged; the table's size is bounded by the number of events in
one coverage window (buckets of 7 keys + their ``day mod 256`` tags in one 64-byte line, 9.1
bytes per key slot, at most 70 % full, rebuilt with 50 % headroom: ~13-20 bytes per event). The
only inexactness is a 64-bit collision between the keys of two *different* (patient, kind, id)
inside one window: the same id of two patients or kinds never collides (the mix is a
bijection), two different ids collide with probability 2**-64 per pair, so with n events in a
window P(any false duplicate) ~= n**2 / 2**65: ~1.1e-5 per window for n = 20 million (~1.1e-12
for any one event, n / 2**64). The first delivery of a (patient, kind, id) wins; two different
events sharing one are a producer error. Care links need no table (idempotent; their table is
keyed by the (patient, carer) pair, so per patient already). Patient
registry upserts are resolved by ``(registered_at, content hash)`` (the larger wins), so they are
order independent too.

State size and layout
---------------------
The update kernels are bound by random memory access (~20 ns per cache miss with prefetching,
~60 M random lines/s on one core of the reference machine), so every structure an event touches
is packed so that one cache line serves it, and the lines of later events of a batch are
prefetched: a reading touches its patient's record and one duplicate-table line, an activity
also one pair-table line, a care link one link-table line. Per patient: one 64-byte *record*
(last contact and last reading times, a ring of ``coverage_days`` day cells of care ms (low 32
bits) and readings (low 16 bits), the contact-day bits; layout
:func:`monitor.core.support.record_layout`), the high parts of the cells (``hi``, 56 bytes, only
touched after an overflow of a low part) and the cold registry (3 group codes, expected
readings, version, registered flag; 37 bytes); per (patient, carer) pair one 16-byte slot (key,
last-contact day) in the pair table and, for pairs with a care link, one 16-byte slot (key,
latest link) in the link table, both in 64-byte buckets of 4 slots and kept 35-70 % full; per
event in the current coverage window ~13-20 bytes of duplicate table. Arrays are allocated
aligned to 64 bytes.
:meth:`SupportState.bytes_per_patient` reports the measured total. The Python id
maps (patient and carer id -> slot) are extra (~100 bytes per id) and not counted there.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from monitor.core import support as _k
from monitor.core.batch import DIMENSIONS, EventBatch, PatientRecord
from monitor.core.summary import UNKNOWN_GROUP, Evaluation, GroupCounts, PartialSummary
from monitor.core.timeutil import day_of, epoch_seconds
from monitor.errors import MonitorError

__all__ = [
    "SNAPSHOT_VERSION",
    "SnapshotError",
    "StaleAsOfError",
    "SupportConfig",
    "SupportState",
]

SNAPSHOT_MAGIC = b"CMSUPPORT"
SNAPSHOT_VERSION = 4
"""4: duplicate-table keys bind the id to its patient and kind (:func:`monitor.core.support.
dedup_key`); the keys of version 3 were the bare id hashes, so a version 3 snapshot is refused
(:class:`SnapshotError`) and the partition is rebuilt from its input."""


class SnapshotError(MonitorError, ValueError):
    """A snapshot is not one this version can restore (bad magic, unknown version, corrupt)."""


class StaleAsOfError(MonitorError, ValueError):
    """An as-of day before the watermark day: the state keeps no history to answer it."""


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SupportConfig:
    """Windows and dimensions of the support state (all windows in UTC calendar days).

    ``coverage_days`` (<= 64) is the window of ``covered``, care minutes, contact days and readings
    received; ``active_days`` the window of an active carer; ``lapse_days`` (<= 64) the contact gap
    that makes a network lapse. ``dimensions`` is a subset of
    :data:`~monitor.core.batch.DIMENSIONS`; ``ordered_dimensions`` those with a natural order
    (rank = group value, 1 = most deprived). Raises ``ValueError`` on invalid values.
    """

    coverage_days: int = 7
    active_days: int = 28
    lapse_days: int = 14
    dimensions: tuple[str, ...] = DIMENSIONS
    ordered_dimensions: tuple[str, ...] = ("deprivation_quintile",)

    def __post_init__(self) -> None:
        if not 1 <= self.coverage_days <= 64:
            raise ValueError("coverage_days must be in 1..64")
        if not 1 <= self.lapse_days <= 64:
            raise ValueError("lapse_days must be in 1..64")
        if not 1 <= self.active_days <= 100_000:
            raise ValueError("active_days must be in 1..100000")
        unknown = set(self.dimensions) - set(DIMENSIONS)
        if unknown or not self.dimensions:
            raise ValueError(f"dimensions must be a non-empty subset of {DIMENSIONS}")
        if set(self.ordered_dimensions) - set(self.dimensions):
            raise ValueError("ordered_dimensions must be a subset of dimensions")

    @property
    def ring_days(self) -> int:
        """The smallest power of two >= ``coverage_days`` (the ring size of snapshot version 2;
        the records of versions 3 and later have exactly ``coverage_days`` cells)."""
        return 1 << (self.coverage_days - 1).bit_length()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupportConfig:
        d = dict(data)
        d["dimensions"] = tuple(d["dimensions"])
        d["ordered_dimensions"] = tuple(d["ordered_dimensions"])
        return cls(**d)



# --------------------------------------------------------------------------------------------
# the logic object
# --------------------------------------------------------------------------------------------

def _record(dtype: np.dtype, **values: Any) -> np.ndarray:
    """A 0-d record of ``dtype``: zeros except ``values`` (the fill of a record array)."""
    rec = np.zeros((), dtype)
    for name, v in values.items():
        rec[name] = v
    return rec


_PATIENT_ARRAYS: dict[str, tuple[Any, Any]] = {
    # name: (dtype, fill)
    "registered": (np.bool_, False),
    "expected_micro_per_day": (np.int64, 0),
    "version_t": (np.int64, _k.NO_TIME),
    "version_h": (np.uint64, 0),
    "code_region": (np.int32, -1),
    "code_deprivation_quintile": (np.int32, -1),
    "code_age_band": (np.int32, -1),
}
_RECORD_ARRAYS = ("record", "hi")
"""Per-patient 2-d arrays whose width depends on ``coverage_days`` (see :func:`_record_specs`)."""


def _record_specs(config: SupportConfig) -> dict[str, tuple[tuple[Any, Any], int]]:
    """``record``: the patient records as uint64 words (one 64-byte line per patient with the
    default windows, layout :func:`monitor.core.support.record_layout`), filled with "no contact,
    no reading"; ``hi``: the high 32 bits of the care-ms cells and of the readings cells (beyond
    16 bits), used only after an overflow of the low parts in the record."""
    cov = config.coverage_days
    words = _k.record_layout(cov)["bytes"] // 8
    fill = np.zeros(words, np.uint64)
    fill.view(np.int64)[:2] = _k.NO_TIME
    return {"record": ((np.uint64, fill), words), "hi": ((np.uint32, 0), 2 * cov)}


def _record_views(record: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """int64, uint32, uint16 and uint8 views of the record array (the kernels' arguments)."""
    return (record.view(np.int64), record.view(np.uint32), record.view(np.uint16),
            record.view(np.uint8))


_PAIR_ARRAYS: dict[str, tuple[Any, Any]] = {
    "pairs": (_k.PAIR_DTYPE, _record(_k.PAIR_DTYPE, last_day=_k.NO_DAY)),
    "links": (_k.LINK_DTYPE, _record(_k.LINK_DTYPE, link=_k.NO_TIME)),
}
_DEDUP_ARRAYS: dict[str, tuple[Any, Any]] = {
    "dedup": (np.uint64, 0),  # (buckets, DEDUP_WAYS + 1), see monitor.core.support.DEDUP_WAYS
}
_DEDUP_WIDTH = _k.DEDUP_WAYS + 1


MAX_LOAD = 0.7
"""Largest fill ratio of the open-addressing tables (linear probing) before they grow."""


def _pow2_at_least(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def _capacity_for(entries: int) -> int:
    """Power-of-two table size holding ``entries`` at most :data:`MAX_LOAD` full."""
    return _pow2_at_least(math.ceil(entries / MAX_LOAD) + 1, 1024)


DEDUP_GROWTH = 1.5
"""A duplicate table rebuilt for ``n`` entries gets room for ``DEDUP_GROWTH * n`` (amortised
O(1) rebuilds); one pre-sized with ``expected_window_events`` gets exactly that."""


def _dedup_buckets_for(entries: float) -> int:
    """Bucket count (any integer >= 64) holding ``entries`` ids at most :data:`MAX_LOAD` full."""
    return max(64, math.ceil(entries / (MAX_LOAD * _k.DEDUP_WAYS)) + 1)


def _full(n: int, spec: tuple[Any, Any], width: int | None = None) -> np.ndarray:
    """An array of ``n`` (x ``width``) elements filled with ``spec``'s fill, its data aligned to
    a cache line (so a 64-byte dedup or pair bucket or patient record is never split)."""
    dtype, fill = spec
    dtype = np.dtype(dtype)
    shape = (n,) if width is None else (n, width)
    nbytes = dtype.itemsize * math.prod(shape)
    raw = np.empty(nbytes + _k.LINE_BYTES, np.uint8)
    off = -raw.ctypes.data % _k.LINE_BYTES
    arr = raw[off:off + nbytes].view(dtype).reshape(shape)
    arr[...] = fill
    return arr


class SupportState:
    """Per-patient support state (numpy arrays, one dense slot per patient and per carer).

    Build with a :class:`SupportConfig`; feed :class:`~monitor.core.batch.EventBatch` objects
    with :meth:`apply` (usually built by :func:`~monitor.core.batch.batch_from_documents`); read
    with :meth:`evaluate`, :meth:`partial_summary`; persist with :meth:`snapshot` /
    :meth:`restore`. Not thread-safe: one driver thread owns a state. ``expected_patients`` /
    ``expected_pairs`` / ``expected_window_events`` pre-size the arrays (they grow by doubling anyway).
    """

    def __init__(
        self, config: SupportConfig | None = None, *, expected_patients: int = 0,
        expected_pairs: int = 0, expected_window_events: int = 0,
    ) -> None:
        self.config = config or SupportConfig()
        self.patient_ids: list[str] = []
        self._patient_index: dict[str, int] = {}
        self.carer_ids: list[str] = []
        self._carer_index: dict[str, int] = {}
        self.categories: dict[str, list[str]] = {d: [] for d in DIMENSIONS}
        self._category_index: dict[str, dict[str, int]] = {d: {} for d in DIMENSIONS}
        self.watermark_s: int | None = None
        self.stats: dict[str, int] = {"duplicates": 0, "stale": 0, "events": 0}
        self._dedup_count = 0
        self._dedup_min_day = int(_k.NO_DAY)
        self._pair_count = 0
        self._link_count = 0
        cap = _pow2_at_least(expected_patients, 1024)
        self._arrays: dict[str, np.ndarray] = {n: _full(cap, s) for n, s in _PATIENT_ARRAYS.items()}
        for n, (s, width) in _record_specs(self.config).items():
            self._arrays[n] = _full(cap, s, width)
        pcap = _capacity_for(expected_pairs)
        for n, s in _PAIR_ARRAYS.items():
            self._arrays[n] = _full(pcap, s)
        dcap = _dedup_buckets_for(expected_window_events)
        for n, s in _DEDUP_ARRAYS.items():
            self._arrays[n] = _full(dcap, s, _DEDUP_WIDTH)

    # -- slots ------------------------------------------------------------------------------

    @property
    def patient_index(self) -> Mapping[str, int]:
        """Patient id -> slot (read-only view; slots are assigned on first sight)."""
        return self._patient_index

    @property
    def registered(self) -> np.ndarray:
        """Per patient slot, 1 if the patient's registry entry has been applied (uint8 view)."""
        return self._arrays["registered"][: self.n_patients]

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    @property
    def n_carers(self) -> int:
        return len(self.carer_ids)

    @property
    def watermark(self) -> datetime | None:
        """The latest event time applied (UTC), or None before any event."""
        return None if self.watermark_s is None else datetime.fromtimestamp(self.watermark_s, UTC)

    def patient_slot(self, patient_id: str) -> int:
        """The dense slot of a patient id, assigned (and arrays grown) on first sight."""
        slot = self._patient_index.get(patient_id)
        if slot is None:
            slot = len(self.patient_ids)
            self._patient_index[patient_id] = slot
            self.patient_ids.append(patient_id)
            if slot >= self._arrays["registered"].shape[0]:
                self._grow_patients(2 * (slot + 1))
        return slot

    def carer_slot(self, carer_id: str) -> int:
        """The dense slot of a carer id, assigned on first sight."""
        slot = self._carer_index.get(carer_id)
        if slot is None:
            slot = len(self.carer_ids)
            self._carer_index[carer_id] = slot
            self.carer_ids.append(carer_id)
        return slot

    def add_patients(self, n: int) -> range:
        """Append ``n`` anonymous patients (ids ``"#<slot>"``); for benchmarks and tests."""
        start = self.n_patients
        self._grow_patients(start + n)
        for i in range(start, start + n):
            pid = f"#{i}"
            self._patient_index[pid] = i
            self.patient_ids.append(pid)
        return range(start, start + n)

    def add_carers(self, n: int) -> range:
        """Append ``n`` anonymous carers (ids ``"#<slot>"``); for benchmarks and tests."""
        start = self.n_carers
        for i in range(start, start + n):
            cid = f"#{i}"
            self._carer_index[cid] = i
            self.carer_ids.append(cid)
        return range(start, start + n)

    def _grow_patients(self, need: int) -> None:
        cap = self._arrays["registered"].shape[0]
        if need <= cap:
            return
        new_cap = _pow2_at_least(need)
        for name, spec in _PATIENT_ARRAYS.items():
            new = _full(new_cap, spec)
            new[:cap] = self._arrays[name]
            self._arrays[name] = new
        for name, (spec, width) in _record_specs(self.config).items():
            new = _full(new_cap, spec, width)
            new[:cap] = self._arrays[name]
            self._arrays[name] = new

    def _ensure_table(self, name: str, count: int, incoming: int) -> None:
        """Keep the pair or link table at most :data:`MAX_LOAD` full for ``incoming`` more keys."""
        a = self._arrays
        need = count + incoming
        if need <= MAX_LOAD * a[name].shape[0]:
            return
        new = _full(_capacity_for(need), _PAIR_ARRAYS[name])
        _k.rehash_table(a[name], new)
        a[name] = new

    def _min_sum_day(self) -> int:
        """Oldest day whose sums can still be evaluated: watermark day - coverage_days + 1."""
        if self.watermark_s is None:
            return int(_k.NO_DAY)
        return day_of(self.watermark_s) - self.config.coverage_days + 1

    def _ensure_dedup(self, incoming: int) -> None:
        """Purge ids older than the sum horizon when it moved, and keep the table <= 70 % full.

        Invariant: every entry has a day in ``[m, m + coverage_days - 1]`` for the
        ``_dedup_min_day`` m in force when it was inserted, and m only moves forward here (with a
        purge), so entries are less than ``2 * coverage_days`` <= 128 days old at any purge and
        the 1-byte ``day mod 256`` tag is unambiguous. A jump of a whole window clears the table.
        """
        a = self._arrays
        cov = self.config.coverage_days
        min_day = self._min_sum_day()
        advanced = min_day > self._dedup_min_day
        if advanced and self._dedup_count == 0:
            self._dedup_min_day = min_day
            advanced = False
        need = self._dedup_count + incoming
        cap = a["dedup"].shape[0] * _k.DEDUP_WAYS
        if not advanced and need <= MAX_LOAD * cap:
            return
        spec = _DEDUP_ARRAYS["dedup"]
        if advanced and min_day - self._dedup_min_day >= cov:  # nothing can survive
            new = _full(_dedup_buckets_for(DEDUP_GROWTH * incoming), spec, _DEDUP_WIDTH)
            self._dedup_count = 0
        else:
            new = _full(_dedup_buckets_for(DEDUP_GROWTH * need), spec, _DEDUP_WIDTH)
            self._dedup_count = int(_k.rehash_dedup(
                a["dedup"], np.int64(min_day + cov - 1), np.int64(cov), new))
        self._dedup_min_day = max(self._dedup_min_day, min_day)
        a["dedup"] = new

    # -- updates ----------------------------------------------------------------------------

    def apply(self, batch: EventBatch) -> dict[str, int]:
        """Apply one batch; returns ``{"duplicates": n, "stale": n}`` for this batch.

        Order: registry upserts (Python), then the watermark advances to the batch's latest event
        time, then links, activities and readings (kernels). The result is independent of the order
        of events within and across batches (see the module docstring). Raises ``ValueError`` on
        a malformed batch, before anything is changed.
        """
        t_max = batch.check(self.n_patients, self.n_carers)
        for rec in batch.patients:
            self._upsert_patient(rec)
        if t_max is not None and (self.watermark_s is None or t_max > self.watermark_s):
            self.watermark_s = t_max
        a = self._arrays
        if batch.n_links:
            self._ensure_table("links", self._link_count, batch.n_links)
            self._link_count += int(_k.apply_links(
                batch.link_patient, batch.link_carer, batch.link_t, batch.link_action,
                a["links"]))
        min_day = np.int64(self._min_sum_day())
        cov = np.int64(self.config.coverage_days)
        r64, r32, r16, r8 = _record_views(a["record"])
        dup = stale = 0
        if batch.n_activities:
            self._ensure_table("pairs", self._pair_count, batch.n_activities)
            self._ensure_dedup(batch.n_activities)
            new_pairs, new_dedup, d, s = _k.apply_activities(
                batch.activity_patient, batch.activity_carer, batch.activity_start_s,
                batch.activity_minutes, batch.activity_id_hash, min_day, cov, r64, r32, r16, r8,
                a["hi"], a["pairs"], a["dedup"])
            self._pair_count += int(new_pairs)
            self._dedup_count += int(new_dedup)
            dup += int(d)
            stale += int(s)
        if batch.n_readings:
            self._ensure_dedup(batch.n_readings)
            new_dedup, d, s = _k.apply_readings(
                batch.reading_patient, batch.reading_kind, batch.reading_t, batch.reading_id_hash,
                min_day, cov,
                r64, r16, r8, a["hi"], a["dedup"])
            self._dedup_count += int(new_dedup)
            dup += int(d)
            stale += int(s)
        self.stats["duplicates"] += dup
        self.stats["stale"] += stale
        self.stats["events"] += batch.n_activities + batch.n_links + batch.n_readings
        return {"duplicates": dup, "stale": stale}

    def _category_code(self, dimension: str, group: str) -> int:
        index = self._category_index[dimension]
        code = index.get(group)
        if code is None:
            code = len(self.categories[dimension])
            index[group] = code
            self.categories[dimension].append(group)
        return code

    def _upsert_patient(self, rec: PatientRecord) -> None:
        a = self._arrays
        s = rec.patient_slot
        version = (int(rec.version[0]), int(rec.version[1]))
        if a["registered"][s] and version <= (int(a["version_t"][s]), int(a["version_h"][s])):
            return
        a["registered"][s] = True
        a["version_t"][s] = version[0]
        a["version_h"][s] = np.uint64(version[1])
        a["expected_micro_per_day"][s] = rec.expected_micro_per_day
        for dim in DIMENSIONS:
            a[f"code_{dim}"][s] = self._category_code(dim, rec.group(dim))

    # -- reads ------------------------------------------------------------------------------

    def _as_of_seconds(self, as_of: datetime | int | None) -> int:
        if as_of is None:
            return self.watermark_s if self.watermark_s is not None else 0
        t = as_of if isinstance(as_of, int) else epoch_seconds(as_of)
        if self.watermark_s is not None and day_of(t) < day_of(self.watermark_s):
            raise StaleAsOfError(
                "as_of is on a day before the watermark day; the state keeps no history "
                "(replay with events filtered to the as-of day instead)")
        return t

    def evaluate(self, as_of: datetime | int | None = None) -> Evaluation:
        """Per-patient metrics and flags as of ``as_of`` (datetime or epoch seconds; default: the
        watermark, or the epoch before any event). Day resolution: see the module docstring.

        Raises :class:`StaleAsOfError` if ``as_of`` is on a UTC day before the watermark day.
        """
        t = self._as_of_seconds(as_of)
        day = day_of(t)
        n = self.n_patients
        a = self._arrays
        cfg = self.config
        active = np.empty(n, np.int32)
        registered = np.empty(n, np.int32)
        care_ms = np.empty(n, np.int64)
        contact_days = np.empty(n, np.int32)
        readings = np.empty(n, np.int64)
        flags = np.empty(n, np.uint8)
        covered = np.empty(n, np.bool_)
        expected = np.empty(n, np.int64)
        last_contact = np.empty(n, np.int64)
        last_reading = np.empty(n, np.int64)
        _k.evaluate(np.int64(n), np.int64(day), np.int64(cfg.coverage_days),
                    np.int64(cfg.active_days), np.int64(cfg.lapse_days),
                    *_record_views(a["record"]), a["hi"], a["pairs"], a["links"],
                    a["expected_micro_per_day"], active, registered, care_ms, contact_days,
                    readings, flags, covered, expected, last_contact, last_reading)
        return Evaluation(
            as_of_s=t, as_of_day=day, patient_ids=self._patient_ids_tuple(),
            active_carers=active, registered_carers=registered, care_ms=care_ms,
            contact_days=contact_days, readings_received=readings,
            readings_expected_micro=expected, flags=flags, covered=covered,
            last_contact_s=last_contact, last_reading_s=last_reading,
        )

    def _patient_ids_tuple(self) -> tuple[str, ...]:
        """``tuple(self.patient_ids)``, cached while the list is the same, append-only object
        (slots are never reassigned; a new list - e.g. by :meth:`restore` - rebuilds it)."""
        ids = self.patient_ids
        cached = self.__dict__.get("_ids_tuple")
        if cached is None or cached[0] is not ids or len(cached[1]) != len(ids):
            if cached is not None and cached[0] is ids and len(cached[1]) < len(ids):
                cached = (ids, cached[1] + tuple(ids[len(cached[1]):]))
            else:
                cached = (ids, tuple(ids))
            self._ids_tuple = cached
        return cached[1]

    def group_codes(self, dimension: str) -> tuple[np.ndarray, list[str]]:
        """Per-patient group codes (-1 = not registered) and the group names of a dimension."""
        return self._arrays[f"code_{dimension}"][: self.n_patients], list(self.categories[dimension])

    def partial_summary(
        self, evaluation: Evaluation | None = None, as_of: datetime | int | None = None
    ) -> PartialSummary:
        """Exactly mergeable sufficient statistics of this state's patients (see PartialSummary)."""
        ev = evaluation if evaluation is not None else self.evaluate(as_of)
        groups: dict[str, dict[str, GroupCounts]] = {}
        dims = self.config.dimensions
        codes_names = [self.group_codes(dim) for dim in dims]
        codes = [c for c, _ in codes_names]
        codes += [codes[0]] * (3 - len(codes))  # unused slots of the 3-dimension kernel
        all_sums = _k.group_sums3(
            *codes, np.array([len(names) for _, names in codes_names], np.int64),
            ev.flags, ev.covered, ev.care_ms, ev.readings_received, ev.readings_expected_micro)
        for d, (dim, (_, names)) in enumerate(zip(dims, codes_names, strict=True)):
            sums = all_sums[d]
            per: dict[str, GroupCounts] = {}
            for i, g in enumerate([*names, UNKNOWN_GROUP]):
                if sums[i, 0]:
                    per[g] = GroupCounts(*(int(v) for v in sums[i]))
            groups[dim] = dict(sorted(per.items()))
        hist_ok, values, counts = _k.value_counts(ev.care_ms, np.int64(_k.HIST_MAX_DISTINCT))
        if not hist_ok:  # many distinct values: sort
            values, counts = np.unique(ev.care_ms, return_counts=True)
        return PartialSummary(ev.as_of_day, groups, values.astype(np.int64),
                              counts.astype(np.int64))

    def bytes_per_patient(self) -> float:
        """Bytes of numpy state (allocated, incl. hash-table slack) per patient; ids excluded."""
        total = sum(arr.nbytes for arr in self._arrays.values())
        return total / max(1, self.n_patients)

    def state_bytes(self) -> dict[str, int]:
        """Allocated bytes per array (for diagnostics)."""
        return {n: int(a.nbytes) for n, a in self._arrays.items()}

    # -- durability ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Versioned, self-contained bytes of the full state (restore with :meth:`restore`).

        Layout: ``b"CMSUPPORT"`` + version (uint16 little endian) + an uncompressed ``.npz``
        holding every array (patient arrays trimmed to the patients in use) and a JSON header
        (config, ids, group categories, watermark, counters). No pickle is used.
        """
        n = self.n_patients
        arrays: dict[str, np.ndarray] = {}
        for name, arr in self._arrays.items():
            arrays[name] = arr[:n] if name in _PATIENT_ARRAYS or name in _RECORD_ARRAYS else arr
        header = {
            "config": self.config.to_dict(),
            "patient_ids": self.patient_ids,
            "carer_ids": self.carer_ids,
            "categories": self.categories,
            "watermark_s": self.watermark_s,
            "stats": self.stats,
            "dedup_count": self._dedup_count,
            "dedup_min_day": self._dedup_min_day,
            "pair_count": self._pair_count,
            "link_count": self._link_count,
        }
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return SNAPSHOT_MAGIC + SNAPSHOT_VERSION.to_bytes(2, "little") + buf.getvalue()

    @classmethod
    def restore(cls, data: bytes) -> SupportState:
        """Rebuild a state from :meth:`snapshot` bytes; raises :class:`SnapshotError` if invalid."""
        m = len(SNAPSHOT_MAGIC)
        if not data.startswith(SNAPSHOT_MAGIC) or len(data) < m + 2:
            raise SnapshotError("not a support-state snapshot")
        version = int.from_bytes(data[m:m + 2], "little")
        if version != SNAPSHOT_VERSION:
            raise SnapshotError(f"unsupported snapshot version {version}")
        try:
            with np.load(io.BytesIO(data[m + 2:]), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(arrays.pop("header").tobytes().decode())
            state = cls(SupportConfig.from_dict(header["config"]))
            state.patient_ids = list(header["patient_ids"])
            state._patient_index = {p: i for i, p in enumerate(state.patient_ids)}
            state.carer_ids = list(header["carer_ids"])
            state._carer_index = {c: i for i, c in enumerate(state.carer_ids)}
            state.categories = {d: list(v) for d, v in header["categories"].items()}
            state._category_index = {d: {g: i for i, g in enumerate(v)}
                                     for d, v in state.categories.items()}
            state.watermark_s = header["watermark_s"]
            state.stats = dict(header["stats"])
            state._dedup_count = int(header["dedup_count"])
            state._dedup_min_day = int(header["dedup_min_day"])
            state._pair_count = int(header["pair_count"])
            state._link_count = int(header["link_count"])
            n = len(state.patient_ids)
            state._grow_patients(n)
            for name in (*_PATIENT_ARRAYS, *_RECORD_ARRAYS):
                arr = arrays[name]
                target = state._arrays[name]
                if arr.shape[0] != n or arr.dtype != target.dtype or arr.shape[1:] != target.shape[1:]:
                    raise SnapshotError(f"snapshot array {name} has the wrong shape or dtype")
                target[:n] = arr
            for name, spec, width in (*((n, s, None) for n, s in _PAIR_ARRAYS.items()),
                                      *((n, s, _DEDUP_WIDTH) for n, s in _DEDUP_ARRAYS.items())):
                arr = arrays[name]
                rows = arr.shape[0] if arr.ndim else 0
                pow2 = width is None  # pair and link tables: a power of two >= one bucket
                if (arr.dtype != np.dtype(spec[0]) or arr.ndim != (1 if width is None else 2)
                        or arr.shape[1:] != (() if width is None else (width,))
                        or rows == 0 or (pow2 and (rows & (rows - 1) or rows < _k.PAIR_WAYS))):
                    raise SnapshotError(f"snapshot table {name} is corrupt")
                table = _full(rows, spec, width)
                table[...] = arr
                state._arrays[name] = table
        except SnapshotError:
            raise
        except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise SnapshotError(f"corrupt snapshot: {type(exc).__name__}") from None
        return state
