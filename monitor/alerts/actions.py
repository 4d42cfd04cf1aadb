"""What people and the notifier do about an alert: acknowledgements and escalations.

One document type on the ``alert-actions`` topic (one partition, kept forever: the accountability
trail beside the ``alerts`` topic). Pure data and validation, no I/O.

* ``ack``: a clinician (``by``) has taken the alert (``alert_id``) on, at ``at`` (aware UTC),
  with an optional ``note``. Published by ``POST /alerts/{alert_id}/ack`` on the worker and by
  ``coproduction-monitor alerts ack``. The notifier silences the alert in Alertmanager until
  the episode resolves.
* ``escalate``: nobody acknowledged a critical or emergency alert within the configured time; the
  notifier raised it to ``tier`` (2) at ``at``. Published by the notifier before it posts the
  tier-2 copy, so a restarted notifier never escalates twice.

``action_id`` identifies the action (a consumer that sees it twice keeps one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from monitor.alerts.episodes import iso, parse_iso

Action = Literal["ack", "escalate"]
MAX_BY = 200
MAX_NOTE = 2000


@dataclass(frozen=True, slots=True)
class AlertAction:
    """One action on an alert (see the module docstring); ``at`` aware UTC."""

    action: Action
    alert_id: str
    at: datetime
    by: str
    note: str = ""
    tier: int | None = None

    def __post_init__(self) -> None:
        if self.action not in ("ack", "escalate"):
            raise ValueError("action must be ack or escalate")
        if not self.alert_id or len(self.alert_id) > 200:
            raise ValueError("alert_id must be 1-200 characters")
        if not self.by.strip() or len(self.by) > MAX_BY:
            raise ValueError(f"by must be 1-{MAX_BY} characters")
        if len(self.note) > MAX_NOTE:
            raise ValueError(f"note must be at most {MAX_NOTE} characters")
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError("at must be timezone-aware (UTC)")

    @property
    def action_id(self) -> str:
        raw = f"{self.action}\x1f{self.alert_id}\x1f{iso(self.at)}\x1f{self.by}\x1f{self.tier}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = iso(self.at)
        data["action_id"] = self.action_id
        return data

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AlertAction:
        """Raises ``ValueError``/``TypeError``/``KeyError`` on a document that is not an action."""
        at = parse_iso(doc["at"])
        if at is None:
            raise ValueError("an alert action needs at")
        tier = doc.get("tier")
        return cls(action=doc["action"], alert_id=str(doc["alert_id"]), at=at, by=str(doc["by"]),
                   note=str(doc.get("note") or ""), tier=None if tier is None else int(tier))
