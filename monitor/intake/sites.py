"""Nightscout sites: each bound to one patient and its own API secret.

A Nightscout uploader (xDrip+, AndroidAPS, Loop, the Nightscout uploaders) is pointed at
``https://<intake>/ns/<site>`` as if it were a Nightscout server. It authenticates as Nightscout
does, with the header ``api-secret`` carrying the SHA-1 hex digest of the site's secret, and
everything it uploads is filed under the site's patient: an uploader cannot write for anyone else.

The sites file (``MONITOR_NIGHTSCOUT_SITES_FILE``, JSON)::

    {"sites": {"<site>": {"patient_id": "<patient>", "api_secret_sha256": "<hex>"}}}

``api_secret_sha256`` is the SHA-256 of the SHA-1 hex digest the uploader sends (lower case), so
the file never holds what an uploader presents: ``coproduction-monitor nightscout-site`` prints an
entry. Comparison is constant-time. Pure: no I/O beyond reading the file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    patient_id: str
    api_secret_sha256: str

    def admits(self, api_secret: str | None) -> bool:
        """Whether the ``api-secret`` header value (SHA-1 hex of the secret) is this site's."""
        if not api_secret:
            return False
        digest = hashlib.sha256(api_secret.strip().lower().encode()).hexdigest()
        return hmac.compare_digest(digest, self.api_secret_sha256)


def secret_hash(secret: str) -> str:
    """The ``api_secret_sha256`` of a site secret (what the sites file stores)."""
    sha1 = hashlib.sha1(secret.encode(), usedforsecurity=False).hexdigest()
    return hashlib.sha256(sha1.encode()).hexdigest()


def load_sites(path: Path | None) -> dict[str, Site]:
    """The sites of ``path`` (none when ``None``). Raises ``ValueError`` on a malformed file, naming
    the site but never a secret."""
    if path is None:
        return {}
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    listed = doc.get("sites") if isinstance(doc, dict) else None
    if not isinstance(listed, dict):
        raise ValueError('a sites file is {"sites": {"<site>": {"patient_id", "api_secret_sha256"}}}')
    sites: dict[str, Site] = {}
    for name, entry in listed.items():
        if not SITE_NAME.match(str(name)):
            raise ValueError(f"site name {str(name)[:40]!r}: 1-64 letters, digits, _ . -")
        try:
            patient, digest = str(entry["patient_id"]), str(entry["api_secret_sha256"]).lower()
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"site {name}: needs patient_id and api_secret_sha256") from exc
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"site {name}: api_secret_sha256 must be 64 hex digits")
        sites[name] = Site(name, patient, digest)
    return sites
