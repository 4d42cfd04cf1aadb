"""Every boundary of the clinician rule table, in canonical units, and per-patient overrides."""

from __future__ import annotations

import math

import pytest

from monitor.alerts.rules import (
    DEFAULT_THRESHOLDS,
    RULES,
    RULES_BY_ID,
    Severity,
    compare,
    effective_thresholds,
    escalate,
    evaluate,
    is_unsupported,
)
from monitor.contract.units import to_canonical


def triggered(kind: str, **kwargs: object) -> list[str]:
    """Rule ids that would open an episode for this reading."""
    return [e.rule.rule_id for e in evaluate(kind, **kwargs) if e.opens]  # type: ignore[arg-type]


# (kind, reading fields in canonical units, rule ids that open an episode)
BOUNDARIES: list[tuple[str, dict[str, float], set[str]]] = [
    # glucose mmol/L
    ("glucose", {"value": 3.9}, set()),
    ("glucose", {"value": 3.8}, {"glucose_low"}),
    ("glucose", {"value": 3.0}, {"glucose_low"}),
    ("glucose", {"value": 2.9}, {"glucose_very_low"}),
    ("glucose", {"value": 13.9}, set()),
    ("glucose", {"value": 14.0}, {"glucose_high"}),
    ("glucose", {"value": 22.2}, {"glucose_high"}),
    ("glucose", {"value": 22.3}, {"glucose_very_high"}),
    ("glucose", {"value": 6.0}, set()),
    # blood pressure mm[Hg]
    ("blood_pressure", {"systolic": 90, "diastolic": 60}, {"bp_systolic_low"}),
    ("blood_pressure", {"systolic": 91, "diastolic": 60}, set()),
    ("blood_pressure", {"systolic": 180, "diastolic": 90}, {"bp_systolic_high"}),
    ("blood_pressure", {"systolic": 179, "diastolic": 90}, set()),
    ("blood_pressure", {"systolic": 170, "diastolic": 120}, {"bp_diastolic_high"}),
    ("blood_pressure", {"systolic": 170, "diastolic": 119}, set()),
    ("blood_pressure", {"systolic": 200, "diastolic": 125}, {"bp_systolic_high", "bp_diastolic_high"}),
    # SpO2 %
    ("spo2", {"value": 91}, {"spo2_very_low"}),
    ("spo2", {"value": 92}, {"spo2_low"}),
    ("spo2", {"value": 93}, {"spo2_low"}),
    ("spo2", {"value": 94}, set()),
    ("spo2", {"value": 91.5}, {"spo2_low"}),
    # heart rate /min
    ("heart_rate", {"value": 40}, {"heart_rate_very_low"}),
    ("heart_rate", {"value": 41}, {"heart_rate_low"}),
    ("heart_rate", {"value": 50}, {"heart_rate_low"}),
    ("heart_rate", {"value": 51}, set()),
    ("heart_rate", {"value": 110}, set()),
    ("heart_rate", {"value": 111}, {"heart_rate_high"}),
    ("heart_rate", {"value": 130}, {"heart_rate_high"}),
    ("heart_rate", {"value": 131}, {"heart_rate_very_high"}),
    # respiratory rate /min
    ("respiratory_rate", {"value": 8}, {"respiratory_rate_low"}),
    ("respiratory_rate", {"value": 9}, set()),
    ("respiratory_rate", {"value": 24}, set()),
    ("respiratory_rate", {"value": 25}, {"respiratory_rate_high"}),
    # body temperature Cel
    ("body_temperature", {"value": 35.0}, {"temperature_low"}),
    ("body_temperature", {"value": 35.1}, set()),
    ("body_temperature", {"value": 39.0}, set()),
    ("body_temperature", {"value": 39.1}, {"temperature_high"}),
]


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    BOUNDARIES,
    ids=[f"{k}-{'-'.join(f'{v:g}' for v in f.values())}" for k, f, _ in BOUNDARIES],
)
def test_boundaries_of_the_rule_table(kind: str, fields: dict[str, float], expected: set[str]) -> None:
    assert set(triggered(kind, **fields)) == expected


@pytest.mark.parametrize(
    ("kind", "value", "unit", "expected"),
    [
        ("glucose", 70.0, "mg/dL", {"glucose_low"}),  # 3.885 mmol/L
        ("glucose", 71.0, "mg/dL", set()),  # 3.941 mmol/L
        ("glucose", 54.0, "mg/dL", {"glucose_very_low"}),  # 2.997 mmol/L
        ("glucose", 55.0, "mg/dL", {"glucose_low"}),  # 3.053 mmol/L
        ("glucose", 251.0, "mg/dL", {"glucose_high"}),  # 13.93 mmol/L
        ("glucose", 401.0, "mg/dL", {"glucose_very_high"}),  # 22.26 mmol/L
        ("body_temperature", 95.0, "[degF]", {"temperature_low"}),  # 35.0 Cel exactly
        ("body_temperature", 95.18, "[degF]", set()),  # 35.1 Cel (35.0999... in binary)
        ("body_temperature", 102.38, "[degF]", {"temperature_high"}),  # 39.1 Cel (float noise)
        ("body_temperature", 102.2, "[degF]", set()),  # 39.0 Cel
    ],
)
def test_boundaries_after_unit_conversion(kind: str, value: float, unit: str, expected: set[str]) -> None:
    canonical = to_canonical(kind, value, unit)
    assert set(triggered(kind, value=canonical)) == expected


def test_70_mg_dl_is_3_885_mmol_l_and_low() -> None:
    assert to_canonical("glucose", 70.0, "mg/dL") == pytest.approx(3.885, abs=1e-3)
    (ev,) = [e for e in evaluate("glucose", value=70.0 / 18.016) if e.rule.rule_id == "glucose_low"]
    assert ev.opens and ev.value == pytest.approx(3.885435, abs=1e-6) and ev.threshold == 3.9


def test_float_noise_at_a_boundary_is_decided_as_written() -> None:
    # 39.1 reached by arithmetic is 39.10000000000001 or 39.099999999999994, not the literal 39.1
    assert compare(39.099999999999994, ">=", 39.1)
    assert compare(35.00000000000001, "<=", 35.0)
    assert not compare(3.9000000000000004, "<", 3.9)
    assert compare(3.899999, "<", 3.9)  # a real difference at the 6th decimal place is kept
    assert not compare(3.8999999, "<", 3.9)  # below the resolution: equal to the boundary


@pytest.mark.parametrize(
    ("baseline", "weight", "expected"),
    [
        (80.0, 82.0, {"weight_gain"}),  # +2.0 kg
        (80.0, 81.9, set()),  # +1.9 kg
        (79.9, 81.9, {"weight_gain"}),  # +2.0 kg with binary noise (2.0000000000000057)
        (80.0, 78.0, set()),  # a loss
        (None, 95.0, set()),  # no baseline in the window: not evaluable
    ],
)
def test_weight_gain_against_baseline(baseline: float | None, weight: float, expected: set[str]) -> None:
    assert set(triggered("body_weight", value=weight, weight_baseline=baseline)) == expected


def test_band_rule_holds_but_does_not_open_in_the_more_severe_band() -> None:
    verdicts = {e.rule.rule_id: e for e in evaluate("glucose", value=2.5)}
    assert verdicts["glucose_very_low"].opens
    assert verdicts["glucose_low"].holds and not verdicts["glucose_low"].opens
    assert not verdicts["glucose_high"].holds


def test_per_patient_override_moves_the_boundary_and_the_band() -> None:
    thresholds, ignored = effective_thresholds({"glucose_low": 4.5, "spo2_very_low": 88})
    assert ignored == []
    assert triggered("glucose", value=4.4, thresholds=thresholds) == ["glucose_low"]
    assert triggered("glucose", value=4.4) == []
    # SpO2 of 90 is very low by default; with the override it is only low (88 < 90 <= 93)
    assert triggered("spo2", value=90, thresholds=thresholds) == ["spo2_low"]
    assert triggered("spo2", value=88, thresholds=thresholds) == ["spo2_very_low"]
    assert triggered("spo2", value=90) == ["spo2_very_low"]


def test_overrides_ignore_unknown_rules_and_non_finite_values() -> None:
    thresholds, ignored = effective_thresholds(
        {"no_such_rule": 1.0, "glucose_low": math.nan, "temperature_high": math.inf, "weight_gain": 1.5}
    )
    assert ignored == ["glucose_low", "no_such_rule", "temperature_high"]
    assert thresholds["glucose_low"] == 3.9 and thresholds["temperature_high"] == 39.1
    assert thresholds["weight_gain"] == 1.5
    assert DEFAULT_THRESHOLDS["weight_gain"] == 2.0  # the defaults are not mutated


def test_bounded_cgm_reading_at_a_strict_threshold_fires() -> None:
    assert triggered("glucose", value=22.2, bounded="high") == ["glucose_very_high"]
    assert triggered("glucose", value=22.2) == ["glucose_high"]
    assert triggered("glucose", value=3.0, bounded="low") == ["glucose_very_low"]


def test_rule_table_is_complete_and_consistent() -> None:
    ids = {r.rule_id for r in RULES}
    assert ids == {
        "glucose_very_low",
        "glucose_low",
        "glucose_high",
        "glucose_very_high",
        "bp_systolic_low",
        "bp_systolic_high",
        "bp_diastolic_high",
        "spo2_very_low",
        "spo2_low",
        "heart_rate_very_low",
        "heart_rate_very_high",
        "heart_rate_low",
        "heart_rate_high",
        "respiratory_rate_low",
        "respiratory_rate_high",
        "temperature_low",
        "temperature_high",
        "weight_gain",
        "missed_readings",
    }
    for rule in RULES:
        if rule.band_sibling is not None:
            sibling = RULES_BY_ID[rule.band_sibling]
            assert sibling.kind == rule.kind and sibling.direction == rule.direction
            assert sibling.severity == Severity.critical and rule.severity == Severity.warning


def test_escalation_ladder_and_unsupported_flags() -> None:
    assert escalate(Severity.warning) is Severity.critical
    assert escalate(Severity.critical) is Severity.emergency
    assert escalate(Severity.emergency) is Severity.emergency
    assert is_unsupported({"support_lapsed"}) and is_unsupported({"no_support_network", "x"})
    assert not is_unsupported({"single_carer"}) and not is_unsupported(set()) and not is_unsupported(None)
