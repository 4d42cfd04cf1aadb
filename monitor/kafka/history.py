"""The timeline of one alert: every event of its episode on ``alerts`` and every action on
``alert-actions`` (acknowledgements with who and note, escalations), in publication order.

Reads both topics from the beginning with kafka-python (blocking; the worker calls it in an
executor). Used by ``coproduction-monitor alerts history`` and ``GET /alerts/<alert_id>``. The
topics are kept forever, so the timeline is complete. Unreadable records are skipped.
"""

from __future__ import annotations

import json
from typing import Any

from monitor.kafka.clients import read_topic
from monitor.settings import Settings


def timeline(settings: Settings, alert_id: str, *, timeout_s: float = 3.0) -> list[dict[str, Any]]:
    """Entries ``{"what", "at", "published_ms", ...the document}``, oldest publication first;
    ``what`` is the notification (firing, renotify, resolved, recorded) or the action (ack,
    escalate); ``at`` its time (ISO 8601 UTC)."""
    out: list[dict[str, Any]] = []
    for topic in ("alerts", "alert_actions"):
        for rec in read_topic(settings, settings.topics.name(topic), timeout_s=timeout_s):
            try:
                doc = json.loads(rec.value)
            except (TypeError, ValueError):
                continue
            if not isinstance(doc, dict) or doc.get("alert_id") != alert_id:
                continue
            if topic == "alerts":
                what, at = doc.get("notification"), doc.get("event_at")
            else:
                what, at = doc.get("action"), doc.get("at")
            out.append({"what": what, "at": at, "published_ms": rec.timestamp, **doc})
    out.sort(key=lambda e: e["published_ms"])
    return out
