"""One fetch of raw records -> one typed :class:`DecodedBatch`: intake's only output to the pipeline.

:func:`decode_fetch` turns the records of a fetch (Kafka messages, HTTP-intake documents, lines of an
offline file) into, per input partition, the accepted documents in arrival order and a dead letter
for everything rejected, with its reason code. Clean readings of the whole fetch are scanned into
columns at once (:mod:`monitor.intake.columnar`, one :class:`~monitor.intake.columnar.ReadingSlice`
per stretch of consecutive accepted messages); every other message takes the per-message path (the
fast path of :mod:`monitor.intake.fastpath` for clean native documents, the full decoders otherwise),
which gives the same documents and is the tests' oracle (``columnar=False``).

Pure: it reads no state and writes none, so the pipeline owns every decision that needs state
(offsets already applied, patients not registered yet). Never raises on input: whatever the bytes,
each record becomes documents or one dead letter (an exception of a decoder is a dead letter
``invalid_value`` naming only the exception's type). Never logs payloads or patient identifiers.

Time: every receive time is timezone-aware UTC: a record's Kafka timestamp, capped at ``now``
(:func:`receive_time`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from monitor.contract.models import DEAD_LETTER_PREFIX_BYTES, CareLink, CarerActivity, DeadLetter, Patient
from monitor.intake.canonical import CanonicalReading
from monitor.intake.columnar import ReadingSlice, scan_readings
from monitor.intake.fastpath import fast_decode
from monitor.intake.native import Rejection
from monitor.intake.rules import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Document = CanonicalReading | ReadingSlice | Patient | CarerActivity | CareLink
"""What a fetch decodes to: readings (one object, or columns of many), registry entries, carers'
activities and care-network changes."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input message: its bytes and where it came from (partition -1: not from Kafka).

    ``timestamp`` is the Kafka record's timestamp (integer milliseconds since the epoch, UTC;
    ``None``: unknown, the pipeline's clock is the receive time)."""

    value: bytes | None
    topic: str
    partition: int = -1
    offset: int = -1
    timestamp: int | None = None


class Record(Protocol):
    """What :func:`decode_fetch` reads of an input message: a :class:`RawRecord` or a faust message
    (same attribute names)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


def receive_time(rec: Any, now: datetime) -> datetime:
    """When a record was received: its Kafka timestamp, but never later than ``now``.

    The topics the project creates stamp records with the broker's clock (``LogAppendTime``), so
    this is when the broker accepted the record, whatever the device's clock says, and it stays the
    same when the record is processed again (a restart, a rebuild, a worker catching up after an
    outage: late data is judged by when it arrived, not by when the worker got to it). A topic with
    producer timestamps (``CreateTime``) could carry any time: a timestamp after ``now`` is cut to
    ``now``, so no record can widen the clock-skew tolerance for itself."""
    ts = getattr(rec, "timestamp", None)
    if type(ts) is not int or ts <= 0:
        return now
    at = _EPOCH + timedelta(milliseconds=ts)
    return at if at < now else now


def dead_letter(raw: bytes | None, reason: str, detail: str, *, topic: str, partition: int,
                offset: int, received_at: datetime) -> DeadLetter:
    """A dead-letter record keeping a prefix of the original bytes (UTF-8 text, or base64 when the
    prefix is not UTF-8), the original's length and its SHA-256: at most
    :data:`~monitor.contract.models.DEAD_LETTER_PREFIX_BYTES` bytes of it, whatever its size."""
    data = raw or b""
    prefix = data[:DEAD_LETTER_PREFIX_BYTES]
    try:
        original, encoding = prefix.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if len(prefix) < len(data) and exc.start >= len(prefix) - 3:  # a character cut at the end
            prefix = prefix[:exc.start]
            original, encoding = prefix.decode("utf-8", errors="replace"), "utf-8"
        else:
            original, encoding = base64.b64encode(prefix).decode("ascii"), "base64"
    return DeadLetter(
        reason=reason, detail=detail[:500], source="kafka", topic=topic, partition=partition,
        offset=offset, received_at=received_at, encoding=encoding, original=original,  # type: ignore[arg-type]
        original_bytes=len(data), original_sha256=hashlib.sha256(data).hexdigest(),
    )


@dataclass(slots=True)
class PartitionFetch:
    """One partition's share of a fetch: accepted documents in arrival order, the documents
    accepted per type name (``Reading``, ``GatewayBatch``, ``Patient``, ...), the dead letters (a
    whole message, or one reading of an accepted gateway batch), the messages read and how many
    of them were rejected whole."""

    partition: int
    documents: list[Document] = field(default_factory=list)
    processed: Counter[str] = field(default_factory=Counter)
    dead: list[DeadLetter] = field(default_factory=list)
    messages: int = 0
    rejected_messages: int = 0


@dataclass(slots=True)
class DecodedBatch:
    """A decoded fetch: the receive time of the fetch (the pipeline's clock, aware UTC) and one
    :class:`PartitionFetch` per partition that had records."""

    received_at: datetime
    partitions: dict[int, PartitionFetch] = field(default_factory=dict)

    def part(self, p: int) -> PartitionFetch:
        got = self.partitions.get(p)
        if got is None:
            got = self.partitions[p] = PartitionFetch(p)
        return got

    @property
    def documents(self) -> int:
        return sum(sum(pf.processed.values()) for pf in self.partitions.values())


def decode_fetch(records: Sequence[Record], expected: dict[str, str | None], *, now: datetime,
                 limits: Limits = DEFAULT_LIMITS, columnar: bool = True) -> DecodedBatch:
    """Decode a fetch. ``expected`` maps each topic to the document type it carries (``None``:
    any type, named by the document's ``"type"`` field: offline files). ``now`` is the receive
    time of records without a Kafka timestamp and the cap of the others (:func:`receive_time`).

    Records of partition -1 (not from Kafka) count as partition 0. The columnar scan runs when
    ``columnar`` and every record has a partition and an offset (a fetch's records come in runs
    of one topic and partition); it gives the same documents as the per-message path.
    """
    out = DecodedBatch(now)
    spans: list[tuple[str, int, int] | None] = []
    cols = None
    if columnar and all(rec.partition >= 0 and rec.offset >= 0 for rec in records):
        values = [rec.value if expected.get(rec.topic, "") in ("reading", None) else None for rec in records]
        if any(v is not None for v in values):
            spans, cols = _scan(records, values, now, limits)
    current: ReadingSlice | None = None  # the slice the next accepted message extends
    previous: tuple[str, int] | None = None
    for i, rec in enumerate(records):
        p = max(rec.partition, 0)
        pf = out.part(p)
        pf.messages += 1
        span = spans[i] if cols is not None else None
        if span is not None:
            pf.processed[span[0]] += 1
            if current is not None and current.stop == span[1] and previous == (rec.topic, p):
                current.stop = span[2]
            else:
                current = ReadingSlice(cols, span[1], span[2])
                pf.documents.append(current)
            previous = (rec.topic, p)
            continue
        current = None
        _decode_one(rec, pf, expected.get(rec.topic), now, limits)
    return out


def _scan(records: Sequence[Record], values: list[bytes | None], now: datetime,
          limits: Limits) -> tuple[list[tuple[str, int, int] | None], Any]:
    """The columnar scan of a fetch's readings, each judged against its own receive time. A
    failure of the scan itself (never seen; a guard for a kernel bug) leaves every message to
    the per-message decoders, which never raise."""
    now_ms = int((now - _EPOCH) / timedelta(milliseconds=1))
    stamps = np.fromiter((ts if type(ts := getattr(r, "timestamp", None)) is int and ts > 0 else now_ms
                          for r in records), dtype=np.int64, count=len(records))
    received_us = np.minimum(stamps, now_ms) * 1000
    try:
        return scan_readings(values, received_at=now, oldest=limits.oldest, max_future=limits.max_future,
                             late_after=limits.late_after, received_us=received_us)
    except Exception:  # noqa: BLE001 - bad input must never stop the pipeline
        log.exception("the columnar scan failed; decoding the fetch message by message")
        return [None] * len(records), None


def _decode_one(rec: Record, pf: PartitionFetch, exp: str | None, now: datetime, limits: Limits) -> None:
    """Decode one message into its partition's documents, or dead letters
    (:func:`monitor.intake.fastpath.fast_decode`: the fast path for clean native documents, the
    full decoders otherwise; never raises)."""
    received_at = receive_time(rec, now)
    result = fast_decode(rec.value, exp, received_at, limits)
    if isinstance(result, Rejection):
        pf.dead.append(dead_letter(rec.value, result.reason, result.detail, topic=rec.topic,
                                   partition=rec.partition, offset=rec.offset, received_at=received_at))
        pf.rejected_messages += 1
        return
    pf.processed[result.name] += 1
    if result.document is not None and result.type not in ("reading", "gateway_batch"):
        pf.documents.append(result.document)
        return
    pf.documents.extend(result.readings)
    for r, c in result.rejected:
        pf.dead.append(dead_letter(r.model_dump_json().encode(), c.reason, c.detail, topic=rec.topic,
                                   partition=rec.partition, offset=rec.offset, received_at=received_at))


__all__ = ["DecodedBatch", "Document", "PartitionFetch", "RawRecord", "Record", "dead_letter", "decode_fetch",
           "receive_time"]
