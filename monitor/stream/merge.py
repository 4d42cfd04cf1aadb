"""The merge point: population equity and the carers' view from per-partition partial summaries.

Every owned partition periodically sends a partial (:func:`partial_doc`: its exact integer
summary, the carers' ledger rows of this and last ISO week and the participation summary) to the
one-partition ``equity-partials`` topic. Its single owner (:class:`MergePoint`, faust agent
``merge``) keeps the latest partial of every partition, merges them into the population snapshot
(:func:`population_snapshot`, :func:`carers_snapshot`), sends the snapshot to ``equity`` when it
changed and each ``carer_overload`` notification once to ``flags``. The answer depends only on the
partials, never on which worker produced them or how many workers there are. No faust here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.carers.ledger import merge_rows, notifications_from_rows, week_of
from monitor.carers.participation import ParticipationSummary, participation_measures
from monitor.core.state import StaleAsOfError
from monitor.core.summary import PartialSummary
from monitor.equity import equity_from_summary
from monitor.pipeline import PartitionState, Pipeline
from monitor.stream.publish import dumps

log = logging.getLogger(__name__)

Send = Callable[[bytes, bytes], Awaitable[Any]]
"""``(key, value)`` -> sent (to partition 0 of a topic)."""
Read = Callable[[str], Awaitable[list[Any]]]
"""topic -> every record of its partition 0."""


def partial_doc(pipe: Pipeline, p: int, st: PartitionState) -> dict[str, Any] | None:
    """Partition ``p``'s partial as of its evaluation time (None before any event time)."""
    if st.support.watermark_s is None:
        return None
    t = pipe.effective_time(st)
    summary = st.support.partial_summary(as_of=t)
    doc: dict[str, Any] = {"partition": p, "summary": summary.to_dict()}
    doc.update(carers_partial(st, datetime.fromtimestamp(t, UTC)))
    return doc


def carers_partial(st: PartitionState, at: datetime) -> dict[str, Any]:
    """The carers' part of a partition's partial: ledger rows of this and last ISO week and the
    participation summary (both exactly mergeable across partitions)."""
    rows: list[dict[str, Any]] = []
    for week in sorted({week_of(at), week_of(at - timedelta(days=7))}):
        try:
            rows.extend(st.carers.ledger.week_rows(week))
        except StaleAsOfError:
            continue
    out: dict[str, Any] = {"as_of": at.isoformat(), "ledger": rows}
    if st.carers.latest_event is not None:
        try:
            out["participation"] = st.carers.participation(at).to_dict()
        except (StaleAsOfError, ValueError):
            pass
    return out


class MergePoint:
    """The merged view of the latest partial of every partition (see the module docstring).

    ``partitions`` is the number of input partitions; ``send_flag`` and ``send_equity`` send to
    partition 0 of ``flags`` and ``equity``.
    """

    def __init__(self, partitions: int, send_flag: Send, send_equity: Send) -> None:
        self.partitions = partitions
        self.send_flag = send_flag
        self.send_equity = send_equity
        self.latest: dict[int, PartialSummary] = {}
        self.ledger: dict[int, tuple[str | None, list[dict[str, Any]]]] = {}  # p -> (as_of, rows)
        self.participation: dict[int, ParticipationSummary] = {}
        self.snapshot: dict[str, Any] | None = None  # the latest population snapshot sent
        self.digest: str | None = None
        self.notified: set[str] = set()  # carer_overload notifications sent

    async def rebuild(self, read: Read, partials_topic: str, flags_topic: str) -> None:
        """Take every partial still in the partials topic and the notifications already sent
        (when this worker becomes the merge point)."""
        for rec in await read(partials_topic):
            self.take_partial(rec.value)
        for rec in await read(flags_topic):
            try:
                doc = json.loads(rec.value)
            except (TypeError, ValueError):
                continue
            if doc.get("notification") == "carer_overload":
                self.notified.add(doc["notification_id"])

    def take_partial(self, value: bytes | None) -> None:
        try:
            doc = json.loads(value or b"")
            p = int(doc["partition"])
            self.latest[p] = PartialSummary.from_dict(doc["summary"])
            self.ledger[p] = (doc.get("as_of"), doc.get("ledger", []))
            if doc.get("participation"):
                self.participation[p] = ParticipationSummary.from_dict(doc["participation"])
        except (TypeError, ValueError, KeyError):
            log.warning("skipping an unreadable equity partial")

    async def take(self, values: Iterable[bytes | None]) -> None:
        """Take a batch of partials; send the notifications now due and the snapshot if it changed."""
        for v in values:
            self.take_partial(v)
        snap = population_snapshot(self.latest, self.partitions)
        if snap is None:
            return
        snap["carers"], notes = carers_snapshot(self.ledger, self.participation)
        for note in notes:
            if note.notification_id in self.notified:
                continue
            await self.send_flag(note.carer_id.encode(), dumps(note.to_dict()))
            self.notified.add(note.notification_id)
        digest = hashlib.sha256(dumps(snap)).hexdigest()
        if digest != self.digest:
            self.digest, self.snapshot = digest, snap
            await self.send_equity(b"population", dumps(snap))

    def ledger_rows(self, pipe: Pipeline, week: str) -> list[dict[str, Any]] | None:
        """Ledger rows of ``week``: the merge point's rows summed over every partition when it
        holds that week (current and last week), else the rows of the partitions ``pipe`` holds
        (None: ``week`` is not retained)."""
        per_partition = [[r for r in rows if r.get("week") == week] for _, rows in self.ledger.values()]
        if any(per_partition) and len(self.ledger) == len(self.latest):
            return merge_rows(per_partition)
        parts = []
        for st in pipe.partitions.values():
            try:
                parts.append(st.carers.ledger.week_rows(week))
            except (StaleAsOfError, ValueError):
                return None
        return merge_rows(parts)


def carers_snapshot(ledger: dict[int, tuple[str | None, list[dict[str, Any]]]],
                    participation: dict[int, ParticipationSummary]) -> tuple[dict[str, Any], list[Any]]:
    """Population carers' view at the merge point: overload per week, participation measures, and
    the carer_overload notifications due (exact: rows summed across partitions)."""
    entries = [e for e in ledger.values() if e[0]]
    if not entries:
        return {}, []
    as_of = max(datetime.fromisoformat(a) for a, _ in entries if a)
    rows = merge_rows([r for _, r in entries])
    notes = notifications_from_rows(rows, as_of)
    weeks: dict[str, dict[str, float]] = {}
    for r in rows:
        w = weeks.setdefault(r["week"], {"carers": 0, "hours": 0.0, "overloaded": 0})
        w["carers"] += 1
        w["hours"] += float(r["hours"])
        w["overloaded"] += int(float(r["minutes"]) >= 2100)
    out: dict[str, Any] = {"as_of": as_of.isoformat(), "weeks": weeks}
    parts = list(participation.values())
    if parts:
        day = max(s.as_of_day for s in parts)
        lifted = [dataclasses.replace(s, as_of_day=day) for s in parts]
        out["participation"] = participation_measures(ParticipationSummary.merge(*lifted))
    return out, notes


def population_snapshot(latest: dict[int, PartialSummary], partitions: int) -> dict[str, Any] | None:
    """Merge the latest partial summary of every partition into the population equity snapshot.

    Each partition is evaluated as of its own event-time watermark; summaries of different UTC days
    are merged under the latest day (they differ only around midnight while data flows). The
    result depends only on the per-partition summaries, never on which worker produced them.
    """
    if not latest:
        return None
    day = max(s.as_of_day for s in latest.values())
    total: PartialSummary | None = None
    for p in sorted(latest):
        s = dataclasses.replace(latest[p], as_of_day=day)
        total = s if total is None else PartialSummary.merge(total, s)
    assert total is not None
    return {
        "as_of_day": day,
        "partitions_reported": len(latest),
        "partitions": partitions,
        "groups": {dim: {g: c.indicators() for g, c in groups.items()}
                   for dim, groups in total.groups.items()},
        "equity": equity_from_summary(total, lorenz=True),
    }
