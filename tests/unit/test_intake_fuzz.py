"""Fuzzing the decoders: no exception escapes, every result is a reading or a known rejection."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.intake import fhir, nightscout, openmhealth
from monitor.intake.canonical import ALL_REASONS, CanonicalReading
from monitor.intake.formats import FORMATS, decode_items, decode_value
from monitor.intake.native import Rejection

DATA = Path(__file__).parent.parent / "data" / "intake"
RECEIVED = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
# INTAKE_FUZZ_EXAMPLES=5000 for a long local run; the default keeps the unit suite fast.
EXAMPLES = int(os.environ.get("INTAKE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Generating whole structured documents is slow: fewer of them (the single-field test is systematic).
STRUCTURED = settings(FUZZ, max_examples=max(10, EXAMPLES // 3))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)

# Values that tend to break decoders: wrong types, edge numbers, odd timestamps and identifiers.
nasty = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        39,
        40,
        401,
        1e308,
        -1e308,
        float("nan"),
        float("inf"),
        10**400,
        "",
        "5",
        "120",
        "NaN",
        [],
        {},
        [1],
        {"value": 1},
        "2024-03-05T10:00:00",
        "2024-03-05T10:00:00Z",
        "2024-03-05",
        "9999-12-31T23:59:59-12:00",
        "0001-01-01T00:00:00+14:00",
        "Patient/",
        "Patient/a b",
        "urn:uuid:",
        "#x",
        "mmol/L",
        "mg/dL",
        "[degF]",
        "K",
        "lb",
        "entered-in-error",
        "x" * 300,
    ]
)


def _rarely(draw: st.DrawFn) -> bool:
    """True about one time in eight (three fair coin flips)."""
    return all(draw(st.booleans()) for _ in range(3))


@st.composite
def either(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    """Mostly the valid shape, rarely a nasty or arbitrary value in its place: most documents
    break in one or two places, so later checks are reached, not masked by early ones."""
    if _rarely(draw):
        return draw(nasty | json_values)
    return draw(valid)


@st.composite
def some_of(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A dict with each field usually present (valid, or rarely junk), rarely missing."""
    return {key: draw(either(strategy)) for key, strategy in fields.items() if not _rarely(draw)}


def opt(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return some_of(fields)


numbers = st.floats(min_value=-1e3, max_value=1e3) | st.integers(min_value=-1000, max_value=1000)
timestamps = st.sampled_from(
    [
        "2024-03-05T10:00:00Z",
        "2024-03-05T11:00:00+01:00",
        "2024-03-05T11:59:00.123-00:30",
        "2024-03-05T10:00:00",
        "2024-03-05",
    ]
)
ucum = st.sampled_from(
    [
        "/min",
        "mm[Hg]",
        "mmHg",
        "%",
        "Cel",
        "[degF]",
        "kg",
        "[lb_av]",
        "g",
        "mg/dL",
        "mmol/L",
        "kPa",
        "beats/minute",
        "{beat}/min",
    ]
)
loinc_or_mdc = st.sampled_from(
    [("http://loinc.org", c) for c in ("8867-4", "85354-9", "2708-6", "8310-5", "29463-7", "2339-0")]
    + [("urn:iso:std:iso:11073:10101", c) for c in ("150020", "160368", "150021", "150022")]
    + [("http://loinc.org", c) for c in ("8480-6", "8462-4", "8302-2")]
)
coding = loinc_or_mdc.map(lambda sc: {"system": sc[0], "code": sc[1]})
codeable = opt(coding=st.lists(either(coding), min_size=1, max_size=2))
component_code = st.sampled_from(
    [
        ("http://loinc.org", "8480-6"),
        ("http://loinc.org", "8462-4"),
        ("urn:iso:std:iso:11073:10101", "150021"),
        ("urn:iso:std:iso:11073:10101", "150022"),
        ("http://loinc.org", "8867-4"),
    ]
).map(lambda sc: {"coding": [{"system": sc[0], "code": sc[1]}]})
quantity = opt(value=numbers, unit=ucum, code=ucum, system=st.just("http://unitsofmeasure.org"))
reference = opt(reference=st.sampled_from(["Patient/p-1", "Device/d-1", "urn:uuid:a", "#c", "x"]))
fhir_observations = st.builds(
    lambda fields: {"resourceType": "Observation", **fields},
    some_of(
        {
            "id": st.sampled_from(["obs-1", "obs-2", "obs-3", "a b", ""]),
            "status": st.sampled_from(["final", "amended", "preliminary", "entered-in-error"]),
            "code": codeable,
            "subject": reference,
            "device": reference,
            "extension": st.lists(opt(url=st.just(fhir.GATEWAY_EXTENSION), valueReference=reference)),
            "effectiveDateTime": timestamps,
            "effectivePeriod": opt(start=timestamps),
            "valueQuantity": quantity,
            "component": st.lists(opt(code=component_code, valueQuantity=quantity), max_size=3),
            "dataAbsentReason": opt(text=st.text(max_size=5)),
        }
    ),
)
omh_units = st.sampled_from(
    ["mg/dL", "mmol/L", "mmHg", "beats/min", "breaths/min", "%", "C", "F", "K", "kg", "g", "lb", "stone"]
)
unit_value = opt(value=numbers, unit=omh_units)
omh_points = opt(
    header=opt(
        id=st.sampled_from(["h-1", "h 2"]),
        user_id=st.sampled_from(["u-1", ""]),
        schema_id=opt(name=st.sampled_from(sorted(openmhealth.SCHEMAS) + ["step-count"])),
        acquisition_provenance=opt(user_id=st.just("u-2")),
    ),
    body=opt(
        blood_glucose=unit_value,
        systolic_blood_pressure=unit_value,
        diastolic_blood_pressure=unit_value,
        heart_rate=unit_value,
        body_temperature=unit_value,
        body_weight=unit_value,
        effective_time_frame=opt(date_time=timestamps, time_interval=opt(start_date_time=timestamps)),
        descriptive_statistic=st.just("average"),
    ),
)


def fixture_docs() -> list[list[Any]]:
    """Valid documents per format: FHIR Observations and Bundles, Nightscout entries, OMH points."""
    fhir_docs = [json.loads(p.read_bytes()) for p in sorted((DATA / "fhir").glob("*.json"))]
    fhir_docs += [e["resource"] for d in fhir_docs if "entry" in d for e in d["entry"]]
    ns_docs = json.loads((DATA / "nightscout" / "entries.json").read_bytes())
    omh_docs = [json.loads(p.read_bytes()) for p in sorted((DATA / "openmhealth").glob("*/*.json"))]
    return [fhir_docs, ns_docs, omh_docs]


FIXTURE_DOCS = fixture_docs()

READ_KEYS = frozenset(
    # every key a decoder looks at: fuzzing other keys (text, display, ...) tests nothing
    "resourceType id status code coding system subject reference device extension url "
    "valueReference effectiveDateTime effectiveInstant effectivePeriod start valueQuantity value "
    "unit component dataAbsentReason entry fullUrl resource identifier type sgv mbg date "
    "dateString mills _id direction header body schema_id name user_id acquisition_provenance "
    "effective_time_frame date_time time_interval start_date_time descriptive_statistic "
    "blood_glucose systolic_blood_pressure diastolic_blood_pressure heart_rate oxygen_saturation "
    "body_temperature body_weight respiratory_rate".split()
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document through keys that decoders read."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in READ_KEYS:
                out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def near_valid(draw: st.DrawFn) -> Any:
    """A valid fixture document with one or two fields that decoders read replaced or deleted."""
    group = draw(st.sampled_from(FIXTURE_DOCS))
    doc = copy.deepcopy(draw(st.sampled_from(group)))
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        candidates = [p for p in paths(doc) if p]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(nasty | json_values)
    return doc


def check(results: list[CanonicalReading | Rejection]) -> None:
    assert isinstance(results, list)
    for result in results:
        if isinstance(result, Rejection):
            assert result.reason in ALL_REASONS, result
            assert isinstance(result.detail, str)
        else:
            assert isinstance(result, CanonicalReading), result
            for x in (result.value, result.systolic, result.diastolic):
                assert x is None or math.isfinite(x)
            assert result.measured_at.tzinfo is UTC
            json.dumps(result.to_json(), allow_nan=False)


def decode_all(obj: Any) -> None:
    check(fhir.decode(obj, received_at=RECEIVED, patient_id="pat-f"))
    check(nightscout.decode(obj, patient_id="pat-f", received_at=RECEIVED))
    check(openmhealth.decode(obj, received_at=RECEIVED, patient_id=None))
    for fmt in FORMATS:
        check(decode_value(obj, fmt=fmt, patient_id="pat-f", received_at=RECEIVED))


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(fhir.decode_bytes(raw, received_at=RECEIVED))
    check(nightscout.decode_bytes(raw, patient_id="p", received_at=RECEIVED))
    check(openmhealth.decode_bytes(raw, received_at=RECEIVED))
    for fmt in FORMATS:
        check(decode_items(raw, fmt=fmt, received_at=RECEIVED))


@FUZZ
@given(json_values)
def test_arbitrary_json(obj: Any) -> None:
    decode_all(obj)
    raw = json.dumps(obj).encode()  # NaN/Infinity tokens included, as lenient senders emit them
    check(decode_items(raw, received_at=RECEIVED, patient_id="p"))


@FUZZ
@given(near_valid())
def test_near_valid_documents(doc: Any) -> None:
    decode_all(doc)
    decode_all([doc, doc])
    if isinstance(doc, dict) and doc.get("resourceType") == "Observation":
        decode_all({"resourceType": "Bundle", "entry": [{"resource": doc}]})


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["sgv", "mbg", "cal", "reading"]),
            "sgv": nasty,
            "mbg": nasty,
            "date": nasty | st.integers(),
            "dateString": nasty,
            "_id": nasty,
            "device": nasty,
        },
        optional={"identifier": nasty, "direction": nasty},
    )
)
def test_nightscout_shaped_entries(entry: dict[str, Any]) -> None:
    decode_all(entry)
    for result in nightscout.decode(entry, patient_id="p", received_at=RECEIVED):
        if isinstance(result, CanonicalReading):
            assert result.kind == "glucose"
            assert result.value is not None and 0.5 <= result.value <= 60 or result.bounded == "low"


@STRUCTURED
@given(fhir_observations)
def test_structured_fhir_observations(obs: dict[str, Any]) -> None:
    decode_all(obs)
    check(
        fhir.decode(
            {"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:a", "resource": obs}]},
            received_at=RECEIVED,
        )
    )


@STRUCTURED
@given(omh_points)
def test_structured_openmhealth_points(point: Any) -> None:
    decode_all(point)


BREAKERS: list[Any] = [
    None,
    "x",
    "39",
    -1.5,
    10**400,
    float("nan"),
    True,
    [{}],
    {"a": 1},
    "2024-03-05T10:00:00",
]
_DELETE = object()


def single_field_breaks(doc: Any) -> Iterator[Any]:
    """Every copy of ``doc`` with one read field deleted or replaced by one of :data:`BREAKERS`."""
    for path in paths(doc):
        if not path:
            continue
        for replacement in [_DELETE, *BREAKERS]:
            broken = copy.deepcopy(doc)
            parent = broken
            for key in path[:-1]:
                parent = parent[key]
            if replacement is _DELETE:
                if isinstance(parent, dict):
                    del parent[path[-1]]
                else:
                    continue
            else:
                parent[path[-1]] = replacement
            yield broken


@pytest.mark.parametrize("group", [0, 1, 2], ids=["fhir", "nightscout", "openmhealth"])
def test_every_single_field_break_of_every_fixture(group: int) -> None:
    # Deterministic complement to the random fuzz: every read field of every fixture, broken once.
    # Bundles are left to the random fuzz: their Observations are in the list on their own.
    docs = [d for d in FIXTURE_DOCS[group] if not (isinstance(d, dict) and "entry" in d)]
    docs = docs[:6] if group == 1 else docs  # Nightscout entries all share one shape
    count = 0
    for doc in docs:
        for broken in single_field_breaks(doc):
            check(fhir.decode(broken, received_at=RECEIVED, patient_id="p"))
            check(nightscout.decode(broken, patient_id="p", received_at=RECEIVED))
            check(openmhealth.decode(broken, received_at=RECEIVED))
            check(decode_value(broken, patient_id="p", received_at=RECEIVED))
            count += 1
    assert count > 300


def test_deep_nesting_is_rejected_not_raised() -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    for fmt in FORMATS:
        check(decode_items(raw, fmt=fmt, received_at=RECEIVED))
    check(decode_items(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, received_at=RECEIVED))
