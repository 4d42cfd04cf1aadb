"""Property: systolic and diastolic Observations in one Bundle pair exactly when one of each shares
subject, device and time (monitor.intake.fhir.decode); nothing raises, nothing is lost."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.intake import fhir
from monitor.intake.canonical import CanonicalReading

RECEIVED = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
CODES = {"systolic": "8480-6", "diastolic": "8462-4", "heart_rate": "8867-4"}
VALUES = {"systolic": 130, "diastolic": 80, "heart_rate": 70}
UNITS = {"systolic": "mm[Hg]", "diastolic": "mm[Hg]", "heart_rate": "/min"}

entry_st = st.tuples(st.sampled_from(sorted(CODES)), st.sampled_from(["P1", "P2"]),
                     st.sampled_from(["d1", "d2", None]), st.sampled_from(["08:00", "08:05"]))


def observation(what: str, patient: str, device: str | None, hhmm: str) -> dict:
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": CODES[what]}]},
           "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": f"2026-12-07T{hhmm}:00Z",
           "valueQuantity": {"value": VALUES[what], "unit": UNITS[what], "code": UNITS[what]}}
    if device:
        obs["device"] = {"reference": f"Device/{device}"}
    return obs


@settings(max_examples=400, deadline=None)
@given(st.lists(entry_st, max_size=8))
def test_halves_pair_exactly_when_one_of_each_shares_subject_device_and_time(entries) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": observation(*e)} for e in entries]}
    results = fhir.decode(bundle, received_at=RECEIVED)
    groups = Counter((p, d, t, w) for w, p, d, t in entries if w != "heart_rate")
    pairs = sum(1 for (p, d, t, w), n in groups.items()
                if w == "systolic" and n == 1 and groups.get((p, d, t, "diastolic")) == 1)
    hearts = sum(1 for e in entries if e[0] == "heart_rate")
    readings = [r for r in results if isinstance(r, CanonicalReading)]
    assert len(results) == len(entries) - pairs  # the diastolic of a pair gives no second answer
    assert sum(r.kind == "blood_pressure" for r in readings) == pairs
    assert sum(r.kind == "heart_rate" for r in readings) == hearts
    assert all((r.systolic, r.diastolic) == (130, 80) for r in readings if r.kind == "blood_pressure")
    unpaired = len(entries) - hearts - 2 * pairs
    assert sum(getattr(r, "reason", None) == "unpaired_component" for r in results) == unpaired
