"""Who takes part: carer participation and self-monitoring adherence by group, with HEAT measures.

Definitions (as of UTC day ``D``; window = the last 28 days ``D-27 .. D``, see
:mod:`monitor.carers.fragility`)
-----------------------------------------------------------------------------------------------
* An **active carer** has at least one activity in the window. A carer counts in **each group of
  the patients they were active for**, once per group: a carer active for two patients of
  quintile 1 and one of quintile 3 is one active carer of quintile 1 and one of quintile 3.
* ``active_carers_per_100_patients`` of a group = ``100 * active carers / registered patients``
  of the group (favourable; not a proportion - it can exceed 100 - so SII/RII use the linear
  (PHE) method, and WAGSTAFF/ERREYGERS are ``None`` when a value exceeds 100).
* ``care_minutes_per_patient_28d`` = care minutes in the window for the group's patients divided
  by its registered patients (favourable, linear SII).
* ``pct_readings_received`` (self-monitoring adherence) = ``100 * received / expected`` from the
  mapping the caller passes (``{dimension: {group: (received, expected)}}``; the support core's
  group indicators have it), weighted by the group's registered patients from the summary
  (favourable, logit SII as in the support core). A group without an expectation or without
  registered patients is left out.
* Groups: ``deprivation_quintile`` (ordered, ``order`` = the quintile, 1 = most deprived) and
  ``region`` (non-ordered, no reference group). Patients never registered belong to no group;
  their carers still count in the individual-level distribution.
* Individual level: ``care_minutes_28d_per_carer`` - :func:`monitor.equity.individual_measures`
  of each active carer's care minutes in the window, summed over all their patients.

Exact merging across partitions
-------------------------------
A partition's :class:`ParticipationSummary` holds integers only: per group the registered
patients, active (patient, carer) pairs, care milliseconds and the set of 64-bit hashes of the
carers active for the group's patients; per carer (hash) the care milliseconds. Merging sums the
integers, unions the carer sets (a carer active in two partitions is counted once per group) and
sums the per-carer milliseconds, so N partitions merged give exactly the one-partition summary
and hence the same measures (the only inexactness is a 64-bit hash collision between two
carers, ~n**2 / 2**65).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.carers._common import day_of_instant
from monitor.core.idhash import id_hash
from monitor.core.timeutil import MS_PER_MINUTE

__all__ = [
    "DIMENSIONS",
    "INDICATORS",
    "ORDERED_DIMENSIONS",
    "GroupParticipation",
    "ParticipationSummary",
    "carer_hash",
    "participation_measures",
    "participation_summary",
]

DIMENSIONS: tuple[str, ...] = ("deprivation_quintile", "region")
ORDERED_DIMENSIONS: tuple[str, ...] = ("deprivation_quintile",)
INDICATORS: tuple[tuple[str, bool, str], ...] = (
    ("active_carers_per_100_patients", True, "linear"),
    ("care_minutes_per_patient_28d", True, "linear"),
    ("pct_readings_received", True, "logit"),
)
"""(indicator, favourable, SII method) of the group-level measures."""


def carer_hash(carer_id: str) -> int:
    """Stable 64-bit hash of a carer id (summaries carry no readable carer id)."""
    return id_hash("c", carer_id)


@dataclass(frozen=True, slots=True)
class GroupParticipation:
    """Exactly mergeable statistics of one group (see the module docstring)."""

    patients: int = 0
    active_pairs: int = 0
    care_ms: int = 0
    carers: frozenset[int] = field(default_factory=frozenset)

    def __add__(self, other: GroupParticipation) -> GroupParticipation:
        return GroupParticipation(self.patients + other.patients,
                                  self.active_pairs + other.active_pairs,
                                  self.care_ms + other.care_ms, self.carers | other.carers)

    @property
    def active_carers(self) -> int:
        return len(self.carers)

    def indicators(self) -> dict[str, float | int | None]:
        """Counts and the participation indicators (``None`` without registered patients)."""
        n = self.patients
        return {
            "patients": n,
            "active_carers": self.active_carers,
            "active_pairs": self.active_pairs,
            "active_carers_per_100_patients": 100 * self.active_carers / n if n else None,
            "care_minutes_per_patient_28d": self.care_ms / MS_PER_MINUTE / n if n else None,
        }


@dataclass(frozen=True)
class ParticipationSummary:
    """Sufficient statistics of one partition (or of merged partitions) as of one UTC day.

    ``groups``: dimension -> group (str) -> :class:`GroupParticipation`; ``carer_ms``: carer hash
    -> care milliseconds in the window (active carers only).
    """

    as_of_day: int
    groups: Mapping[str, Mapping[str, GroupParticipation]]
    carer_ms: Mapping[int, int]

    @staticmethod
    def merge(*summaries: ParticipationSummary) -> ParticipationSummary:
        """Exact merge of summaries of the same as-of day (``ValueError`` otherwise)."""
        if not summaries:
            raise ValueError("nothing to merge")
        days = {s.as_of_day for s in summaries}
        if len(days) != 1:
            raise ValueError(f"cannot merge summaries of different days {sorted(days)}")
        groups: dict[str, dict[str, GroupParticipation]] = {}
        carer_ms: dict[int, int] = {}
        for s in summaries:
            for dim, gs in s.groups.items():
                out = groups.setdefault(dim, {})
                for g, stats in gs.items():
                    out[g] = out.get(g, GroupParticipation()) + stats
            for c, ms in s.carer_ms.items():
                carer_ms[c] = carer_ms.get(c, 0) + ms
        return ParticipationSummary(
            summaries[0].as_of_day,
            {d: dict(sorted(gs.items())) for d, gs in sorted(groups.items())},
            dict(sorted(carer_ms.items())),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (integers and strings only)."""
        return {
            "as_of_day": self.as_of_day,
            "groups": {
                d: {g: [s.patients, s.active_pairs, s.care_ms, sorted(s.carers)]
                    for g, s in gs.items()}
                for d, gs in self.groups.items()
            },
            "carer_ms": [[c, ms] for c, ms in sorted(self.carer_ms.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParticipationSummary:
        return cls(
            int(data["as_of_day"]),
            {d: {g: GroupParticipation(int(v[0]), int(v[1]), int(v[2]), frozenset(map(int, v[3])))
                 for g, v in gs.items()}
             for d, gs in data["groups"].items()},
            {int(c): int(ms) for c, ms in data["carer_ms"]},
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParticipationSummary):
            return NotImplemented
        return (self.as_of_day == other.as_of_day
                and {d: dict(g) for d, g in self.groups.items()}
                == {d: dict(g) for d, g in other.groups.items()}
                and dict(self.carer_ms) == dict(other.carer_ms))

    __hash__ = None  # type: ignore[assignment]


def _group_of(patient: Any, dimension: str) -> str | None:
    value = patient.get(dimension) if isinstance(patient, Mapping) else getattr(patient, dimension, None)
    return None if value is None else str(value)


def participation_summary(
    window: Any,
    patients: Mapping[str, Any],
    as_of: datetime | int,
    *,
    dimensions: Iterable[str] = DIMENSIONS,
) -> ParticipationSummary:
    """The summary of one partition as of ``as_of`` (a datetime or a UTC day number).

    ``window`` is a :class:`~monitor.carers.fragility.FragilityState` (its last 28 days are
    used) or its :meth:`~monitor.carers.fragility.FragilityState.window_cells` result
    ``{patient_id: {carer_id: (ms, activities)}}``. ``patients`` maps the registered patients of
    the partition to their registry entry (a contract ``Patient`` or a mapping with the dimension
    keys). Raises :class:`~monitor.core.state.StaleAsOfError` for an as-of day before the state's
    watermark day.
    """
    day = as_of if isinstance(as_of, int) else day_of_instant(as_of)
    cells: Mapping[str, Mapping[str, tuple[int, int]]] = (
        window.window_cells(day) if hasattr(window, "window_cells") else window
    )
    dims = tuple(dimensions)
    acc: dict[str, dict[str, list[Any]]] = {d: {} for d in dims}
    for pid, reg in patients.items():
        carers = {c: v for c, v in cells.get(pid, {}).items() if v[1] > 0}
        ms = sum(v[0] for v in carers.values())
        hashes = {carer_hash(c) for c in carers}
        for d in dims:
            g = _group_of(reg, d)
            if g is None:
                continue
            a = acc[d].setdefault(g, [0, 0, 0, set()])
            a[0] += 1
            a[1] += len(carers)
            a[2] += ms
            a[3] |= hashes
    carer_ms: dict[int, int] = {}
    for carers in cells.values():
        for c, (ms, n) in carers.items():
            if n > 0:
                h = carer_hash(c)
                carer_ms[h] = carer_ms.get(h, 0) + int(ms)
    groups = {
        d: {g: GroupParticipation(a[0], a[1], a[2], frozenset(a[3])) for g, a in sorted(gs.items())}
        for d, gs in sorted(acc.items())
    }
    return ParticipationSummary(day, groups, dict(sorted(carer_ms.items())))


def _sorted_groups(names: Iterable[str], ordered: bool) -> list[str]:
    if ordered:
        return sorted((g for g in names if g.lstrip("-").isdigit()), key=int)
    return sorted(names)


def participation_measures(
    summary: ParticipationSummary,
    adherence: Mapping[str, Mapping[Any, tuple[float, float]]] | None = None,
    *,
    ordered_dimensions: Iterable[str] = ORDERED_DIMENSIONS,
    lorenz: bool = False,
) -> dict[str, Any]:
    """Group indicators and inequality measures of a (merged) summary.

    Returns ``{"as_of_day": d, "groups": {dimension: {group: indicators}},
    "equity": {dimension: {indicator: {measure: value | None}}},
    "individual": {"care_minutes_28d_per_carer": {measure: value | None}}}`` where the group
    measures come from :func:`monitor.equity.grouped_measures` (scale 100; ordered dimensions
    with ``order`` = the quintile, others without reference) and the individual ones from
    :func:`monitor.equity.individual_measures` (Lorenz points only with ``lorenz=True``). An
    indicator with no usable group gives ``None`` for every measure; ``pct_readings_received`` is
    present only with ``adherence``. Groups of an ordered dimension that are not integers are
    left out of its measures.
    """
    from monitor import equity

    ordered_dims = set(ordered_dimensions)
    groups_out: dict[str, dict[str, dict[str, Any]]] = {}
    equity_out: dict[str, dict[str, dict[str, Any]]] = {}
    indicators = [i for i in INDICATORS if adherence is not None or i[0] != "pct_readings_received"]
    for dim in sorted(summary.groups):
        gs = summary.groups[dim]
        ordered = dim in ordered_dims
        adh = {str(g): v for g, v in (adherence or {}).get(dim, {}).items()}
        rows: dict[str, dict[str, Any]] = {}
        for g in sorted(gs):
            ind: dict[str, Any] = gs[g].indicators()
            if adherence is not None:
                rec, exp = adh.get(g, (0, 0))
                ind["pct_readings_received"] = 100 * float(rec) / float(exp) if exp else None
            rows[g] = ind
        groups_out[dim] = rows
        per_ind: dict[str, dict[str, Any]] = {}
        for name, favourable, sii in indicators:
            est: list[float] = []
            pop: list[float] = []
            rank: list[float] = []
            for g in _sorted_groups(gs, ordered):
                v = rows[g][name]
                if v is None or gs[g].patients <= 0:
                    continue
                est.append(float(v))
                pop.append(float(gs[g].patients))
                rank.append(float(int(g)) if ordered else 0.0)
            if not est:
                per_ind[name] = dict.fromkeys(equity.GROUP_MEASURES)
                continue
            per_ind[name] = equity.grouped_measures(
                est, pop, order=rank if ordered else None, favourable=favourable, scale=100,
                sii_method=sii,
            )
        equity_out[dim] = per_ind
    values = sorted(summary.carer_ms.values())
    if values and sum(values) > 0:
        ind_m = equity.individual_measures([v / MS_PER_MINUTE for v in values])
        if not lorenz:
            ind_m.pop("lorenz_p", None)
            ind_m.pop("lorenz_l", None)
    else:
        from monitor.equity import INDIVIDUAL_SCALARS

        ind_m = dict.fromkeys(INDIVIDUAL_SCALARS)
    return {
        "as_of_day": summary.as_of_day,
        "groups": groups_out,
        "equity": equity_out,
        "individual": {"care_minutes_28d_per_carer": ind_m},
    }
