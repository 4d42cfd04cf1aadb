"""The alert engine: episode lifecycle per patient and rule, driven by event time (pure, no I/O).

Feed it patients (:meth:`AlertEngine.on_patient`), batches of canonical readings
(:meth:`AlertEngine.on_readings`) and clock ticks (:meth:`AlertEngine.tick`); each call returns
the :class:`AlertEvent` transitions it caused, which the caller publishes (Kafka topic,
Alertmanager). The same calls with the same inputs give the same events, so the replay driver and
the faust worker agree by construction.

Episodes
    One episode per ``(patient, rule, kind)`` at a time (``kind`` only matters for
    ``missed_readings``, which applies to each planned kind separately). An episode **opens**
    (``notification="firing"``) on the triggering reading, **re-notifies** (``"renotify"``) from
    :meth:`~AlertEngine.tick` every ``repeat_interval`` while it is still firing, and **resolves**
    (``"resolved"``) on the next *newer* reading of that kind outside the rule's range (for
    ``missed_readings``: when data of that kind returns, or the kind leaves the plan).
Late, replayed, backfilled and duplicated readings
    Per ``(patient, kind)`` the engine keeps the latest ``measured_at`` seen. A reading older than
    that - or older than the newest reading of its kind **in the same batch** - never opens an
    episode and never resolves one (a gateway that uploads six hours of backfill does not page
    anyone for a value that is hours old); it still counts as a body-weight baseline. A reading
    with exactly the latest time may open an episode but never resolves one, so the outcome does not
    depend on the order of equal-time readings. Exact duplicates (same ``dedup_key`` or same
    content) of a reading at the latest time are dropped; older duplicates are old by definition.
    Optionally (``AlertConfig.stale_after``) a reading older than the tick watermark minus that
    age opens nothing either.
Compound risk
    A patient whose support flags (passed in by the caller, per call) include
    ``no_support_network`` or ``support_lapsed`` gets alerts one level higher (warning ->
    critical -> emergency) with ``unsupported=True``. If a patient becomes unsupported while an
    episode is firing, the episode is escalated once and re-notified immediately with
    ``escalated_from`` set; an episode is never de-escalated (it resolves instead).
Time
    Event time drives everything. All datetimes are timezone-aware UTC; a naive datetime raises
    ``ValueError``. ``missed_readings`` is evaluated only by :meth:`~AlertEngine.tick` (a clock,
    not data arrival): for a kind planned ``n`` times a day the interval is ``24 h / n`` and the
    episode opens at ``last reading + factor x interval`` (the moment the gap began, so its
    ``alert_id`` does not depend on how often ticks come). Without any reading the reference is the
    patient's ``registered_at``, else the first tick after the plan was seen.
Identity and recovery
    ``alert_id`` is a hash of patient, rule, kind and ``opened_at``: stable across restarts and
    replays. :meth:`~AlertEngine.snapshot` / :meth:`~AlertEngine.restore` carry every piece of
    state (latest times, duplicate keys, weights, episodes with their last notification time), so a
    restarted worker that sees a redelivered reading sends no second notification. Snapshots are
    deterministic JSON (version 2: one column per field, times as integer microseconds since the
    epoch, UTC). A reading at a stream's latest time is stored as its id and values, from which its
    duplicate keys (hashes, whose encoding never changes) are rebuilt only when a later reading needs
    them; each stream's encoding is cached until the stream changes, so a snapshot costs little more
    than encoding the JSON. ``restore`` also reads version 1 (a dict per stream, keys as hashes).

Logging never includes patient identifiers.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import math
import operator
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

from monitor.alerts.rules import (
    RULES_BY_ID,
    RULES_BY_KIND,
    Check,
    Evaluation,
    Severity,
    any_holds,
    checks_for,
    effective_thresholds,
    escalate,
    evaluate,
    is_unsupported,
)
from monitor.contract.models import Patient
from monitor.errors import MonitorError
from monitor.intake.canonical import CanonicalReading
from monitor.intake.columnar import datetime_from_s

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 2
MISSED = "missed_readings"
WEIGHT_GAIN = "weight_gain"

Notification = Literal["firing", "renotify", "resolved", "recorded"]
Status = Literal["firing", "resolved"]
SupportFlags = Mapping[str, Collection[str]]
"""patient_id -> the patient's current support flags (e.g. ``{"support_lapsed"}``)."""


class AlertStateError(MonitorError, ValueError):
    """A snapshot could not be restored (wrong version, malformed bytes)."""


def _require_utc(ts: datetime, name: str) -> datetime:
    if not isinstance(ts, datetime):
        raise TypeError(f"{name} must be a datetime")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return ts.astimezone(UTC)


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str | None) -> datetime | None:
    return None if text is None else _require_utc(datetime.fromisoformat(text), "snapshot time")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def alert_id_for(patient_id: str, rule: str, kind: str, opened_at: datetime) -> str:
    """The deterministic id of an episode: a hash of patient, rule, kind and ``opened_at`` (UTC)."""
    return _digest(patient_id, rule, kind, _iso(_require_utc(opened_at, "opened_at")) or "")


def _key_strings(r: CanonicalReading) -> tuple[str, ...]:
    return _encode_keys(r.content_key, r.dedup_key)


def _encode_keys(content: tuple[Any, ...], dedup: tuple[Any, ...]) -> tuple[str, ...]:
    """The sorted, distinct hashes of a reading's content and dedup keys (persisted in snapshots
    and compared across restarts: the encoding must never change)."""

    def enc(key: tuple[Any, ...]) -> str:
        # repr of a tuple of str/float/None/aware datetime is deterministic across processes and
        # ~10x cheaper than json.dumps with a default hook
        return hashlib.blake2b(repr(key).encode("utf-8"), digest_size=12).hexdigest()

    keys = {enc(content), enc(dedup)}
    return tuple(sorted(keys))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_NO_KEYS: frozenset[str] = frozenset()
_NO_ROWS: list[Any] = []
"""A shared empty list in cached snapshot rows (never mutated)."""
_MATERIAL_FIELDS = operator.attrgetter("reading_id", "measured_at", "value", "systolic", "diastolic")


def _surely_quiet(kinds: list[str], value: Any, systolic: Any, diastolic: Any) -> list[bool]:
    """Per reading (canonical values as arrays, nan: none): whether no rule of its kind can hold
    under the default thresholds, decided without rounding (every component strictly inside its
    check's quiet interval, or missing). ``False`` means: let :func:`any_holds` decide."""
    n = len(kinds)
    out = np.ones(n, dtype=bool)
    names = np.array(kinds, dtype=object)
    by = {"systolic": systolic, "diastolic": diastolic}
    for kind in set(kinds):
        rows = names == kind
        for component, quiet_from, quiet_to, _ in checks_for(kind):
            if component == "gain":
                continue  # needs a baseline: body weight never takes the columnar route
            x = by.get(component, value)[rows]
            with np.errstate(invalid="ignore"):
                out[rows] &= ~np.isfinite(x) | ((quiet_from < x) & (x < quiet_to))
    return out.tolist()


def _materialised(readings: Sequence[Any]) -> Sequence[CanonicalReading]:
    """Columnar slices in ``readings`` replaced by their reading objects (the reference path)."""
    if all(type(r) is CanonicalReading for r in readings):
        return readings
    out: list[CanonicalReading] = []
    for r in readings:
        if type(r) is CanonicalReading:
            out.append(r)
        else:
            out.extend(r.readings())
    return out


_SECONDS: dict[datetime, int] = {}


def _seconds(t: datetime) -> int | None:
    """Whole epoch seconds of an aware time (``None`` when it has a fraction of a second)."""
    s = _SECONDS.get(t)
    if s is None:
        us = (t - _EPOCH) // _US
        if us % 1_000_000:
            return None
        if len(_SECONDS) >= 100_000:
            _SECONDS.clear()
        s = _SECONDS[t] = us // 1_000_000
    return s


def _to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch (UTC) of an aware datetime."""
    return (ts - _EPOCH) // _US


def _from_us(us: int) -> datetime:
    if type(us) is not int:
        raise TypeError("snapshot time must be an integer")
    return _EPOCH + timedelta(microseconds=us)


def _material_order(m: _Material) -> str:
    return repr(m)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: encoding or decoding a large state allocates many
    containers, each allocation burst triggering a full traversal of the (large) heap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_STR: frozenset[type] = frozenset({str})
_NONE: frozenset[type] = frozenset({type(None)})
_STR_OR_NONE: frozenset[type] = _STR | _NONE
_FLOAT_OR_NONE: frozenset[type] = frozenset({float}) | _NONE

_RULE_ID = operator.attrgetter("rule.rule_id")
_RULE_IDS_BY_KIND: dict[str, tuple[str, ...]] = {
    kind: tuple(rule.rule_id for rule in rules) for kind, rules in RULES_BY_KIND.items()
}


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Engine settings (all durations positive).

    ``repeat_interval``: re-notify a firing episode this long after its last notification.
    ``weight_window``: ``weight_gain`` compares with the lowest weight in this window before a reading.
    ``stale_after``: if set, a reading older than the tick watermark minus this opens no episode.
    ``retain_resolved``: resolved episodes stay listed by :meth:`AlertEngine.episodes` this long
    (event time, measured from the latest tick).
    """

    repeat_interval: timedelta = timedelta(hours=1)
    weight_window: timedelta = timedelta(days=3)
    stale_after: timedelta | None = None
    retain_resolved: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        for name in ("repeat_interval", "weight_window", "retain_resolved", "stale_after"):
            value = getattr(self, name)
            if value is not None and value <= timedelta(0):
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One episode transition, ready to publish.

    ``value`` and ``threshold`` are in ``unit`` (the rule's canonical unit; for ``weight_gain`` the
    gain in kg, for ``missed_readings`` the gap and the allowed gap in hours). ``event_at`` is the
    event time of this notification; ``event_id`` is a hash of ``alert_id``, ``notification``,
    ``event_at`` and, for an escalation, ``escalated_from`` (for consumers that drop redelivered
    events: an escalation can fall on the instant of a plain re-notification and is another
    event). ``escalated_from`` is set on the re-notification that escalates a firing episode of a
    patient who became unsupported.
    """

    alert_id: str
    event_id: str
    patient_id: str
    rule: str
    kind: str
    severity: str
    status: Status
    notification: Notification
    unsupported: bool
    value: float | None
    threshold: float
    unit: str
    opened_at: datetime
    resolved_at: datetime | None
    event_at: datetime
    region: str | None = None
    escalated_from: str | None = None
    late: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; datetimes as ISO 8601 UTC with ``Z``."""
        data = asdict(self)
        for name in ("opened_at", "resolved_at", "event_at"):
            data[name] = _iso(data[name])
        return data


@dataclass(slots=True)
class _Episode:
    alert_id: str
    patient_id: str
    rule: str
    kind: str
    severity: str
    unsupported: bool
    value: float | None
    threshold: float
    unit: str
    opened_at: datetime
    resolved_at: datetime | None
    last_notified_at: datetime
    notifications: int = 1

    def to_state(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("opened_at", "resolved_at", "last_notified_at"):
            data[name] = _iso(data[name])
        return data

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> _Episode:
        values = dict(data)
        for name in ("opened_at", "resolved_at", "last_notified_at"):
            values[name] = _parse(values[name])
        return cls(**values)


@dataclass(slots=True)
class _PatientInfo:
    region: str | None
    overrides: dict[str, float]
    thresholds: dict[str, float]
    plan: dict[str, float]
    registered_at: datetime | None
    plan_seen_at: dict[str, datetime] = field(default_factory=dict)
    checks: dict[str, tuple[Check, ...]] = field(default_factory=dict)
    """kind -> :func:`~monitor.alerts.rules.checks_for` with ``thresholds`` (a cache, not state)."""

    def checks_for(self, kind: str) -> tuple[Check, ...]:
        cached = self.checks.get(kind)
        if cached is None:
            cached = self.checks[kind] = checks_for(kind, self.thresholds)
        return cached


_Material = tuple[str | None, float | None, float | None, float | None]
"""A reading at a stream's latest time reduced to what its duplicate keys depend on besides the
stream's patient, kind and latest time: ``(reading_id, value, systolic, diastolic)``."""


@dataclass(slots=True, eq=False)
class _Stream:
    """Per (patient, kind): the latest event time, the readings at that time, weights.

    The duplicate keys at the latest time are ``opaque`` (keys known only as hashes: restored from a
    version-1 snapshot) plus the keys of every entry of ``readings`` (the fresh readings at the
    latest time, or their :data:`_Material` once snapshotted or restored). Keys are hashed only when
    needed (a later reading at exactly the latest time), since most readings are never compared
    with anything; ``hashed`` caches the keys of ``opaque`` and of ``readings[:n_hashed]``.
    ``row`` caches the stream's snapshot encoding; ``None`` means changed since (every change goes
    through :meth:`advance`, :meth:`add` or :meth:`set_weights`).
    """

    patient_id: str
    kind: str
    latest: datetime | None = None
    weights: Sequence[tuple[datetime, float]] = ()
    readings: list[CanonicalReading | _Material] = field(default_factory=list)
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

    def _entry_keys(self, entry: CanonicalReading | _Material) -> tuple[str, ...]:
        if type(entry) is not tuple:
            return _key_strings(entry)  # type: ignore[arg-type]
        rid, value, systolic, diastolic = entry
        return _key_strings(
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
        self.opaque = _NO_KEYS
        self.hashed = None
        self.n_hashed = 0
        self.row = None

    def add(self, reading: CanonicalReading, keys: tuple[str, ...] | None = None) -> None:
        """Record a fresh reading at the latest time; ``keys``: its keys if already hashed."""
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

        ``materials`` are the sorted :data:`_Material` rows of the readings at the latest time,
        ``hashes`` the sorted keys of ``opaque`` and of any reading that has no material row (a
        reading whose duplicate keys could not be rebuilt exactly from one). Readings are replaced
        by their material rows in memory (the same keys, without the whole reading).
        """
        row = self.row
        if row is not None:
            return row
        latest = self.latest
        readings = self.readings
        hashes: list[str] = _NO_ROWS
        if not readings:
            materials: list[Any] = _NO_ROWS
        elif len(readings) == 1:
            r = readings[0]
            if type(r) is not tuple:
                rid, at, value, systolic, diastolic = _MATERIAL_FIELDS(r)
                if (
                    at is latest  # the same object: the same repr in the keys
                    and type(latest) is datetime
                    and latest.tzinfo is UTC
                    and not latest.fold
                    and type(rid) in _STR_OR_NONE
                    and type(value) in _FLOAT_OR_NONE
                    and type(systolic) in _FLOAT_OR_NONE
                    and type(diastolic) in _FLOAT_OR_NONE
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
            None if latest is None else _to_us(latest),
            materials,
            hashes,
            [_to_us(t) for t, _ in weights] if weights else _NO_ROWS,
            [w for _, w in weights] if weights else _NO_ROWS,
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
                and type(rid) in _STR_OR_NONE
                and (
                    at is latest
                    or (type(at) is datetime and at.tzinfo is UTC and not at.fold and at == latest)
                )
                and type(value) in _FLOAT_OR_NONE
                and type(systolic) in _FLOAT_OR_NONE
                and type(diastolic) in _FLOAT_OR_NONE
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
        hashes = sorted({k for r in keep for k in _key_strings(r)}) if keep else _NO_ROWS
        return materials if materials else _NO_ROWS, hashes


class AlertEngine:
    """Rules and episode lifecycle for all patients of a worker (see the module docstring).

    ``clock`` returns the current time (aware UTC) and is used only where no time is passed:
    :meth:`tick` without ``now`` and :meth:`episodes`. Not thread-safe: one engine per worker/partition.

    ``fast=False`` forces the original reference path of :meth:`on_readings` (hash every reading's
    duplicate keys, evaluate every rule of every reading). The default fast path gives the same
    events and the same :meth:`snapshot` bytes; the switch exists to prove that (property test).
    """

    def __init__(
        self,
        config: AlertConfig | None = None,
        clock: Callable[[], datetime] | None = None,
        *,
        fast: bool = True,
    ) -> None:
        self._fast = fast
        self.config = config or AlertConfig()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._patients: dict[str, _PatientInfo] = {}
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._open: dict[tuple[str, str, str], _Episode] = {}
        self._resolved: list[_Episode] = []
        self._watermark: datetime | None = None
        self._order: list[_Stream] | None = None
        """The streams sorted by patient and kind (a cache for :meth:`snapshot`; ``None``: stale)."""

    # --- inputs ------------------------------------------------------------------------------

    def on_patient(self, patient: Patient) -> None:
        """Register or update a patient: region, threshold overrides, monitoring plan.

        Unknown rule ids or non-finite values in ``patient.thresholds`` are ignored (logged without
        the patient id). New thresholds apply from the next reading; open episodes stay open until
        a reading or tick decides them.
        """
        thresholds, ignored = effective_thresholds(patient.thresholds)
        if ignored:
            log.warning("ignored %d threshold override(s) with keys %s", len(ignored), ignored)
        previous = self._patients.get(patient.patient_id)
        plan = {str(getattr(k, "value", k)): float(v) for k, v in patient.monitoring_plan.items()}
        self._patients[patient.patient_id] = _PatientInfo(
            region=patient.region,
            overrides={k: thresholds[k] for k in (patient.thresholds or {}) if k not in ignored},
            thresholds=thresholds,
            plan=plan,
            registered_at=patient.registered_at,
            plan_seen_at={k: v for k, v in (previous.plan_seen_at if previous else {}).items() if k in plan},
        )

    def on_readings(
        self, readings: Sequence[CanonicalReading], support_flags: SupportFlags | None = None
    ) -> list[AlertEvent]:
        """Apply a batch of canonical readings; return the transitions (firing / resolved / renotify).

        Within a batch, only the newest reading(s) of each ``(patient, kind)`` are evaluated; older
        ones are backfill (see the module docstring). The result does not depend on the order of
        readings inside the batch. ``support_flags`` gives each patient's current support flags
        (absent patient: no flags); it is only consulted for a patient when a rule holds or an
        episode of that patient and kind is open, so a lazy mapping is never loaded for a batch
        that cannot alert. Readings without the value(s) their kind needs are skipped. Measured
        times are aware UTC (checked by :class:`CanonicalReading`); nothing here raises on
        clinical input.
        """
        if self._fast:
            return self._on_readings_fast(readings, support_flags)
        return self._apply_sequence(_materialised(readings), support_flags, reference=True)

    def tick(
        self, now: datetime | None = None, support_flags: SupportFlags | None = None
    ) -> list[AlertEvent]:
        """Advance the clock to ``now`` (aware; default: the injected clock) and evaluate timers.

        Opens ``missed_readings`` episodes for overdue planned kinds, resolves those of kinds no
        longer planned, escalates firing episodes of patients who became unsupported, re-notifies
        episodes whose last notification is at least ``repeat_interval`` old, and forgets resolved
        episodes older than ``retain_resolved``. A ``now`` earlier than a previous tick is raised to
        that tick (time never runs backwards). Naive ``now`` raises ``ValueError``.
        """
        now = _require_utc(self._clock() if now is None else now, "now")
        if self._watermark is not None and now < self._watermark:
            now = self._watermark
        self._watermark = now
        flags = support_flags or {}
        events: list[AlertEvent] = []
        events.extend(self._evaluate_missed(now, flags))
        for key in sorted(self._open):
            ep = self._open[key]
            ev = self._maybe_escalate(ep, is_unsupported(flags.get(ep.patient_id)), now)
            if ev is not None:
                events.append(ev)
            elif now - ep.last_notified_at >= self.config.repeat_interval:
                ep.last_notified_at = now
                ep.notifications += 1
                events.append(self._event(ep, "renotify", now))
        horizon = now - self.config.retain_resolved
        self._resolved = [e for e in self._resolved if e.resolved_at is not None and e.resolved_at >= horizon]
        return events

    # --- queries -----------------------------------------------------------------------------

    def episodes(self) -> list[dict[str, Any]]:
        """Every known episode (firing, and resolved within ``retain_resolved``) as JSON-ready dicts.

        Fields: ``alert_id, patient_id, rule, kind, severity, status, unsupported, value, threshold,
        unit, opened_at, resolved_at, region, last_notified_at, notifications``; ``status`` is the
        status as of now (``firing`` until resolved). Sorted by ``opened_at``, then patient, rule.
        """
        rows = []
        for ep in [*self._open.values(), *self._resolved]:
            row = ep.to_state()
            row["status"] = "firing" if ep.resolved_at is None else "resolved"
            info = self._patients.get(ep.patient_id)
            row["region"] = info.region if info else None
            rows.append(row)
        rows.sort(key=lambda d: (d["opened_at"], d["patient_id"], d["rule"], d["kind"]))
        return rows

    def firing(self) -> list[AlertEvent]:
        """The current state of every firing episode as ``renotify``-style events (no state change).

        For refreshing an external system (e.g. re-posting to Alertmanager after a restart).
        """
        now = self._watermark or self._clock()
        return [self._event(self._open[k], "renotify", now) for k in sorted(self._open)]

    # --- recovery ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole engine state as UTF-8 JSON bytes (version 2, columnar; see :meth:`restore`).

        Deterministic: the same state gives the same bytes, whatever the history (streams sorted by
        patient and kind, patients by id, dict keys sorted). Times are integer microseconds since
        the Unix epoch (UTC), except in episodes (ISO 8601 UTC with ``Z``). A reading at a stream's
        latest time is stored as ``(reading_id, value, systolic, diastolic)``, from which its
        duplicate keys are hashed when needed, so no key is hashed here; keys known only as hashes
        are stored as such. Each stream's encoding is cached until the stream changes.
        """
        with _gc_paused():
            return self._snapshot()

    def _snapshot(self) -> bytes:
        order = self._order
        if order is None:
            streams = self._streams
            order = self._order = [streams[k] for k in sorted(streams)]
        rows = [s.row or s.snapshot_row() for s in order]
        materials = [m for row in rows for m in row[1]]
        hashed = [i for i, row in enumerate(rows) if row[2]]
        weighted = [i for i, row in enumerate(rows) if row[3]]
        kinds = sorted({s.kind for s in order})
        kind_index = {k: i for i, k in enumerate(kinds)}
        pids = sorted(self._patients)
        infos = [self._patients[pid] for pid in pids]
        state = {
            "version": SNAPSHOT_VERSION,
            "watermark": None if self._watermark is None else _to_us(self._watermark),
            "patients": {
                "patient_id": pids,
                "region": [p.region for p in infos],
                "overrides": [p.overrides for p in infos],
                "plan": [p.plan for p in infos],
                "registered_at": [
                    None if p.registered_at is None else _to_us(p.registered_at) for p in infos
                ],
                "plan_seen_at": [
                    {k: _to_us(v) for k, v in p.plan_seen_at.items()} if p.plan_seen_at else {} for p in infos
                ],
            },
            "streams": {
                "patient_id": [s.patient_id for s in order],
                "kinds": kinds,
                "kind": [kind_index[s.kind] for s in order],
                "latest": [row[0] for row in rows],
                "readings": [len(row[1]) for row in rows],
                "reading_id": [m[0] for m in materials],
                "value": [m[1] for m in materials],
                "systolic": [m[2] for m in materials],
                "diastolic": [m[3] for m in materials],
                "hashed": hashed,
                "hashes": [rows[i][2] for i in hashed],
                "weighted": weighted,
                "weight_at": [rows[i][3] for i in weighted],
                "weight_kg": [rows[i][4] for i in weighted],
            },
            "open": [self._open[k].to_state() for k in sorted(self._open)],
            "resolved": [e.to_state() for e in self._resolved],
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def restore(self, data: bytes) -> None:
        """Replace the state with a :meth:`snapshot` (version 2, or version 1 from older releases).

        Raises :class:`AlertStateError` on bad input (not UTF-8 JSON, unknown version, missing or
        mistyped fields, columns of different lengths); the current state is then left unchanged.
        """
        with _gc_paused():
            self._restore(data)

    def _restore(self, data: bytes) -> None:
        try:
            state = json.loads(data.decode("utf-8"))
            version = state.get("version")
            if version == SNAPSHOT_VERSION:
                parsed = _parse_v2(state)
            elif version == 1:
                parsed = _parse_v1(state)
            else:
                raise AlertStateError(f"unsupported snapshot version {version!r}")
            open_eps = {}
            for e in state["open"]:
                ep = _Episode.from_state(e)
                open_eps[(ep.patient_id, ep.rule, ep.kind)] = ep
            resolved = [_Episode.from_state(e) for e in state["resolved"]]
        except AlertStateError:
            raise
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
            OverflowError,
            RecursionError,
            UnicodeDecodeError,
        ) as exc:
            raise AlertStateError(f"malformed alert engine snapshot: {type(exc).__name__}") from exc
        self._patients, self._streams, self._order, self._watermark = parsed
        self._open, self._resolved = open_eps, resolved

    # --- internals ---------------------------------------------------------------------------

    def _on_readings_fast(
        self, readings: Sequence[CanonicalReading], support_flags: SupportFlags | None
    ) -> list[AlertEvent]:
        # Same contract as the reference path (on_readings with fast=False), cheaper per reading.
        if any(type(r) is not CanonicalReading for r in readings):
            # columnar slices: quick groups applied now, the rest in place (every reading of a
            # stream that is not applied now comes after any reading of it applied now)
            taken = {(r.patient_id, r.kind) for r in readings if type(r) is CanonicalReading}
            ordered: list[CanonicalReading] = []
            for r in readings:
                if type(r) is CanonicalReading:
                    ordered.append(r)
                else:
                    ordered.extend(self._apply_columns(r, taken))
            readings = ordered
        return self._apply_sequence(readings, support_flags, reference=False)

    def _apply_sequence(
        self, readings: Sequence[CanonicalReading], support_flags: SupportFlags | None, *, reference: bool
    ) -> list[AlertEvent]:
        """Apply readings one at a time, in the order given: each exactly as if it came in a call
        of its own (so the result never depends on how a sequence is cut into calls).

        ``reference``: hash every reading's duplicate keys and evaluate every rule (the proof of
        the shortcuts of the default path: keys hashed only for a reading at its stream's latest
        time, rules evaluated only when :func:`any_holds` says one holds or an episode is open).
        """
        events: list[AlertEvent] = []
        streams = self._streams
        skipped = 0
        for r in readings:
            kind = r.kind
            if kind == "blood_pressure":
                usable = r.systolic is not None and r.diastolic is not None
            else:
                usable = r.value is not None
            if not usable:
                skipped += 1
                continue
            key = (r.patient_id, kind)
            stream = streams.get(key)
            if stream is None:
                stream = streams[key] = _Stream(r.patient_id, kind)
                self._order = None
            t = r.measured_at
            latest = stream.latest
            keys = _key_strings(r) if reference else None
            if latest is None or t > latest:
                order = 1  # newer than every reading of its kind seen so far
                stream.advance(t)
                stream.add(r, keys)
            elif t == latest:
                if keys is None:
                    keys = _key_strings(r)
                if not stream.keys().isdisjoint(keys):
                    continue  # an exact duplicate of a reading already applied at the latest time
                order = 0
                stream.add(r, keys)
            else:
                order = -1  # out of order: older than the latest reading of its kind
            baseline = None
            if kind == "body_weight":
                baseline = self._weight_baseline(stream, t)  # weights seen before this reading
                self._add_weight(stream, t, r.value)
            if order > 0 and not r.late and self._open:
                ev = self._resolve_missed_on_data(r.patient_id, kind, t, self._patients.get(r.patient_id))
                if ev is not None:
                    events.append(ev)
            self._judge(r, order, baseline, support_flags, reference, events)
        if skipped:
            log.warning("skipped %d reading(s) without the values of their kind", skipped)
        return events

    def _apply_columns(self, sl: Any, taken: set[tuple[str, str]]) -> list[CanonicalReading]:
        """The readings of a columnar slice (see :class:`monitor.intake.columnar.ReadingSlice`):
        a (patient, kind) group that surely decides nothing is applied here, without a reading
        object - its stream advances to the group's latest time if that is newer and keeps that
        reading's duplicate keys as a material row - and the other groups are returned as readings
        for the general path. Surely nothing (what :meth:`_apply_sequence` would do with these
        rows one by one): no object reading of the call in that stream and no earlier row of it
        left to the general path (``taken``), not body weight (baselines), no open episode of the
        patient and kind, times distinct within the group and none at the stream's latest time (so
        no row is a duplicate and the readings at the final latest time are the newest row alone),
        and no rule holding for any row (so none fires, is recorded or resolves anything).
        """
        cols, start, stop = sl.columns, sl.start, sl.stop
        patients = sl.patient_ids()
        kinds = sl.kind_names()
        t_s = cols.t_s[start:stop].tolist()
        rids = sl.reading_ids()
        values = cols.value[start:stop]
        systolics = cols.systolic[start:stop]
        diastolics = cols.diastolic[start:stop]
        surely_quiet = _surely_quiet(kinds, values, systolics, diastolics)
        groups: dict[tuple[str, str], list[int]] = {}
        prev: tuple[str, str] | None = None
        rows: list[int] = []
        for i, key in enumerate(zip(patients, kinds, strict=True)):
            if key != prev:
                rows = groups.setdefault(key, [])
                prev = key
            rows.append(i)
        general: list[CanonicalReading] = []
        open_eps = self._open
        streams = self._streams
        patients_info = self._patients
        for key, rows in groups.items():
            patient_id, kind = key
            stream = streams.get(key)
            latest = stream.latest if stream is not None else None
            latest_s = _seconds(latest) if latest is not None else None
            bp = kind == "blood_pressure"
            if latest is not None and latest_s is None:
                quick = False  # a latest time with a fraction of a second
            elif len(rows) == 1:
                top = rows[0]
                quick = latest_s is None or t_s[top] != latest_s
            else:
                times = [t_s[i] for i in rows]
                top = rows[times.index(max(times))]
                quick = len(set(times)) == len(rows) and (latest_s is None or latest_s not in times)
            if quick and (key in taken or kind == "body_weight"):
                quick = False
            if quick and open_eps and ((patient_id, MISSED, kind) in open_eps or any(
                    (patient_id, rule_id, kind) in open_eps for rule_id in _RULE_IDS_BY_KIND.get(kind, ()))):
                quick = False
            if quick:
                info = patients_info.get(patient_id)
                exact = info is not None and bool(info.overrides)  # else the default thresholds
                checks = info.checks_for(kind) if info else checks_for(kind)
                for i in rows:
                    if exact or not surely_quiet[i]:  # decide exactly
                        if any_holds(checks, value=None if bp else float(values[i]),
                                     systolic=float(systolics[i]) if bp else None,
                                     diastolic=float(diastolics[i]) if bp else None):
                            quick = False
                            break
            if not quick:
                general.extend(cols.reading(start + i) for i in rows)
                taken.add(key)  # later slices' readings of this stream come after these
                continue
            if latest_s is not None and t_s[top] < latest_s:
                continue  # every row older than the latest (and none a duplicate): no change
            if stream is None:
                stream = streams[key] = _Stream(patient_id, kind)
                self._order = None
            stream.advance(datetime_from_s(t_s[top]))
            stream.add((rids[top], None if bp else float(values[top]),  # type: ignore[arg-type]
                        float(systolics[top]) if bp else None, float(diastolics[top]) if bp else None))
        return general

    def _judge(
        self,
        r: CanonicalReading,
        order: int,
        baseline: float | None,
        support_flags: SupportFlags | None,
        reference: bool,
        events: list[AlertEvent],
    ) -> None:
        """Decide every rule of the reading's kind on one (non-duplicate) reading; append the
        events. ``order``: 1 newer than the latest of its kind before it, 0 at that time, -1 older.
        """
        patient_id, kind = r.patient_id, r.kind
        rule_ids = _RULE_IDS_BY_KIND.get(kind)
        if not rule_ids:
            return
        info = self._patients.get(patient_id)
        open_eps = self._open
        live = not r.late  # a backfilled reading never touches a live episode
        if not reference and not (live and open_eps and any(
                (patient_id, rule_id, kind) in open_eps for rule_id in rule_ids)):
            checks = info.checks_for(kind) if info else checks_for(kind)
            if not any_holds(checks, value=r.value, systolic=r.systolic, diastolic=r.diastolic,
                             bounded=r.bounded, weight_baseline=baseline):
                return  # no rule holds and no episode to resolve: nothing to decide
        verdicts = evaluate(
            kind,
            value=r.value,
            systolic=r.systolic,
            diastolic=r.diastolic,
            bounded=r.bounded,
            thresholds=info.thresholds if info else None,
            weight_baseline=baseline,
        )
        verdicts.sort(key=_RULE_ID)
        at = r.measured_at
        flags: Collection[str] | None = None
        if any(v.holds for v in verdicts):  # only then do the flags matter (lazy mappings)
            flags = (support_flags or {}).get(patient_id)
        unsupported = is_unsupported(flags)
        if not live:
            for v in verdicts:
                if v.opens and v.value is not None:
                    events.append(self._recorded(patient_id, kind, v, at, unsupported))
            return
        stale = (
            self.config.stale_after is not None
            and self._watermark is not None
            and at < self._watermark - self.config.stale_after
        )
        for v in verdicts:
            ev = self._decide(patient_id, kind, v, at, order, stale, unsupported)
            if ev is not None:
                events.append(ev)

    def _decide(
        self,
        patient_id: str,
        kind: str,
        verdict: Evaluation,
        at: datetime,
        order: int,
        stale: bool,
        unsupported: bool,
    ) -> AlertEvent | None:
        """One rule on one live (not backfilled) reading measured at ``at``: open, keep, escalate
        or resolve its episode (``order`` as for :meth:`_judge`)."""
        rule = verdict.rule
        key = (patient_id, rule.rule_id, kind)
        holds = verdict.holds and verdict.value is not None
        ep = self._open.get(key)
        if ep is not None:
            if holds:
                if order >= 0:
                    ep.value = verdict.value
                return self._maybe_escalate(ep, unsupported, at)
            if order > 0:
                return self._resolve(ep, at, verdict.value)
            return None  # only a newer reading resolves
        if not (holds and verdict.opens) or stale:
            return None
        if order < 0 and self._covered(key, at):
            return None
        ep = self._open[key] = _opened(patient_id, kind, verdict, at, unsupported)
        return self._event(ep, "firing", at, late=order < 0)

    def _covered(self, key: tuple[str, str, str], at: datetime) -> bool:
        """Whether a retained resolved episode of ``key`` ended at or after ``at``: an out-of-order
        reading measured then belongs to an episode already notified (or to the time before it),
        so a redelivered reading that an episode covered when it first came opens nothing."""
        patient_id, rule_id, kind = key
        return any(
            ep.resolved_at is not None and ep.resolved_at >= at and ep.patient_id == patient_id
            and ep.rule == rule_id and ep.kind == kind
            for ep in self._resolved
        )

    def _recorded(self, patient_id: str, kind: str, verdict: Evaluation, at: datetime,
                  unsupported: bool) -> AlertEvent:
        """The record of an episode a backfilled reading would have opened: opened and resolved
        at its ``measured_at``, never paged, no engine state."""
        ep = _opened(patient_id, kind, verdict, at, unsupported)
        ep.resolved_at = at
        return self._event(ep, "recorded", at, late=True)

    def _maybe_escalate(self, ep: _Episode, unsupported: bool, at: datetime) -> AlertEvent | None:
        if ep.unsupported or not unsupported:
            return None
        previous = ep.severity
        ep.severity = str(escalate(Severity(ep.severity)))
        ep.unsupported = True
        at = max(at, ep.last_notified_at)
        ep.last_notified_at = at
        ep.notifications += 1
        return self._event(ep, "renotify", at, escalated_from=previous)

    def _resolve(self, ep: _Episode, at: datetime, value: float | None) -> AlertEvent:
        ep.resolved_at = max(at, ep.opened_at)
        ep.value = value
        del self._open[(ep.patient_id, ep.rule, ep.kind)]
        self._resolved.append(ep)
        return self._event(ep, "resolved", ep.resolved_at)

    def _allowed_gap(self, info: _PatientInfo, kind: str) -> timedelta | None:
        per_day = info.plan.get(kind)
        if not per_day or per_day <= 0 or not math.isfinite(per_day):
            return None
        factor = info.thresholds.get(MISSED, RULES_BY_ID[MISSED].threshold)
        if factor <= 0:
            return None
        return timedelta(seconds=86_400.0 / per_day * factor)

    def _resolve_missed_on_data(
        self, patient_id: str, kind: str, latest: datetime, info: _PatientInfo | None
    ) -> AlertEvent | None:
        ep = self._open.get((patient_id, MISSED, kind))
        if ep is None:
            return None
        allowed = self._allowed_gap(info, kind) if info else None
        now = max(latest, self._watermark) if self._watermark else latest
        if allowed is not None and now - latest >= allowed:
            return None  # the data that came in is itself overdue: the gap persists
        return self._resolve(ep, latest, 0.0 if allowed is None else _hours(now - latest))

    def _evaluate_missed(self, now: datetime, flags: SupportFlags) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for key in sorted(k for k in self._open if k[1] == MISSED):
            info = self._patients.get(key[0])
            if info is None or self._allowed_gap(info, key[2]) is None:
                events.append(self._resolve(self._open[key], now, None))  # kind left the plan
        for patient_id in sorted(self._patients):
            info = self._patients[patient_id]
            unsupported = is_unsupported(flags.get(patient_id))
            for kind in sorted(info.plan):
                allowed = self._allowed_gap(info, kind)
                if allowed is None:
                    continue
                stream = self._streams.get((patient_id, kind))
                reference = stream.latest if stream and stream.latest else info.registered_at
                if reference is None:
                    reference = info.plan_seen_at.setdefault(kind, now)
                key = (patient_id, MISSED, kind)
                gap = now - reference
                if key in self._open:
                    self._open[key].value = _hours(gap)
                    continue
                if gap < allowed:
                    continue
                opened_at = reference + allowed
                severity = RULES_BY_ID[MISSED].severity
                ep = _Episode(
                    alert_id=alert_id_for(patient_id, MISSED, kind, opened_at),
                    patient_id=patient_id,
                    rule=MISSED,
                    kind=kind,
                    severity=str(escalate(severity) if unsupported else severity),
                    unsupported=unsupported,
                    value=_hours(gap),
                    threshold=_hours(allowed),
                    unit="h",
                    opened_at=opened_at,
                    resolved_at=None,
                    last_notified_at=now,
                )
                self._open[key] = ep
                events.append(self._event(ep, "firing", now))
        return events

    def _add_weight(self, stream: _Stream, at: datetime, kg: float | None) -> None:
        if kg is None:
            return
        merged = dict(stream.weights)
        # two weights at the same instant: keep the lower (the conservative baseline)
        merged[at] = min(kg, merged.get(at, kg))
        newest = max(merged)
        horizon = newest - self.config.weight_window - timedelta(days=1)
        stream.set_weights(sorted((t, w) for t, w in merged.items() if t >= horizon))

    def _weight_baseline(self, stream: _Stream, at: datetime) -> float | None:
        start = at - self.config.weight_window
        window = [w for t, w in stream.weights if start <= t < at]
        return min(window) if window else None

    def _event(
        self,
        ep: _Episode,
        notification: Notification,
        at: datetime,
        *,
        escalated_from: str | None = None,
        late: bool = False,
    ) -> AlertEvent:
        info = self._patients.get(ep.patient_id)
        return AlertEvent(
            alert_id=ep.alert_id,
            event_id=_digest(ep.alert_id, notification, _iso(at) or "",
                             *((escalated_from,) if escalated_from else ())),
            patient_id=ep.patient_id,
            rule=ep.rule,
            kind=ep.kind,
            severity=ep.severity,
            status="firing" if ep.resolved_at is None else "resolved",
            notification=notification,
            unsupported=ep.unsupported,
            value=ep.value,
            threshold=ep.threshold,
            unit=ep.unit,
            opened_at=ep.opened_at,
            resolved_at=ep.resolved_at,
            event_at=at,
            region=info.region if info else None,
            escalated_from=escalated_from,
            late=late,
        )


def _opened(patient_id: str, kind: str, verdict: Evaluation, at: datetime, unsupported: bool) -> _Episode:
    """A new episode of ``verdict``'s rule opened at ``at`` (one level higher when unsupported)."""
    rule = verdict.rule
    return _Episode(
        alert_id=alert_id_for(patient_id, rule.rule_id, kind, at),
        patient_id=patient_id,
        rule=rule.rule_id,
        kind=kind,
        severity=str(escalate(rule.severity) if unsupported else rule.severity),
        unsupported=unsupported,
        value=verdict.value,
        threshold=verdict.threshold,
        unit=rule.unit,
        opened_at=at,
        resolved_at=None,
        last_notified_at=at,
    )


# --- snapshot decoding ---------------------------------------------------------------------------

_Parsed = tuple[
    dict[str, _PatientInfo], dict[tuple[str, str], _Stream], list[tuple[str, str]] | None, datetime | None
]


def _check_types(values: Any, allowed: frozenset[type], name: str) -> None:
    if type(values) is not list or not set(map(type, values)) <= allowed:
        raise TypeError(f"snapshot field {name} has a value of the wrong type")


def _check_mapping(value: Any, allowed: frozenset[type], name: str) -> None:
    if type(value) is not dict or not set(map(type, value.values())) <= allowed:
        raise TypeError(f"snapshot field {name} must be an object of the right values")


_INT: frozenset[type] = frozenset({int})
_NUMBER: frozenset[type] = frozenset({int, float})
_INT_OR_NONE: frozenset[type] = frozenset({int, type(None)})
_LIST: frozenset[type] = frozenset({list})


def _parse_v2(state: Mapping[str, Any]) -> _Parsed:
    """Decode a version-2 snapshot (see :meth:`AlertEngine.snapshot`); raises on malformed input."""
    watermark = state["watermark"]
    watermark = None if watermark is None else _from_us(watermark)

    p = state["patients"]
    pids = p["patient_id"]
    _check_types(pids, _STR, "patients.patient_id")
    _check_types(p["region"], _STR_OR_NONE, "patients.region")
    _check_types(p["registered_at"], _INT_OR_NONE, "patients.registered_at")
    patients: dict[str, _PatientInfo] = {}
    times: dict[int, datetime] = {}

    def at(us: int) -> datetime:
        ts = times.get(us)
        if ts is None:
            ts = times[us] = _from_us(us)
        return ts

    for pid, region, overrides, plan, registered, seen in zip(
        pids, p["region"], p["overrides"], p["plan"], p["registered_at"], p["plan_seen_at"], strict=True
    ):
        _check_mapping(overrides, _NUMBER, "patients.overrides")
        _check_mapping(plan, _NUMBER, "patients.plan")
        _check_mapping(seen, _INT, "patients.plan_seen_at")
        thresholds, _ = effective_thresholds(overrides)
        patients[pid] = _PatientInfo(
            region=region,
            overrides=dict(overrides),
            thresholds=thresholds,
            plan={k: float(v) for k, v in plan.items()},
            registered_at=None if registered is None else at(registered),
            plan_seen_at={k: at(v) for k, v in seen.items()} if seen else {},
        )
    if len(patients) != len(pids):
        raise ValueError("duplicate patient in snapshot")

    s = state["streams"]
    kinds = s["kinds"]
    _check_types(kinds, _STR, "streams.kinds")
    _check_types(s["kind"], _INT, "streams.kind")
    if min(s["kind"], default=0) < 0:
        raise ValueError("snapshot kind index out of range")
    _check_types(s["patient_id"], _STR, "streams.patient_id")
    keys = list(zip(s["patient_id"], [kinds[i] for i in s["kind"]], strict=True))
    n = len(keys)
    latest = s["latest"]
    counts = s["readings"]
    _check_types(latest, _INT_OR_NONE, "streams.latest")
    _check_types(counts, _INT, "streams.readings")
    rids, values, systolics, diastolics = s["reading_id"], s["value"], s["systolic"], s["diastolic"]
    _check_types(rids, _STR_OR_NONE, "streams.reading_id")
    for name in ("value", "systolic", "diastolic"):
        _check_types(s[name], _FLOAT_OR_NONE, f"streams.{name}")
    materials = list(zip(rids, values, systolics, diastolics, strict=True))
    if len(latest) != n or len(counts) != n or sum(counts) != len(materials) or min(counts, default=0) < 0:
        raise ValueError("snapshot stream columns differ in length")
    if any(c and t is None for c, t in zip(counts, latest, strict=True)):
        raise ValueError("readings without a latest time in snapshot")

    hashes: dict[int, list[str]] = {}
    _check_types(s["hashed"], _INT, "streams.hashed")
    _check_types(s["hashes"], _LIST, "streams.hashes")
    for i, hs in zip(s["hashed"], s["hashes"], strict=True):
        _check_types(hs, _STR, "streams.hashes")
        hashes[i] = hs
    weights: dict[int, list[tuple[datetime, float]]] = {}
    _check_types(s["weighted"], _INT, "streams.weighted")
    _check_types(s["weight_at"], _LIST, "streams.weight_at")
    _check_types(s["weight_kg"], _LIST, "streams.weight_kg")
    for i, ts, kgs in zip(s["weighted"], s["weight_at"], s["weight_kg"], strict=True):
        _check_types(ts, _INT, "streams.weight_at")
        _check_types(kgs, _NUMBER, "streams.weight_kg")
        weights[i] = [(at(t), float(w)) for t, w in zip(ts, kgs, strict=True)]

    streams: dict[tuple[str, str], _Stream] = {}
    rows = iter(materials)
    for key, us, count in zip(keys, latest, counts, strict=True):
        if count == 1:
            entries: list[Any] = [next(rows)]
        elif count:
            entries = list(itertools.islice(rows, count))
        else:
            entries = []
        if us is None:
            ts = None
        else:
            ts = times.get(us)
            if ts is None:
                ts = times[us] = _from_us(us)
        # the row is canonical as it stands unless sorting could change it: reuse it in snapshot()
        row = (us, entries if count else _NO_ROWS, _NO_ROWS, _NO_ROWS, _NO_ROWS) if count <= 1 else None
        streams[key] = _Stream(key[0], key[1], ts, (), entries, _NO_KEYS, None, 0, row)
    if len(streams) != n:
        raise ValueError("duplicate stream in snapshot")
    if not all(0 <= i < n for i in hashes) or not all(0 <= i < n for i in weights):
        raise ValueError("snapshot stream index out of range")
    for i, hs in hashes.items():
        stream = streams[keys[i]]
        stream.opaque = frozenset(hs)
        stream.row = None
    for i, ws in weights.items():
        stream = streams[keys[i]]
        stream.weights = ws
        stream.row = None
    ordered = all(a < b for a, b in zip(keys, keys[1:], strict=False))
    return patients, streams, list(streams.values()) if ordered else None, watermark


def _parse_v1(state: Mapping[str, Any]) -> _Parsed:
    """Decode a version-1 snapshot (dict per patient and stream, ISO times, keys as hashes)."""
    patients: dict[str, _PatientInfo] = {}
    for pid, p in state["patients"].items():
        thresholds, _ = effective_thresholds(p["overrides"])
        patients[pid] = _PatientInfo(
            region=p["region"],
            overrides=dict(p["overrides"]),
            thresholds=thresholds,
            plan={k: float(v) for k, v in p["plan"].items()},
            registered_at=_parse(p["registered_at"]),
            plan_seen_at={k: _parse(v) for k, v in p["plan_seen_at"].items()},  # type: ignore[misc]
        )
    streams: dict[tuple[str, str], _Stream] = {}
    for s in state["streams"]:
        streams[(s["patient_id"], s["kind"])] = _Stream(
            s["patient_id"],
            s["kind"],
            latest=_parse(s["latest"]),
            opaque=frozenset(s["latest_keys"]),
            weights=[(_parse(t), float(w)) for t, w in s["weights"]],  # type: ignore[misc]
        )
    return patients, streams, None, _parse(state["watermark"])


def _snapshot_v1(engine: AlertEngine) -> bytes:
    """The engine state in the version-1 layout (the encoder of older releases; kept for tests
    that prove :meth:`AlertEngine.restore` still reads it). Hashes every key not hashed yet."""
    state = {
        "version": 1,
        "watermark": _iso(engine._watermark),
        "patients": {
            pid: {
                "region": p.region,
                "overrides": p.overrides,
                "plan": p.plan,
                "registered_at": _iso(p.registered_at),
                "plan_seen_at": {k: _iso(v) for k, v in p.plan_seen_at.items()},
            }
            for pid, p in sorted(engine._patients.items())
        },
        "streams": [
            {
                "patient_id": pid,
                "kind": kind,
                "latest": _iso(s.latest),
                "latest_keys": sorted(s.keys()),
                "weights": [[_iso(t), w] for t, w in s.weights],
            }
            for (pid, kind), s in sorted(engine._streams.items())
        ],
        "open": [engine._open[k].to_state() for k in sorted(engine._open)],
        "resolved": [e.to_state() for e in engine._resolved],
    }
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600.0, 6)

