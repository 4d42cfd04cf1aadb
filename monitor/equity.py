"""Public API of the inequality measures: validate inputs, call the numba kernels, return plain data.

Group level (subgroup estimates, e.g. the percentage of patients covered by a carer network in each
deprivation quintile or region) follows WHO's HEAT / HEAT Plus technical notes v6 and the R
package healthequal 1.0.1; individual level (a value per patient or carer) follows PySAL
``inequality`` and R ``ineq``. Definitions: ``shared/notes/equity-measures.md``.

Conventions
-----------
Units
    Estimates are in indicator units: with ``scale=100`` they are percentages in [0, 100] (a rate
    per 1000 has ``scale=1000``). D, ACI, SII, BGSD, MD*, PAR are in indicator units; BGV in squared
    units; R, RII are ratios; COV, IDISU, IDISW, PAF are percentages; TI and MLD are multiplied by
    1000 (HEAT); RCI is a fraction as in healthequal (HEAT displays it x100).
Undefined values
    A measure that does not apply to the dimension (ACI, RCI, SII, RII, WAGSTAFF, ERREYGERS are
    ordered-only; BGV, BGSD, COV, MD*, IDIS*, TI, MLD non-ordered only; MDRU/MDRW need a reference)
    or that is undefined for the data is ``None``, never NaN. Complex measures need more than two
    subgroups; D, R, PAR, PAF need two. R is ``None`` when the denominator subgroup is 0; RCI, COV,
    IDIS*, PAF, WAGSTAFF, ERREYGERS when the setting average is 0; WAGSTAFF and ERREYGERS also when
    an estimate lies outside the bounds ``[0, scale]`` (WAGSTAFF too when the average equals the
    upper bound); logit SII/RII when a derived case count falls outside ``[0, ceil(N)]`` or the
    binomial fit has no finite maximum-likelihood estimate (e.g. all subgroups at 0 %); TI and MLD
    replace zero estimates by 1e-6 (HEAT) and are ``None`` with a negative estimate.
PAR / PAF reference
    Ordered dimensions: the most advantaged subgroup. Non-ordered dimensions: the **flagged
    reference subgroup when one is given (HEAT convention)**, otherwise the best performing
    subgroup (highest if favourable, lowest if adverse). healthequal 1.0.1 ignores the flag: pass
    ``reference=None`` to reproduce it. PAR is clamped to 0 when it has the "wrong" sign
    (favourable and negative, adverse and positive), and PAF follows.
D and R
    Ordered: most advantaged vs most disadvantaged (favourable: advantaged - disadvantaged;
    adverse: disadvantaged - advantaged). Non-ordered with a reference: favourable
    ``reference - lowest other``, adverse ``highest other - reference``. Otherwise highest - lowest.
    A reference given for an ordered dimension is ignored.
SII / RII
    ``sii_method="logit"`` (default): HEAT v6 binomial GLM with logit link on aggregated data
    (``ceil`` of populations, cases ``round(y / scale * N)``, prior weights ``N``, i.e. effective
    IRLS weight ``N**2``), ``SII = scale * (v1 - v0)``, ``RII = v1 / v0``. ``"linear"``: PHE
    ``phe_sii`` weighted least squares with weights ``p_j``, ``SII = b1``, ``RII = (b0 + b1) / b0``.
Individual level
    ``weights`` are frequency weights (counts): integer weights give exactly the results of
    repeating the values. Hence ``gini_corrected = gini * N / (N - 1)`` with ``N = sum(weights)``
    (``n / (n - 1)`` unweighted, ineq's ``Gini(corr=TRUE)``); it is *not* the Kish correction
    ``1 / (1 - sum omega**2)`` appropriate to normalised sampling weights. Zero rule: values must be
    >= 0; ``theil_t`` uses ``0 ln 0 = 0``; ``mld``, ``atkinson_1`` and ``atkinson_2`` are ``None``
    when any value with positive weight is 0 (their limits are +inf, 1, 1). Every measure is
    ``None`` when all values are 0. ``cv`` is the population (ddof = 0) coefficient of variation and
    ``ge2 = cv**2 / 2``.
Failure behaviour
    Malformed input (length mismatch, empty input, non-finite values, negative populations or
    weights, zero total population or weight, negative individual values, duplicate ranks, bad
    reference index, unknown method) raises :class:`EquityInputError`, a ``ValueError``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Hashable, Sequence
from os import PathLike
from typing import Any

import numpy as np

from monitor.core import equity_kernels as _k
from monitor.core.state import SupportConfig
from monitor.core.summary import UNKNOWN_GROUP, PartialSummary
from monitor.core.timeutil import MS_PER_MINUTE
from monitor.errors import MonitorError

__all__ = [
    "GROUP_MEASURES",
    "INDICATORS",
    "INDIVIDUAL_SCALARS",
    "EquityInputError",
    "concentration_index",
    "equity_from_summary",
    "grouped_from_csv",
    "grouped_measures",
    "individual_from_csv",
    "individual_measures",
    "theil_decomposition",
]

GROUP_MEASURES: tuple[str, ...] = _k.GROUP_MEASURES
"""Keys of :func:`grouped_measures`, in the kernels' order."""
INDIVIDUAL_SCALARS: tuple[str, ...] = _k.INDIVIDUAL_SCALARS
"""Scalar keys of :func:`individual_measures` (``None`` each when there is no patient)."""
_SII_METHODS = {"logit": _k.SII_LOGIT, "linear": _k.SII_LINEAR}


class EquityInputError(MonitorError, ValueError):
    """Input to an inequality measure is malformed (also a ``ValueError``)."""


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _vector(values: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EquityInputError(f"{name} must be a sequence of numbers: {exc}") from None
    if arr.ndim != 1:
        raise EquityInputError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise EquityInputError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise EquityInputError(f"{name} has a non-finite value at index {bad}: {arr[bad]!r}")
    return np.ascontiguousarray(arr)


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise EquityInputError(
            f"length mismatch: {name_a} has {a.shape[0]} values, {name_b} has {b.shape[0]}"
        )


def _non_negative(arr: np.ndarray, name: str) -> None:
    if np.any(arr < 0):
        bad = int(np.flatnonzero(arr < 0)[0])
        raise EquityInputError(f"{name} must be >= 0; index {bad} is {arr[bad]!r}")


def _weights(weights: Any, n: int, name: str = "weights") -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = _vector(weights, name)
    if w.shape[0] != n:
        raise EquityInputError(f"length mismatch: values has {n} values, {name} has {w.shape[0]}")
    _non_negative(w, name)
    if not w.sum() > 0:
        raise EquityInputError(f"{name} sum to 0")
    return w


def _clean(value: float) -> float | None:
    v = float(value)
    return None if math.isnan(v) else v


# --------------------------------------------------------------------------------------------
# group level
# --------------------------------------------------------------------------------------------


def grouped_measures(
    estimates: Sequence[float],
    populations: Sequence[float],
    *,
    order: Sequence[float] | None = None,
    reference: int | None = None,
    favourable: bool = True,
    scale: float = 100,
    sii_method: str = "logit",
) -> dict[str, float | None]:
    """Group-level inequality measures of one setting (HEAT v6 conventions).

    Parameters
    ----------
    estimates:
        Subgroup estimates in indicator units (percent when ``scale`` is 100).
    populations:
        Subgroup population sizes (>= 0, positive total); weights ``p_j = N_j / sum N``.
    order:
        Ranks of an ordered dimension (1 = most disadvantaged, distinct values), or ``None`` for a
        non-ordered dimension.
    reference:
        Index (0-based) of the flagged reference subgroup of a non-ordered dimension, or ``None``.
    favourable:
        True if higher is better (coverage), False for adverse indicators.
    scale:
        Indicator scale (> 0); the indicator's bounds are ``[0, scale]``.
    sii_method:
        ``"logit"`` (HEAT v6) or ``"linear"`` (PHE ``phe_sii``).

    Returns
    -------
    dict
        Keys :data:`GROUP_MEASURES` (D, R, ACI, RCI, SII, RII, BGV, BGSD, COV, MDMU, MDMW, MDBU,
        MDBW, MDRU, MDRW, IDISU, IDISW, TI, MLD, PAR, PAF, WAGSTAFF, ERREYGERS); float values,
        ``None`` when not applicable or undefined (see the module docstring). With a single
        subgroup every value is ``None``.

    Raises
    ------
    EquityInputError
        (a ``ValueError``) on malformed input.
    """
    est = _vector(estimates, "estimates")
    pop = _vector(populations, "populations")
    _same_length(est, pop, "estimates", "populations")
    _non_negative(pop, "populations")
    if not pop.sum() > 0:
        raise EquityInputError("populations sum to 0")
    n = est.shape[0]
    if order is not None:
        rank = _vector(order, "order")
        _same_length(est, rank, "estimates", "order")
        if np.unique(rank).shape[0] != n:
            raise EquityInputError("order has duplicate ranks; each subgroup needs its own rank")
    else:
        rank = np.zeros(n)
    if reference is None:
        ref = -1
    else:
        if isinstance(reference, bool) or not isinstance(reference, int | np.integer):
            raise EquityInputError(f"reference must be a subgroup index (int), got {reference!r}")
        if not 0 <= int(reference) < n:
            raise EquityInputError(f"reference index {reference} out of range for {n} subgroups")
        ref = int(reference)
    scale_f = float(scale)
    if not (math.isfinite(scale_f) and scale_f > 0):
        raise EquityInputError(f"scale must be a positive finite number, got {scale!r}")
    if sii_method not in _SII_METHODS:
        raise EquityInputError(f"sii_method must be one of {sorted(_SII_METHODS)}, got {sii_method!r}")
    values = _k.grouped_measures(
        est, pop, rank, order is not None, ref, bool(favourable), scale_f, _SII_METHODS[sii_method]
    )
    return {name: _clean(v) for name, v in zip(GROUP_MEASURES, values, strict=True)}


def _read_csv(path: str | PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = [h.strip() for h in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    return header, rows


def _number(row: dict[str, str], column: str, line: int) -> float:
    text = row.get(column, "")
    try:
        return float(text)
    except ValueError:
        raise EquityInputError(f"line {line}: column {column!r} is not a number: {text!r}") from None


def grouped_from_csv(
    path: str | PathLike[str],
    *,
    adverse: bool = False,
    ordered: bool = False,
    scale: float = 100,
    sii_method: str = "logit",
) -> dict[str, float | None]:
    """:func:`grouped_measures` of a CSV file with columns ``subgroup,estimate,population``.

    Optional columns: ``order`` (required when ``ordered``; 1 = most disadvantaged) and
    ``reference`` (1 marks the reference subgroup, anything else or empty means not reference; at
    most one row may be marked). ``adverse`` flips the indicator direction (favourable = not
    adverse). Raises :class:`EquityInputError` on missing columns, bad numbers or invalid data.
    """
    header, rows = _read_csv(path)
    missing = [c for c in ("subgroup", "estimate", "population") if c not in header]
    if ordered and "order" not in header:
        missing.append("order")
    if missing:
        raise EquityInputError(f"{path}: missing column(s) {', '.join(missing)}")
    if not rows:
        raise EquityInputError(f"{path}: no data rows")
    est = [_number(r, "estimate", i + 2) for i, r in enumerate(rows)]
    pop = [_number(r, "population", i + 2) for i, r in enumerate(rows)]
    order = [_number(r, "order", i + 2) for i, r in enumerate(rows)] if ordered else None
    reference = None
    if "reference" in header:
        flagged = [i for i, r in enumerate(rows) if r.get("reference", "") in {"1", "1.0"}]
        if len(flagged) > 1:
            raise EquityInputError(f"{path}: more than one reference subgroup is marked")
        reference = flagged[0] if flagged else None
    return grouped_measures(
        est,
        pop,
        order=order,
        reference=reference,
        favourable=not adverse,
        scale=scale,
        sii_method=sii_method,
    )


# --------------------------------------------------------------------------------------------
# individual level
# --------------------------------------------------------------------------------------------


def individual_measures(
    values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None
) -> dict[str, Any]:
    """Inequality of a distribution of non-negative values across individuals.

    Returns a dict with keys ``gini``, ``gini_corrected``, ``theil_t``, ``mld``, ``ge2``,
    ``atkinson_0_5``, ``atkinson_1``, ``atkinson_2``, ``cv`` (float or ``None``) and
    ``lorenz_p``, ``lorenz_l`` (lists of floats starting at 0; ``lorenz_l`` is ``None`` when all
    values are 0). ``weights`` are frequency weights (see the module docstring for the correction
    and the zero rule). O(n log n); fine for millions of values. Raises
    :class:`EquityInputError` on empty, non-finite or negative values or bad weights.
    """
    x = _vector(values, "values")
    _non_negative(x, "values")
    w = _weights(weights, x.shape[0])
    scalars, p, lc = _k.individual_measures(x, w)
    out: dict[str, Any] = {name: _clean(v) for name, v in zip(_k.INDIVIDUAL_SCALARS, scalars, strict=True)}
    out["lorenz_p"] = p.tolist()
    out["lorenz_l"] = None if np.isnan(lc[-1]) else lc.tolist()
    return out


def concentration_index(
    outcome: Sequence[float] | np.ndarray,
    rank_variable: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
) -> float | None:
    """Concentration index ``2 cov_w(h, R) / mean_w(h)`` of ``outcome`` over ``rank_variable``.

    ``R`` is the weighted fractional rank in ascending ``rank_variable`` (lowest = most
    disadvantaged when the variable is e.g. income); tied ranks share their midpoint. Positive
    values mean the outcome is concentrated among the higher ranks. ``None`` when the weighted mean
    outcome is 0. Raises :class:`EquityInputError` on malformed input.
    """
    h = _vector(outcome, "outcome")
    r = _vector(rank_variable, "rank_variable")
    _same_length(h, r, "outcome", "rank_variable")
    w = _weights(weights, h.shape[0])
    return _clean(_k.concentration_index(h, r, w))


def theil_decomposition(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float | None]:
    """Theil T and its decomposition into between- and within-group parts (PySAL ``TheilD``).

    ``between`` is Theil T of the values replaced by their group means; ``within`` is the
    weighted sum of group Theil indices, so ``total = between + within``. Values must be >= 0
    (``0 ln 0 = 0``). Keys ``total``, ``between``, ``within``; all ``None`` when every value is
    0. Raises :class:`EquityInputError` on malformed input.
    """
    x = _vector(values, "values")
    _non_negative(x, "values")
    labels = list(groups) if not isinstance(groups, np.ndarray) else groups.tolist()
    if len(labels) != x.shape[0]:
        raise EquityInputError(f"length mismatch: values has {x.shape[0]} values, groups has {len(labels)}")
    index: dict[Hashable, int] = {}
    try:
        codes = np.fromiter(
            (index.setdefault(g, len(index)) for g in labels), dtype=np.int64, count=len(labels)
        )
    except TypeError as exc:
        raise EquityInputError(f"groups must be hashable labels: {exc}") from None
    w = _weights(weights, x.shape[0])
    total, between, within = _k.theil_decomposition(x, codes, len(index), w)
    return {"total": _clean(total), "between": _clean(between), "within": _clean(within)}


def individual_from_csv(
    path: str | PathLike[str], *, value: str = "value", weights: str | None = None
) -> dict[str, Any]:
    """:func:`individual_measures` of column ``value`` of a CSV file, optionally weighted by column
    ``weights``. Raises :class:`EquityInputError` on missing columns or non-numeric cells."""
    header, rows = _read_csv(path)
    missing = [c for c in (value, weights) if c is not None and c not in header]
    if missing:
        raise EquityInputError(f"{path}: missing column(s) {', '.join(missing)}")
    if not rows:
        raise EquityInputError(f"{path}: no data rows")
    x = [_number(r, value, i + 2) for i, r in enumerate(rows)]
    w = [_number(r, weights, i + 2) for i, r in enumerate(rows)] if weights else None
    return individual_measures(x, w)


# --------------------------------------------------------------------------------------------
# measures of the support state's (merged) summaries
# --------------------------------------------------------------------------------------------

INDICATORS: tuple[tuple[str, bool, str], ...] = (
    ("pct_covered", True, "logit"),
    ("pct_no_support_network", False, "logit"),
    ("mean_care_minutes_per_week", True, "linear"),
    ("pct_readings_received", True, "logit"),
)
"""Group indicators for the equity measures: (name, favourable, SII method). Minutes are not a
proportion, so their SII/RII use the linear (PHE) method."""


def _group_sort_key(ordered: bool) -> Any:
    """Sort key of group names: numerically (then the non-numeric ones) for an ordered
    dimension, by name otherwise."""
    def key(g: str) -> Any:
        if ordered:
            try:
                return (0, int(g), g)
            except ValueError:
                return (1, 0, g)
        return (0, 0, g)
    return key


def equity_from_summary(
    summary: PartialSummary, config: SupportConfig | None = None, *, lorenz: bool = False
) -> dict[str, dict[str, dict[str, Any]]]:
    """Inequality measures of a (merged) summary: ``{dimension: {indicator: {measure: value}}}``.

    Group level: for each dimension in the summary and each indicator in :data:`INDICATORS`,
    :func:`grouped_measures` over the known groups (the ``unknown`` group and
    groups without a defined estimate are left out), with ``order`` = the quintile (1 = most
    deprived) for ordered dimensions and no reference group otherwise. A dimension with no group
    gives ``None`` for every measure. Individual level: under the key ``"individual"``,
    ``{"care_minutes_7d": individual_measures(...)}`` over the exact histogram of per-patient care
    minutes (frequency weights, so it equals the measures of the full patient list; Lorenz points
    only with ``lorenz=True``). Values are plain floats or ``None``.
    """
    config = config or SupportConfig()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dim in sorted(summary.groups):
        ordered = dim in config.ordered_dimensions
        names = sorted((g for g in summary.groups[dim] if g != UNKNOWN_GROUP),
                       key=_group_sort_key(ordered))
        if ordered:
            names = [g for g in names if g.lstrip("-").isdigit()]
        per_ind: dict[str, dict[str, Any]] = {}
        for ind, favourable, sii in INDICATORS:
            est: list[float] = []
            pop: list[float] = []
            rank: list[float] = []
            for g in names:
                c = summary.groups[dim][g]
                v = c.indicators()[ind]
                if v is None or c.patients == 0:
                    continue
                est.append(float(v))
                pop.append(float(c.patients))
                rank.append(float(int(g)) if ordered else 0.0)
            if not est:
                per_ind[ind] = dict.fromkeys(GROUP_MEASURES)
                continue
            per_ind[ind] = grouped_measures(
                est, pop, order=rank if ordered else None, favourable=favourable,
                scale=100, sii_method=sii,
            )
        out[dim] = per_ind
    if summary.care_ms_counts.size and summary.care_ms_counts.sum() > 0:
        ind_m = individual_measures(
            summary.care_ms_values / MS_PER_MINUTE, summary.care_ms_counts.astype(np.float64)
        )
        if not lorenz:
            ind_m.pop("lorenz_p", None)
            ind_m.pop("lorenz_l", None)
    else:
        ind_m = dict.fromkeys(INDIVIDUAL_SCALARS)
    out["individual"] = {"care_minutes_7d": ind_m}
    return out
