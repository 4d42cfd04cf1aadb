"""The reference alert engine (the tests' oracle) and the version-1 snapshot layout.

:class:`ReferenceAlertEngine` is :class:`~monitor.alerts.engine.AlertEngine` without its shortcuts:
every columnar slice is turned into reading objects, every reading's duplicate keys are hashed and
every rule of its kind is evaluated. The property tests require both engines to give the same
events and the same snapshot bytes, which proves the shortcuts change nothing. It is slow; nothing
in the worker or replay builds one.

Version 1 is the snapshot layout of older releases (a dict per patient and stream, ISO 8601 UTC
times, duplicate keys as hashes). :func:`decode_v1` is how :func:`monitor.alerts.snapshot.decode`
still restores a checkpoint written by them; :func:`snapshot_v1` writes that layout, for the tests
that prove it restores to the same behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from monitor.alerts.engine import AlertEngine
from monitor.alerts.episodes import PatientInfo, iso, parse_iso
from monitor.alerts.rules import effective_thresholds
from monitor.alerts.streams import Stream
from monitor.intake.canonical import CanonicalReading

__all__ = ["ReferenceAlertEngine", "decode_v1", "snapshot_v1"]


class ReferenceAlertEngine(AlertEngine):
    """The alert engine on its reference path: no shortcut (for tests and benchmarks only)."""

    _exhaustive: ClassVar[bool] = True

    def _readings_to_apply(self, readings: Sequence[Any]) -> Sequence[CanonicalReading]:
        """Columnar slices replaced by their reading objects, in place."""
        out: list[CanonicalReading] = []
        for r in readings:
            if type(r) is CanonicalReading:
                out.append(r)
            else:
                out.extend(r.readings())
        return out


def decode_v1(
    state: Mapping[str, Any],
) -> tuple[dict[str, PatientInfo], dict[tuple[str, str], Stream], datetime | None]:
    """Patients, streams and watermark of a version-1 snapshot (episodes are read by the caller:
    their layout did not change); raises ``KeyError``/``TypeError``/``ValueError`` on bad input."""
    patients: dict[str, PatientInfo] = {}
    for pid, p in state["patients"].items():
        thresholds, _ = effective_thresholds(p["overrides"])
        patients[pid] = PatientInfo(
            region=p["region"],
            overrides=dict(p["overrides"]),
            thresholds=thresholds,
            plan={k: float(v) for k, v in p["plan"].items()},
            registered_at=parse_iso(p["registered_at"]),
            plan_seen_at={k: parse_iso(v) for k, v in p["plan_seen_at"].items()},  # type: ignore[misc]
        )
    streams: dict[tuple[str, str], Stream] = {}
    for s in state["streams"]:
        streams[(s["patient_id"], s["kind"])] = Stream(
            s["patient_id"],
            s["kind"],
            latest=parse_iso(s["latest"]),
            opaque=frozenset(s["latest_keys"]),
            weights=[(parse_iso(t), float(w)) for t, w in s["weights"]],  # type: ignore[misc]
        )
    return patients, streams, parse_iso(state["watermark"])


def snapshot_v1(engine: AlertEngine) -> bytes:
    """The engine state in the version-1 layout (the encoder of older releases), deterministic
    UTF-8 JSON. Hashes every duplicate key not hashed yet."""
    state = {
        "version": 1,
        "watermark": iso(engine._watermark),
        "patients": {
            pid: {
                "region": p.region,
                "overrides": p.overrides,
                "plan": p.plan,
                "registered_at": iso(p.registered_at),
                "plan_seen_at": {k: iso(v) for k, v in p.plan_seen_at.items()},
            }
            for pid, p in sorted(engine._patients.items())
        },
        "streams": [
            {
                "patient_id": pid,
                "kind": kind,
                "latest": iso(s.latest),
                "latest_keys": sorted(s.keys()),
                "weights": [[iso(t), w] for t, w in s.weights],
            }
            for (pid, kind), s in sorted(engine._streams.items())
        ],
        "open": [engine._open[k].to_state() for k in sorted(engine._open)],
        "resolved": [e.to_state() for e in engine._resolved],
    }
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")
