"""The msgspec fast path agrees with the full decoder on everything it accepts, for every type.

The reference is the full path the pipeline uses otherwise: :func:`monitor.intake.native.decode`
(pydantic) followed by :func:`monitor.intake.canonical.canonical_items`. The fast path may decline
(``None``) anything; what it accepts must be accepted by the full path with equal canonical readings
and equal pydantic documents, and :func:`~monitor.intake.fastpath.fast_decode` gives the full path's
outcome (same reason code) for arbitrary bytes and every ``expected`` document type.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.intake.canonical import CanonicalReading, canonical_items
from monitor.intake.fastpath import Decoded, Outcome, _fast, fast_canonical, fast_decode, full_decode
from monitor.intake.native import Rejection, decode
from monitor.intake.rules import Limits

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


# --- fast_decode: every native document type, against the full path -----------------------------

LIMITS = Limits(oldest=OLDEST)
EXPECTED = st.sampled_from([None, "reading", "carer_activity", "care_link", "patient"])


def same_outcome(raw: bytes, expected: str | None) -> Outcome:
    """Assert that the msgspec path, where it decides, gives what the full path gives, and that
    :func:`fast_decode` gives the full path's outcome (same reason code) in every case."""
    full = full_decode(raw, expected, RECEIVED, LIMITS)
    fast = _fast(raw, expected, RECEIVED, LIMITS)
    if fast is not None:
        assert isinstance(full, Decoded), f"fast path accepted what the full path rejects: {raw!r} {full}"
        assert (fast.type, fast.name, fast.readings, fast.rejected) == \
            (full.type, full.name, full.readings, [])
        for c in fast.readings:
            assert c.measured_at.tzinfo is UTC
        if fast.document is not None:
            doc, ref = fast.document, full.document
            assert type(doc) is type(ref) and doc == ref, (doc, ref)
            assert doc.model_fields_set == ref.model_fields_set
            assert repr(doc) == repr(ref) and doc.model_dump_json() == ref.model_dump_json()
            for name in type(ref).model_fields:
                assert type(getattr(doc, name)) is type(getattr(ref, name)), name
    got = fast_decode(raw, expected, RECEIVED, LIMITS)
    if isinstance(full, Rejection):
        assert isinstance(got, Rejection) and got.reason == full.reason, (raw, got, full)
    else:
        assert isinstance(got, Decoded) and (got.type, got.readings, got.rejected) == \
            (full.type, full.readings, full.rejected), (raw, got, full)
        if got.document is not None:
            assert got.document == full.document
    return got


texts = mostly(st.sampled_from(["North", "65-74", "a b", "x" * 16, "é", "copd"]),
               st.sampled_from(["", " North", "North ", "x" * 17, "x" * 65, "\u2003", 7, None, True]))
floats = mostly(st.sampled_from([30, 0.5, 1440, 1439.9, 2, 3.5, 120.0]) | st.floats(0.01, 1440),
                st.sampled_from([0, -1, 1441, 1e308, 10**30, True, "30", None, float("inf")])
                | st.floats(allow_nan=False))


def enum_of(values: list[str]) -> st.SearchStrategy[Any]:
    return mostly(st.sampled_from(values), st.sampled_from(["", "Visit", " visit", "unknown", 1, None]))


@st.composite
def activity_docs(draw: Any) -> dict[str, Any]:
    return {"activity_id": draw(ids), "patient_id": draw(ids), "carer_id": draw(ids),
            "kind": draw(enum_of(["visit", "meal", "phone_call", "other"])), "started_at": draw(stamps),
            "duration_minutes": draw(floats)}


@st.composite
def link_docs(draw: Any) -> dict[str, Any]:
    return {"patient_id": draw(ids), "carer_id": draw(ids),
            "relationship": draw(enum_of(["partner", "friend", "neighbour"])),
            "action": draw(enum_of(["join", "leave"])), "effective_at": draw(stamps)}


@st.composite
def patient_docs(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"patient_id": draw(ids), "region": draw(texts),
                           "deprivation_quintile": draw(mostly(st.integers(1, 5), st.sampled_from(
                               [0, 6, 2.0, True, "3", None, 10**20]))),
                           "age_band": draw(texts)}
    if draw(st.booleans()):
        doc["conditions"] = draw(st.lists(texts, max_size=3) | st.just(["c"] * 33) | st.just(None))
    if draw(st.booleans()):
        doc["monitoring_plan"] = draw(st.dictionaries(enum_of(["glucose", "blood_pressure", "spo2"]), floats,
                                                      max_size=3) | st.just(None))
    if draw(st.booleans()):
        rules = st.sampled_from(["glucose_low", "spo2_low", "heart_rate_high", "unknown", " glucose_low"])
        limits = mostly(st.sampled_from([3.5, 4, 92, 130]), st.sampled_from([54, 0, 1e308, "4", None]))
        doc["thresholds"] = draw(st.none() | st.dictionaries(rules, limits, max_size=2))
    if draw(st.booleans()):
        doc["registered_at"] = draw(st.none() | stamps)
    return doc


@st.composite
def native_docs(draw: Any) -> tuple[dict[str, Any], str]:
    kind = draw(st.sampled_from(["reading", "carer_activity", "care_link", "patient", "gateway_batch"]))
    if kind == "gateway_batch":
        doc: dict[str, Any] = {"gateway_id": draw(ids), "sent_at": draw(stamps),
                               "readings": draw(st.lists(reading_docs(), min_size=0, max_size=3))}
        for r in doc["readings"]:
            r.pop("type", None)
    else:
        doc = draw({"reading": reading_docs(), "carer_activity": activity_docs(), "care_link": link_docs(),
                    "patient": patient_docs()}[kind])
    if draw(st.integers(0, 7)) == 0 and doc:
        doc.pop(draw(st.sampled_from(sorted(doc))))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["extra", "Kind", "note"]))] = 1
    return doc, kind


@CHECK
@given(native_docs(), EXPECTED, st.sampled_from(["own", "none", "other"]))
@example(({"activity_id": "a", "patient_id": "P1", "carer_id": "c", "kind": "visit",
           "started_at": "2026-10-30T08:00:00Z", "duration_minutes": 30}, "carer_activity"), None, "own")
def test_documents_of_every_type_agree(doc_kind: tuple[dict[str, Any], str], expected: str | None,
                                       declared: str) -> None:
    doc, kind = doc_kind
    if declared == "own":
        doc = {"type": kind, **doc}
    elif declared == "other":
        doc = {**doc, "type": "patient" if kind != "patient" else "care_link"}
    same_outcome(json.dumps(doc).encode(), expected)


@CHECK
@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode), EXPECTED)
@example(b'{"type":"care_link","patient_id":"p","carer_id":"c","relationship":"friend","action":"join",'
         b'"effective_at":"2026-10-30T08:00:00Z","type":"patient"}', None)
@example(b'{"type":"patient","patient_id":"p","region":"\\ud800","deprivation_quintile":1,'
         b'"age_band":"a"}', None)
@example(b'\xef\xbb\xbf{"type":"care_link"}', None)
def test_arbitrary_bytes_give_the_full_paths_outcome(raw: bytes, expected: str | None) -> None:
    same_outcome(raw, expected)


def test_fast_decode_takes_the_fast_path_for_clean_documents() -> None:
    """Not vacuous: a clean document of every type is decided by msgspec."""
    docs = [
        {"type": "reading", **BASE},
        {"type": "gateway_batch", "gateway_id": "g", "sent_at": "2026-10-30T12:00:00Z", "readings": [BASE]},
        {"type": "carer_activity", "activity_id": "a", "patient_id": "P1", "carer_id": "c", "kind": "meal",
         "started_at": "2026-10-30T08:00:00+01:00", "duration_minutes": 45.5},
        {"type": "care_link", "patient_id": "P1", "carer_id": "c", "relationship": "child", "action": "leave",
         "effective_at": "2026-10-30T08:00:00Z"},
        {"type": "patient", "patient_id": "P1", "region": "North East", "deprivation_quintile": 1,
         "age_band": "75+", "conditions": ["copd", "t2d"], "monitoring_plan": {"glucose": 2, "spo2": 0.5},
         "thresholds": {"glucose_low": 3.5}, "registered_at": "2026-10-01T00:00:00Z"},
        {"type": "patient", "patient_id": "P2", "region": "N", "deprivation_quintile": 5,
         "age_band": "18-34"},
    ]
    for doc in docs:
        raw = json.dumps(doc).encode()
        assert _fast(raw, None, RECEIVED, LIMITS) is not None, doc
        assert isinstance(same_outcome(raw, None), Decoded)
        topic = "reading" if doc["type"] == "gateway_batch" else doc["type"]
        untyped = json.dumps({k: v for k, v in doc.items() if k != "type"}).encode()
        assert _fast(untyped, topic, RECEIVED, LIMITS) is not None
    assert fast_decode(None, "reading", RECEIVED).reason == "empty_message"  # type: ignore[union-attr]
    future = json.dumps({**docs[3], "effective_at": "2026-10-30T12:10:01Z"}).encode()
    assert same_outcome(future, None).reason == "future_timestamp"  # type: ignore[union-attr]
    bad = json.dumps({**docs[4], "thresholds": {"glucose_low": 54}}).encode()
    assert same_outcome(bad, None).reason == "implausible_threshold"  # type: ignore[union-attr]
