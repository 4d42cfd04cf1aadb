"""The notifier's delivery logic (monitor.notify, monitor.alerts.delivery) without a broker.

The Kafka side (commit after accept, seek back, restart, Alertmanager outage) is tested end to end
in tests/integration/test_alerting_e2e.py against the real broker and the real Alertmanager.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.alerts.alertmanager import AlertmanagerClient, AlertmanagerError
from monitor.alerts.delivery import FiringSet
from monitor.alerts.episodes import AlertEvent
from monitor.notify import Notifier
from monitor.settings import Settings
from tests.unit.test_alertmanager_client import T0, FakeAlertmanager, lifecycle


@pytest.fixture
def am() -> Iterator[FakeAlertmanager]:
    server = FakeAlertmanager()
    yield server
    server.close()


def event(alert_id: str, status: str, notification: str, minute: int) -> AlertEvent:
    firing, _ = lifecycle()
    return replace(firing, alert_id=alert_id, event_id=f"{alert_id}-{minute}", status=status,
                   notification=notification, event_at=T0 + timedelta(minutes=minute),
                   resolved_at=T0 + timedelta(minutes=minute) if status == "resolved" else None)


KINDS = [("firing", "firing"), ("firing", "renotify"), ("resolved", "resolved"), ("resolved", "recorded"),
         ("firing", "recorded")]
events_st = st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(KINDS)), max_size=40).map(
    lambda xs: [event(a, s, n, i) for i, (a, (s, n)) in enumerate(xs)])


@settings(max_examples=200, deadline=None)
@given(events_st, st.integers(min_value=0, max_value=40))
def test_firing_set_is_the_last_event_of_each_paged_episode_and_redelivery_changes_nothing(
        events: list[AlertEvent], replay_from: int) -> None:
    last = {e.alert_id: e for e in events}  # the reference: last event per episode
    want = {a for a, e in last.items() if e.status == "firing" and e.notification != "recorded"}
    firing = FiringSet()
    for e in events:
        firing.apply(e)
    assert {e.alert_id for e in firing.events()} == want
    assert all(firing.events()[i] is last[e.alert_id] for i, e in enumerate(firing.events()))
    for e in events[replay_from:]:  # a crash before the commit: the suffix comes again
        firing.apply(e)
    assert {e.alert_id for e in firing.events()} == want


def notifier(url: str, window_s: float = 1.0) -> Notifier:
    return Notifier(Settings(), AlertmanagerClient(url, timeout=1), retry_window_s=window_s)


def test_a_refused_alert_is_counted_and_the_rest_of_the_fetch_is_delivered(am: FakeAlertmanager) -> None:
    good = lifecycle()
    bad = [replace(e, patient_id="p-refused", alert_id="x" + e.alert_id) for e in good]
    am.refuse_patient = "p-refused"
    n = notifier(am.url)

    async def run() -> None:
        async with n.client:
            await n.deliver([bad[0], *good, bad[1]])

    asyncio.run(run())
    assert [a["labels"]["patient_id"] for a in am.accepted] == ["p1", "p1"]
    assert n.metrics.rejected._value.get() == 2
    assert n.metrics.accepted._value.get() == 2


def test_an_unreachable_alertmanager_raises_after_the_retry_window_and_counts_each_attempt() -> None:
    server = FakeAlertmanager()
    url = server.url
    server.close()  # nothing listens there any more
    n = notifier(url, window_s=1.0)

    async def run() -> None:
        async with n.client:
            await n.deliver(lifecycle())

    with pytest.raises(AlertmanagerError, match="unreachable"):
        asyncio.run(run())
    assert n.metrics.failures.labels("unreachable")._value.get() >= 2  # retried, not given up at once
    assert n.metrics.accepted._value.get() == 0


def test_a_5xx_is_retried_until_accepted(am: FakeAlertmanager) -> None:
    am.status = 503
    n = notifier(am.url, window_s=10.0)

    async def heal() -> None:
        await asyncio.sleep(0.5)
        am.status = 200

    async def run() -> None:
        async with n.client:
            await asyncio.gather(n.deliver(lifecycle()), heal())

    asyncio.run(run())
    assert len(am.accepted) == 2
    assert n.metrics.failures.labels("http_5xx")._value.get() >= 1


def test_an_unacked_critical_escalates_once_after_its_time_and_an_acked_one_never() -> None:
    from datetime import UTC, datetime

    from monitor.alerts.actions import AlertAction
    from monitor.alerts.delivery import Responses

    r = Responses({"critical": 1800.0, "emergency": 900.0})
    crit = replace(event("c", "firing", "firing", 0), severity="critical")
    emer = replace(event("e", "firing", "firing", 0), severity="emergency")
    warn = replace(event("w", "firing", "firing", 0), severity="warning")
    acked = replace(event("a", "firing", "firing", 0), severity="emergency")
    r.apply(AlertAction("ack", "a", datetime(2026, 1, 1, tzinfo=UTC), by="dr-a"))
    firing = [(crit, 1000.0), (emer, 1000.0), (warn, 1000.0), (acked, 1000.0)]
    assert r.due(firing, 1899.0) == []
    assert r.due(firing, 1900.0) == [emer]
    assert r.due(firing, 2800.0) == [crit, emer]
    for e in (crit, emer):  # the notifier publishes the escalation, then applies it
        assert r.apply(AlertAction("escalate", e.alert_id, datetime(2026, 1, 1, tzinfo=UTC), by="notifier",
                                   tier=2))
    assert r.due(firing, 10_000.0) == []  # once
    # the first ack counts
    assert not r.apply(AlertAction("ack", "a", datetime(2026, 1, 1, 1, tzinfo=UTC), by="dr-b"))
    r.forget("a")
    assert r.due(firing, 10_000.0) == [acked]  # a resolved-and-forgotten ack does not carry over


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["ack", "escalate"]), st.text(min_size=1, max_size=40).filter(str.strip),
       st.text(max_size=80), st.datetimes(timezones=st.just(__import__("datetime").UTC)))
def test_alert_actions_round_trip_through_json(action: str, by: str, note: str, at) -> None:
    import json

    from monitor.alerts.actions import AlertAction

    a = AlertAction(action, "alert-1", at, by=by, note=note, tier=2 if action == "escalate" else None)  # type: ignore[arg-type]
    back = AlertAction.from_json(json.loads(a.dumps()))
    assert back == a and back.action_id == a.action_id


def test_naive_or_empty_actions_are_refused() -> None:
    from datetime import datetime

    from monitor.alerts.actions import AlertAction

    with pytest.raises(ValueError, match="timezone"):
        AlertAction("ack", "x", datetime(2026, 1, 1), by="dr-a")
    with pytest.raises(ValueError, match="by"):
        AlertAction("ack", "x", T0, by="  ")
