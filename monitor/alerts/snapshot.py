"""The alert engine's snapshot codec (version 2: deterministic columnar JSON).

One column per field; times as integer microseconds since the Unix epoch (UTC), except in episodes
(ISO 8601 UTC with ``Z``). A reading at a stream's latest time is stored as its id and values, from
which its duplicate keys are rebuilt only when a later reading needs them; each stream's encoding
is cached until the stream changes (:meth:`monitor.alerts.streams.Stream.snapshot_row`), so a
snapshot costs little more than encoding the JSON. :func:`decode` also reads version 1, the layout
of older releases (its reader lives with the reference engine, :mod:`monitor.alerts.reference`).
Malformed input raises :class:`AlertStateError`, never anything else.
"""

from __future__ import annotations

import gc
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NamedTuple

from monitor.alerts.episodes import Episode, PatientInfo
from monitor.alerts.rules import effective_thresholds
from monitor.alerts.streams import FLOAT_OR_NONE, NO_KEYS, NO_ROWS, STR, STR_OR_NONE, Stream
from monitor.core.timeutil import from_us, to_us
from monitor.errors import MonitorError

SNAPSHOT_VERSION = 2


class AlertStateError(MonitorError, ValueError):
    """A snapshot could not be restored (wrong version, malformed bytes)."""


class Decoded(NamedTuple):
    """A decoded snapshot: the whole engine state (``order``: the streams sorted by key, or
    ``None`` when the engine must sort them itself)."""

    patients: dict[str, PatientInfo]
    streams: dict[tuple[str, str], Stream]
    order: list[Stream] | None
    watermark: datetime | None
    open: dict[tuple[str, str, str], Episode]
    resolved: list[Episode]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: encoding or decoding a large state allocates many
    containers, each allocation burst triggering a full traversal of the (large) heap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _from_us(us: int) -> datetime:
    """The aware UTC time of integer microseconds since the epoch; raises ``TypeError`` otherwise."""
    if type(us) is not int:
        raise TypeError("snapshot time must be an integer")
    return from_us(us)


def encode(
    order: Sequence[Stream],
    patients: Mapping[str, PatientInfo],
    open_eps: Mapping[tuple[str, str, str], Episode],
    resolved: Sequence[Episode],
    watermark: datetime | None,
) -> bytes:
    """UTF-8 JSON bytes of the state; ``order``: every stream, sorted by (patient, kind).

    Deterministic: the same state gives the same bytes, whatever the history (patients by id, open
    episodes by key, dict keys sorted).
    """
    rows = [s.row or s.snapshot_row() for s in order]
    materials = [m for row in rows for m in row[1]]
    hashed = [i for i, row in enumerate(rows) if row[2]]
    weighted = [i for i, row in enumerate(rows) if row[3]]
    kinds = sorted({s.kind for s in order})
    kind_index = {k: i for i, k in enumerate(kinds)}
    pids = sorted(patients)
    infos = [patients[pid] for pid in pids]
    state = {
        "version": SNAPSHOT_VERSION,
        "watermark": None if watermark is None else to_us(watermark),
        "patients": {
            "patient_id": pids,
            "region": [p.region for p in infos],
            "overrides": [p.overrides for p in infos],
            "plan": [p.plan for p in infos],
            "registered_at": [None if p.registered_at is None else to_us(p.registered_at) for p in infos],
            "plan_seen_at": [
                {k: to_us(v) for k, v in p.plan_seen_at.items()} if p.plan_seen_at else {} for p in infos
            ],
        },
        "streams": {
            "patient_id": [s.patient_id for s in order],
            "kinds": kinds,
            "kind": [kind_index[s.kind] for s in order],
            "latest": [row[0] for row in rows],
            "readings": [len(row[1]) for row in rows],
            "reading_id": [m[0] for m in materials],
            "value": [m[1] for m in materials],
            "systolic": [m[2] for m in materials],
            "diastolic": [m[3] for m in materials],
            "hashed": hashed,
            "hashes": [rows[i][2] for i in hashed],
            "weighted": weighted,
            "weight_at": [rows[i][3] for i in weighted],
            "weight_kg": [rows[i][4] for i in weighted],
        },
        "open": [open_eps[k].to_state() for k in sorted(open_eps)],
        "resolved": [e.to_state() for e in resolved],
    }
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> Decoded:
    """The state of a snapshot of version 2 (or 1); raises :class:`AlertStateError` on bad input
    (not UTF-8 JSON, unknown version, missing or mistyped fields, columns of different lengths)."""
    try:
        state = json.loads(data.decode("utf-8"))
        version = state.get("version")
        if version == SNAPSHOT_VERSION:
            patients, streams, order, watermark = _decode_v2(state)
        elif version == 1:
            # deferred: the reference module builds on the engine, which imports this codec
            from monitor.alerts.reference import decode_v1

            patients, streams, watermark = decode_v1(state)
            order = None
        else:
            raise AlertStateError(f"unsupported snapshot version {version!r}")
        open_eps = {}
        for e in state["open"]:
            ep = Episode.from_state(e)
            open_eps[(ep.patient_id, ep.rule, ep.kind)] = ep
        resolved = [Episode.from_state(e) for e in state["resolved"]]
    except AlertStateError:
        raise
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        OverflowError,
        RecursionError,
        UnicodeDecodeError,
    ) as exc:
        raise AlertStateError(f"malformed alert engine snapshot: {type(exc).__name__}") from exc
    return Decoded(patients, streams, order, watermark, open_eps, resolved)


def _check_types(values: Any, allowed: frozenset[type], name: str) -> None:
    if type(values) is not list or not set(map(type, values)) <= allowed:
        raise TypeError(f"snapshot field {name} has a value of the wrong type")


def _check_mapping(value: Any, allowed: frozenset[type], name: str) -> None:
    if type(value) is not dict or not set(map(type, value.values())) <= allowed:
        raise TypeError(f"snapshot field {name} must be an object of the right values")


_INT: frozenset[type] = frozenset({int})
_NUMBER: frozenset[type] = frozenset({int, float})
_INT_OR_NONE: frozenset[type] = frozenset({int, type(None)})
_LIST: frozenset[type] = frozenset({list})


def _decode_v2(
    state: Mapping[str, Any],
) -> tuple[dict[str, PatientInfo], dict[tuple[str, str], Stream], list[Stream] | None, datetime | None]:
    """Patients, streams, their order (if already sorted) and the watermark of a version-2
    snapshot; raises on malformed input."""
    watermark = state["watermark"]
    watermark = None if watermark is None else _from_us(watermark)

    p = state["patients"]
    pids = p["patient_id"]
    _check_types(pids, STR, "patients.patient_id")
    _check_types(p["region"], STR_OR_NONE, "patients.region")
    _check_types(p["registered_at"], _INT_OR_NONE, "patients.registered_at")
    patients: dict[str, PatientInfo] = {}
    times: dict[int, datetime] = {}  # one object per distinct time: less memory, and fast `is`

    def at(us: int) -> datetime:
        ts = times.get(us)
        if ts is None:
            ts = times[us] = _from_us(us)
        return ts

    for pid, region, overrides, plan, registered, seen in zip(
        pids, p["region"], p["overrides"], p["plan"], p["registered_at"], p["plan_seen_at"], strict=True
    ):
        _check_mapping(overrides, _NUMBER, "patients.overrides")
        _check_mapping(plan, _NUMBER, "patients.plan")
        _check_mapping(seen, _INT, "patients.plan_seen_at")
        thresholds, _ = effective_thresholds(overrides)
        patients[pid] = PatientInfo(
            region=region,
            overrides=dict(overrides),
            thresholds=thresholds,
            plan={k: float(v) for k, v in plan.items()},
            registered_at=None if registered is None else at(registered),
            plan_seen_at={k: at(v) for k, v in seen.items()} if seen else {},
        )
    if len(patients) != len(pids):
        raise ValueError("duplicate patient in snapshot")

    s = state["streams"]
    kinds = s["kinds"]
    _check_types(kinds, STR, "streams.kinds")
    _check_types(s["kind"], _INT, "streams.kind")
    if min(s["kind"], default=0) < 0:
        raise ValueError("snapshot kind index out of range")
    _check_types(s["patient_id"], STR, "streams.patient_id")
    keys = list(zip(s["patient_id"], [kinds[i] for i in s["kind"]], strict=True))
    n = len(keys)
    latest = s["latest"]
    counts = s["readings"]
    _check_types(latest, _INT_OR_NONE, "streams.latest")
    _check_types(counts, _INT, "streams.readings")
    rids, values, systolics, diastolics = s["reading_id"], s["value"], s["systolic"], s["diastolic"]
    _check_types(rids, STR_OR_NONE, "streams.reading_id")
    for name in ("value", "systolic", "diastolic"):
        _check_types(s[name], FLOAT_OR_NONE, f"streams.{name}")
    materials = list(zip(rids, values, systolics, diastolics, strict=True))
    if len(latest) != n or len(counts) != n or sum(counts) != len(materials) or min(counts, default=0) < 0:
        raise ValueError("snapshot stream columns differ in length")
    if any(c and t is None for c, t in zip(counts, latest, strict=True)):
        raise ValueError("readings without a latest time in snapshot")

    hashes: dict[int, list[str]] = {}
    _check_types(s["hashed"], _INT, "streams.hashed")
    _check_types(s["hashes"], _LIST, "streams.hashes")
    for i, hs in zip(s["hashed"], s["hashes"], strict=True):
        _check_types(hs, STR, "streams.hashes")
        hashes[i] = hs
    weights: dict[int, list[tuple[datetime, float]]] = {}
    _check_types(s["weighted"], _INT, "streams.weighted")
    _check_types(s["weight_at"], _LIST, "streams.weight_at")
    _check_types(s["weight_kg"], _LIST, "streams.weight_kg")
    for i, ts, kgs in zip(s["weighted"], s["weight_at"], s["weight_kg"], strict=True):
        _check_types(ts, _INT, "streams.weight_at")
        _check_types(kgs, _NUMBER, "streams.weight_kg")
        weights[i] = [(at(t), float(w)) for t, w in zip(ts, kgs, strict=True)]

    streams: dict[tuple[str, str], Stream] = {}
    rows = iter(materials)
    for key, us, count in zip(keys, latest, counts, strict=True):
        if count == 1:
            entries: list[Any] = [next(rows)]
        elif count:
            entries = list(itertools.islice(rows, count))
        else:
            entries = []
        # the row is canonical as it stands unless sorting could change it: reuse it in encode()
        row = (us, entries if count else NO_ROWS, NO_ROWS, NO_ROWS, NO_ROWS) if count <= 1 else None
        ts = None if us is None else at(us)
        streams[key] = Stream(key[0], key[1], ts, (), entries, NO_KEYS, None, 0, row)
    if len(streams) != n:
        raise ValueError("duplicate stream in snapshot")
    if not all(0 <= i < n for i in hashes) or not all(0 <= i < n for i in weights):
        raise ValueError("snapshot stream index out of range")
    for i, hs in hashes.items():
        stream = streams[keys[i]]
        stream.opaque = frozenset(hs)
        stream.row = None
    for i, ws in weights.items():
        stream = streams[keys[i]]
        stream.weights = ws
        stream.row = None
    ordered = all(a < b for a, b in zip(keys, keys[1:], strict=False))
    return patients, streams, list(streams.values()) if ordered else None, watermark
