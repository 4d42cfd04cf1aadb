"""Per-device and per-person credentials: a role, a scope, a token shown once, revocable.

Roles and what they may do (enforced by the intake, :mod:`monitor.intake.http`):

* ``gateway``: write readings of its bound ``patients`` (``/v1/readings``, ``/fhir``);
* ``carer_app``: write carer activities and care-network changes as one ``carer_id``;
* ``coordinator``, ``clinician``: read patient-level views, acknowledge alerts (the worker's views;
  until those honour roles they stay behind the admin token).

``MONITOR_API_TOKEN`` stays as the admin bootstrap (everything). A token is
``cm_<credential id>_<secret>``; only its SHA-256 is stored, on the compacted ``credentials`` topic
(key: the credential id), so every intake and worker sees the same set; revoking writes the
credential again with ``revoked`` set. Pure: no I/O (the topic side is
:mod:`monitor.kafka.credentials`). Times are aware UTC.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Role = Literal["gateway", "carer_app", "coordinator", "clinician"]
ROLES: tuple[str, ...] = ("gateway", "carer_app", "coordinator", "clinician")
_TOKEN = re.compile(r"^cm_([0-9a-f]{32})_([A-Za-z0-9_-]{20,100})$")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    """One credential (never its token: ``token_sha256`` only)."""

    credential_id: str
    role: str
    name: str
    token_sha256: str
    created_at: datetime
    patients: frozenset[str] = frozenset()
    carer_id: str | None = None
    revoked: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if self.role == "gateway" and not self.patients:
            raise ValueError("a gateway credential needs at least one patient")
        if self.role == "carer_app" and not self.carer_id:
            raise ValueError("a carer_app credential needs a carer_id")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (UTC)")

    def to_json(self) -> dict[str, Any]:
        return {"credential_id": self.credential_id, "role": self.role, "name": self.name,
                "token_sha256": self.token_sha256, "created_at": self.created_at.isoformat(),
                "patients": sorted(self.patients), "carer_id": self.carer_id, "revoked": self.revoked}

    def listing(self) -> dict[str, Any]:
        """What ``credentials list`` shows (no hash)."""
        return {k: v for k, v in self.to_json().items() if k != "token_sha256"}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Credential:
        return cls(credential_id=str(doc["credential_id"]), role=str(doc["role"]),
                   name=str(doc.get("name", "")),
                   token_sha256=str(doc["token_sha256"]),
                   created_at=datetime.fromisoformat(str(doc["created_at"])),
                   patients=frozenset(str(p) for p in doc.get("patients") or ()),
                   carer_id=doc.get("carer_id"), revoked=bool(doc.get("revoked", False)))


def issue(role: str, *, name: str, created_at: datetime, patients: frozenset[str] = frozenset(),
          carer_id: str | None = None) -> tuple[Credential, str]:
    """A new credential and its token (shown once; only its hash is kept)."""
    credential_id = uuid.uuid4().hex
    token = f"cm_{credential_id}_{secrets.token_urlsafe(32)}"
    return Credential(credential_id, role, name, _sha256(token), created_at, patients, carer_id), token


@dataclass
class CredentialRegistry:
    """The credentials as the topic says (latest record per id wins)."""

    by_id: dict[str, Credential] = field(default_factory=dict)

    def apply(self, value: bytes | None, key: bytes | None = None) -> None:
        """One record of the credentials topic; an unreadable one is ignored (never an error that
        could stop authentication of everyone else)."""
        if value is None:
            if key is not None:
                self.by_id.pop(key.decode(errors="replace"), None)
            return
        try:
            cred = Credential.from_json(json.loads(value))
        except (ValueError, TypeError, KeyError):
            return
        self.by_id[cred.credential_id] = cred

    def authenticate(self, token: str) -> Credential | None:
        """The live credential ``token`` belongs to, else ``None`` (constant-time compare)."""
        match = _TOKEN.match(token)
        if match is None:
            return None
        cred = self.by_id.get(match.group(1))
        if cred is None or cred.revoked:
            return None
        return cred if hmac.compare_digest(_sha256(token), cred.token_sha256) else None


def resolve(header: str, admin_token: bytes | None,
            registry: CredentialRegistry | None) -> tuple[int | None, Credential | None]:
    """Who an ``Authorization`` header names: ``(None, None)`` the admin token, ``(None, cred)``
    a live credential, else ``(status, None)``: 401 for an unknown token, 403 when neither an
    admin token nor any credential is configured (the endpoints are closed)."""
    from monitor.auth import FORBIDDEN, UNAUTHORIZED, bearer_credentials, check_bearer

    status = check_bearer(header, admin_token)
    if status is None:
        return None, None
    cred = registry.authenticate(bearer_credentials(header).decode(errors="replace")) if registry else None
    if cred is not None:
        return None, cred
    return (UNAUTHORIZED if status == FORBIDDEN and registry and registry.by_id else status), None


@dataclass
class RateLimiter:
    """A token bucket per credential: ``rate`` requests per second, bursts up to ``burst``."""

    rate: float = 20.0
    burst: float = 40.0
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (tokens, at)

    def allow(self, key: str, now: float) -> bool:
        tokens, at = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1.0, now)
        return True
