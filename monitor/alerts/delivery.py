"""What the notifier must keep telling Alertmanager: the firing alerts, as the alerts topic says.

Pure state, no I/O (the Kafka and HTTP side is :mod:`monitor.notify`). The alerts topic carries
transitions only (``firing``, ``renotify`` on an escalation, ``resolved``; ``recorded`` for
backfilled episodes, never paged). Alertmanager forgets an alert it has not heard of for its
``resolve_timeout``, and forgets everything on a restart, so the notifier re-posts every firing
alert on its own clock. :class:`FiringSet` is that set: the latest event of each episode whose
latest event is firing, rebuilt after a restart by reading the topic from its beginning.

Order: events of one episode are on one partition (the patient's), in the order the engine
emitted them, so applying them in offset order gives the episode's current state. Applying the
same events again (a redelivery after a failed post or a crash) gives the same set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from monitor.alerts.actions import AlertAction
from monitor.alerts.episodes import AlertEvent


class FiringSet:
    """The latest event of every firing, pageable episode (by ``alert_id``), and since when it
    has been on the topic (``since``: the Kafka timestamp of its first firing event, seconds)."""

    __slots__ = ("_firing", "since")

    def __init__(self) -> None:
        self._firing: dict[str, AlertEvent] = {}
        self.since: dict[str, float] = {}

    def apply(self, event: AlertEvent, published_s: float = 0.0) -> None:
        """Take one event of the alerts topic (in offset order; ``published_s`` its timestamp)."""
        if event.status == "firing" and event.notification != "recorded":
            self._firing[event.alert_id] = event
            self.since.setdefault(event.alert_id, published_s)
        else:  # resolved (or a backfilled episode's record, never paged): nothing to keep alive
            self._firing.pop(event.alert_id, None)
            self.since.pop(event.alert_id, None)

    def get(self, alert_id: str) -> AlertEvent | None:
        return self._firing.get(alert_id)

    def events(self) -> list[AlertEvent]:
        """The firing episodes' latest events, oldest episode first."""
        return sorted(self._firing.values(), key=lambda e: (e.opened_at, e.alert_id))

    def __len__(self) -> int:
        return len(self._firing)

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._firing


class Responses:
    """Who answered: the acknowledgements and escalations of the ``alert-actions`` topic, and
    which firing alerts are due for escalation.

    ``escalate_after`` maps a severity to seconds without an acknowledgement after which its alert
    goes to tier 2 (severities not in it never escalate). An alert escalates once.
    """

    def __init__(self, escalate_after: Mapping[str, float]) -> None:
        self.escalate_after = dict(escalate_after)
        self.acked: dict[str, AlertAction] = {}
        self.escalated: dict[str, AlertAction] = {}

    def apply(self, action: AlertAction) -> bool:
        """Take one action; whether it is new (a second ack of an alert is not)."""
        table = self.acked if action.action == "ack" else self.escalated
        if action.alert_id in table:
            return False
        table[action.alert_id] = action
        return True

    def forget(self, alert_id: str) -> None:
        """The episode resolved: its acknowledgement and escalation are history (on the topic)."""
        self.acked.pop(alert_id, None)
        self.escalated.pop(alert_id, None)

    def due(self, firing: Iterable[tuple[AlertEvent, float]], now_s: float) -> list[AlertEvent]:
        """The alerts of ``firing`` (event, since seconds) to escalate at ``now_s``."""
        out = []
        for event, since in firing:
            after = self.escalate_after.get(event.severity)
            if (after is not None and now_s - since >= after and event.alert_id not in self.acked
                    and event.alert_id not in self.escalated):
                out.append(event)
        return out
