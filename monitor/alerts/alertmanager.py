"""A small client for the Prometheus Alertmanager v2 API (``POST /api/v2/alerts``), on aiohttp.

Each :class:`~monitor.alerts.engine.AlertEvent` becomes one Alertmanager alert (or one per
recipient, see below):

* labels (the alert's identity in Alertmanager): ``alertname`` (= rule id), ``rule``,
  ``patient_id``, ``severity``, ``kind``, ``direction`` (``low``/``high``/``none``), and when known
  ``region``, ``care_team`` and ``recipient``;
* annotations: ``value``, ``threshold``, ``unit``, ``unsupported`` (``"true"``/``"false"``),
  ``support`` (the same in words for the page), ``alert_id``, ``notification``, ``opened_at``
  (ISO 8601 UTC), ``summary`` and ``runbook_url`` (from a template with ``{rule}``);
* ``startsAt`` = the episode's ``opened_at``; ``endsAt`` = ``resolved_at`` on a resolved event
  (omitted while firing, so Alertmanager keeps the alert until ``resolve_timeout`` - the notifier,
  :mod:`monitor.notify`, re-posts firing alerts every ``MONITOR_ALERT_REPOST_S``, well within it;
  see ``deploy/alertmanager.yml``);
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
(:mod:`monitor.notify`) decides; re-posting is safe, Alertmanager merges alerts by label set.
Nothing is logged. The client is used from one event loop (its aiohttp session belongs to it).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp

from monitor.alerts.engine import AlertEvent
from monitor.alerts.rules import RULES_BY_ID
from monitor.errors import MonitorError

DEFAULT_GENERATOR_URL = "http://127.0.0.1:6066/alerts/{alert_id}"
DEFAULT_RUNBOOK_URL = "http://127.0.0.1:6066/runbooks/{rule}"
"""The worker serves ``docs/runbooks/<rule>.md`` at ``/runbooks/<rule>``."""


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
        runbook_url: str = DEFAULT_RUNBOOK_URL,
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
        self.runbook_url = runbook_url
        self.care_teams = dict(care_teams or {})
        self.recipients = recipients
        self.extra_labels = dict(extra_labels or {})
        self._session: aiohttp.ClientSession | None = None  # opened by the first post, in its loop

    def alerts_for(self, event: AlertEvent, tier: int | None = None) -> list[dict[str, Any]]:
        """The Alertmanager alert objects (``postableAlert``) for one event; ``tier`` (2 for an
        escalated alert) adds a ``tier`` label: another alert, routed to the next tier."""
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
        if tier is not None:
            labels["tier"] = str(tier)
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
            "runbook_url": self.runbook_url.format(rule=event.rule),
            "support": "lives without carer support" if event.unsupported else "has carer support",
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

    def payload(self, events: Sequence[AlertEvent]) -> list[dict[str, Any]]:
        """The alert objects of ``events`` to post (``recorded`` events left out, see above)."""
        # a "recorded" event is the record of a backfilled episode (opened and resolved in the
        # past, monitor.alerts.engine): it stays on the alerts topic and is never paged
        return [a for e in events if e.notification != "recorded" for a in self.alerts_for(e)]

    async def __aenter__(self) -> AlertmanagerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (a later post opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, events: Sequence[AlertEvent]) -> int:
        """Post the events (in batches); return the number of alerts accepted.

        Raises :class:`AlertmanagerError` on the first failing batch (see the module docstring).
        """
        return await self.post_alerts(self.payload(events))

    async def post_alerts(self, alerts: Sequence[dict[str, Any]]) -> int:
        """Post alert objects (from :meth:`alerts_for`) in batches; the number accepted."""
        posted = 0
        for start in range(0, len(alerts), self.batch_size):
            batch = list(alerts[start : start + self.batch_size])
            await self._post_batch(batch, posted)
            posted += len(batch)
        return posted

    async def _post_batch(self, batch: list[dict[str, Any]], posted: int) -> None:
        await self._request("POST", self.url, batch, what=f"{len(batch)} alert(s)", posted=posted)

    async def _request(self, method: str, url: str, payload: Any = None, *, what: str,
                       posted: int = 0) -> Any:
        """One API call; the decoded JSON answer (``None`` when empty). Raises AlertmanagerError."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                if not 200 <= response.status < 300:
                    text = (await response.content.read(2000)).decode("utf-8", "replace")
                    raise AlertmanagerError(f"Alertmanager rejected {what}: HTTP {response.status}",
                                            status=response.status, body=text, posted=posted)
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AlertmanagerError(
                f"Alertmanager unreachable at {url}: {type(exc).__name__}", posted=posted
            ) from exc
        return json.loads(raw) if raw.strip() else None

    # --- silences: an acknowledgement mutes the alert's pages until its episode resolves ---------
    def _api(self, path: str) -> str:
        return self.url.rsplit("/alerts", 1)[0] + path

    async def silences(self) -> list[dict[str, Any]]:
        """Alertmanager's silences (``gettableSilence`` objects, any state)."""
        return list(await self._request("GET", self._api("/silences"), what="a silence query") or [])

    async def silence(self, event: AlertEvent, *, by: str, comment: str, ends_at: datetime) -> str:
        """Silence every copy of ``event``'s alert until ``ends_at``: matched on patient, rule and
        kind, so any severity (an escalation to emergency) and any tier; the silence id. The
        caller expires it when the episode resolves: a later episode of the same patient and
        rule has the same labels and must page."""
        wanted = {"alertname": event.rule, "rule": event.rule, "patient_id": event.patient_id,
                  "kind": event.kind}
        matchers = [{"name": k, "value": v, "isRegex": False, "isEqual": True}
                    for k, v in sorted(wanted.items())]
        now = datetime.now(UTC)
        answer = await self._request("POST", self._api("/silences"), {
            "matchers": matchers, "startsAt": _iso(now), "endsAt": _iso(max(ends_at, now)),
            "createdBy": by, "comment": comment}, what="a silence")
        return str(answer["silenceID"])

    async def expire_silence(self, silence_id: str) -> None:
        """End a silence (an unknown or expired one is not an error)."""
        try:
            await self._request("DELETE", self._api(f"/silence/{silence_id}"), what="a silence expiry")
        except AlertmanagerError as exc:
            if exc.status not in (404, 500):  # Alertmanager answers 500 for an expired silence
                raise
