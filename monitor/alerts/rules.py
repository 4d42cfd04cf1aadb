"""The clinician alert rule table (as data) and the evaluation of one reading against it.

Units
    Every threshold and every value is in the canonical unit of its kind (see
    :mod:`monitor.contract.units`): glucose ``mmol/L``, blood pressure ``mm[Hg]``, heart and
    respiratory rate ``/min``, SpO2 ``%``, body temperature ``Cel``, weight ``kg``. A glucose of
    70 mg/dL arrives here as 3.885 mmol/L and is therefore ``glucose_low``; 54 mg/dL is 2.997 mmol/L
    and therefore ``glucose_very_low``.
Exact decimal boundaries
    Values and thresholds are both rounded to :data:`DECIMALS` decimal places before they are
    compared, so a temperature converted from ``[degF]`` that lands on 39.09999999999 Cel compares
    equal to the 39.1 boundary, and 35.0 vs 35.1 or 3.9 vs 3.8 are decided exactly as written.
Bands
    A *warning* band is bounded by the threshold of a more severe sibling rule on the same side
    (``glucose_low`` is ``3.0 <= g < 3.9`` because ``glucose_very_low`` is ``g < 3.0``). The sibling
    is named in :attr:`Rule.band_sibling` and its *effective* threshold (after per-patient overrides)
    is the band's other limit. A band rule **opens** only inside its band, but it **holds** on the
    whole one-sided condition: a low-glucose episode is not resolved when glucose falls further into
    the very-low band (a "resolved" page while the patient gets worse would be dangerous); it resolves
    when glucose is back at or above 3.9.
Bounded CGM readings
    A reading ``bounded="low"`` (sensor floor: the true value is at most ``value``) meets a ``<``
    condition already when ``value`` equals the threshold; ``bounded="high"`` likewise meets ``>``.
Per-patient overrides
    :attr:`monitor.contract.models.Patient.thresholds` maps a rule id to a threshold in the rule's
    unit (see :func:`effective_thresholds`). For ``weight_gain`` the threshold is the gain in kg;
    for ``missed_readings`` it is a *factor* of the plan's interval (default 2.0: no reading for
    twice the interval; the engine reports the gap and the allowed gap in hours).

Nothing here raises on clinical input; :func:`effective_thresholds` ignores (and reports) unknown
rule ids and non-finite overrides instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

DECIMALS = 6
"""Decimal places to which values and thresholds are rounded before comparison."""

Op = Literal["<", "<=", ">", ">="]
Component = Literal["value", "systolic", "diastolic", "gain", "gap"]
Direction = Literal["low", "high", "none"]


class Severity(StrEnum):
    """Alert severities, lowest first."""

    warning = "warning"
    critical = "critical"
    emergency = "emergency"


_ESCALATION: dict[Severity, Severity] = {
    Severity.warning: Severity.critical,
    Severity.critical: Severity.emergency,
    Severity.emergency: Severity.emergency,
}

UNSUPPORTED_FLAGS: frozenset[str] = frozenset({"no_support_network", "support_lapsed"})
"""Support flags that make a patient *unsupported* (compound risk: alerts are raised one level)."""


def escalate(severity: Severity) -> Severity:
    """One level up: warning -> critical -> emergency (emergency stays emergency)."""
    return _ESCALATION[severity]


def is_unsupported(flags: object) -> bool:
    """Whether a set of support flags makes a patient unsupported (compound risk)."""
    if not flags:
        return False
    return any(f in UNSUPPORTED_FLAGS for f in flags)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the rule table.

    The rule's one-sided condition is ``component <op> threshold``; ``band_sibling`` (if any) is the
    more severe rule on the same side whose condition bounds this rule's band. ``kind`` is the reading
    kind the rule applies to (``None`` for ``missed_readings``, which applies to every planned kind).
    ``unit`` is the unit of the threshold and of the value reported in alerts.
    """

    rule_id: str
    kind: str | None
    component: Component
    op: Op
    threshold: float
    severity: Severity
    unit: str
    direction: Direction
    band_sibling: str | None = None
    description: str = ""


W, C = Severity.warning, Severity.critical

# rule id, kind, component, op, threshold, severity, unit, direction, band sibling; description
RULES: tuple[Rule, ...] = tuple(Rule(*row) for row in (  # type: ignore[arg-type]
    ("glucose_very_low", "glucose", "value", "<", 3.0, C, "mmol/L", "low", None,
     "glucose < 3.0 mmol/L (level 2 hypoglycaemia)"),
    ("glucose_low", "glucose", "value", "<", 3.9, W, "mmol/L", "low", "glucose_very_low",
     "3.0 <= glucose < 3.9 mmol/L (level 1 hypoglycaemia)"),
    ("glucose_high", "glucose", "value", ">", 13.9, W, "mmol/L", "high", "glucose_very_high",
     "13.9 < glucose <= 22.2 mmol/L"),
    ("glucose_very_high", "glucose", "value", ">", 22.2, C, "mmol/L", "high", None, "glucose > 22.2 mmol/L"),
    ("bp_systolic_low", "blood_pressure", "systolic", "<=", 90.0, C, "mm[Hg]", "low", None,
     "systolic <= 90 mm[Hg]"),
    ("bp_systolic_high", "blood_pressure", "systolic", ">=", 180.0, C, "mm[Hg]", "high", None,
     "systolic >= 180 mm[Hg]"),
    ("bp_diastolic_high", "blood_pressure", "diastolic", ">=", 120.0, C, "mm[Hg]", "high", None,
     "diastolic >= 120 mm[Hg]"),
    ("spo2_very_low", "spo2", "value", "<=", 91.0, C, "%", "low", None, "SpO2 <= 91 %"),
    ("spo2_low", "spo2", "value", "<=", 93.0, W, "%", "low", "spo2_very_low", "91 < SpO2 <= 93 %"),
    ("heart_rate_very_low", "heart_rate", "value", "<=", 40.0, C, "/min", "low", None,
     "heart rate <= 40 /min"),
    ("heart_rate_low", "heart_rate", "value", "<=", 50.0, W, "/min", "low", "heart_rate_very_low",
     "40 < heart rate <= 50 /min"),
    ("heart_rate_high", "heart_rate", "value", ">", 110.0, W, "/min", "high", "heart_rate_very_high",
     "110 < heart rate < 131 /min"),
    ("heart_rate_very_high", "heart_rate", "value", ">=", 131.0, C, "/min", "high", None,
     "heart rate >= 131 /min"),
    ("respiratory_rate_low", "respiratory_rate", "value", "<=", 8.0, C, "/min", "low", None,
     "respiratory rate <= 8 /min"),
    ("respiratory_rate_high", "respiratory_rate", "value", ">=", 25.0, C, "/min", "high", None,
     "respiratory rate >= 25 /min"),
    ("temperature_low", "body_temperature", "value", "<=", 35.0, C, "Cel", "low", None,
     "body temperature <= 35.0 Cel"),
    ("temperature_high", "body_temperature", "value", ">=", 39.1, C, "Cel", "high", None,
     "body temperature >= 39.1 Cel"),
    ("weight_gain", "body_weight", "gain", ">=", 2.0, W, "kg", "high", None,
     "body weight up >= 2.0 kg against the lowest weight of the previous 3 days"),
    ("missed_readings", None, "gap", ">=", 2.0, W, "h", "none", None,
     "no reading of a planned kind for 2 x the plan's interval (24 h / readings per day); "
     "the threshold is the factor, evaluated on a clock"),
))
"""The rule table with its default thresholds (NEWS2 single-parameter bands, glucose consensus)."""

RULES_BY_ID: dict[str, Rule] = {r.rule_id: r for r in RULES}
RULES_BY_KIND: dict[str, tuple[Rule, ...]] = {}
for _rule in RULES:
    if _rule.kind is not None:
        RULES_BY_KIND[_rule.kind] = (*RULES_BY_KIND.get(_rule.kind, ()), _rule)
del _rule
RULE_IDS_BY_KIND: dict[str, tuple[str, ...]] = {
    kind: tuple(rule.rule_id for rule in rules) for kind, rules in RULES_BY_KIND.items()
}
"""Reading kind -> the ids of its rules, in table order (``missed_readings`` is in none)."""

DEFAULT_THRESHOLDS: dict[str, float] = {r.rule_id: r.threshold for r in RULES}
"""Rule id -> default threshold (in the rule's unit)."""

def effective_thresholds(
    overrides: Mapping[str, float] | None,
) -> tuple[dict[str, float], list[str]]:
    """Defaults with the per-patient ``overrides`` applied.

    Returns ``(thresholds, ignored)``: ``ignored`` lists override keys that were not applied
    (an unknown rule id, or a value that is not a finite number). Never raises.
    """
    thresholds = dict(DEFAULT_THRESHOLDS)
    ignored: list[str] = []
    for rule_id, value in (overrides or {}).items():
        ok = (
            rule_id in RULES_BY_ID
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        )
        if ok:
            thresholds[rule_id] = float(value)
        else:
            ignored.append(str(rule_id))
    return thresholds, sorted(ignored)


def _q(x: float) -> float:
    return round(x, DECIMALS)


def compare(value: float, op: Op, threshold: float, bounded: str | None = None) -> bool:
    """``value <op> threshold`` after rounding both to :data:`DECIMALS` places.

    A ``bounded="low"`` value also satisfies ``<`` at equality, ``bounded="high"`` satisfies ``>``
    at equality (the true value is beyond the sensor's limit).
    """
    v, t = _q(value), _q(threshold)
    if op == "<":
        return v < t or (bounded == "low" and v == t)
    if op == "<=":
        return v <= t
    if op == ">":
        return v > t or (bounded == "high" and v == t)
    if op == ">=":
        return v >= t
    raise ValueError(f"unknown operator {op!r}")


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """The verdict of one rule on one reading.

    ``holds``: the rule's one-sided condition is met (keeps an open episode firing).
    ``opens``: ``holds`` and not inside the more severe sibling's band (may open a new episode).
    ``value`` is the compared quantity (``gain`` in kg for ``weight_gain``) in ``rule.unit``;
    ``None`` when the rule could not be evaluated (e.g. no weight baseline): such a verdict
    neither opens nor resolves anything.
    """

    rule: Rule
    holds: bool
    opens: bool
    value: float | None
    threshold: float


def _component(
    component: Component, value: float | None, systolic: float | None, diastolic: float | None
) -> float | None:
    if component == "systolic":
        return systolic
    if component == "diastolic":
        return diastolic
    return value


def evaluate(
    kind: str,
    *,
    value: float | None = None,
    systolic: float | None = None,
    diastolic: float | None = None,
    bounded: str | None = None,
    thresholds: Mapping[str, float] | None = None,
    weight_baseline: float | None = None,
) -> list[RuleOutcome]:
    """Evaluate every rule of ``kind`` (except ``missed_readings``) on one reading.

    Values are in canonical units. ``thresholds`` are the effective thresholds (from
    :func:`effective_thresholds`; defaults when ``None``). ``weight_baseline`` is the lowest body
    weight (kg) in the window before this reading (the engine's ``AlertConfig.weight_window``, 3
    days by default; ``None`` if there is none: ``weight_gain`` is then not evaluable). A missing
    or non-finite value makes the rule not evaluable (``value=None``, neither holds nor opens).
    Unknown kinds give ``[]``.
    """
    th = thresholds if thresholds is not None else DEFAULT_THRESHOLDS
    results: list[RuleOutcome] = []
    for rule in RULES_BY_KIND.get(kind, ()):
        threshold = th.get(rule.rule_id, rule.threshold)
        if rule.component == "gain":
            x = None if value is None or weight_baseline is None else value - weight_baseline
        else:
            x = _component(rule.component, value, systolic, diastolic)
        if x is None or not math.isfinite(x):
            results.append(RuleOutcome(rule, False, False, None, threshold))
            continue
        holds = compare(x, rule.op, threshold, bounded)
        opens = holds
        if holds and rule.band_sibling is not None:
            sibling = RULES_BY_ID[rule.band_sibling]
            sibling_threshold = th.get(sibling.rule_id, sibling.threshold)
            opens = not compare(x, sibling.op, sibling_threshold, bounded)
        results.append(RuleOutcome(rule, holds, opens, _q(x), threshold))
    return results


Condition = tuple[bool, Op, float, float, float]
"""``(low_side, op, threshold, below, above)``: one rule's condition (see :func:`checks_for`)."""
Check = tuple[Component, float, float, tuple[Condition, ...]]
"""``(component, quiet_from, quiet_to, conditions)``: the rules of a kind on one component."""

_DEFAULT_CHECKS: dict[str, tuple[Check, ...]] = {}
_MARGIN = 1e-5
"""Ten units of the last rounded decimal: a value further than this from a threshold compares the
same before and after rounding to :data:`DECIMALS` places."""
_MARGIN_LIMIT = 1e6
"""Thresholds at or beyond this magnitude are always compared after rounding (the margin would be
near the float spacing there)."""


def checks_for(kind: str, thresholds: Mapping[str, float] | None = None) -> tuple[Check, ...]:
    """The conditions of every rule of ``kind`` for :func:`any_holds` (``()`` for unknown kinds).

    ``thresholds`` are the effective thresholds as for :func:`evaluate` (defaults when ``None``).
    Each condition carries its threshold as given and ``below`` / ``above``: a value under
    ``below`` rounds to strictly less than the rounded threshold, one over ``above`` to strictly
    more (rounding to :data:`DECIMALS` places is monotonic and moves a value by at most half a unit
    of the last decimal), so most values are decided without rounding. ``quiet_from`` /
    ``quiet_to`` bound the open interval in which every condition on the component is so decided
    as not holding. Rules are grouped by the component they compare. Never raises.
    """
    if thresholds is None:
        cached = _DEFAULT_CHECKS.get(kind)
        if cached is None:
            cached = _DEFAULT_CHECKS[kind] = checks_for(kind, DEFAULT_THRESHOLDS)
        return cached
    by_component: dict[Component, list[Condition]] = {}
    for rule in RULES_BY_KIND.get(kind, ()):
        threshold = thresholds.get(rule.rule_id, rule.threshold)
        t = _q(threshold)
        if abs(t) < _MARGIN_LIMIT:
            below, above = t - _MARGIN, t + _MARGIN
        else:  # (or not a number): always compare exactly
            below, above = -math.inf, math.inf
        low_side = rule.op in ("<", "<=")
        by_component.setdefault(rule.component, []).append((low_side, rule.op, threshold, below, above))
    checks: list[Check] = []
    for component, conds in by_component.items():
        # a low-side condition surely fails above its ``above``, a high-side one below its ``below``
        quiet_from = max((c[4] for c in conds if c[0]), default=-math.inf)
        quiet_to = min((c[3] for c in conds if not c[0]), default=math.inf)
        checks.append((component, quiet_from, quiet_to, tuple(conds)))
    return tuple(checks)


def any_holds(
    checks: tuple[Check, ...],
    *,
    value: float | None = None,
    systolic: float | None = None,
    diastolic: float | None = None,
    bounded: str | None = None,
    weight_baseline: float | None = None,
) -> bool:
    """Whether any rule's one-sided condition holds: ``any(e.holds for e in evaluate(...))``.

    ``checks`` come from :func:`checks_for` with the same kind and thresholds; the other arguments
    mean what they mean for :func:`evaluate` (canonical units), and each condition is decided
    exactly as :func:`compare` decides it (rounded to :data:`DECIMALS` places, same bounded-reading
    rule). Cheaper than :func:`evaluate`: no :class:`RuleOutcome` objects, and no rounding for a
    value that is not within ``1e-5`` of a threshold. The engine uses it to skip readings that can
    neither open nor keep an episode (``opens`` implies ``holds``). A missing or non-finite value
    holds nothing. Never raises on clinical input.
    """
    for component, quiet_from, quiet_to, conds in checks:
        if component == "value":
            x = value
        elif component == "systolic":
            x = systolic
        elif component == "diastolic":
            x = diastolic
        elif component == "gain":
            x = None if value is None or weight_baseline is None else value - weight_baseline
        else:
            x = value  # as _component: any other component reads the value
        if x is None or not math.isfinite(x) or quiet_from < x < quiet_to:
            continue
        for low_side, op, threshold, below, above in conds:
            if x < below:  # rounds to less than the threshold
                if low_side:
                    return True
            elif x > above:  # rounds to more than the threshold
                if not low_side:
                    return True
            elif compare(x, op, threshold, bounded):
                return True
    return False

