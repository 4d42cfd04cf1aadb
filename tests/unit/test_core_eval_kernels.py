"""The evaluation and summary kernels against plain re-implementations of their definitions.

``evaluate`` finds ring cells with bit masks (no per-patient division) and takes a general path
for wide rings and high parts; ``group_sums3`` sums per group combination before folding;
``value_counts`` hashes instead of sorting. Each is compared exactly with a direct version on
random records, including ring sizes above 8, overflowed cells and as-of days far ahead.
"""

from __future__ import annotations

import numpy as np
import pytest

from monitor.core import support as k
from monitor.core.state import SupportConfig, SupportState, _record_specs, _record_views

SPD = k.SECONDS_PER_DAY


def _direct_rings(p, as_of_day, cov, r64, r32, r16, r8, hi):
    """The original per-cell walk: (ever, off, care ms, contact days, readings)."""
    bits = 16 + 6 * cov
    hif = int(r8[p, bits + (cov + 7) // 8])
    last, last_r = int(r64[p, 0]), int(r64[p, 1])
    ms = n_days = reads = 0
    off = None
    if last != k.NO_TIME:
        head = last // SPD
        off = as_of_day - head
        if off < cov:
            c = head % cov
            for _ in range(cov - off):
                ms += int(r32[p, 4 + c]) + ((int(hi[p, c]) << 32) if hif & 1 else 0)
                n_days += (int(r8[p, bits + (c >> 3)]) >> (c & 7)) & 1
                c = c - 1 if c > 0 else cov - 1
    if last_r != k.NO_TIME:
        head = last_r // SPD
        if as_of_day - head < cov:
            c = head % cov
            for _ in range(cov - (as_of_day - head)):
                reads += int(r16[p, 8 + 2 * cov + c]) + ((int(hi[p, cov + c]) << 16) if hif & 2 else 0)
                c = c - 1 if c > 0 else cov - 1
    return off, ms, n_days, reads


def _random_records(rng, n, cov, as_of_day):
    spec, width = _record_specs(SupportConfig(coverage_days=cov))["record"]
    record = np.zeros((n, width), np.uint64)
    record[:] = spec[1]
    hi = rng.integers(0, 3, (n, 2 * cov)).astype(np.uint32)
    r64, r32, r16, r8 = _record_views(record)
    bits = 16 + 6 * cov
    for p in range(n):
        for col in (0, 1):
            if rng.random() < 0.8:
                r64[p, col] = (as_of_day - int(rng.integers(0, 2 * cov + 3))) * SPD + int(
                    rng.integers(0, SPD))
        r32[p, 4:4 + cov] = rng.integers(0, 2**32, cov, dtype=np.uint64).astype(np.uint32)
        r16[p, 8 + 2 * cov:8 + 3 * cov] = rng.integers(0, 2**16, cov).astype(np.uint16)
        r8[p, bits:bits + (cov + 7) // 8] = rng.integers(0, 256, (cov + 7) // 8).astype(np.uint8)
        r8[p, bits + (cov + 7) // 8] = rng.choice([0, 0, 0, 1, 2, 3])
    return record, hi


@pytest.mark.parametrize("cov", [1, 2, 3, 7, 8, 9, 16, 30])
@pytest.mark.parametrize("as_of_day", [20_200, 20_203, 5, -3])
def test_evaluate_ring_sums_match_the_cell_walk(cov, as_of_day):
    rng = np.random.default_rng(cov * 1000 + as_of_day % 997)
    n = 400
    record, hi = _random_records(rng, n, cov, as_of_day)
    views = _record_views(record)
    pairs = np.zeros(1024, k.PAIR_DTYPE)
    links = np.zeros(1024, k.LINK_DTYPE)
    links["link"] = k.NO_TIME
    exp_day = rng.integers(0, 5_000_000, n).astype(np.int64)
    outs = [np.full(n, 99, t) for t in (np.int32, np.int32, np.int64, np.int32, np.int64,
                                         np.uint8, np.bool_, np.int64, np.int64, np.int64)]
    k.evaluate(np.int64(n), np.int64(as_of_day), np.int64(cov), np.int64(28), np.int64(14),
               *views, hi, pairs, links, exp_day, *outs)
    active, registered, care_ms, contact_days, readings, flags, covered, expected, lc, lr = outs
    for p in range(n):
        off, ms, n_days, reads = _direct_rings(p, as_of_day, cov, *views, hi)
        assert (care_ms[p], contact_days[p], readings[p]) == (ms, n_days, reads), p
        assert covered[p] == (off is not None and off < cov)
        lapsed = off is None or off >= 14
        assert flags[p] == 1 + (2 if off is not None and lapsed else 0)
    assert not active.any() and not registered.any()
    assert np.array_equal(expected, exp_day * cov)
    assert np.array_equal(lc, views[0][:, 0]) and np.array_equal(lr, views[0][:, 1])


@pytest.mark.parametrize("cov", [1, 5, 7, 8])
def test_window_cells_are_the_cells_of_the_window_days(cov):
    for as_of_day in range(-2 * cov, 3 * cov):
        for off in range(0, cov + 2):
            head = as_of_day - off
            want = 0
            for day in range(as_of_day - cov + 1, head + 1):
                want |= 1 << (day % cov)
            assert k._window_cells(np.int64(cov), np.int64(as_of_day % cov), np.int64(off)) == want


def _direct_sums(codes, n_groups, flags, covered, care_ms, readings, expected):
    out = np.zeros((len(n_groups), max(n_groups) + 1, 9), np.int64)
    for d, (c, ng) in enumerate(zip(codes, n_groups, strict=False)):
        g = np.where(c < 0, ng, c)
        capped = np.minimum(readings * 1_000_000, expected)
        cols = (np.ones_like(care_ms), covered.astype(np.int64), flags & 1, (flags >> 1) & 1,
                (flags >> 2) & 1, care_ms, readings, capped, expected)
        for j, col in enumerate(cols):
            np.add.at(out[d, :, j], g, col.astype(np.int64))
    return out


@pytest.mark.parametrize("n_groups", [(3,), (2, 5), (9, 5, 5), (0, 1, 2), (40, 30, 20)])
def test_group_sums3_equal_direct_per_dimension_sums(n_groups):
    rng = np.random.default_rng(len(n_groups) + sum(n_groups))
    n = 5000
    codes = [rng.integers(-1, max(ng, 1), n).astype(np.int32) if ng else np.full(n, -1, np.int32)
             for ng in n_groups]
    flags = rng.integers(0, 8, n).astype(np.uint8)
    covered = rng.random(n) < 0.5
    care_ms = rng.integers(0, 10**9, n)
    readings = rng.integers(0, 30, n)
    expected = rng.integers(0, 30, n) * 1_000_000 + rng.integers(0, 999_999, n)
    padded = codes + [codes[0]] * (3 - len(codes))
    got = k.group_sums3(*padded, np.array(n_groups, np.int64), flags, covered, care_ms,
                        readings, expected)
    assert np.array_equal(got, _direct_sums(codes, n_groups, flags, covered, care_ms, readings,
                                            expected))


@pytest.mark.parametrize("distinct", [1, 3, 600, 5000, 70_000])
def test_value_counts_equal_unique(distinct):
    rng = np.random.default_rng(distinct)
    pool = rng.integers(-(2**62), 2**62, distinct)
    pool[0] = 0
    values = pool[rng.integers(0, distinct, 200_000)]
    ok, v, c = k.value_counts(values, np.int64(k.HIST_MAX_DISTINCT))
    want_v, want_c = np.unique(values, return_counts=True)
    if np.unique(values).size > k.HIST_MAX_DISTINCT:
        assert not ok and v.size == 0 and c.size == 0
    else:
        assert ok and np.array_equal(v, want_v) and np.array_equal(c, want_c)
    ok, v, c = k.value_counts(np.zeros(0, np.int64), np.int64(10))
    assert ok and v.size == 0 and c.size == 0


def test_partial_summary_histogram_falls_back_to_sorting(monkeypatch):
    s = SupportState()
    s.add_patients(50)
    ev = s.evaluate(0)
    care = np.arange(50, dtype=np.int64) * 7
    ev2 = type(ev)(**{**{f: getattr(ev, f) for f in ev.__dataclass_fields__}, "care_ms": care})
    want = s.partial_summary(ev2)
    monkeypatch.setattr(k, "HIST_MAX_DISTINCT", 4)
    got = s.partial_summary(ev2)
    assert got == want and np.array_equal(got.care_ms_values, care)


def test_evaluation_patient_ids_follow_new_and_restored_patients():
    s = SupportState()
    s.add_patients(3)
    assert s.evaluate(0).patient_ids == ("#0", "#1", "#2")
    s.patient_slot("x")
    assert s.evaluate(0).patient_ids == ("#0", "#1", "#2", "x")
    r = SupportState.restore(s.snapshot())
    assert r.evaluate(0).patient_ids == ("#0", "#1", "#2", "x")
    s.patient_ids = ["a", "b"]
    assert s.evaluate(0).patient_ids == ("a", "b")


@pytest.mark.parametrize("carers", [254, 255, 256, 300])
def test_carer_counts_past_the_narrow_counters(carers):
    from monitor.core.batch import EventBatch

    s = SupportState()
    s.add_patients(3)
    s.add_carers(carers)
    t0 = 20_200 * SPD
    pa = np.array([1] * carers + [2], np.int32)
    ca = np.array([*range(carers), 0], np.int32)
    m = pa.shape[0]
    s.apply(EventBatch.from_columns(
        activity_patient=pa, activity_carer=ca, activity_start_s=np.full(m, t0, np.int64),
        activity_minutes=np.full(m, 10.0), activity_id_hash=np.arange(1, m + 1, dtype=np.uint64),
        link_patient=pa, link_carer=ca, link_t=np.full(m, t0, np.int64),
        link_action=np.ones(m, np.int8),
        reading_patient=np.zeros(0, np.int32), reading_kind=np.zeros(0, np.int8),
        reading_t=np.zeros(0, np.int64), reading_id_hash=np.zeros(0, np.uint64)))
    ev = s.evaluate()
    assert ev.active_carers.tolist() == [0, carers, 1]
    assert ev.registered_carers.tolist() == [0, carers, 1]
    assert ev.flags.tolist() == [1, 0, 4]
    assert ev.care_ms.tolist() == [0, carers * 600_000, 600_000]


@pytest.mark.parametrize("cov", [1, 7, 8, 9, 64])
def test_record_layout_is_the_kernels_table(cov):
    """The Python layout, the kernels' element offsets and the state's record width agree."""
    lay = k.record_layout(cov)
    # two int64 times (16 bytes), uint32 care cells, uint16 reading cells, contact bits, flag byte
    flags = 16 + 6 * cov + (cov + 7) // 8
    assert lay == {"ms": 16, "reads": 16 + 4 * cov, "bits": 16 + 6 * cov, "flags": flags,
                   "bytes": -(-(flags + 1) // 64) * 64}
    assert k._cells(np.int64(cov)) == (4, 8 + 2 * cov, 16 + 6 * cov, flags)
    (_, fill), words = _record_specs(SupportConfig(coverage_days=cov))["record"]
    assert words * 8 == lay["bytes"]
    assert fill.view(np.int64)[[k.LAST_CONTACT, k.LAST_READING]].tolist() == [k.NO_TIME] * 2
    if cov <= 7:
        assert lay["bytes"] == 64  # one cache line per patient with the default window


@pytest.mark.parametrize("dtype", [k.PAIR_DTYPE, k.LINK_DTYPE])
def test_rehash_table_keeps_every_slot_of_pair_and_link_tables(dtype):
    rng = np.random.default_rng(7)
    old = np.zeros(64, dtype)
    keys = np.unique(rng.integers(1, 2**40, 40).astype(np.uint64))
    value = "last_day" if dtype == k.PAIR_DTYPE else "link"
    for key in keys:
        j, inserted = k._pair_slot(old, k._pair_home(old, key), key)
        assert inserted
        old[j][value] = int(key % 1000)
    new = np.zeros(256, dtype)
    assert k.rehash_table(old, new) == keys.shape[0]
    got = {int(r["key"]): int(r[value]) for r in new if r["key"]}
    assert got == {int(key): int(key % 1000) for key in keys}
