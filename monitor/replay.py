"""The offline driver: NDJSON contract documents in, per-patient flags, group indicators and equity out.

``replay`` drives the same :class:`~monitor.pipeline.Pipeline` as the live worker, with the same
batches of records and the same event-time ticks, so a file replayed gives what the stream computes
from the same events: one answer from one code path. The lines are the records of one input
partition, in file order (offset = line number); each line names its document type (``"type"``).

Offline there is no receive time: every event is judged as if received when it happened (no
clock-skew, age or late-window limit), while units, plausibility and duplicates are checked exactly
as live. Events of patients never registered in the file are held as live and dead-lettered
``unknown_patient`` at the end. It never logs payloads or patient ids.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from monitor.alerts.engine import AlertConfig
from monitor.core.state import SupportConfig, SupportState
from monitor.core.summary import PartialSummary
from monitor.core.timeutil import epoch_seconds, iso_utc_s
from monitor.equity import equity_from_summary
from monitor.kafka.partitioning import partition_for
from monitor.pipeline import BatchResult, Pipeline, RawRecord
from monitor.settings import Settings

__all__ = ["DEFAULT_BATCH_LINES", "TICK_EVERY", "replay", "replay_pipeline"]

DEFAULT_BATCH_LINES = 10_000
TICK_EVERY = timedelta(seconds=Settings.model_fields["tick_every_s"].default)
"""Event-time grid of evaluations: the worker's default (``MONITOR_TICK_EVERY_S``, one hour)."""
TOPIC = "documents"
"""The one input topic of a replay; its documents name their own type."""

_UNBOUNDED = timedelta(days=1_000 * 366)  # no time limit at intake offline
_RECEIVED = datetime(2200, 1, 1, tzinfo=UTC)  # the receive time of every line: after any event


_PATIENT_ID = re.compile(rb'"patient_id"\s*:\s*"([^"\\]*)"')


def _partition_of(raw: bytes, partitions: int) -> int:
    """The input partition of a line, as the gateways' and carers' producers choose it: Kafka's
    default partitioner on the document's (first) patient id (:mod:`monitor.kafka.partitioning`).
    A line without a readable patient id goes to partition 0 (it is dead-lettered there)."""
    if partitions == 1:
        return 0
    m = _PATIENT_ID.search(raw)
    if m is None:
        try:
            doc = json.loads(raw)
            pid = doc.get("patient_id") or doc["readings"][0]["patient_id"]
        except Exception:  # noqa: BLE001 - any malformed line: decided (dead-lettered) by intake
            return 0
        return partition_for(pid, partitions) if isinstance(pid, str) else 0
    return partition_for(m.group(1).decode("utf-8", "replace"), partitions)


def _chunks(lines: Iterable[bytes | str], size: int, partitions: int) -> Iterator[list[RawRecord]]:
    """Records of ``size`` non-blank lines each, offsets counting each partition's lines from 0."""
    offsets = [0] * partitions
    it = iter(lines)
    while chunk := list(islice(it, size)):
        out = []
        for line in chunk:
            raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
            if raw.strip():
                p = _partition_of(raw, partitions)
                out.append(RawRecord(raw, TOPIC, p, offsets[p]))
                offsets[p] += 1
        yield out


def _bar(progress: bool, total: int | None) -> Any:
    """A progress bar on a terminal (tqdm, to stderr), or nothing."""
    if not progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=" lines", unit_scale=True, desc="replay", file=sys.stderr)


def replay_pipeline(
    lines: Iterable[bytes | str], *, as_of: datetime | None = None, config: SupportConfig | None = None,
    alert_config: AlertConfig | None = None, batch_lines: int = DEFAULT_BATCH_LINES,
    tick_every: timedelta | None = TICK_EVERY, final_tick: bool = True, progress: bool = False,
    total: int | None = None, partitions: int = 1, on_result: Callable[[BatchResult], None] | None = None,
) -> tuple[Pipeline, int | None]:
    """Feed NDJSON lines to a :class:`~monitor.pipeline.Pipeline` in batches of ``batch_lines``;
    returns it and the evaluation time (epoch s, UTC: ``as_of``, else the latest event time;
    ``None`` when there is neither).

    With ``as_of`` (timezone-aware; ``ValueError`` if naive), events on a UTC day after the as-of
    day are counted but not applied. Every episode of the span stays listed (``retain_resolved``
    is ``None``). With ``final_tick`` (the default), each partition is evaluated once more at the
    end, as a live worker's timer does once the input stops, and held events of patients never
    registered are dead-lettered ``unknown_patient``. Blank lines are skipped and not counted.
    ``progress`` shows a bar on a terminal (``total``: the expected number of lines).
    ``partitions``: the lines are spread over this many input partitions as the producers spread
    them over the worker's (one partition is fastest: the evaluation times of a partition follow
    its own events, so per-partition results equal the worker's only with its partition count).
    ``on_result`` receives what each batch asks to publish (flags, alerts, dead letters).
    """
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    as_of_s = epoch_seconds(as_of) if as_of is not None else None  # fails early on a naive datetime
    alerts = dataclasses.replace(alert_config or AlertConfig(), retain_resolved=None)
    pipe = Pipeline(clock=lambda: _RECEIVED, config=config, alert_config=alerts, oldest_reading=_UNBOUNDED,
                    max_future=_UNBOUNDED, late_after=_UNBOUNDED, idle_after=_UNBOUNDED,
                    unknown_grace=_UNBOUNDED, unknown_cap=2**62, tick_every=tick_every, until=as_of)
    expected = {TOPIC: None}
    bar = _bar(progress, total)
    for records in _chunks(lines, batch_lines, partitions):
        result = pipe.ingest(records, expected)
        if on_result is not None:
            on_result(result)
        if bar is not None:
            bar.update(len(records))
    if bar is not None:
        bar.close()
    if as_of_s is None and pipe.watermark is not None:
        as_of_s = epoch_seconds(pipe.watermark)
    if final_tick:
        for p in sorted(pipe.partitions):
            st = pipe.partitions[p]
            pipe.expire_held(st)
            if as_of_s is not None and st.support.watermark_s is not None:
                pipe.tick_partition(st, at=max(as_of_s, st.support.watermark_s))
    return pipe, as_of_s


ALERT_KEYS = ("alert_id", "patient_id", "rule", "kind", "severity", "status", "unsupported", "value",
              "threshold", "opened_at", "resolved_at")


def replay(
    lines: Iterable[bytes | str], *, as_of: datetime | None = None,
    config: SupportConfig | None = None, batch_lines: int = DEFAULT_BATCH_LINES,
    alert_config: AlertConfig | None = None, progress: bool = False, total: int | None = None,
) -> dict[str, Any]:
    """Replay NDJSON contract documents and evaluate the support state as of ``as_of``.

    ``as_of`` (timezone-aware; ``ValueError`` if naive) defaults to the watermark, the latest event
    time in the file. Evaluation has UTC-day resolution (see :mod:`monitor.core.state`). Returns a
    JSON-serialisable dict::

        {"as_of": "2025-01-31T12:00:00Z" | None (no event and no as_of),
         "patients": {patient_id: {"flags": [...sorted], "active_carers_28d": n,
                                   "care_minutes_7d": m, "contact_days_7d": k,
                                   "readings_expected_7d": e, "readings_received_7d": r}},
         "groups": {dimension: {group: {"patients", "pct_covered", "pct_no_support_network",
                                        "mean_care_minutes_per_week", "pct_readings_received"}}},
         "equity": {dimension: {indicator: {measure: value | None}},
                    "individual": {"care_minutes_7d": {measure: value | None}}},
         "alerts": [{"alert_id", "patient_id", "rule", "kind", "severity", "status",
                     "unsupported", "value", "threshold", "opened_at", "resolved_at"}],
         "carers": {carer_id: {"minutes_by_week": {"YYYY-Www": minutes},
                               "flags": ["overloaded:YYYY-Www", ...]}},
         "counts": {"processed": n, "rejected": {reason: count}}}

    ``alerts`` lists every episode of the replayed span with its status at the end. Patient flags
    include the carers' view (``network_lost``, ``single_point_of_failure``; :mod:`monitor.carers`).
    Events of patients never registered are left out and counted as ``unknown_patient``.
    """
    pipe, as_of_s = replay_pipeline(lines, as_of=as_of, config=config, alert_config=alert_config,
                                    batch_lines=batch_lines, progress=progress, total=total)
    counts = pipe.counts
    out: dict[str, Any] = {
        "as_of": iso_utc_s(as_of_s) if as_of_s is not None else None,
        "patients": {}, "groups": {}, "equity": {}, "alerts": [], "carers": {},
        "counts": {"processed": sum(counts.processed.values()),
                   "rejected": dict(sorted(counts.dead_letters.items()))},
    }
    summary: PartialSummary | None = None
    patients: dict[str, dict[str, Any]] = {}
    alerts: list[dict[str, Any]] = []
    for p in sorted(pipe.partitions):
        st = pipe.partitions[p]
        alerts.extend({k: e.get(k) for k in ALERT_KEYS} for e in st.alerts.episodes())
        if as_of_s is None:
            continue
        ev = st.support.evaluate(as_of_s)
        patients.update(ev.patients())
        at = datetime.fromtimestamp(as_of_s, UTC)
        for pid, extra in st.carers.patient_flags(at).items():
            if pid in patients:
                patients[pid]["flags"] = sorted(set(patients[pid]["flags"]) | set(extra))
        out["carers"].update(st.carers.carer_report(at))
        part = st.support.partial_summary(ev)
        summary = part if summary is None else PartialSummary.merge(summary, part)
    out["patients"] = dict(sorted(patients.items()))
    out["alerts"] = sorted(alerts, key=lambda e: (e["patient_id"], e["opened_at"] or "", e["rule"]))
    if summary is None:  # no event: the indicators and measures of an empty population
        empty = SupportState(config)
        summary = empty.partial_summary(empty.evaluate(0))
    if summary is not None:
        out["groups"] = {dim: {g: c.indicators() for g, c in groups.items()}
                         for dim, groups in summary.groups.items()}
        out["equity"] = equity_from_summary(summary, config)
    return out
