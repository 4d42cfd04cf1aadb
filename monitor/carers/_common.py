"""Small pieces shared by the carers' modules: UTC days and ISO weeks, id hashes, snapshot codec.

Nothing here does I/O. Times are timezone-aware datetimes (the contract normalises every timestamp
to UTC); a naive datetime raises ``ValueError``.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import numpy as np

from monitor.core.batch import minutes_to_ms
from monitor.core.idhash import id_hash
from monitor.core.state import SnapshotError
from monitor.core.timeutil import day_of, epoch_seconds
from monitor.errors import MonitorError

__all__ = [
    "CarersInputError",
    "SnapshotError",
    "activity_key",
    "day_of_instant",
    "decode_hashes",
    "encode_hashes",
    "minutes_to_ms",
    "pack_snapshot",
    "parse_week",
    "unpack_snapshot",
    "week_index_of_day",
    "week_label",
]

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")


class CarersInputError(MonitorError, ValueError):
    """Bad input to a carers' function (an invalid ISO week label, format, configuration)."""


def day_of_instant(t: datetime) -> int:
    """The UTC calendar day number (days since 1970-01-01) of a timezone-aware datetime."""
    return day_of(epoch_seconds(t))


def week_index_of_day(day: int) -> int:
    """Index of the ISO 8601 week (Monday to Sunday) holding UTC day ``day``.

    Consecutive ISO weeks have consecutive indices (0001-01-01 was a Monday, so the index is the
    week count since then), which makes retention arithmetic a subtraction.
    """
    return (day + _EPOCH_ORDINAL - 1) // 7


def week_label(index: int) -> str:
    """``"YYYY-Www"`` (ISO year and week, e.g. ``"2026-W53"``) of a week index."""
    iso = date.fromordinal(index * 7 + 1).isocalendar()
    return f"{iso.year:04d}-W{iso.week:02d}"


def parse_week(label: str) -> int:
    """The week index of ``"YYYY-Www"``; :class:`CarersInputError` if it is not a real ISO week
    (``"2026-W53"`` exists, ``"2025-W53"`` does not)."""
    m = _WEEK_RE.match(label.strip()) if isinstance(label, str) else None
    if not m:
        raise CarersInputError(f"not an ISO week label YYYY-Www: {label!r}")
    try:
        monday = date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
    except ValueError:
        raise CarersInputError(f"no such ISO week: {label!r}") from None
    return (monday.toordinal() - 1) // 7


def activity_key(patient_id: str, activity_id: str) -> int:
    """The 64-bit de-duplication key of a carer activity: an activity id is unique *per
    patient*, so two patients' activities with the same ``activity_id`` are different
    activities (the support core's rule, :func:`monitor.core.support.dedup_key`).

    ``id_hash("pa", f"{len(patient_id)}:{patient_id}:{activity_id}")`` (BLAKE2b-64, non-zero):
    the length prefix makes the encoding of the pair injective (``("p1", "2:x")`` and
    ``("p1:2", "x")`` are different strings), so two different (patient, activity) pairs
    collide only if their 64-bit hashes do, probability 2**-64 per pair. With ``n`` activities
    in one id set (a ledger week or a fragility day of one partition) the birthday bound gives
    ``P(any false duplicate) ~= n**2 / 2**65``: 1.1e-5 for n = 20 million, 2.7e-8 for one
    million; a false duplicate drops that one activity.
    """
    return id_hash("pa", f"{len(patient_id)}:{patient_id}:{activity_id}")


def encode_hashes(hashes: Iterable[int]) -> str:
    """Sorted 64-bit hashes as base64 of little-endian uint64 (compact and deterministic)."""
    arr = np.array(sorted(hashes), dtype=np.uint64)
    return base64.b64encode(arr.astype("<u8").tobytes()).decode("ascii")


def decode_hashes(text: str) -> set[int]:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 8:
        raise SnapshotError("corrupt hash set in snapshot")
    return {int(v) for v in np.frombuffer(raw, dtype="<u8")}


def pack_snapshot(magic: bytes, version: int, body: dict[str, Any]) -> bytes:
    """``magic + version (uint16 LE) + zlib(JSON)``: versioned, no pickle, deterministic."""
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return magic + version.to_bytes(2, "little") + zlib.compress(payload, 6)


def unpack_snapshot(magic: bytes, version: int, data: bytes, what: str) -> dict[str, Any]:
    """The JSON body of :func:`pack_snapshot` bytes; :class:`SnapshotError` if not restorable."""
    m = len(magic)
    if not isinstance(data, bytes | bytearray | memoryview) or not bytes(data[:m]) == magic:
        raise SnapshotError(f"not a {what} snapshot")
    data = bytes(data)
    if len(data) < m + 2:
        raise SnapshotError(f"truncated {what} snapshot")
    got = int.from_bytes(data[m:m + 2], "little")
    if got != version:
        raise SnapshotError(f"unsupported {what} snapshot version {got} (this build reads {version})")
    try:
        body = json.loads(zlib.decompress(data[m + 2:]))
    except (zlib.error, ValueError) as exc:
        raise SnapshotError(f"corrupt {what} snapshot: {exc}") from None
    if not isinstance(body, dict):
        raise SnapshotError(f"corrupt {what} snapshot")
    return body
