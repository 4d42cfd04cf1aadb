"""UCUM units of the contract and conversion to each kind's canonical unit: one table.

Canonical units: glucose ``mmol/L``, blood pressure ``mm[Hg]``, heart and respiratory rate ``/min``,
SpO2 ``%``, body temperature ``Cel``, body weight ``kg``. Conversions are exact affine maps;
glucose uses the molar mass of glucose (mg/dL = mmol/L x 18.016, so 70 mg/dL = 3.885 mmol/L).

:data:`CONVERSIONS` is the only place a conversion is written. Each map uses only ``+ - * /`` on
its argument, so it gives bit for bit the same result on a Python float (:func:`to_canonical`, the
per-message decoders) and on a float64 numpy column (the columnar intake of a fetch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

GLUCOSE_MG_PER_DL_PER_MMOL_PER_L = 18.016
KG_PER_POUND = 0.45359237  # 1 [lb_av] = 0.45359237 kg exactly

CANONICAL_UNIT: dict[str, str] = {
    "glucose": "mmol/L",
    "blood_pressure": "mm[Hg]",
    "heart_rate": "/min",
    "spo2": "%",
    "respiratory_rate": "/min",
    "body_temperature": "Cel",
    "body_weight": "kg",
}

CONVERSIONS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("glucose", "mg/dL"): lambda v: v / GLUCOSE_MG_PER_DL_PER_MMOL_PER_L,
    ("body_temperature", "[degF]"): lambda v: (v - 32.0) * 5.0 / 9.0,
    ("body_weight", "[lb_av]"): lambda v: v * KG_PER_POUND,
    ("body_weight", "g"): lambda v: v / 1000.0,
}
"""(kind, non-canonical UCUM unit) -> the map of a value (float or float64 array) to the canonical
unit of the kind."""

ALLOWED_UNITS: dict[str, frozenset[str]] = {
    kind: frozenset({canonical} | {u for (k, u) in CONVERSIONS if k == kind})
    for kind, canonical in CANONICAL_UNIT.items()
}
"""The UCUM units accepted per kind: its canonical unit and every unit :data:`CONVERSIONS` maps."""


def to_canonical(kind: str, value: float, unit: str) -> float:
    """Convert ``value`` in UCUM ``unit`` to the canonical unit of ``kind``.

    Raises ``ValueError`` for a unit that is not allowed for the kind.
    """
    if unit == CANONICAL_UNIT[kind]:
        return float(value)
    convert = CONVERSIONS.get((kind, unit))
    if convert is None:
        raise ValueError(f"unit {unit!r} is not allowed for {kind}")
    return convert(value)
