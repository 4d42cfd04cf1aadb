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

from monitor.alerts.episodes import AlertEvent


class FiringSet:
    """The latest event of every firing, pageable episode (by ``alert_id``)."""

    __slots__ = ("_firing",)

    def __init__(self) -> None:
        self._firing: dict[str, AlertEvent] = {}

    def apply(self, event: AlertEvent) -> None:
        """Take one event of the alerts topic (in offset order)."""
        if event.status == "firing" and event.notification != "recorded":
            self._firing[event.alert_id] = event
        else:  # resolved (or a backfilled episode's record, never paged): nothing to keep alive
            self._firing.pop(event.alert_id, None)

    def events(self) -> list[AlertEvent]:
        """The firing episodes' latest events, oldest episode first."""
        return sorted(self._firing.values(), key=lambda e: (e.opened_at, e.alert_id))

    def __len__(self) -> int:
        return len(self._firing)

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._firing
