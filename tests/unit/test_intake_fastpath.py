"""The fast path for native readings agrees with the full decoder on everything it accepts.

The reference is the full path the pipeline uses otherwise: :func:`monitor.intake.native.decode`
(pydantic) followed by :func:`monitor.intake.canonical.canonical_items`. The fast path may decline
(``None``) anything; what it accepts must be accepted by the full path with equal canonical readings.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.intake.canonical import CanonicalReading, canonical_items
from monitor.intake.fastpath import fast_canonical
from monitor.intake.native import Rejection, decode

RECEIVED = datetime(2026, 10, 30, 12, 0, tzinfo=UTC)
OLDEST = timedelta(days=30)
EXAMPLES = int(os.environ.get("INTAKE_FUZZ_EXAMPLES", "300"))
CHECK = settings(max_examples=EXAMPLES, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


def full_path(raw: bytes) -> tuple[str, list[CanonicalReading]] | None:
    """What the pipeline's full path accepts as a whole message (None: something is rejected)."""
    doc = decode(raw, "reading")
    if isinstance(doc, Rejection):
        return None
    items = canonical_items(doc, received_at=RECEIVED, oldest=OLDEST)
    if any(isinstance(c, Rejection) for _, c in items):
        return None
    return type(doc).__name__, [c for _, c in items]  # type: ignore[misc]


def agrees(raw: bytes) -> bool:
    fast = fast_canonical(raw, received_at=RECEIVED, oldest=OLDEST)
    if fast is None:
        return True
    full = full_path(raw)
    assert full is not None, f"fast path accepted what the full path rejects: {raw!r}"
    assert fast == full, (fast, full)
    for a, b in zip(fast[1], full[1], strict=True):  # == on datetimes ignores the tzinfo object
        assert a.measured_at.tzinfo is UTC and b.measured_at.tzinfo is UTC
    return True


BASE = {"reading_id": "r-1", "patient_id": "P1", "device_id": "d:1", "kind": "glucose", "value": 6.2,
        "unit": "mmol/L", "measured_at": "2026-10-30T08:00:00Z"}

def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` about 7 times in 8, else ``bad``: most documents are clean, many are not."""
    return st.integers(0, 7).flatmap(lambda i: bad if i == 0 else good)


ids = mostly(st.sampled_from(["P1", "a.b:c@d-e_f", "x" * 128, "r-1"]),
             st.sampled_from([" P1", "P1 ", "", "x" * 129, "é", "P\n", 7, None]))
kinds_units = st.sampled_from([
    ("glucose", "mmol/L"), ("glucose", "mg/dL"), ("glucose", "mg/dl"), ("blood_pressure", "mm[Hg]"),
    ("heart_rate", "/min"), ("spo2", "%"), ("respiratory_rate", "/min"), ("body_temperature", "Cel"),
    ("body_temperature", "[degF]"), ("body_weight", "kg"), ("body_weight", "[lb_av]"), ("body_weight", "g"),
    ("weight", "kg"), ("glucose", " mmol/L"), ("Glucose", "mmol/L"),
])
numbers = mostly(st.floats(min_value=0.5, max_value=60) | st.integers(40, 100) | st.sampled_from(
    [0.5, 60.0, 59.99, 40, 300, 20, 200, 2.0, 80, 25, 45, 1, 400, 50, 100, 120, 150.5]),
    st.floats(min_value=-10, max_value=2000, allow_nan=False) | st.integers(-5, 500)
    | st.sampled_from([60.01, 0.49, 19, 301, 1e308, float("inf"), float("nan"), True, "6.0", None, 10**30]))
stamps = mostly(st.sampled_from([
    "2026-10-30T08:00:00Z", "2026-10-30T12:09:59Z", "2026-10-15T23:59:59+02:00", "2026-10-01T00:00:00Z"]),
    st.sampled_from([
    "2026-10-30T08:00:00Z", "2026-10-30T08:00:00+00:00", "2026-10-30T09:00:00+01:00",
    "2026-10-30T03:00:00-05:00", "2026-10-30T12:09:59Z", "2026-10-30T12:10:00Z", "2026-10-30T12:10:01Z",
    "2026-09-30T12:00:00Z", "2026-09-30T11:59:59Z", "2026-10-30T11:00:00Z", "2026-10-30T10:59:59Z",
    "2026-10-30T08:00:00", "2026-10-30T08:00:00.5Z", "2026-10-30 08:00:00Z", "2026-10-30T08:00Z",
    "2026-02-30T08:00:00Z", "2026-10-30T24:00:00Z", "2026-10-30T08:00:00+24:00", "2026-10-30T08:00:00-00:00",
    "2026-10-30t08:00:00z", "２０２６-10-30T08:00:00Z", "20261030T080000Z", "", 1761811200, None,
]))


@st.composite
def reading_docs(draw: Any) -> dict[str, Any]:
    kind, unit = draw(kinds_units)
    doc: dict[str, Any] = {"reading_id": draw(ids), "patient_id": draw(ids), "device_id": draw(ids),
                           "kind": kind, "unit": unit, "measured_at": draw(stamps)}
    if kind == "blood_pressure":
        doc["systolic"], doc["diastolic"] = draw(numbers), draw(numbers)
        if draw(st.booleans()):
            doc["value"] = draw(numbers)
    else:
        doc["value"] = draw(numbers)
        if draw(st.integers(0, 9)) == 0:
            doc["systolic"] = draw(numbers)
    if draw(st.integers(0, 7)) == 0:
        doc.pop(draw(st.sampled_from(sorted(doc))))
    if draw(st.integers(0, 5)) == 0:
        doc["gateway_id"] = draw(ids)
    if draw(st.integers(0, 7)) == 0:
        doc["type"] = draw(st.sampled_from(["reading", "gateway_batch", "patient", 1]))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["extra", "Value", "note"]))] = 1
    return doc


@CHECK
@given(reading_docs())
@example(BASE)
@example({**BASE, "kind": "blood_pressure", "unit": "mm[Hg]", "value": None,
          "systolic": 120, "diastolic": 80})
def test_single_readings_agree(doc: dict[str, Any]) -> None:
    assert agrees(json.dumps(doc).encode())


@CHECK
@given(st.lists(reading_docs(), min_size=0, max_size=4), ids, stamps,
       st.sampled_from([None, "gateway_batch", "reading"]))
def test_gateway_batches_agree(items: list[dict[str, Any]], gateway: Any, sent: Any, declared: Any) -> None:
    doc: dict[str, Any] = {"gateway_id": gateway, "sent_at": sent, "readings": items}
    if declared:
        doc["type"] = declared
    assert agrees(json.dumps(doc).encode())


@CHECK
@given(st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
def test_arbitrary_bytes_never_raise_and_agree(raw: bytes) -> None:
    assert agrees(raw)


def test_accepts_the_common_shapes() -> None:
    """The fast path is not vacuous: clean readings and batches take it."""
    one = fast_canonical(json.dumps(BASE).encode(), received_at=RECEIVED, oldest=OLDEST)
    assert one is not None and one[0] == "Reading" and one[1][0].value == 6.2
    mg = fast_canonical(json.dumps({**BASE, "value": 70, "unit": "mg/dL"}).encode(), received_at=RECEIVED)
    assert mg is not None and abs(mg[1][0].value - 70 / 18.016) < 1e-12  # type: ignore[operator]
    batch = {"gateway_id": "g", "sent_at": "2026-10-30T12:00:00Z",
             "readings": [BASE, {**BASE, "reading_id": "r-2", "measured_at": "2026-10-30T09:00:00+01:00"}]}
    got = fast_canonical(json.dumps(batch).encode(), received_at=RECEIVED)
    assert got is not None and got[0] == "GatewayBatch" and len(got[1]) == 2
    assert got[1][1].measured_at == datetime(2026, 10, 30, 8, tzinfo=UTC)
    late = fast_canonical(json.dumps({**BASE, "measured_at": "2026-10-30T10:59:59Z"}).encode(),
                          received_at=RECEIVED)
    assert late is not None and late[1][0].late
    assert agrees(json.dumps(batch).encode())


def test_declines_what_needs_a_reason_code() -> None:
    """Rejected inputs are left to the full decoder, which gives the reason."""
    for doc in ({**BASE, "value": 0.4}, {**BASE, "measured_at": "2026-10-30T08:00:00"},
                {**BASE, "unit": "mg/dl"}, {**BASE, "extra": 1}, {**BASE, "patient_id": " P1"},
                {**BASE, "measured_at": "2026-10-30T12:10:01Z"}):
        assert fast_canonical(json.dumps(doc).encode(), received_at=RECEIVED) is None
    assert fast_canonical(b"\xff", received_at=RECEIVED) is None
    assert fast_canonical(b'{"a": NaN}', received_at=RECEIVED) is None
