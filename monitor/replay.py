"""The offline driver: NDJSON contract documents in, per-patient flags, group indicators and equity out.

``replay`` feeds the same pure core as the live worker (``monitor.core.state``) with the same kind
of batches, so a file replayed gives what the stream would have computed from the same events.
It never logs payloads or patient ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from monitor.core.state import (
    SupportConfig,
    SupportState,
    batch_from_documents,
    epoch_seconds,
    equity_from_summary,
    iso_utc,
)
from monitor.intake.native import Rejection, decode

__all__ = ["DEFAULT_BATCH_LINES", "replay", "replay_state"]

DEFAULT_BATCH_LINES = 10_000


def _chunks(lines: Iterable[bytes | str], size: int) -> Iterator[list[bytes | str]]:
    it = iter(lines)
    while chunk := list(islice(it, size)):
        yield chunk


def replay_state(
    lines: Iterable[bytes | str], *, as_of: datetime | None = None,
    config: SupportConfig | None = None, batch_lines: int = DEFAULT_BATCH_LINES,
) -> tuple[SupportState, dict[str, Any]]:
    """Decode and apply NDJSON lines; returns the state and ``{"processed": n, "rejected": {...}}``.

    Each non-blank line is one contract document with a ``"type"`` (decoded by
    :func:`monitor.intake.native.decode` with ``expected=None``); a line that does not decode is
    counted under its rejection reason and otherwise ignored. Blank lines are skipped and not
    counted. With ``as_of``, events on a UTC day after the as-of day are left out of the state
    (they still count as processed). Lines are applied in batches of ``batch_lines``.
    """
    if as_of is not None:
        epoch_seconds(as_of)  # fail early on a naive datetime
    state = SupportState(config)
    processed = 0
    rejected: Counter[str] = Counter()
    for chunk in _chunks(lines, batch_lines):
        docs = []
        for line in chunk:
            raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
            if not raw.strip():
                continue
            result = decode(raw, expected=None)
            if isinstance(result, Rejection):
                rejected[result.reason] += 1
            else:
                docs.append(result)
        processed += len(docs)
        if docs:
            state.apply(batch_from_documents(state, docs, until=as_of))
    return state, {"processed": processed, "rejected": dict(sorted(rejected.items()))}


def replay(
    lines: Iterable[bytes | str], *, as_of: datetime | None = None,
    config: SupportConfig | None = None, batch_lines: int = DEFAULT_BATCH_LINES,
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
         "counts": {"processed": n, "rejected": {reason: count}}}

    Patients never registered are in the ``"unknown"`` group and left out of the equity measures.
    """
    state, counts = replay_state(lines, as_of=as_of, config=config, batch_lines=batch_lines)
    if as_of is not None:
        as_of_s: int | None = epoch_seconds(as_of)
    else:
        as_of_s = state.watermark_s
    ev = state.evaluate(as_of_s if as_of_s is not None else 0)
    summary = state.partial_summary(ev)
    return {
        "as_of": iso_utc(as_of_s) if as_of_s is not None else None,
        "patients": dict(sorted(ev.patients().items())),
        "groups": {
            dim: {g: c.indicators() for g, c in groups.items()}
            for dim, groups in summary.groups.items()
        },
        "equity": equity_from_summary(summary, state.config),
        "counts": counts,
    }
