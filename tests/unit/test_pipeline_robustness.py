"""No input of any size or shape, and no device clock, can stop or corrupt the pipeline (issue 13).

Each test here failed on the code before the fix: a 5,000-digit JSON number raised ``ValueError``
out of :meth:`Pipeline.ingest`; a 1 MB message of control characters became a 6 MB dead letter; a
care link, carer activity or registration dated 2099 was accepted and moved the partition's
event-time watermark to 2099.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.contract.models import DEAD_LETTER_PREFIX_BYTES
from monitor.pipeline import Pipeline, RawRecord, receive_time

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
EXPECTED = {"readings": "reading", "carer-activity": "carer_activity", "care-network": "care_link",
            "patients": "patient"}
TOPICS = sorted(EXPECTED)


def pipeline(**kw: object) -> Pipeline:
    return Pipeline(clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def accounted(p: Pipeline, n: int) -> None:
    c = p.counts
    assert c.messages == n
    assert sum(c.processed.values()) + c.rejected_messages == n


def test_a_number_of_5000_digits_is_a_dead_letter_on_every_topic() -> None:
    big = b"1" * 5000
    for topic in TOPICS:
        for columnar in (True, False):
            p = pipeline(columnar=columnar)
            docs = [b'{"patient_id": ' + big + b"}", b"[" + big + b"]", big,
                    b'{"reading_id":"r","patient_id":"p","device_id":"d","kind":"glucose","value":'
                    + big + b',"unit":"mmol/L","measured_at":"2026-11-20T11:00:00Z"}']
            out = p.ingest([RawRecord(v, topic, 0, i) for i, v in enumerate(docs)], EXPECTED)
            assert [d.reason for d in out.dead_letters] == ["malformed_json"] * 4
            accounted(p, 4)


def test_a_megabyte_of_control_bytes_gives_a_small_dead_letter_with_its_length_and_hash() -> None:
    for raw in (b"\x01" * 1_000_000, b"\xff" * 1_000_000, "é".encode() * 500_000):
        p = pipeline()
        out = p.ingest([RawRecord(raw, "readings", 0, 0)], EXPECTED)
        (d,) = out.dead_letters
        assert d.original_bytes == len(raw)
        assert d.original_sha256 == hashlib.sha256(raw).hexdigest()
        assert len(d.original) <= 4 * DEAD_LETTER_PREFIX_BYTES  # base64 of the prefix at most
        assert len(d.model_dump_json()) < 30_000  # JSON-escaped, far below Kafka's 1 MB limit
        if d.encoding == "utf-8":
            assert raw.startswith(d.original.encode())


def test_the_valid_messages_after_poison_ones_are_applied() -> None:
    reading = {"reading_id": "r1", "patient_id": "p1", "device_id": "d", "kind": "glucose",
               "value": 1.9, "unit": "mmol/L", "measured_at": "2026-11-20T11:59:00Z"}
    patient = {"patient_id": "p1", "region": "north", "deprivation_quintile": 1, "age_band": "65-74"}
    records = [RawRecord(json.dumps(patient).encode(), "patients", 0, 0),
               RawRecord(b"9" * 5000, "readings", 0, 0), RawRecord(b"\x01" * 1_000_000, "readings", 0, 1),
               RawRecord(json.dumps(reading).encode(), "readings", 0, 2)]
    p = pipeline()
    out = p.ingest(records, EXPECTED)
    assert len(out.dead_letters) == 2
    assert [a.rule for a in out.alerts] == ["glucose_very_low"]
    accounted(p, 4)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children,
                                                                      max_size=6),
    max_leaves=30,
)
FIELDS = ["reading_id", "patient_id", "device_id", "kind", "value", "unit", "measured_at", "readings",
          "gateway_id", "sent_at", "activity_id", "carer_id", "started_at", "duration_minutes",
          "relationship", "action", "effective_at", "region", "deprivation_quintile", "age_band",
          "monitoring_plan", "thresholds", "registered_at", "type", "systolic", "diastolic"]
NEAR_VALID = st.dictionaries(st.sampled_from(FIELDS), JSON | st.sampled_from(
    ["glucose", "mmol/L", "p1", "2026-11-20T11:00:00Z", "2099-01-01T00:00:00Z", "2026-11-20T11:00:00",
     "join", "friend", "visit", 5.5, 1e308, -0.0, 10**30]), max_size=10)
MESSAGE = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    NEAR_VALID.map(lambda v: json.dumps(v).encode()),
    st.none(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TOPICS), MESSAGE,
                          st.integers(min_value=-10**15, max_value=10**14) | st.none()),
                min_size=1, max_size=40),
       st.booleans())
def test_arbitrary_bytes_on_every_topic_never_raise_and_every_input_is_accounted_for(
        msgs: list[tuple[str, bytes | None, int | None]], columnar: bool) -> None:
    p = pipeline(columnar=columnar)
    records = [RawRecord(v, topic, 0, i, ts) for i, (topic, v, ts) in enumerate(msgs)]
    out = p.ingest(records, EXPECTED)
    accounted(p, len(msgs))
    assert len(out.dead_letters) >= p.counts.rejected_messages
    for d in out.dead_letters:
        assert len(d.model_dump_json()) < 30_000
    p.tick()
    wm = p.watermark
    assert wm is None or wm <= NOW + p.max_future


FUTURE = "2099-01-01T00:00:00Z"


def test_no_event_dated_2099_is_accepted_on_any_topic() -> None:
    docs = [
        ("care-network", {"patient_id": "p1", "carer_id": "c1", "relationship": "friend", "action": "join",
                          "effective_at": FUTURE}),
        ("carer-activity", {"activity_id": "a1", "patient_id": "p1", "carer_id": "c1", "kind": "visit",
                            "started_at": FUTURE, "duration_minutes": 30}),
        ("patients", {"patient_id": "p1", "region": "north", "deprivation_quintile": 1, "age_band": "65-74",
                      "registered_at": FUTURE}),
        ("readings", {"reading_id": "r1", "patient_id": "p1", "device_id": "d", "kind": "glucose",
                      "value": 5.0, "unit": "mmol/L", "measured_at": FUTURE}),
        ("readings", {"gateway_id": "g", "sent_at": "2026-11-20T11:00:00Z", "readings": [
            {"reading_id": "r2", "patient_id": "p1", "device_id": "d", "kind": "glucose", "value": 5.0,
             "unit": "mmol/L", "measured_at": FUTURE}]}),
    ]
    for columnar in (True, False):
        p = pipeline(columnar=columnar)
        out = p.ingest([RawRecord(json.dumps(d).encode(), t, 0, i) for i, (t, d) in enumerate(docs)],
                       EXPECTED)
        assert [d.reason for d in out.dead_letters] == ["future_timestamp"] * len(docs)
        assert p.watermark is None


def test_the_clock_skew_tolerance_is_configurable_and_judged_against_the_record_timestamp() -> None:
    link = {"patient_id": "p1", "carer_id": "c1", "relationship": "friend", "action": "join",
            "effective_at": iso(NOW + timedelta(minutes=5))}
    raw = json.dumps(link).encode()
    assert not pipeline().ingest([RawRecord(raw, "care-network", 0, 0)], EXPECTED).dead_letters
    out = pipeline(max_future=timedelta(minutes=1)).ingest([RawRecord(raw, "care-network", 0, 0)], EXPECTED)
    assert [d.reason for d in out.dead_letters] == ["future_timestamp"]
    # received (by the broker) an hour ago: five minutes after now is 65 minutes after receipt
    an_hour_ago = ms(NOW - timedelta(hours=1))
    out = pipeline().ingest([RawRecord(raw, "care-network", 0, 0, an_hour_ago)], EXPECTED)
    assert [d.reason for d in out.dead_letters] == ["future_timestamp"]
    # a record timestamp in the future (a producer's clock) is cut to now: it widens nothing
    reading = {"reading_id": "r1", "patient_id": "p1", "device_id": "d", "kind": "glucose", "value": 5.0,
               "unit": "mmol/L", "measured_at": iso(NOW + timedelta(hours=2))}
    for columnar in (True, False):
        out = pipeline(columnar=columnar).ingest(
            [RawRecord(json.dumps(reading).encode(), "readings", 0, 0, ms(NOW + timedelta(days=1)))],
            EXPECTED)
        assert [d.reason for d in out.dead_letters] == ["future_timestamp"]


def test_receive_time_is_the_record_timestamp_bounded_by_now() -> None:
    assert receive_time(RawRecord(b"", "t"), NOW) == NOW
    assert receive_time(RawRecord(b"", "t", 0, 0, ms(NOW) - 5000), NOW) == NOW - timedelta(seconds=5)
    assert receive_time(RawRecord(b"", "t", 0, 0, ms(NOW) + 5000), NOW) == NOW
    assert receive_time(RawRecord(b"", "t", 0, 0, -1), NOW) == NOW


def test_a_reading_is_late_by_its_own_receive_time_not_by_when_the_worker_got_to_it() -> None:
    """A worker catching up after a 3-hour outage still pages for readings that arrived on time."""
    patient = {"patient_id": "p1", "region": "north", "deprivation_quintile": 1, "age_band": "65-74"}
    measured = NOW - timedelta(hours=3)
    reading = {"reading_id": "r1", "patient_id": "p1", "device_id": "d", "kind": "glucose", "value": 1.9,
               "unit": "mmol/L", "measured_at": iso(measured)}
    for columnar in (True, False):
        p = pipeline(columnar=columnar)
        out = p.ingest([RawRecord(json.dumps(patient).encode(), "patients", 0, 0, ms(measured)),
                        RawRecord(json.dumps(reading).encode(), "readings", 0, 0,
                                  ms(measured + timedelta(seconds=20)))], EXPECTED)
        assert [(a.rule, a.notification) for a in out.alerts] == [("glucose_very_low", "firing")]


def test_an_implausible_threshold_rejects_the_registration() -> None:
    patient = {"patient_id": "p1", "region": "north", "deprivation_quintile": 1, "age_band": "65-74",
               "thresholds": {"glucose_very_low": 54}}  # meant in mg/dL: would silence every hypo
    out = pipeline().ingest([RawRecord(json.dumps(patient).encode(), "patients", 0, 0)], EXPECTED)
    assert [d.reason for d in out.dead_letters] == ["implausible_threshold"]
    patient["thresholds"] = {"glucose_very_low": 3.5}
    assert not pipeline().ingest([RawRecord(json.dumps(patient).encode(), "patients", 0, 0)],
                                 EXPECTED).dead_letters
