"""Alarm load: how many pages a clinician gets per 1,000 patient-days, before and after.

Workload: the simulator's population (1,000 patients, 14 days, seed 7) replayed through the
pipeline; every alert event goes through a model of Alertmanager's notification pipeline
(aggregation groups by ``group_by``; first flush after ``group_wait``, then every
``group_interval``; a group notifies when its set of firing alerts changed since its last
notification, or when ``repeat_interval`` passed since it; inhibited alerts left out), in event
time. Nobody acknowledges a page (the worst case), so every critical and emergency escalates; the
senior on call acknowledges an escalation 15 min later (``ACK_AFTER_ESCALATION_S``), which
silences the alert.

* ``before``: the rule set, intervals and routes when the alerting issue was filed: the engine's
  hourly re-notification, routes grouped by patient and rule, every receiver a page (webhook),
  critical repeated every 30 min, warning every 4 h, band inhibition only.
* ``after``: today's ``deploy/alertmanager.yml`` (routes and intervals read from the file):
  grouped by patient, warnings by email (a message, not a page), an emergency inhibits the same
  kind, ``missed_readings`` paged once and then daily, tier-2 escalation after 30 / 15 min.

``pages_per_1000_patient_days_*`` counts notifications to paging routes (webhooks to the on-call
tool); ``messages_*`` every notification (email included). ``dangerous_unpaged``: critical or
emergency episodes (a reading beyond a critical threshold) that never appeared in a page.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench.results import merge_section
from monitor.alerts.engine import AlertConfig, AlertEvent
from monitor.alerts.rules import RULES_BY_ID, Severity
from monitor.replay import replay_pipeline
from monitor.simulate import SimConfig, write_ndjson

CONFIG = SimConfig(patients=1_000, days=14, seed=7, end=datetime(2026, 11, 1, tzinfo=UTC))
ROOT = Path(__file__).resolve().parents[1]
ACK_AFTER_ESCALATION_S = 900.0
"""The model's one assumption about people: an escalated (tier-2) alert is acknowledged 15 min
after the escalation; nothing else is ever acknowledged."""
BAND = {"glucose_low": "glucose_very_low", "glucose_high": "glucose_very_high", "spo2_low": "spo2_very_low",
        "heart_rate_low": "heart_rate_very_low", "heart_rate_high": "heart_rate_very_high"}


@dataclass(frozen=True)
class Route:
    name: str
    severities: tuple[str, ...]
    group_by: tuple[str, ...]
    wait: float
    interval: float
    repeat: float
    page: bool  # a webhook into the on-call tool (else email: a message)
    tier: str | None = None
    rule: str | None = None


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * units[text[-1]]


BEFORE = [  # deploy/alertmanager.yml when the alerting issue was filed (all webhooks)
    Route("emergency", ("emergency",), ("patient_id", "rule"), 0, 60, 900, True),
    Route("critical", ("critical",), ("patient_id", "rule"), 10, 120, 1800, True),
    Route("warning", ("warning",), ("patient_id", "rule"), 60, 600, 14400, True),
]


def after_routes() -> list[Route]:
    """The clinical routes of today's deploy/alertmanager.yml."""
    cfg = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text())
    top = cfg["route"]
    receivers = {r["name"]: r for r in cfg["receivers"]}
    out = []
    for r in top["routes"]:
        (matcher,) = r["matchers"]
        key, _, value = matcher.partition("=")
        if key not in ("severity", "tier", "rule"):
            continue
        value = value.strip('"')
        subs = [*r.get("routes", []), {"matchers": ['severity=~"' + "|".join(
            sv for sv in ("warning", "critical", "emergency")
            if not any(sv in (m.get("matchers") or [""])[0] for m in r.get("routes", []))) + '"']}]
        for sub in subs if key == "rule" else [{}]:
            # a rule's route splits by severity in its sub-routes (care-team sub-routes aside)
            sub_matcher = (sub.get("matchers") or [""])[0]
            if key == "rule" and not sub_matcher.startswith("severity"):
                continue
            severities = (("critical", "emergency") if key == "tier" else
                          tuple(sub_matcher.split("=~")[-1].strip('"').split("|")) if key == "rule"
                          else (value,))
            merged = {**r, **sub}
            receiver = receivers[merged["receiver"]]
            out.append(Route(merged["receiver"], severities, tuple(merged.get("group_by", top["group_by"])),
                             _seconds(merged.get("group_wait", r["group_wait"])),
                             _seconds(merged.get("group_interval", r["group_interval"])),
                             _seconds(merged.get("repeat_interval", r["repeat_interval"])),
                             page="webhook_configs" in receiver, tier=value if key == "tier" else None,
                             rule=value if key == "rule" else None))
    return out


@dataclass
class Alert:
    labels: dict[str, str]
    start: float
    end: float  # inf while firing
    silenced_from: float = float("inf")  # acknowledged: Alertmanager notifies nothing after


def am_alerts(events: list[AlertEvent], escalate_after: dict[str, float]) -> list[Alert]:
    """Alertmanager's alerts (one per identity and firing span) from the engine's events; with
    ``escalate_after``, the notifier's tier-2 copies of the alerts nobody acknowledged."""
    open_: dict[tuple[str, str], Alert] = {}
    out: list[Alert] = []
    inf = float("inf")
    for e in sorted(events, key=lambda e: e.event_at):
        if e.notification == "recorded":
            continue
        t = e.event_at.timestamp()
        key = (e.alert_id, e.severity)
        if e.status == "resolved":
            for k in [k for k in open_ if k[0] == e.alert_id]:
                open_.pop(k).end = t
            continue
        if e.escalated_from:
            old = open_.pop((e.alert_id, e.escalated_from), None)
            if old is not None:
                old.end = t
        if key not in open_:
            a = Alert({"patient_id": e.patient_id, "rule": e.rule, "kind": e.kind, "severity": e.severity,
                       "alert_id": e.alert_id}, t, inf)
            open_[key] = a
            out.append(a)
    for a in list(out):
        after = escalate_after.get(a.labels["severity"])
        if after is not None and a.end - a.start >= after:
            # the senior on call answers the escalation within ACK_AFTER_ESCALATION_S: silenced
            a.silenced_from = a.start + after + ACK_AFTER_ESCALATION_S
            out.append(Alert({**a.labels, "tier": "2"}, a.start + after, a.end, a.silenced_from))
    return out


def inhibited(a: Alert, t: float, firing: list[Alert], emergency_inhibits: bool) -> bool:
    for s in firing:
        if s is a or s.labels["patient_id"] != a.labels["patient_id"]:
            continue
        if BAND.get(a.labels["rule"]) == s.labels["rule"]:
            return True
        if (emergency_inhibits and s.labels["severity"] == "emergency" and a.labels["severity"] != "emergency"
                and s.labels["kind"] == a.labels["kind"] and "tier" not in a.labels):
            return True
    return False


def notifications(alerts: list[Alert], routes: list[Route], emergency_inhibits: bool,
                  horizon: float) -> tuple[list[tuple[float, Route, frozenset[str]]], set[str]]:
    """Every notification (time, route, alert ids firing in it) and the ids ever paged."""
    def route_of(a: Alert) -> Route | None:
        for r in routes:
            if r.tier is not None:
                if a.labels.get("tier") == r.tier:
                    return r
            elif r.rule is not None:
                if ("tier" not in a.labels and a.labels["rule"] == r.rule
                        and a.labels["severity"] in r.severities):
                    return r
            elif "tier" not in a.labels and a.labels["severity"] in r.severities:
                return r
        return None

    groups: dict[tuple[int, tuple[str, ...]], list[Alert]] = defaultdict(list)
    for a in alerts:
        r = route_of(a)
        if r is not None:
            groups[(routes.index(r), tuple(a.labels.get(k, "") for k in r.group_by))].append(a)
    by_patient: dict[str, list[Alert]] = defaultdict(list)
    for a in alerts:
        by_patient[a.labels["patient_id"]].append(a)
    sent: list[tuple[float, Route, frozenset[str]]] = []
    paged: set[str] = set()
    for (index, _), members in groups.items():
        r = routes[index]
        members.sort(key=lambda a: a.start)
        changes = sorted({a.start for a in members} | {a.end for a in members if a.end < horizon}
                         | {a.silenced_from for a in members if a.silenced_from < horizon})
        t = members[0].start + r.wait
        last_set: frozenset[str] = frozenset()
        last_at = -float("inf")
        while t <= horizon:
            patient = by_patient[members[0].labels["patient_id"]]
            live = [a for a in patient if a.start <= t < a.end]
            firing = frozenset(id(a) for a in members if a.start <= t < min(a.end, a.silenced_from)
                               and not inhibited(a, t, live, emergency_inhibits))
            if firing and (firing != last_set or t - last_at >= r.repeat):
                sent.append((t, r, frozenset(a.labels["alert_id"] for a in members if id(a) in firing)))
                if r.page:
                    paged.update(a.labels["alert_id"] for a in members if id(a) in firing)
                last_set, last_at = firing, t
            elif not firing:
                last_set = frozenset()
            # jump to the next tick where something can happen: a change or a due repeat
            nxt = [c for c in changes if c > t]
            due = [last_at + r.repeat] if firing else []
            target = min(nxt + due) if (nxt or due) else horizon + 1
            steps = max(1, int((target - t) // r.interval + (1 if (target - t) % r.interval else 0)))
            t += steps * r.interval
    return sent, paged


def events_of(hourly: bool) -> tuple[list[AlertEvent], float]:
    buf = io.StringIO()
    write_ndjson(CONFIG, buf)
    lines = buf.getvalue().splitlines()
    events: list[AlertEvent] = []
    cfg = AlertConfig(repeat_interval=timedelta(hours=1)) if hourly else AlertConfig()
    pipe, as_of = replay_pipeline(lines, alert_config=cfg, final_tick=False,
                                  on_result=lambda r: events.extend(r.alerts))
    for p in sorted(pipe.partitions):
        st = pipe.partitions[p]
        if as_of is not None:
            events.extend(pipe.tick_partition(st, at=as_of).alerts)
    return events, float(as_of or 0)


def measure(events: list[AlertEvent], horizon: float, routes: list[Route], emergency_inhibits: bool,
            escalate: dict[str, float]) -> dict[str, Any]:
    alerts = am_alerts(events, escalate)
    sent, paged = notifications(alerts, routes, emergency_inhibits, horizon)
    start = horizon - CONFIG.days * 86400  # the simulated span (earlier: registrations, networks)
    sent = [n for n in sent if n[0] >= start]
    patient_days = CONFIG.patients * CONFIG.days
    # readings beyond a critical threshold: episodes of the rules that are critical by default
    dangerous = {e.alert_id for e in events if e.notification == "firing"
                 and RULES_BY_ID[e.rule].severity == Severity.critical and e.event_at.timestamp() >= start}
    return {"pages_per_1000_patient_days": round(1000 * sum(r.page for _, r, _ in sent) / patient_days, 2),
            "messages_per_1000_patient_days": round(1000 * len(sent) / patient_days, 2),
            "episodes": len({e.alert_id for e in events}),
            "dangerous_unpaged": len(dangerous - paged)}


def main() -> None:
    before_events, horizon = events_of(hourly=True)
    after_events, _ = events_of(hourly=False)
    before = measure(before_events, horizon, BEFORE, False, {})
    after = measure(after_events, horizon, after_routes(), True, {"critical": 1800.0, "emergency": 900.0})
    values = {
        "pages_per_1000_patient_days_before": before["pages_per_1000_patient_days"],
        "pages_per_1000_patient_days_after": after["pages_per_1000_patient_days"],
        "reduction": round(before["pages_per_1000_patient_days"]
                           / max(after["pages_per_1000_patient_days"], 1e-9), 2),
        "messages_per_1000_patient_days_before": before["messages_per_1000_patient_days"],
        "messages_per_1000_patient_days_after": after["messages_per_1000_patient_days"],
        "dangerous_unpaged": after["dangerous_unpaged"],
        "dangerous_unpaged_before": before["dangerous_unpaged"],
        "episodes": after["episodes"],
        "target": "reduction >= 5 with dangerous_unpaged 0",
        "workload": f"simulate {CONFIG.patients} patients x {CONFIG.days} days (seed {CONFIG.seed}); "
                    "a model of Alertmanager's grouping, repeats, inhibition and silences in event time; "
                    "escalated alerts acknowledged 15 min after escalation, nothing else acknowledged",
    }
    print(merge_section("alert_load", values))


if __name__ == "__main__":
    main()
