"""What the support state answers: per-patient metrics and exactly mergeable group summaries.

:class:`Evaluation` holds per-patient metrics as of one instant (arrays indexed by patient slot,
times in epoch seconds UTC, care in integer milliseconds, expected readings in micro-readings).
:class:`PartialSummary` holds the integer sufficient statistics of one worker's patients as of
one UTC day (:class:`GroupCounts` per dimension and group, and the exact histogram of care ms);
:meth:`PartialSummary.merge` of workers with disjoint patients gives exactly the single-worker
summary, whatever the split. Inequality measures of a summary are computed above the core, by
:func:`monitor.equity.equity_from_summary`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.core import support as _k
from monitor.core.batch import MICRO
from monitor.core.timeutil import MS_PER_MINUTE, iso_utc_s

__all__ = [
    "FLAG_NAMES",
    "UNKNOWN_GROUP",
    "Evaluation",
    "GroupCounts",
    "PartialSummary",
]

FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (int(_k.FLAG_NO_SUPPORT_NETWORK), "no_support_network"),
    (int(_k.FLAG_SINGLE_CARER), "single_carer"),
    (int(_k.FLAG_SUPPORT_LAPSED), "support_lapsed"),
)
"""Flag bit -> name, sorted by name."""

UNKNOWN_GROUP = "unknown"
"""Group of a patient seen in events but never registered (excluded from equity measures)."""


@dataclass(frozen=True)
class Evaluation:
    """Per-patient metrics as of ``as_of_s`` (epoch seconds UTC; day resolution ``as_of_day``).

    Arrays are indexed by patient slot (length ``n``): ``active_carers``, ``registered_carers``,
    ``care_ms`` (care milliseconds in the coverage window), ``contact_days``, ``readings_received``,
    ``readings_expected_micro`` (expected readings in the coverage window x 10**6), ``flags``
    (bit set, see :data:`FLAG_NAMES`), ``covered``, ``last_contact_s`` / ``last_reading_s``
    (epoch seconds, ``NO_TIME`` if none).
    """

    as_of_s: int
    as_of_day: int
    patient_ids: Sequence[str]
    active_carers: np.ndarray
    registered_carers: np.ndarray
    care_ms: np.ndarray
    contact_days: np.ndarray
    readings_received: np.ndarray
    readings_expected_micro: np.ndarray
    flags: np.ndarray
    covered: np.ndarray
    last_contact_s: np.ndarray
    last_reading_s: np.ndarray

    @property
    def n(self) -> int:
        return int(self.flags.shape[0])

    def flag_names(self, slot: int) -> list[str]:
        f = int(self.flags[slot])
        return [name for bit, name in FLAG_NAMES if f & bit]

    def patient(self, slot: int) -> dict[str, Any]:
        """The JSON-ready metrics of one patient (the replay output shape)."""
        return {
            "flags": self.flag_names(slot),
            "active_carers_28d": int(self.active_carers[slot]),
            "care_minutes_7d": int(self.care_ms[slot]) / MS_PER_MINUTE,
            "contact_days_7d": int(self.contact_days[slot]),
            "readings_expected_7d": int(self.readings_expected_micro[slot]) / MICRO,
            "readings_received_7d": int(self.readings_received[slot]),
        }

    def patients(self) -> dict[str, dict[str, Any]]:
        return {pid: self.patient(i) for i, pid in enumerate(self.patient_ids)}

    def last_times(self, slot: int) -> dict[str, str | None]:
        """``last_contact_at`` / ``last_reading_at`` as ISO 8601 UTC (None if never)."""
        c, r = int(self.last_contact_s[slot]), int(self.last_reading_s[slot])
        return {
            "last_contact_at": None if c == _k.NO_TIME else iso_utc_s(c),
            "last_reading_at": None if r == _k.NO_TIME else iso_utc_s(r),
        }


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """Exactly mergeable integer sums of one group (see :data:`monitor.core.support.GROUP_COLUMNS`)."""

    patients: int = 0
    covered: int = 0
    no_support_network: int = 0
    support_lapsed: int = 0
    single_carer: int = 0
    care_ms_7d: int = 0
    readings_received_7d: int = 0
    readings_received_capped_micro: int = 0
    readings_expected_micro: int = 0

    def __add__(self, other: GroupCounts) -> GroupCounts:
        return GroupCounts(*(getattr(self, f) + getattr(other, f) for f in _k.GROUP_COLUMNS))

    def indicators(self) -> dict[str, float | int | None]:
        """``patients`` and the four group indicators (None when the denominator is 0).

        ``pct_covered`` (favourable), ``pct_no_support_network`` (adverse),
        ``mean_care_minutes_per_week`` (care minutes in the 7-day window per patient),
        ``pct_readings_received`` (received / expected, each patient capped at its expectation).
        """
        n = self.patients
        return {
            "patients": n,
            "pct_covered": 100 * self.covered / n if n else None,
            "pct_no_support_network": 100 * self.no_support_network / n if n else None,
            "mean_care_minutes_per_week": self.care_ms_7d / MS_PER_MINUTE / n if n else None,
            "pct_readings_received": (
                100 * self.readings_received_capped_micro / self.readings_expected_micro
                if self.readings_expected_micro else None
            ),
        }


@dataclass(frozen=True)
class PartialSummary:
    """Sufficient statistics of one worker's patients as of one UTC day; merge is exact.

    ``groups``: dimension -> group name -> :class:`GroupCounts` (integers). ``care_ms_values`` /
    ``care_ms_counts``: the exact histogram of per-patient care milliseconds in the coverage window
    (sorted distinct values, patient counts), from which individual-level measures are computed.
    Merging workers with disjoint patients gives exactly the single-worker summary.
    """

    as_of_day: int
    groups: Mapping[str, Mapping[str, GroupCounts]]
    care_ms_values: np.ndarray
    care_ms_counts: np.ndarray

    @staticmethod
    def merge(a: PartialSummary, b: PartialSummary) -> PartialSummary:
        """Exact merge of two summaries of the same as-of day (``ValueError`` otherwise)."""
        if a.as_of_day != b.as_of_day:
            raise ValueError(f"cannot merge summaries of days {a.as_of_day} and {b.as_of_day}")
        groups: dict[str, dict[str, GroupCounts]] = {}
        for dim in sorted(set(a.groups) | set(b.groups)):
            ga, gb = a.groups.get(dim, {}), b.groups.get(dim, {})
            groups[dim] = {
                g: ga.get(g, GroupCounts()) + gb.get(g, GroupCounts())
                for g in sorted(set(ga) | set(gb))
            }
        values, counts = _merge_hist(
            np.concatenate((a.care_ms_values, b.care_ms_values)),
            np.concatenate((a.care_ms_counts, b.care_ms_counts)),
        )
        return PartialSummary(a.as_of_day, groups, values, counts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (integers only), e.g. to send to a coordinator."""
        return {
            "as_of_day": self.as_of_day,
            "groups": {
                d: {g: [getattr(c, f) for f in _k.GROUP_COLUMNS] for g, c in gs.items()}
                for d, gs in self.groups.items()
            },
            "care_ms_values": self.care_ms_values.tolist(),
            "care_ms_counts": self.care_ms_counts.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartialSummary:
        return cls(
            int(data["as_of_day"]),
            {d: {g: GroupCounts(*map(int, v)) for g, v in gs.items()}
             for d, gs in data["groups"].items()},
            np.asarray(data["care_ms_values"], dtype=np.int64),
            np.asarray(data["care_ms_counts"], dtype=np.int64),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartialSummary):
            return NotImplemented
        return (self.as_of_day == other.as_of_day
                and {d: dict(g) for d, g in self.groups.items()}
                == {d: dict(g) for d, g in other.groups.items()}
                and np.array_equal(self.care_ms_values, other.care_ms_values)
                and np.array_equal(self.care_ms_counts, other.care_ms_counts))

    __hash__ = None  # type: ignore[assignment]


def _merge_hist(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact merge of (value, count) histograms: distinct sorted values, integer count sums."""
    uniq, inv = np.unique(values, return_inverse=True)
    out = np.zeros(uniq.shape[0], dtype=np.int64)
    np.add.at(out, inv.reshape(-1), counts.astype(np.int64))
    return uniq.astype(np.int64), out

