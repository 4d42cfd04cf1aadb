"""The alert engine: episode lifecycle per patient and rule, driven by event time (pure, no I/O).

Feed it patients (:meth:`AlertEngine.on_patient`), batches of canonical readings
(:meth:`AlertEngine.on_readings`) and clock ticks (:meth:`AlertEngine.tick`); each call returns
the :class:`AlertEvent` transitions it caused, which the caller publishes (Kafka topic,
Alertmanager). The same calls with the same inputs give the same events, so the replay driver and
the faust worker agree by construction.

This module is the facade and the per-reading path; the parts live beside it:
:mod:`~monitor.alerts.episodes` (episodes, their lifecycle, compound risk, missed readings),
:mod:`~monitor.alerts.streams` (late, backfilled and duplicated readings),
:mod:`~monitor.alerts.columnar` (reading slices applied without reading objects),
:mod:`~monitor.alerts.snapshot` (the snapshot codec) and :mod:`~monitor.alerts.reference` (the
reference engine the tests hold this one to, and the version-1 snapshot).

Time
    Event time drives everything. All datetimes are timezone-aware UTC; a naive datetime raises
    ``ValueError``. Optionally (``AlertConfig.stale_after``) a reading older than the tick
    watermark minus that age opens nothing.
Recovery
    :meth:`~AlertEngine.snapshot` / :meth:`~AlertEngine.restore` carry every piece of state
    (latest times, duplicate keys, weights, episodes with their last notification time), so a
    restarted worker that sees a redelivered reading sends no second notification.

Logging never includes patient identifiers.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from monitor.alerts.columnar import apply_columns
from monitor.alerts.episodes import (
    AlertConfig,
    AlertEvent,
    Episode,
    PatientInfo,
    SupportFlags,
    alert_id_for,
    require_utc,
)
from monitor.alerts.rules import (
    RULE_IDS_BY_KIND,
    any_holds,
    checks_for,
    effective_thresholds,
    evaluate,
    is_unsupported,
)
from monitor.alerts.snapshot import AlertStateError, decode, encode, gc_paused
from monitor.alerts.streams import Stream, key_strings
from monitor.alerts.timers import TimedLifecycle
from monitor.contract.models import Patient
from monitor.intake.canonical import CanonicalReading

__all__ = ["AlertConfig", "AlertEngine", "AlertEvent", "AlertStateError", "SupportFlags", "alert_id_for"]

log = logging.getLogger(__name__)

_RULE_ID = operator.attrgetter("rule.rule_id")


class AlertEngine(TimedLifecycle):
    """Rules and episode lifecycle for all patients of a worker (see the module docstring).

    ``clock`` returns the current time (aware UTC) and is used only where no time is passed:
    :meth:`tick` without ``now`` and :meth:`firing` before any tick. Not thread-safe: one engine
    per worker/partition.

    :meth:`on_readings` takes shortcuts (duplicate keys hashed only for a reading at its stream's
    latest time, rules evaluated only when :func:`~monitor.alerts.rules.any_holds` says one holds
    or an episode is open, quiet columnar groups applied without reading objects);
    :class:`monitor.alerts.reference.ReferenceAlertEngine` takes none and must give the same
    events and the same :meth:`snapshot` bytes (property tests).

    :meth:`tick` visits only what is due (:mod:`monitor.alerts.timers`: deadlines in heaps); the
    reference engine visits every patient and open episode on every tick.
    """

    _exhaustive: ClassVar[bool] = False
    """Hash every reading's duplicate keys and evaluate every rule (the reference engine)."""

    def __init__(
        self, config: AlertConfig | None = None, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.config = config or AlertConfig()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._patients: dict[str, PatientInfo] = {}
        self._streams: dict[tuple[str, str], Stream] = {}
        self._open: dict[tuple[str, str, str], Episode] = {}
        self._resolved: list[Episode] = []
        self._watermark: datetime | None = None
        self._order: list[Stream] | None = None
        """The streams sorted by patient and kind (a cache for :meth:`snapshot`; ``None``: stale)."""
        self._timers = self._new_timers()

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
        self._patients[patient.patient_id] = PatientInfo(
            region=patient.region,
            overrides={k: thresholds[k] for k in (patient.thresholds or {}) if k not in ignored},
            thresholds=thresholds,
            plan=plan,
            registered_at=patient.registered_at,
            plan_seen_at={k: v for k, v in (previous.plan_seen_at if previous else {}).items() if k in plan},
        )
        self._timers.patient_changed(patient.patient_id)

    def on_readings(
        self, readings: Sequence[CanonicalReading], support_flags: SupportFlags | None = None
    ) -> list[AlertEvent]:
        """Apply a batch of canonical readings; return the transitions (firing / resolved / renotify).

        ``readings`` may also hold columnar slices (:class:`monitor.intake.columnar.ReadingSlice`).
        Within a batch, only the newest reading(s) of each ``(patient, kind)`` are evaluated; older
        ones are backfill (see :mod:`monitor.alerts.streams`). The result does not depend on the
        order of readings inside the batch. ``support_flags`` gives each patient's current support
        flags (absent patient: no flags); it is only consulted for a patient when a rule holds or
        an episode of that patient and kind is open, so a lazy mapping is never loaded for a batch
        that cannot alert. Readings without the value(s) their kind needs are skipped. Measured
        times are aware UTC (checked by :class:`CanonicalReading`); nothing here raises on
        clinical input.
        """
        return self._apply_sequence(self._readings_to_apply(readings), support_flags)

    def tick(
        self, now: datetime | None = None, support_flags: SupportFlags | None = None
    ) -> list[AlertEvent]:
        """Advance the clock to ``now`` (aware; default: the injected clock) and evaluate timers.

        Opens ``missed_readings`` episodes for overdue planned kinds, resolves those of kinds no
        longer planned, escalates firing episodes of patients who became unsupported, re-notifies
        episodes whose last notification is at least ``repeat_interval`` old, and forgets resolved
        episodes older than ``retain_resolved`` (unless it is ``None``). A ``now`` earlier than a
        previous tick is raised to that tick (time never runs backwards). Naive ``now`` raises
        ``ValueError``.
        """
        now = require_utc(self._clock() if now is None else now, "now")
        if self._watermark is not None and now < self._watermark:
            now = self._watermark
        self._watermark = now
        events = self._run_timers(now, support_flags or {})
        self._forget_resolved(now)
        return events

    # --- queries -----------------------------------------------------------------------------

    def episodes(self) -> list[dict[str, Any]]:
        """Every known episode (firing, and resolved within ``retain_resolved``, or all resolved
        ones when it is ``None``) as JSON-ready dicts.

        Fields: ``alert_id, patient_id, rule, kind, severity, status, unsupported, value, threshold,
        unit, opened_at, resolved_at, region, last_notified_at, notifications``; ``status`` is the
        status as of now (``firing`` until resolved). Sorted by ``opened_at``, then patient, rule.
        """
        self._settle()
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
        self._settle()
        now = self._watermark or self._clock()
        return [self._event(self._open[k], "renotify", now) for k in sorted(self._open)]

    # --- recovery ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole engine state as UTF-8 JSON bytes (version 2, see :mod:`monitor.alerts.snapshot`).

        Deterministic: the same state gives the same bytes, whatever the history. No duplicate key
        is hashed here; each stream's encoding is cached until the stream changes.
        """
        self._settle()
        with gc_paused():
            order = self._order
            if order is None:
                streams = self._streams
                order = self._order = [streams[k] for k in sorted(streams)]
            return encode(order, self._patients, self._open, self._resolved, self._watermark)

    def restore(self, data: bytes) -> None:
        """Replace the state with a :meth:`snapshot` (version 2, or version 1 from older releases).

        Raises :class:`AlertStateError` on bad input (not UTF-8 JSON, unknown version, missing or
        mistyped fields, columns of different lengths); the current state is then left unchanged.
        """
        with gc_paused():
            state = decode(data)
        self._patients, self._streams, self._order, self._watermark = (
            state.patients, state.streams, state.order, state.watermark)
        self._open, self._resolved = state.open, state.resolved
        self._timers = self._new_timers()
        self._timers.rebuild(self._open, self._patients)

    # --- the per-reading path ----------------------------------------------------------------

    def _readings_to_apply(self, readings: Sequence[Any]) -> Sequence[CanonicalReading]:
        """Apply the quiet groups of columnar slices now; the readings left, in an order in which
        every reading of a stream not applied now comes after any reading of it applied now."""
        if all(type(r) is CanonicalReading for r in readings):
            return readings
        taken = {(r.patient_id, r.kind) for r in readings if type(r) is CanonicalReading}
        ordered: list[CanonicalReading] = []
        for r in readings:
            if type(r) is CanonicalReading:
                ordered.append(r)
                continue
            general, created, firsts = apply_columns(r, taken, self._streams, self._open, self._patients)
            if created:
                self._order = None
            for key in firsts:
                self._timers.touch(key)
            ordered.extend(general)
        return ordered

    def _apply_sequence(
        self, readings: Sequence[CanonicalReading], support_flags: SupportFlags | None
    ) -> list[AlertEvent]:
        """Apply readings one at a time, in the order given: each exactly as if it came in a call
        of its own (so the result never depends on how a sequence is cut into calls)."""
        events: list[AlertEvent] = []
        streams = self._streams
        exhaustive = self._exhaustive
        live = self._timers.missed_ref  # streams whose advance moves an open missed_readings gap
        touch = self._timers.touch
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
                stream = streams[key] = Stream(r.patient_id, kind)
                self._order = None
            t = r.measured_at
            latest = stream.latest
            keys = key_strings(r) if exhaustive else None
            if latest is None or t > latest:
                order = 1  # newer than every reading of its kind seen so far
                if latest is None or key in live:
                    touch(key)  # the reference of its missed_readings gap moves
                stream.advance(t)
                stream.add(r, keys)
            elif t == latest:
                if keys is None:
                    keys = key_strings(r)
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
            self._judge(r, order, baseline, support_flags, events)
        if skipped:
            log.warning("skipped %d reading(s) without the values of their kind", skipped)
        return events

    def _judge(
        self,
        r: CanonicalReading,
        order: int,
        baseline: float | None,
        support_flags: SupportFlags | None,
        events: list[AlertEvent],
    ) -> None:
        """Decide every rule of the reading's kind on one (non-duplicate) reading; append the
        events. ``order``: 1 newer than the latest of its kind before it, 0 at that time, -1 older.
        """
        patient_id, kind = r.patient_id, r.kind
        rule_ids = RULE_IDS_BY_KIND.get(kind)
        if not rule_ids:
            return
        info = self._patients.get(patient_id)
        open_eps = self._open
        live = not r.late  # a backfilled reading never touches a live episode
        if not self._exhaustive and not (live and open_eps and any(
                (patient_id, rule_id, kind) in open_eps for rule_id in rule_ids)):
            checks = info.checks_for(kind) if info else checks_for(kind)
            if not any_holds(checks, value=r.value, systolic=r.systolic, diastolic=r.diastolic,
                             bounded=r.bounded, weight_baseline=baseline):
                return  # no rule holds and no episode to resolve: nothing to decide
        outcomes = evaluate(
            kind,
            value=r.value,
            systolic=r.systolic,
            diastolic=r.diastolic,
            bounded=r.bounded,
            thresholds=info.thresholds if info else None,
            weight_baseline=baseline,
        )
        outcomes.sort(key=_RULE_ID)
        at = r.measured_at
        flags: Collection[str] | None = None
        if any(o.holds for o in outcomes):  # only then do the flags matter (lazy mappings)
            flags = (support_flags or {}).get(patient_id)
        unsupported = is_unsupported(flags)
        if not live:
            for o in outcomes:
                if o.opens and o.value is not None:
                    events.append(self._recorded(patient_id, kind, o, at, unsupported))
            return
        stale = (
            self.config.stale_after is not None
            and self._watermark is not None
            and at < self._watermark - self.config.stale_after
        )
        for o in outcomes:
            ev = self._decide(patient_id, kind, o, at, order, stale, unsupported)
            if ev is not None:
                events.append(ev)

    def _add_weight(self, stream: Stream, at: datetime, kg: float | None) -> None:
        if kg is None:
            return
        merged = dict(stream.weights)
        # two weights at the same instant: keep the lower (the conservative baseline)
        merged[at] = min(kg, merged.get(at, kg))
        newest = max(merged)
        horizon = newest - self.config.weight_window - timedelta(days=1)
        stream.set_weights(sorted((t, w) for t, w in merged.items() if t >= horizon))

    def _weight_baseline(self, stream: Stream, at: datetime) -> float | None:
        start = at - self.config.weight_window
        window = [w for t, w in stream.weights if start <= t < at]
        return min(window) if window else None
