"""UCUM units of the contract and conversion to each kind's canonical unit.

Canonical units: glucose ``mmol/L``, blood pressure ``mm[Hg]``, heart and respiratory rate ``/min``,
SpO2 ``%``, body temperature ``Cel``, body weight ``kg``. Conversions are exact affine maps;
glucose uses the molar mass of glucose (mg/dL = mmol/L x 18.016, so 70 mg/dL = 3.885 mmol/L).
"""

from __future__ import annotations

GLUCOSE_MG_PER_DL_PER_MMOL_PER_L = 18.016
POUNDS_PER_KG = 2.20462262185  # 1 [lb_av] = 0.45359237 kg exactly

CANONICAL_UNIT: dict[str, str] = {
    "glucose": "mmol/L",
    "blood_pressure": "mm[Hg]",
    "heart_rate": "/min",
    "spo2": "%",
    "respiratory_rate": "/min",
    "body_temperature": "Cel",
    "body_weight": "kg",
}

ALLOWED_UNITS: dict[str, frozenset[str]] = {
    "glucose": frozenset({"mmol/L", "mg/dL"}),
    "blood_pressure": frozenset({"mm[Hg]"}),
    "heart_rate": frozenset({"/min"}),
    "spo2": frozenset({"%"}),
    "respiratory_rate": frozenset({"/min"}),
    "body_temperature": frozenset({"Cel", "[degF]"}),
    "body_weight": frozenset({"kg", "[lb_av]", "g"}),
}


def to_canonical(kind: str, value: float, unit: str) -> float:
    """Convert ``value`` in UCUM ``unit`` to the canonical unit of ``kind``.

    Raises ``ValueError`` for a unit that is not allowed for the kind.
    """
    if unit == CANONICAL_UNIT[kind]:
        return float(value)
    if kind == "glucose" and unit == "mg/dL":
        return value / GLUCOSE_MG_PER_DL_PER_MMOL_PER_L
    if kind == "body_temperature" and unit == "[degF]":
        return (value - 32.0) * 5.0 / 9.0
    if kind == "body_weight" and unit == "[lb_av]":
        return value * 0.45359237
    if kind == "body_weight" and unit == "g":
        return value / 1000.0
    raise ValueError(f"unit {unit!r} is not allowed for {kind}")
