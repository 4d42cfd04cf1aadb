"""Episodes and their lifecycle: open, keep, escalate, re-notify, resolve (pure, no I/O).

Episodes
    One episode per ``(patient, rule, kind)`` at a time (``kind`` only matters for
    ``missed_readings``, which applies to each planned kind separately). An episode **opens**
    (``notification="firing"``) on the triggering reading, **re-notifies** (``"renotify"``) from a
    tick every ``repeat_interval`` while it is still firing (only when one is set: by default the
    alerts topic carries transitions, and Alertmanager repeats pages itself), and **resolves**
    (``"resolved"``) on the next *newer* reading of that kind outside the rule's range (for
    ``missed_readings``: when data of that kind returns, or the kind leaves the plan). A
    backfilled reading that would have opened one gives a ``"recorded"`` event (opened and
    resolved at its time, never paged).
Compound risk
    A patient whose support flags include ``no_support_network`` or ``support_lapsed`` gets alerts
    one level higher (warning -> critical -> emergency) with ``unsupported=True``. If a patient
    becomes unsupported while an episode is firing, the episode is escalated once and re-notified
    immediately with ``escalated_from`` set; an episode is never de-escalated (it resolves instead).
Missed readings
    Evaluated only on a tick (a clock, not data arrival): for a kind planned ``n`` times a day the
    interval is ``24 h / n`` and the episode opens at ``last reading + factor x interval`` (the
    moment the gap began, so its ``alert_id`` does not depend on how often ticks come). Without any
    reading the reference is the patient's ``registered_at``, else the first tick after the plan
    was seen.
Identity and time
    ``alert_id`` is a hash of patient, rule, kind and ``opened_at``: stable across restarts and
    replays. All datetimes are timezone-aware UTC; a naive datetime raises ``ValueError``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Literal

from monitor.alerts.rules import (
    RULES_BY_ID,
    Check,
    RuleOutcome,
    Severity,
    checks_for,
    escalate,
)

if TYPE_CHECKING:
    from monitor.alerts.streams import Stream
    from monitor.alerts.timers import Timers

MISSED = "missed_readings"

Notification = Literal["firing", "renotify", "resolved", "recorded"]
Status = Literal["firing", "resolved"]
SupportFlags = Mapping[str, Collection[str]]
"""patient_id -> the patient's current support flags (e.g. ``{"support_lapsed"}``)."""


def require_utc(ts: datetime, name: str) -> datetime:
    """``ts`` in UTC; raises ``TypeError`` for a non-datetime, ``ValueError`` for a naive one."""
    if not isinstance(ts, datetime):
        raise TypeError(f"{name} must be a datetime")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return ts.astimezone(UTC)


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 in UTC with ``Z`` (``None`` stays ``None``)."""
    return None if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    """The inverse of :func:`iso`; raises ``ValueError`` on a time without a zone."""
    return None if text is None else require_utc(datetime.fromisoformat(text), "snapshot time")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


_ISO_AT: dict[datetime, str] = {}
_ISO_LAST: list[Any] = [None, ""]


def _iso_at(ts: datetime) -> str:
    """:func:`iso` of an aware time, cached (equal instants give equal text; bounded). The events
    of one tick share one ``now``: the same object as the previous call is answered first."""
    last = _ISO_LAST
    if ts is last[0]:
        return last[1]  # type: ignore[no-any-return]
    text = _ISO_AT.get(ts)
    if text is None:
        if len(_ISO_AT) >= 4096:
            _ISO_AT.clear()
        text = _ISO_AT[ts] = iso(ts)  # type: ignore[assignment]
    last[0], last[1] = ts, text
    return text


def hours(delta: timedelta) -> float:
    """A duration in hours, rounded to 6 decimals (the unit of ``missed_readings``)."""
    return round(delta.total_seconds() / 3600.0, 6)


def alert_id_for(patient_id: str, rule: str, kind: str, opened_at: datetime) -> str:
    """The deterministic id of an episode: a hash of patient, rule, kind and ``opened_at`` (UTC)."""
    return _digest(patient_id, rule, kind, iso(require_utc(opened_at, "opened_at")) or "")


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Engine settings (all durations positive; event time).

    ``repeat_interval``: re-notify a firing episode this long after its last notification;
    ``None`` (the default): never. Re-notifying is Alertmanager's job (each route's
    ``repeat_interval`` pages again while the alert is active; the worker keeps firing alerts
    active by re-posting them, ``MONITOR_ALERT_REPOST_S``); an hourly re-notification on the
    alerts topic was 97 % of its events (97,081 of 100,384 in a 200-patient, 10-day replay).
    ``weight_window``: ``weight_gain`` compares with the lowest weight in this window before a reading.
    ``stale_after``: if set, a reading older than the tick watermark minus this opens no episode.
    ``retain_resolved``: resolved episodes stay listed by ``AlertEngine.episodes`` this long
    (measured from the latest tick); ``None`` keeps every episode for the engine's lifetime (the
    offline replay lists every episode of its span; memory and snapshots then grow with them).
    """

    repeat_interval: timedelta | None = None
    weight_window: timedelta = timedelta(days=3)
    stale_after: timedelta | None = None
    retain_resolved: timedelta | None = timedelta(days=7)

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
            data[name] = iso(data[name])
        return data

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AlertEvent:
        """The inverse of :meth:`to_json` (a document of the alerts topic). Raises ``KeyError``,
        ``TypeError`` or ``ValueError`` on a document that is not one (a naive time included)."""
        names = cls.__dataclass_fields__  # type: ignore[attr-defined]
        data = {k: v for k, v in doc.items() if k in names}
        for name in ("opened_at", "resolved_at", "event_at"):
            data[name] = parse_iso(data.get(name))
        if data["opened_at"] is None or data["event_at"] is None:
            raise ValueError("an alert event needs opened_at and event_at")
        if data["status"] not in ("firing", "resolved"):
            raise ValueError("unknown alert status")
        return cls(**data)


@dataclass(slots=True)
class Episode:
    """One episode's state (times aware UTC; ``resolved_at`` ``None`` while firing)."""

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
        """JSON-ready fields, times ISO 8601 UTC with ``Z`` (also the rows of ``episodes()``)."""
        data = asdict(self)
        for name in ("opened_at", "resolved_at", "last_notified_at"):
            data[name] = iso(data[name])
        return data

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Episode:
        """The inverse of :meth:`to_state`; raises ``TypeError``/``ValueError`` on malformed fields."""
        values = dict(data)
        for name in ("opened_at", "resolved_at", "last_notified_at"):
            values[name] = parse_iso(values[name])
        return cls(**values)


def allowed_gap(info: PatientInfo, kind: str) -> timedelta | None:
    """The gap after which a planned kind is missed (``None``: not planned, or the factor is not
    positive)."""
    per_day = info.plan.get(kind)
    if not per_day or per_day <= 0 or not math.isfinite(per_day):
        return None
    factor = info.thresholds.get(MISSED, RULES_BY_ID[MISSED].threshold)
    if factor <= 0:
        return None
    return timedelta(seconds=86_400.0 / per_day * factor)


def missed_episode(patient_id: str, kind: str, reference: datetime, allowed: timedelta, now: datetime,
                   unsupported: bool) -> Episode:
    """The ``missed_readings`` episode a tick at ``now`` opens for a kind last seen at ``reference``
    (opened when the gap began: ``reference + allowed``)."""
    opened_at = reference + allowed
    severity = RULES_BY_ID[MISSED].severity
    return Episode(
        alert_id=alert_id_for(patient_id, MISSED, kind, opened_at),
        patient_id=patient_id,
        rule=MISSED,
        kind=kind,
        severity=str(escalate(severity) if unsupported else severity),
        unsupported=unsupported,
        value=hours(now - reference),
        threshold=hours(allowed),
        unit="h",
        opened_at=opened_at,
        resolved_at=None,
        last_notified_at=now,
    )


def opened(patient_id: str, kind: str, outcome: RuleOutcome, at: datetime, unsupported: bool) -> Episode:
    """A new episode of ``outcome``'s rule opened at ``at`` (one level higher when unsupported)."""
    rule = outcome.rule
    return Episode(
        alert_id=alert_id_for(patient_id, rule.rule_id, kind, at),
        patient_id=patient_id,
        rule=rule.rule_id,
        kind=kind,
        severity=str(escalate(rule.severity) if unsupported else rule.severity),
        unsupported=unsupported,
        value=outcome.value,
        threshold=outcome.threshold,
        unit=rule.unit,
        opened_at=at,
        resolved_at=None,
        last_notified_at=at,
    )


@dataclass(slots=True)
class PatientInfo:
    """What the engine knows of a patient: region, thresholds (overrides applied), plan."""

    region: str | None
    overrides: dict[str, float]
    thresholds: dict[str, float]
    plan: dict[str, float]
    registered_at: datetime | None
    plan_seen_at: dict[str, datetime] = field(default_factory=dict)
    checks: dict[str, tuple[Check, ...]] = field(default_factory=dict)
    """kind -> :func:`~monitor.alerts.rules.checks_for` with ``thresholds`` (a cache, not state)."""
    gaps: dict[str, timedelta | None] = field(default_factory=dict, compare=False, repr=False)
    """kind -> :func:`allowed_gap` (a cache, not state: a patient update replaces the info)."""

    def checks_for(self, kind: str) -> tuple[Check, ...]:
        cached = self.checks.get(kind)
        if cached is None:
            cached = self.checks[kind] = checks_for(kind, self.thresholds)
        return cached


class EpisodeLifecycle:
    """The lifecycle half of the alert engine (a mixin of ``AlertEngine``, which owns the state).

    Every method decides one transition and returns its :class:`AlertEvent`; none raises on
    clinical input.
    """

    config: AlertConfig
    _clock: Callable[[], datetime]
    _patients: dict[str, PatientInfo]
    _streams: dict[tuple[str, str], Stream]
    _open: dict[tuple[str, str, str], Episode]
    _resolved: list[Episode]
    _watermark: datetime | None
    _timers: Timers

    def _decide(
        self, patient_id: str, kind: str, outcome: RuleOutcome, at: datetime, order: int, stale: bool,
        unsupported: bool,
    ) -> AlertEvent | None:
        """One rule on one live (not backfilled) reading measured at ``at``: open, keep, escalate
        or resolve its episode. ``order``: 1 newer than the latest of its kind before it, 0 at
        that time, -1 older."""
        key = (patient_id, outcome.rule.rule_id, kind)
        holds = outcome.holds and outcome.value is not None
        ep = self._open.get(key)
        if ep is not None:
            if holds:
                if order >= 0:
                    ep.value = outcome.value
                return self._maybe_escalate(ep, unsupported, at)
            if order > 0:
                return self._resolve(ep, at, outcome.value)
            return None  # only a newer reading resolves
        if not (holds and outcome.opens) or stale:
            return None
        if order < 0 and self._covered(key, at):
            return None
        ep = self._open[key] = opened(patient_id, kind, outcome, at, unsupported)
        self._timers.opened(key, ep)
        return self._event(ep, "firing", at, late=order < 0)

    def _covered(self, key: tuple[str, str, str], at: datetime) -> bool:
        """Whether a retained resolved episode of ``key`` ended at or after ``at``: an out-of-order
        reading measured then belongs to an episode already notified (or to the time before it),
        so a redelivered reading that an episode covered when it first came opens nothing."""
        patient_id, rule_id, kind = key
        self._prune_resolved()
        return any(
            ep.resolved_at is not None and ep.resolved_at >= at and ep.patient_id == patient_id
            and ep.rule == rule_id and ep.kind == kind
            for ep in self._resolved
        )

    def _recorded(self, patient_id: str, kind: str, outcome: RuleOutcome, at: datetime,
                  unsupported: bool) -> AlertEvent:
        """The record of an episode a backfilled reading would have opened: opened and resolved
        at its ``measured_at``, never paged, no engine state."""
        ep = opened(patient_id, kind, outcome, at, unsupported)
        ep.resolved_at = at
        return self._event(ep, "recorded", at, late=True)

    def _maybe_escalate(self, ep: Episode, unsupported: bool, at: datetime) -> AlertEvent | None:
        if ep.unsupported or not unsupported:
            return None
        previous = ep.severity
        ep.severity = str(escalate(Severity(ep.severity)))
        ep.unsupported = True
        self._timers.escalated(ep)
        at = max(at, ep.last_notified_at)
        ep.last_notified_at = at
        ep.notifications += 1
        return self._event(ep, "renotify", at, escalated_from=previous)

    def _resolve(self, ep: Episode, at: datetime, value: float | None) -> AlertEvent:
        ep.resolved_at = max(at, ep.opened_at)
        ep.value = value
        del self._open[(ep.patient_id, ep.rule, ep.kind)]
        self._timers.closed(ep)
        self._resolved.append(ep)
        return self._event(ep, "resolved", ep.resolved_at)

    def _prune_resolved(self) -> None:
        """Apply a deferred forgetting of resolved episodes (none here; see the timers)."""

    def _allowed_gap(self, info: PatientInfo, kind: str) -> timedelta | None:
        gaps = info.gaps
        if kind in gaps:
            return gaps[kind]
        gap = gaps[kind] = allowed_gap(info, kind)
        return gap

    def _resolve_missed_on_data(
        self, patient_id: str, kind: str, latest: datetime, info: PatientInfo | None
    ) -> AlertEvent | None:
        ep = self._open.get((patient_id, MISSED, kind))
        if ep is None:
            return None
        allowed = self._allowed_gap(info, kind) if info else None
        now = max(latest, self._watermark) if self._watermark else latest
        if allowed is not None and now - latest >= allowed:
            return None  # the data that came in is itself overdue: the gap persists
        return self._resolve(ep, latest, 0.0 if allowed is None else hours(now - latest))

    def _event(
        self,
        ep: Episode,
        notification: Notification,
        at: datetime,
        *,
        escalated_from: str | None = None,
        late: bool = False,
    ) -> AlertEvent:
        info = self._patients.get(ep.patient_id)
        alert_id = ep.alert_id
        text = f"{alert_id}\x1f{notification}\x1f{_iso_at(at)}"
        if escalated_from:
            text = f"{text}\x1f{escalated_from}"
        # positional, in field order (the reference engine builds the same event by keyword)
        return AlertEvent(
            alert_id, sha256(text.encode("utf-8")).hexdigest()[:32], ep.patient_id, ep.rule, ep.kind,
            ep.severity, "firing" if ep.resolved_at is None else "resolved", notification, ep.unsupported,
            ep.value, ep.threshold, ep.unit, ep.opened_at, ep.resolved_at, at,
            info.region if info else None, escalated_from, late,
        )
