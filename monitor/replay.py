"""The offline driver: NDJSON contract documents in, per-patient flags, group indicators and equity out.

``replay`` feeds the same pure core as the live worker (``monitor.core.state``) with the same kind
of batches, so a file replayed gives what the stream would have computed from the same events.
It never logs payloads or patient ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from monitor.alerts.engine import AlertConfig, AlertEngine
from monitor.carers.state import CarersState
from monitor.core.batch import batch_from_documents
from monitor.core.state import SupportConfig, SupportState
from monitor.core.timeutil import epoch_seconds
from monitor.core.timeutil import iso_utc_s as iso_utc
from monitor.equity import equity_from_summary
from monitor.intake.canonical import CanonicalReading, canonicalize
from monitor.intake.native import Rejection, decode
from monitor.pipeline import LazyFlags

__all__ = ["DEFAULT_BATCH_LINES", "replay", "replay_state"]

_NO_HORIZON = timedelta(days=365_000)


def _canonical_readings(doc: Any, rejected: Counter[str]) -> list[CanonicalReading]:
    """The canonical readings of a Reading or GatewayBatch; rejected ones are counted.

    Offline there is no receive time: each reading is checked as if received when measured (no
    future or age horizon), but units and plausibility are checked exactly as live.
    """
    items = doc.readings if hasattr(doc, "readings") else [doc]
    out = []
    for r in items:
        c = canonicalize(r, received_at=r.measured_at, oldest=_NO_HORIZON)
        if isinstance(c, Rejection):
            rejected[c.reason] += 1
        else:
            out.append(c)
    return out


def _before(doc: Any, as_of: datetime | None) -> bool:
    """Whether a document's event day is on or before the as-of day (registry entries always)."""
    if as_of is None:
        return True
    t = getattr(doc, "started_at", None) or getattr(doc, "effective_at", None)
    return t is None or t.date() <= as_of.astimezone(UTC).date()


def _flags_of(state: SupportState) -> LazyFlags:
    """Support flags of the replay state as of its watermark, evaluated on first use."""

    def load() -> dict[str, list[str]]:
        ev = state.evaluate()
        return {pid: ev.flag_names(i) for i, pid in enumerate(ev.patient_ids) if int(ev.flags[i])}

    return LazyFlags(load)


DEFAULT_BATCH_LINES = 10_000
TICK_EVERY = timedelta(hours=1)
"""Event-time interval of the replay's timer evaluations (the live worker's timer runs every few
seconds of wall time; hourly event time keeps a replay of a fortnight at ~340 evaluations)."""


def _event_time_s(doc: Any, canon: list[CanonicalReading]) -> int | None:
    """The latest event time of a document (epoch seconds, UTC; ``None`` for a registry entry)."""
    if canon:
        return max(epoch_seconds(c.measured_at) for c in canon)
    t = getattr(doc, "started_at", None) or getattr(doc, "effective_at", None)
    return None if t is None else epoch_seconds(t)


def _chunks(lines: Iterable[bytes | str], size: int) -> Iterator[list[bytes | str]]:
    it = iter(lines)
    while chunk := list(islice(it, size)):
        yield chunk


def replay_state(
    lines: Iterable[bytes | str], *, as_of: datetime | None = None,
    config: SupportConfig | None = None, batch_lines: int = DEFAULT_BATCH_LINES,
    alerts: AlertEngine | None = None, carers: CarersState | None = None,
) -> tuple[SupportState, dict[str, Any]]:
    """Decode and apply NDJSON lines; returns the state and ``{"processed": n, "rejected": {...}}``.

    Each non-blank line is one contract document with a ``"type"`` (decoded by
    :func:`monitor.intake.native.decode` with ``expected=None``); a line that does not decode is
    counted under its rejection reason and otherwise ignored. Blank lines are skipped and not
    counted. With ``as_of``, events on a UTC day after the as-of day are left out of the state
    (they still count as processed). Lines are applied in batches of ``batch_lines``.

    Readings are canonicalised and validated as live (an implausible one is counted under its
    reason and not applied). With ``alerts``, readings go through the alert engine with the support
    flags of the latest timer evaluation, and the timers (missed readings, re-notification,
    escalation) tick whenever the event time of a line crosses a multiple of :data:`TICK_EVERY`
    (UTC, epoch-aligned), at the watermark, and once at the end. Ticks never fall at batch ends, so
    the result does not depend on ``batch_lines`` (1 or 10,000 lines per batch give the same
    alerts; a tick's timing decides which short gaps of missed readings are seen, as the wall-clock
    timer does live).
    """
    if as_of is not None:
        epoch_seconds(as_of)  # fail early on a naive datetime
    state = SupportState(config)
    processed = 0
    rejected: Counter[str] = Counter()
    docs: list[Any] = []
    readings: list[CanonicalReading] = []
    flags: dict[str, list[str]] = {}  # as of the latest tick (compound risk between ticks)
    grid = int(TICK_EVERY.total_seconds())
    next_tick: int | None = None

    def flush() -> None:
        if docs:
            state.apply(batch_from_documents(state, docs, until=as_of))
            if carers is not None:
                carers.apply(d for d in docs if not isinstance(d, CanonicalReading) and _before(d, as_of))
        if alerts is not None and readings:
            alerts.on_readings(readings, flags)
        docs.clear()
        readings.clear()

    def tick() -> None:
        nonlocal flags
        flush()
        if alerts is not None and state.watermark is not None:
            flags = dict(_flags_of(state))
            alerts.tick(state.watermark, flags)

    for chunk in _chunks(lines, batch_lines):
        for line in chunk:
            raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
            if not raw.strip():
                continue
            result = decode(raw, expected=None)
            if isinstance(result, Rejection):
                rejected[result.reason] += 1
                continue
            processed += 1
            canon: list[CanonicalReading] = []
            if hasattr(result, "reading_id") or hasattr(result, "readings"):
                canon = _canonical_readings(result, rejected)
                if as_of is not None:
                    canon = [c for c in canon if c.measured_at.date() <= as_of.astimezone(UTC).date()]
            t = _event_time_s(result, canon)
            if alerts is not None and t is not None:
                # the timers tick on a fixed grid of event time, never at batch ends, so the alerts
                # do not depend on batch_lines
                if next_tick is None:
                    next_tick = (t // grid + 1) * grid
                elif t >= next_tick:
                    tick()
                    next_tick = (t // grid + 1) * grid
            if canon:
                docs.extend(canon)
                readings.extend(canon)
            elif not (hasattr(result, "reading_id") or hasattr(result, "readings")):
                if alerts is not None and hasattr(result, "deprivation_quintile"):
                    alerts.on_patient(result)
                docs.append(result)
        flush()
    tick()
    return state, {"processed": processed, "rejected": dict(sorted(rejected.items()))}


def replay(
    lines: Iterable[bytes | str], *, as_of: datetime | None = None,
    config: SupportConfig | None = None, batch_lines: int = DEFAULT_BATCH_LINES,
    alert_config: AlertConfig | None = None,
) -> dict[str, Any]:
    """Replay NDJSON contract documents and evaluate the support state as of ``as_of``.

    ``as_of`` (timezone-aware; ``ValueError`` if naive) defaults to the watermark, the latest event
    time in the file. Evaluation has UTC-day resolution (see :mod:`monitor.core.state`). Returns a
    JSON-serialisable dict::

        {"as_of": "2025-01-31T12:00:00Z" | None (no event and no as_of),
         "patients": {patient_id: {"flags": [...sorted], "active_carers_28d": n,
                                   "care_minutes_7d": m, "contact_days_7d": k,
                                   "readings_expected_7d": e, "readings_received_7d": r}},
         "groups": {dimension: {group: {"patients", "pct_covered", "pct_no_support_network",
                                        "mean_care_minutes_per_week", "pct_readings_received"}}},
         "equity": {dimension: {indicator: {measure: value | None}},
                    "individual": {"care_minutes_7d": {measure: value | None}}},
         "alerts": [{"alert_id", "patient_id", "rule", "kind", "severity", "status",
                     "unsupported", "value", "threshold", "opened_at", "resolved_at"}],
         "carers": {carer_id: {"minutes_by_week": {"YYYY-Www": minutes},
                               "flags": ["overloaded:YYYY-Www", ...]}},
         "counts": {"processed": n, "rejected": {reason: count}}}

    Patients never registered are in the ``"unknown"`` group and left out of the equity measures.
    Patient flags include the carers' view (``network_lost``, ``single_point_of_failure``;
    :mod:`monitor.carers`).
    """
    engine = AlertEngine(alert_config, clock=lambda: as_of or datetime.now(UTC))
    carers = CarersState()
    state, counts = replay_state(lines, as_of=as_of, config=config, batch_lines=batch_lines,
                                 alerts=engine, carers=carers)
    if as_of is not None:
        as_of_s: int | None = epoch_seconds(as_of)
    else:
        as_of_s = state.watermark_s
    ev = state.evaluate(as_of_s if as_of_s is not None else 0)
    summary = state.partial_summary(ev)
    patients = dict(sorted(ev.patients().items()))
    carers_out: dict[str, Any] = {}
    if as_of_s is not None:
        at = datetime.fromtimestamp(as_of_s, UTC)
        for pid, extra in carers.patient_flags(at).items():
            if pid in patients:
                patients[pid]["flags"] = sorted(set(patients[pid]["flags"]) | set(extra))
        carers_out = carers.carer_report(at)
    return {
        "as_of": iso_utc(as_of_s) if as_of_s is not None else None,
        "patients": patients,
        "groups": {
            dim: {g: c.indicators() for g, c in groups.items()}
            for dim, groups in summary.groups.items()
        },
        "equity": equity_from_summary(summary, state.config),
        "alerts": _alerts_as_of(engine, state, as_of_s),
        "carers": carers_out,
        "counts": counts,
    }


def _alerts_as_of(engine: AlertEngine, state: SupportState, as_of_s: int | None) -> list[dict[str, Any]]:
    """Every episode with its status as of the end of the replay (timers evaluated at as-of)."""
    if as_of_s is not None:
        engine.tick(datetime.fromtimestamp(as_of_s, UTC), _flags_of(state))
    keys = ("alert_id", "patient_id", "rule", "kind", "severity", "status", "unsupported", "value",
            "threshold", "opened_at", "resolved_at")
    return sorted(({k: e.get(k) for k in keys} for e in engine.episodes()),
                  key=lambda e: (e["patient_id"], e["opened_at"] or "", e["rule"]))
