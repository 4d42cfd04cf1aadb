"""The reference alert engine (the tests' oracle) and the version-1 snapshot layout.

:class:`ReferenceAlertEngine` is :class:`~monitor.alerts.engine.AlertEngine` without its shortcuts:
every columnar slice is turned into reading objects, every reading's duplicate keys are hashed,
every rule of its kind is evaluated, and every tick visits every patient, planned kind and open
episode (no timer heap, no cache: the tick of older releases, kept here as it was). The property
tests require both engines to give the same events and the same snapshot bytes, which proves the
shortcuts change nothing. It is slow; nothing in the worker or replay builds one.

Version 1 is the snapshot layout of older releases (a dict per patient and stream, ISO 8601 UTC
times, duplicate keys as hashes). :func:`decode_v1` is how :func:`monitor.alerts.snapshot.decode`
still restores a checkpoint written by them; :func:`snapshot_v1` writes that layout, for the tests
that prove it restores to the same behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from monitor.alerts.engine import AlertEngine
from monitor.alerts.episodes import (
    MISSED,
    AlertEvent,
    Episode,
    Notification,
    PatientInfo,
    SupportFlags,
    _digest,
    alert_id_for,
    allowed_gap,
    hours,
    iso,
    parse_iso,
    require_utc,
)
from monitor.alerts.rules import RULES_BY_ID, effective_thresholds, escalate, is_unsupported
from monitor.alerts.streams import Stream
from monitor.alerts.timers import Key, StreamKey, Timers
from monitor.intake.canonical import CanonicalReading

__all__ = ["ReferenceAlertEngine", "decode_v1", "snapshot_v1"]


class _Untimed(Timers):
    """No deadlines and no indexes: the reference tick visits everything."""

    def opened(self, key: Key, ep: Episode) -> None:
        pass

    def closed(self, ep: Episode) -> None:
        pass

    def escalated(self, ep: Episode) -> None:
        pass

    def touch(self, key: StreamKey) -> None:
        pass

    def patient_changed(self, patient_id: str) -> None:
        pass

    def rebuild(self, open_eps: Mapping[Key, Episode], patients: Collection[str]) -> None:
        pass


class ReferenceAlertEngine(AlertEngine):
    """The alert engine on its reference path: no shortcut (for tests and benchmarks only)."""

    _exhaustive: ClassVar[bool] = True

    def _readings_to_apply(self, readings: Sequence[Any]) -> Sequence[CanonicalReading]:
        """Columnar slices replaced by their reading objects, in place."""
        out: list[CanonicalReading] = []
        for r in readings:
            if type(r) is CanonicalReading:
                out.append(r)
            else:
                out.extend(r.readings())
        return out

    # --- the tick of older releases: O(patients x planned kinds + open episodes) per call ----

    def _new_timers(self) -> Timers:
        return _Untimed(self.config.repeat_interval)

    def tick(
        self, now: datetime | None = None, support_flags: SupportFlags | None = None
    ) -> list[AlertEvent]:
        now = require_utc(self._clock() if now is None else now, "now")
        if self._watermark is not None and now < self._watermark:
            now = self._watermark
        self._watermark = now
        flags = support_flags or {}
        events = self._evaluate_missed(now, flags)
        events.extend(self._renotify_due(now, flags))
        self._forget_resolved(now)
        return events

    def _renotify_due(self, now: datetime, flags: SupportFlags) -> list[AlertEvent]:
        """Escalate firing episodes of patients who became unsupported; re-notify those last
        notified at least ``repeat_interval`` before ``now``."""
        events: list[AlertEvent] = []
        for key in sorted(self._open):
            ep = self._open[key]
            ev = self._maybe_escalate(ep, is_unsupported(flags.get(ep.patient_id)), now)
            if ev is not None:
                events.append(ev)
            elif self.config.repeat_interval is not None and \
                    now - ep.last_notified_at >= self.config.repeat_interval:
                ep.last_notified_at = now
                ep.notifications += 1
                events.append(self._event(ep, "renotify", now))
        return events

    def _forget_resolved(self, now: datetime) -> None:
        """Drop resolved episodes older than ``retain_resolved`` (none when it is ``None``)."""
        if self.config.retain_resolved is None:
            return
        horizon = now - self.config.retain_resolved
        self._resolved = [e for e in self._resolved if e.resolved_at is not None and e.resolved_at >= horizon]

    def _allowed_gap(self, info: PatientInfo, kind: str) -> timedelta | None:
        return allowed_gap(info, kind)  # computed at every call (the engine caches it per patient)

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
                    self._open[key].value = hours(gap)
                    continue
                if gap < allowed:
                    continue
                opened_at = reference + allowed
                severity = RULES_BY_ID[MISSED].severity
                ep = Episode(
                    alert_id=alert_id_for(patient_id, MISSED, kind, opened_at),
                    patient_id=patient_id,
                    rule=MISSED,
                    kind=kind,
                    severity=str(escalate(severity) if unsupported else severity),
                    unsupported=unsupported,
                    value=hours(gap),
                    threshold=hours(allowed),
                    unit="h",
                    opened_at=opened_at,
                    resolved_at=None,
                    last_notified_at=now,
                )
                self._open[key] = ep
                events.append(self._event(ep, "firing", now))
        return events

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
        return AlertEvent(
            alert_id=ep.alert_id,
            event_id=_digest(ep.alert_id, notification, iso(at) or "",
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


def decode_v1(
    state: Mapping[str, Any],
) -> tuple[dict[str, PatientInfo], dict[tuple[str, str], Stream], datetime | None]:
    """Patients, streams and watermark of a version-1 snapshot (episodes are read by the caller:
    their layout did not change); raises ``KeyError``/``TypeError``/``ValueError`` on bad input."""
    patients: dict[str, PatientInfo] = {}
    for pid, p in state["patients"].items():
        thresholds, _ = effective_thresholds(p["overrides"])
        patients[pid] = PatientInfo(
            region=p["region"],
            overrides=dict(p["overrides"]),
            thresholds=thresholds,
            plan={k: float(v) for k, v in p["plan"].items()},
            registered_at=parse_iso(p["registered_at"]),
            plan_seen_at={k: parse_iso(v) for k, v in p["plan_seen_at"].items()},  # type: ignore[misc]
        )
    streams: dict[tuple[str, str], Stream] = {}
    for s in state["streams"]:
        streams[(s["patient_id"], s["kind"])] = Stream(
            s["patient_id"],
            s["kind"],
            latest=parse_iso(s["latest"]),
            opaque=frozenset(s["latest_keys"]),
            weights=[(parse_iso(t), float(w)) for t, w in s["weights"]],  # type: ignore[misc]
        )
    return patients, streams, parse_iso(state["watermark"])


def snapshot_v1(engine: AlertEngine) -> bytes:
    """The engine state in the version-1 layout (the encoder of older releases), deterministic
    UTF-8 JSON. Hashes every duplicate key not hashed yet."""
    engine._settle()
    state = {
        "version": 1,
        "watermark": iso(engine._watermark),
        "patients": {
            pid: {
                "region": p.region,
                "overrides": p.overrides,
                "plan": p.plan,
                "registered_at": iso(p.registered_at),
                "plan_seen_at": {k: iso(v) for k, v in p.plan_seen_at.items()},
            }
            for pid, p in sorted(engine._patients.items())
        },
        "streams": [
            {
                "patient_id": pid,
                "kind": kind,
                "latest": iso(s.latest),
                "latest_keys": sorted(s.keys()),
                "weights": [[iso(t), w] for t, w in s.weights],
            }
            for (pid, kind), s in sorted(engine._streams.items())
        ],
        "open": [engine._open[k].to_state() for k in sorted(engine._open)],
        "resolved": [e.to_state() for e in engine._resolved],
    }
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")
