"""The columnar apply: (patient, kind) groups of a reading slice that surely decide nothing.

Intake hands the engine :class:`monitor.intake.columnar.ReadingSlice` runs of readings as columns
(times as whole epoch seconds, UTC; values in canonical units, ``nan`` for none). A group that
can neither open, keep nor resolve an episode only moves its stream's latest time and duplicate
keys, which is done here without building a reading object; every other group is returned as
readings for the engine's general path. The result equals applying every row one by one
(proved against ``monitor.alerts.reference.ReferenceAlertEngine``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from monitor.alerts.episodes import MISSED, Episode, PatientInfo
from monitor.alerts.rules import RULE_IDS_BY_KIND, any_holds, checks_for
from monitor.alerts.streams import Stream
from monitor.core.timeutil import to_us
from monitor.intake.canonical import CanonicalReading
from monitor.intake.columnar import datetime_from_s


def _surely_quiet(kinds: list[str], value: Any, systolic: Any, diastolic: Any) -> list[bool]:
    """Per reading (canonical values as arrays, nan: none): whether no rule of its kind can hold
    under the default thresholds, decided without rounding (every component strictly inside its
    check's quiet interval, or missing). ``False`` means: let :func:`any_holds` decide."""
    n = len(kinds)
    out = np.ones(n, dtype=bool)
    names = np.array(kinds, dtype=object)
    by = {"systolic": systolic, "diastolic": diastolic}
    for kind in set(kinds):
        rows = names == kind
        for component, quiet_from, quiet_to, _ in checks_for(kind):
            if component == "gain":
                continue  # needs a baseline: body weight never takes the columnar route
            x = by.get(component, value)[rows]
            with np.errstate(invalid="ignore"):
                out[rows] &= ~np.isfinite(x) | ((quiet_from < x) & (x < quiet_to))
    return out.tolist()


_SECONDS: dict[datetime, int] = {}


def _seconds(t: datetime) -> int | None:
    """Whole epoch seconds of an aware time (``None`` when it has a fraction of a second)."""
    s = _SECONDS.get(t)
    if s is None:
        us = to_us(t)
        if us % 1_000_000:
            return None
        if len(_SECONDS) >= 100_000:  # a bounded cache: times of old streams are not kept alive
            _SECONDS.clear()
        s = _SECONDS[t] = us // 1_000_000
    return s


def apply_columns(
    sl: Any,
    taken: set[tuple[str, str]],
    streams: dict[tuple[str, str], Stream],
    open_eps: dict[tuple[str, str, str], Episode],
    patients: dict[str, PatientInfo],
) -> tuple[list[CanonicalReading], bool, list[tuple[str, str]]]:
    """Apply the quiet groups of a columnar slice to ``streams``; return the readings of the other
    groups (for the general path), whether a stream was created and the keys of the streams that
    got their first latest time (the reference of their ``missed_readings`` gap moved).

    A quiet group's stream advances to the group's latest time if that is newer and keeps that
    reading's duplicate keys as a material row. Quiet means (what the general path would do with
    these rows one by one is surely nothing): no object reading of the call in that stream and no
    earlier row of it left to the general path (``taken``, updated here), not body weight
    (baselines), no open episode of the patient and kind, times distinct within the group and none
    at the stream's latest time (so no row is a duplicate and the readings at the final latest time
    are the newest row alone), and no rule holding for any row (so none fires, is recorded or
    resolves anything).
    """
    cols, start, stop = sl.columns, sl.start, sl.stop
    patient_ids = sl.patient_ids()
    kinds = sl.kind_names()
    t_s = cols.t_s[start:stop].tolist()
    rids = sl.reading_ids()
    values = cols.value[start:stop]
    systolics = cols.systolic[start:stop]
    diastolics = cols.diastolic[start:stop]
    quiet_rows = _surely_quiet(kinds, values, systolics, diastolics)
    groups: dict[tuple[str, str], list[int]] = {}
    prev: tuple[str, str] | None = None
    rows: list[int] = []
    for i, key in enumerate(zip(patient_ids, kinds, strict=True)):
        if key != prev:
            rows = groups.setdefault(key, [])
            prev = key
        rows.append(i)
    general: list[CanonicalReading] = []
    created = False
    firsts: list[tuple[str, str]] = []
    for key, rows in groups.items():
        patient_id, kind = key
        stream = streams.get(key)
        latest = stream.latest if stream is not None else None
        latest_s = _seconds(latest) if latest is not None else None
        bp = kind == "blood_pressure"
        if latest is not None and latest_s is None:
            quick = False  # a latest time with a fraction of a second
        elif len(rows) == 1:
            top = rows[0]
            quick = latest_s is None or t_s[top] != latest_s
        else:
            times = [t_s[i] for i in rows]
            top = rows[times.index(max(times))]
            quick = len(set(times)) == len(rows) and (latest_s is None or latest_s not in times)
        if quick and (key in taken or kind == "body_weight"):
            quick = False
        if quick and open_eps and ((patient_id, MISSED, kind) in open_eps or any(
                (patient_id, rule_id, kind) in open_eps for rule_id in RULE_IDS_BY_KIND.get(kind, ()))):
            quick = False
        if quick:
            info = patients.get(patient_id)
            exact = info is not None and bool(info.overrides)  # else the default thresholds
            checks = info.checks_for(kind) if info else checks_for(kind)
            for i in rows:
                if exact or not quiet_rows[i]:  # decide exactly
                    if any_holds(checks, value=None if bp else float(values[i]),
                                 systolic=float(systolics[i]) if bp else None,
                                 diastolic=float(diastolics[i]) if bp else None):
                        quick = False
                        break
        if not quick:
            general.extend(cols.reading(start + i) for i in rows)
            taken.add(key)  # later slices' readings of this stream come after these
            continue
        if latest_s is not None and t_s[top] < latest_s:
            continue  # every row older than the latest (and none a duplicate): no change
        if stream is None:
            stream = streams[key] = Stream(patient_id, kind)
            created = True
        if stream.latest is None:
            firsts.append(key)
        stream.advance(datetime_from_s(t_s[top]))
        stream.add((rids[top], None if bp else float(values[top]),
                    float(systolics[top]) if bp else None, float(diastolics[top]) if bp else None))
    return general, created, firsts
