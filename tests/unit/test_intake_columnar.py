"""The columnar intake of a fetch gives, message by message, exactly what the fast path gives.

The reference is :func:`monitor.intake.fastpath.fast_canonical` (itself checked against the full
decoder in ``test_intake_fastpath``): a message the fast path accepts must be accepted by
:func:`monitor.intake.columnar.scan_readings` with equal canonical readings (same tzinfo, same
``late``), and a message it declines must be declined (left to the per-message path).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from monitor.intake.columnar import ReadingSlice, scan_readings
from monitor.intake.fastpath import fast_canonical
from monitor.intake.scan_kernel import POW10, _number
from tests.unit.test_intake_fastpath import BASE, CHECK, OLDEST, RECEIVED, ids, reading_docs, stamps


def agrees(messages: list[bytes | None], *, exact: bool = False) -> int:
    """Assert agreement message by message; the number of messages accepted. ``exact``: also
    accept every message the fast path accepts (clean, common shapes)."""
    spans, cols = scan_readings(messages, received_at=RECEIVED, oldest=OLDEST)
    assert len(spans) == len(messages)
    accepted = 0
    for raw, span in zip(messages, spans, strict=True):
        fast = None if raw is None else fast_canonical(raw, received_at=RECEIVED, oldest=OLDEST)
        if fast is None:
            assert span is None, f"columnar accepted what the fast path declines: {raw!r}"
            continue
        if span is None:
            assert not exact, f"columnar declined a clean message: {raw!r}"
            continue
        name, start, stop = span
        got = ReadingSlice(cols, start, stop).readings()
        assert (name, got) == fast, (raw, got, fast)
        for a, b in zip(got, fast[1], strict=True):
            assert a.measured_at.tzinfo is UTC and a.late == b.late and a.gateway_id == b.gateway_id
        accepted += 1
    return accepted


@st.composite
def messages(draw: Any) -> bytes | None:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.none() | st.binary(max_size=30))
    if choice <= 5:
        return json.dumps(draw(reading_docs())).encode()
    items = draw(st.lists(reading_docs(), min_size=0, max_size=4))
    doc: dict[str, Any] = {"gateway_id": draw(ids), "sent_at": draw(stamps), "readings": items}
    declared = draw(st.sampled_from([None, None, "gateway_batch", "reading"]))
    if declared:
        doc["type"] = declared
    return json.dumps(doc).encode()


@CHECK
@given(st.lists(messages(), min_size=1, max_size=12))
@example([json.dumps(BASE).encode()])
def test_a_fetch_agrees_message_by_message(fetch: list[bytes | None]) -> None:
    agrees(fetch)


@CHECK
@given(st.lists(reading_docs(), min_size=1, max_size=30))
def test_clean_and_dirty_readings_of_one_fetch(docs: list[dict[str, Any]]) -> None:
    agrees([json.dumps(d).encode() for d in docs])


def test_a_clean_fetch_is_accepted_whole() -> None:
    """Not vacuous: clean singles and batches (every kind and unit) are accepted."""
    docs = [dict(BASE, reading_id=f"r{i}", value=5.0 + i / 10) for i in range(20)]
    docs += [dict(BASE, reading_id="mg", value=90, unit="mg/dL"),
             dict({k: v for k, v in BASE.items() if k != "value"}, reading_id="bp", kind="blood_pressure",
                  unit="mm[Hg]", systolic=120, diastolic=80.5),
             dict(BASE, reading_id="t", kind="body_temperature", unit="[degF]", value=99.1),
             dict(BASE, reading_id="w", kind="body_weight", unit="[lb_av]", value=180),
             dict(BASE, reading_id="g", kind="body_weight", unit="g", value=72000),
             dict(BASE, reading_id="off", measured_at="2026-10-30T09:00:00+01:00"),
             dict(BASE, reading_id="late", measured_at="2026-10-01T00:00:00Z", type="reading")]
    batch = {"gateway_id": "g", "sent_at": "2026-10-30T12:00:00Z", "type": "gateway_batch",
             "readings": [dict(BASE, reading_id=f"b{i}") for i in range(50)]}
    fetch = [json.dumps(d).encode() for d in docs] + [json.dumps(batch).encode()]
    assert agrees(fetch, exact=True) == len(fetch)
    assert agrees([json.dumps(d, separators=(",", ":")).encode() for d in docs], exact=True) == len(docs)
    bad = fetch + [b"{", None, json.dumps(dict(BASE, value=0.1)).encode()]
    assert agrees(bad) == len(fetch)


NUMBER_TEXT = st.from_regex(r"\A-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,19})?([eE][+-]?[0-9]{1,3})?\Z")


@CHECK
@given(NUMBER_TEXT)
@example("6.0")
@example("-0")
@example("-0.0")
@example("0.1e1")
@example("123456789012345")
def test_numbers_convert_exactly(text: str) -> None:
    """The kernel's number: when accepted, exactly the double orjson (and float()) give."""
    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    ok, value, end = _number(raw, 0, len(raw), POW10)
    if not ok:
        return
    expected = float(orjson.loads(text))
    assert end == len(raw)
    assert value == expected, (text, value, expected)
    assert math.copysign(1, value) == math.copysign(1, expected), (text, value, expected)


def test_common_numbers_are_accepted() -> None:
    for text in ("6.0", "5.55", "-0.0", "120", "98.6", "1e2", "0.000125", "72000", "123456789012345"):
        raw = np.frombuffer(text.encode(), dtype=np.uint8)
        ok, value, _ = _number(raw, 0, len(raw), POW10)
        assert ok and value == float(text)


TIMES = st.datetimes(min_value=datetime(2026, 9, 29), max_value=datetime(2026, 10, 31))
OFFSETS = st.sampled_from(["Z", "+00:00", "-00:00", "+01:00", "-05:30", "+14:00", "-12:00", "+23:59",
                           "+24:00"])


@CHECK
@given(st.lists(st.tuples(TIMES, OFFSETS), min_size=1, max_size=20))
def test_timestamps_and_offsets(stamps_: list[tuple[datetime, str]]) -> None:
    fetch = [json.dumps(dict(BASE, measured_at=t.strftime("%Y-%m-%dT%H:%M:%S") + off)).encode()
             for t, off in stamps_]
    agrees(fetch)
