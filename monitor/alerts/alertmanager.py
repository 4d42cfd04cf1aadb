"""A small client for the Prometheus Alertmanager v2 API (``POST /api/v2/alerts``), stdlib only.

Each :class:`~monitor.alerts.engine.AlertEvent` becomes one Alertmanager alert (or one per
recipient, see below):

* labels (the alert's identity in Alertmanager): ``alertname`` (= rule id), ``rule``,
  ``patient_id``, ``severity``, ``kind``, ``direction`` (``low``/``high``/``none``), and when known
  ``region``, ``care_team`` and ``recipient``;
* annotations: ``value``, ``threshold``, ``unit``, ``unsupported`` (``"true"``/``"false"``),
  ``alert_id``, ``notification``, ``opened_at``, ``summary``;
* ``startsAt`` = the episode's ``opened_at``; ``endsAt`` = ``resolved_at`` on a resolved event
  (omitted while firing, so Alertmanager keeps the alert until ``resolve_timeout`` - the worker
  re-posts firing alerts at each re-notification, so keep ``resolve_timeout`` longer than the
  engine's ``repeat_interval``; see ``deploy/alertmanager.yml``);
* ``generatorURL`` from a template with ``{alert_id}``.

Per-recipient acknowledgement: with ``recipients`` set, every event is posted once per recipient
with a ``recipient`` label, so a silence on ``recipient="dr-a"`` (one clinician's ack) leaves the
other recipients' copies paging. An escalation (``escalated_from`` set) changes the ``severity``
label, i.e. the alert's identity; the client therefore also ends the copy with the old severity.

Backfill: events with ``notification="recorded"`` (episodes of readings received long after they
were measured) are never posted: they are on the alerts topic for the record, not for paging.

Failure behaviour: a non-2xx answer raises :class:`AlertmanagerError` with ``status`` (and the
response ``body`` as an attribute, never in the message); a connection error or timeout raises it
with ``status=None``. Events are posted in batches of ``batch_size`` alerts; on a failure,
``posted`` tells how many alerts were accepted before. There are no retries here: the caller
decides (re-posting is safe, Alertmanager merges alerts by label set). Nothing is logged.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from monitor.alerts.engine import AlertEvent
from monitor.alerts.rules import RULES_BY_ID
from monitor.errors import MonitorError

DEFAULT_GENERATOR_URL = "http://127.0.0.1:8000/alerts/{alert_id}"


class AlertmanagerError(MonitorError):
    """Alertmanager rejected a batch or could not be reached.

    ``status``: the HTTP status (``None`` when unreachable); ``body``: the start of the response
    body (may echo label values, so it is kept out of the message); ``posted``: alerts accepted
    by earlier batches of the same call.
    """

    def __init__(self, message: str, *, status: int | None = None, body: str = "", posted: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.posted = posted


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


class AlertmanagerClient:
    """Posts alert events to one Alertmanager (``base_url`` like ``http://127.0.0.1:9093``).

    ``care_teams`` maps a region to a care-team label (default: the region itself).
    ``recipients`` returns the recipients of an event (one alert copy each, labelled ``recipient``);
    ``None`` posts a single copy without that label. ``timeout`` is in seconds per request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        batch_size: int = 100,
        generator_url: str = DEFAULT_GENERATOR_URL,
        care_teams: Mapping[str, str] | None = None,
        recipients: Callable[[AlertEvent], Sequence[str]] | None = None,
        extra_labels: Mapping[str, str] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("base_url must be an http(s) URL such as http://127.0.0.1:9093")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = base_url.rstrip("/") + "/api/v2/alerts"
        self.timeout = timeout
        self.batch_size = batch_size
        self.generator_url = generator_url
        self.care_teams = dict(care_teams or {})
        self.recipients = recipients
        self.extra_labels = dict(extra_labels or {})

    def alerts_for(self, event: AlertEvent) -> list[dict[str, Any]]:
        """The Alertmanager alert objects (``postableAlert``) for one event."""
        rule = RULES_BY_ID.get(event.rule)
        labels: dict[str, str] = {
            **self.extra_labels,
            "alertname": event.rule,
            "rule": event.rule,
            "patient_id": event.patient_id,
            "severity": event.severity,
            "kind": event.kind,
            "direction": rule.direction if rule else "none",
        }
        if event.region:
            labels["region"] = event.region
            labels["care_team"] = self.care_teams.get(event.region, event.region)
        annotations = {
            "value": _fmt(event.value),
            "threshold": _fmt(event.threshold),
            "unit": event.unit,
            "unsupported": "true" if event.unsupported else "false",
            "alert_id": event.alert_id,
            "notification": event.notification,
            "opened_at": _iso(event.opened_at),
            "summary": (
                f"{event.rule} ({event.severity}{', no support network' if event.unsupported else ''}): "
                f"{_fmt(event.value)} {event.unit}, threshold {_fmt(event.threshold)} {event.unit}"
            ),
        }
        base: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": _iso(event.opened_at),
            "generatorURL": self.generator_url.format(alert_id=event.alert_id),
        }
        if event.status == "resolved" and event.resolved_at is not None:
            base["endsAt"] = _iso(event.resolved_at)
        variants = [base]
        if event.escalated_from and event.escalated_from != event.severity:
            ended = {
                **base,
                "labels": {**labels, "severity": event.escalated_from},
                "endsAt": _iso(event.event_at),
            }
            variants = [ended, base]
        recipients = list(self.recipients(event)) if self.recipients else []
        if not recipients:
            return variants
        return [{**v, "labels": {**v["labels"], "recipient": who}} for who in recipients for v in variants]

    def post(self, events: Sequence[AlertEvent]) -> int:
        """Post the events (in batches); return the number of alerts accepted.

        Raises :class:`AlertmanagerError` on the first failing batch (see the module docstring).
        """
        # a "recorded" event is the record of a backfilled episode (opened and resolved in the
        # past, monitor.alerts.engine): it stays on the alerts topic and is never paged
        alerts = [a for e in events if e.notification != "recorded" for a in self.alerts_for(e)]
        posted = 0
        for start in range(0, len(alerts), self.batch_size):
            batch = alerts[start : start + self.batch_size]
            self._post_batch(batch, posted)
            posted += len(batch)
        return posted

    def _post_batch(self, batch: list[dict[str, Any]], posted: int) -> None:
        body = json.dumps(batch, separators=(",", ":")).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
                if not 200 <= status < 300:
                    raise AlertmanagerError(
                        f"Alertmanager answered HTTP {status} to {len(batch)} alert(s)",
                        status=status,
                        body=response.read(2000).decode("utf-8", "replace"),
                        posted=posted,
                    )
        except urllib.error.HTTPError as exc:
            text = ""
            try:
                text = exc.read(2000).decode("utf-8", "replace")
            except OSError:
                pass
            raise AlertmanagerError(
                f"Alertmanager rejected {len(batch)} alert(s): HTTP {exc.code}",
                status=exc.code,
                body=text,
                posted=posted,
            ) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AlertmanagerError(
                f"Alertmanager unreachable at {self.url}: {type(reason).__name__}", posted=posted
            ) from exc
