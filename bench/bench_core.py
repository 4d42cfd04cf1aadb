"""Benchmark of the support core with 1M patients: batch updates, full recompute, state size.

Run: ``.venv/bin/python -m bench.bench_core [--patients N] [--events N]``. Writes the sections
``kernel`` (numba and pure-Python reference events/s on the same events, and their ratio),
``recompute_1m_ms`` (evaluate + partial summary + every equity measure across 3 dimensions) and
``bytes_per_patient`` into ``bench/results.json`` via :func:`bench.results.merge_section`.

Workload (synthetic, seeded): one week of events for every patient - 60 % readings, 35 % carer
activities, 5 % care links, ~2 carers per patient, every event id distinct, plus 2 % exact
re-deliveries - applied in batches of 100k events, in random patient order (the worst case for
caches; this is the headline ``events_per_s``). The same events are also applied with each batch
grouped by patient (every batch's events sorted by patient slot, as when a gateway batch carries
one patient's readings): ``grouped_events_per_s``. Each stream is applied ``--repeats`` times to
a fresh state and the best run is kept (the machine is shared; compilation is warmed up first).
The reference runs on the first ``--reference-events`` events of the same random stream.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.results import merge_section
from monitor.core import support as K
from monitor.core.batch import DIMENSIONS, EventBatch, PatientRecord
from monitor.core.jit import kernel
from monitor.core.reference import ReferenceSupport
from monitor.core.state import SupportState, _record_views
from monitor.equity import equity_from_summary

REGIONS = ["north", "south", "east", "west", "central", "coast", "hills", "city", "valley"]
BANDS = ["18-44", "45-64", "65-74", "75-84", "85+"]
DAY0 = 20_200  # a UTC day number (2025-04-23)


# -- the memory ceiling: the cache lines the kernels must touch, and nothing else ----------------
#
# Each event of the update kernels reads and writes a few 64-byte lines at addresses that depend
# on the event (random over hundreds of MB with 1M patients): a reading its patient record and
# its duplicate-table bucket, an activity also its (patient, carer) pair slot, a care link its
# link slot. These kernels touch exactly those lines (the same arrays, hash functions and
# prefetching as monitor.core.support) with one add each and no other logic, so their rate on
# the same batches is an upper bound of the update kernels' rate on this machine.

_W = K.DEDUP_WAYS + 1


@kernel
def _touch_readings(patient, id_hash, r64, dedup):  # pragma: no cover - jitted
    n = patient.shape[0]
    words = r64.shape[1]
    home = np.empty(n, np.int64)  # one hash per event, as the kernels do
    for i in range(n):
        home[i] = K._dedup_bucket(dedup, np.uint64(id_hash[i]))
    for i in range(n):
        f = i + K.PREFETCH_DISTANCE
        if f < n:
            K._prefetch(r64, np.int64(patient[f]) * words)
            K._prefetch(dedup, home[f] * _W)
        r64[np.int64(patient[i]), 1] += 1
        dedup[home[i], _W - 1] += np.uint64(1)


@kernel
def _touch_activities(patient, carer, id_hash, r64, pairs, dedup):  # pragma: no cover - jitted
    n = patient.shape[0]
    words = r64.shape[1]
    pair_home = np.empty(n, np.int64)
    dedup_home = np.empty(n, np.int64)
    for i in range(n):
        pair_home[i] = K._pair_home(pairs, K.pair_key(np.int64(patient[i]), np.int64(carer[i])))
        dedup_home[i] = K._dedup_bucket(dedup, np.uint64(id_hash[i]))
    for i in range(n):
        f = i + K.PREFETCH_DISTANCE
        if f < n:
            K._prefetch(r64, np.int64(patient[f]) * words)
            K._prefetch(pairs, pair_home[f])
            K._prefetch(dedup, dedup_home[f] * _W)
        r64[np.int64(patient[i]), 0] += 1
        pairs[pair_home[i]].last_day += 1
        dedup[dedup_home[i], _W - 1] += np.uint64(1)


@kernel
def _touch_links(patient, carer, links):  # pragma: no cover - jitted
    n = patient.shape[0]
    home = np.empty(n, np.int64)
    for i in range(n):
        home[i] = K._pair_home(links, K.pair_key(np.int64(patient[i]), np.int64(carer[i])))
    for i in range(n):
        f = i + K.PREFETCH_DISTANCE
        if f < n:
            K._prefetch(links, home[f])
        links[home[i]].link += 1


@kernel
def _rmw_lines(first, second, table, k):  # pragma: no cover - jitted
    """Per event: add 1 to line ``first[i] * k`` and, if ``second`` is not empty, to line
    ``second[i]`` of ``table`` (rows of 8 words = one 64-byte line), prefetched as the kernels do."""
    n = first.shape[0]
    two = second.shape[0] == n
    for i in range(n):
        f = i + K.PREFETCH_DISTANCE
        if f < n:
            K._prefetch(table, first[f] * k * 8)
            if two:
                K._prefetch(table, second[f] * 8)
        table[first[i] * k, 0] += np.uint64(1)
        if two:
            table[second[i], 0] += np.uint64(1)


def line_costs(lines: int = 5_000_000, events: int = 10_000_000, repeats: int = 3) -> dict[str, float]:
    """ns per event of random read-modify-writes in a 320 MB table: one line, two independent lines,
    and two lines of one 128-byte block (is co-locating a patient's data worth it?)."""
    rng = np.random.default_rng(3)
    raw = np.ones(lines * 8 + 16, np.uint64)
    skip = (-raw.ctypes.data % 128) // 8  # rows on 64-byte lines, row pairs on 128-byte blocks
    table = raw[skip:skip + lines * 8].reshape(lines, 8)
    one = rng.integers(0, lines, events)
    other = rng.integers(0, lines, events)
    blocks = rng.integers(0, lines // 2, events)
    cases = {"one_line_ns": (one, np.zeros(0, np.int64), 1),
             "two_random_lines_ns": (one, other, 1),
             "two_adjacent_lines_ns": (blocks, 2 * blocks + 1, 2)}
    out = {}
    for name, (first, second, k) in cases.items():
        _rmw_lines(first[:1000], second[:1000], table, k)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            _rmw_lines(first, second, table, k)
            best = min(best, time.perf_counter() - t0)
        out[name] = round(best / events * 1e9, 1)
    return out


def touch_lines(state: SupportState, batches: list[EventBatch]) -> None:
    """The memory traffic of ``state.apply`` over ``batches`` without its logic (state garbled)."""
    a = state._arrays
    r64 = _record_views(a["record"])[0]
    for b in batches:
        _touch_links(b.link_patient, b.link_carer, a["links"])
        _touch_activities(b.activity_patient, b.activity_carer, b.activity_id_hash, r64, a["pairs"],
                          a["dedup"])
        _touch_readings(b.reading_patient, b.reading_id_hash, r64, a["dedup"])


def timed_ceiling(n_p: int, n_e: int, batches: list[EventBatch], repeats: int) -> float:
    """Best wall seconds of :func:`touch_lines` over ``batches`` on a fresh state."""
    touch_lines(fresh_state(1000, 1000), make_batches(1000, 1000, 1000))  # compile
    return timed_apply(n_p, n_e, batches, repeats, run=touch_lines)[1]


def make_batches(n_patients: int, n_events: int, batch: int, seed: int = 1) -> list[EventBatch]:
    """A week of mixed events as :class:`EventBatch` es of ``batch`` events each."""
    rng = np.random.default_rng(seed)
    out: list[EventBatch] = []
    next_id = 1
    for start in range(0, n_events, batch):
        n = min(batch, n_events - start)
        n_dup = n // 50
        n_fresh = n - n_dup
        n_r = int(n_fresh * 0.60)
        n_a = int(n_fresh * 0.35)
        n_l = n_fresh - n_r - n_a
        t_lo = DAY0 * 86400
        span = 7 * 86400
        a_p = rng.integers(0, n_patients, n_a, dtype=np.int32)
        a_c = (2 * a_p + rng.integers(0, 2, n_a, dtype=np.int32)).astype(np.int32)
        a_t = t_lo + rng.integers(0, span, n_a)
        a_m = rng.integers(5, 240, n_a).astype(np.float64) / 2
        a_h = np.arange(next_id, next_id + n_a, dtype=np.uint64)
        next_id += n_a
        r_p = rng.integers(0, n_patients, n_r, dtype=np.int32)
        r_t = t_lo + rng.integers(0, span, n_r)
        r_h = np.arange(next_id, next_id + n_r, dtype=np.uint64)
        next_id += n_r
        # exact re-deliveries of readings of this batch
        again = rng.integers(0, n_r, n_dup)
        r_p = np.concatenate((r_p, r_p[again]))
        r_t = np.concatenate((r_t, r_t[again]))
        r_h = np.concatenate((r_h, r_h[again]))
        l_p = rng.integers(0, n_patients, n_l, dtype=np.int32)
        out.append(EventBatch.from_columns(
            activity_patient=a_p, activity_carer=a_c, activity_start_s=a_t,
            activity_minutes=a_m, activity_id_hash=a_h,
            link_patient=l_p, link_carer=2 * l_p, link_t=t_lo + rng.integers(0, span, n_l),
            link_action=rng.choice(np.array([-1, 1], np.int8), n_l),
            reading_patient=r_p, reading_kind=np.zeros(r_p.shape[0], np.int8), reading_t=r_t,
            reading_id_hash=r_h,
        ))
    return out


def grouped(batches: list[EventBatch]) -> list[EventBatch]:
    """The same batches with each kind's events sorted by patient slot (stable)."""
    out = []
    for b in batches:
        cols = {}
        for prefix, names in (("activity", ("patient", "carer", "start_s", "minutes", "id_hash")),
                              ("link", ("patient", "carer", "t", "action")),
                              ("reading", ("patient", "kind", "t", "id_hash"))):
            order = np.argsort(getattr(b, f"{prefix}_patient"), kind="stable")
            for name in names:
                cols[f"{prefix}_{name}"] = getattr(b, f"{prefix}_{name}")[order]
        out.append(EventBatch.from_columns(**cols))
    return out


def register(state: SupportState, n_patients: int, seed: int = 2) -> None:
    """Registry upserts for every patient (regions, quintiles, age bands, plans)."""
    rng = np.random.default_rng(seed)
    region = rng.integers(0, len(REGIONS), n_patients)
    quint = rng.integers(1, 6, n_patients)
    band = rng.integers(0, len(BANDS), n_patients)
    plan = rng.choice(np.array([0, 1_000_000, 2_000_000, 4_000_000]), n_patients)
    recs = tuple(
        PatientRecord(i, REGIONS[r], int(q), BANDS[b], int(e), (0, 1))
        for i, (r, q, b, e) in enumerate(zip(region.tolist(), quint.tolist(), band.tolist(),
                                              plan.tolist(), strict=True))
    )
    state.apply(EventBatch(patients=recs))


def recompute(state: SupportState) -> dict[str, Any]:
    """Every measure: per-patient evaluation, group sums for 3 dimensions, HEAT + individual."""
    ev = state.evaluate()
    summary = state.partial_summary(ev)
    return equity_from_summary(summary, state.config)


def fresh_state(n_p: int, n_e: int) -> SupportState:
    state = SupportState(expected_patients=n_p, expected_pairs=int(1.2 * n_p),
                         expected_window_events=n_e)
    state.add_patients(n_p)
    state.add_carers(2 * n_p)
    register(state, n_p)
    gc.collect()
    return state


def apply_all(state: SupportState, batches: list[EventBatch]) -> None:
    for b in batches:
        state.apply(b)


def timed_apply(n_p: int, n_e: int, batches: list[EventBatch], repeats: int,
                run: Callable[[SupportState, list[EventBatch]], None] = apply_all
                ) -> tuple[SupportState, float, float]:
    """``run`` the batches (default: apply them) on a fresh state ``repeats`` times; (last state,
    best wall s, best CPU s)."""
    best_wall = best_cpu = math.inf
    state = None
    for _ in range(repeats):
        state = None
        gc.collect()
        state = fresh_state(n_p, n_e)
        w0, c0 = time.perf_counter(), time.thread_time()
        run(state, batches)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.thread_time() - c0)
    assert state is not None
    return state, best_wall, best_cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark with command-line ``argv`` (None: the defaults - ``python -m bench``
    passes its own arguments, the benchmark names, which are not ours)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--reference-events", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args([] if argv is None else argv)

    n_p, n_e = args.patients, args.events
    print(f"generating {n_e:,} events for {n_p:,} patients ...", flush=True)
    batches = make_batches(n_p, n_e, args.batch)
    total = sum(b.n_activities + b.n_links + b.n_readings for b in batches)

    # warm-up: compile (or load from cache) every kernel on a throw-away state
    warm = SupportState()
    warm.add_patients(n_p)
    warm.add_carers(2 * n_p)
    warm.apply(batches[0])
    recompute(warm)
    del warm
    gc.collect()

    g_batches = grouped(batches)
    _, g_wall, g_cpu = timed_apply(n_p, n_e, g_batches, args.repeats)
    del g_batches
    print(f"numba, grouped by patient: {total:,} events in {g_wall:.2f} s = "
          f"{total / g_wall / 1e6:.2f} M events/s (CPU {total / g_cpu / 1e6:.2f} M/s)", flush=True)
    state, numba_s, numba_cpu = timed_apply(n_p, n_e, batches, args.repeats)
    numba_eps = total / numba_s
    print(f"numba, random order: {total:,} events in {numba_s:.2f} s = "
          f"{numba_eps / 1e6:.2f} M events/s (CPU {total / numba_cpu / 1e6:.2f} M/s, "
          f"duplicates {state.stats['duplicates']:,})", flush=True)

    ceiling_s = timed_ceiling(n_p, n_e, batches, args.repeats)
    print(f"memory ceiling (the same lines, no logic): {total / ceiling_s / 1e6:.2f} M events/s; "
          f"the kernels reach {ceiling_s / numba_s:.0%} of it", flush=True)

    costs = line_costs()
    print("random read-modify-write, ns per event: " + ", ".join(f"{k} {v}" for k, v in costs.items()),
          flush=True)

    # the reference on the first events of the same stream (same patients and slots)
    ref_batches: list[EventBatch] = []
    seen = 0
    for b in batches:
        if seen >= args.reference_events:
            break
        ref_batches.append(b)
        seen += b.n_activities + b.n_links + b.n_readings
    ref_s = math.inf
    for _ in range(args.repeats):
        ref = ReferenceSupport()
        t0 = time.perf_counter()
        for b in ref_batches:
            ref.apply(b)
        ref_s = min(ref_s, time.perf_counter() - t0)
        del ref
    ref_eps = seen / ref_s
    print(f"reference: {seen:,} events in {ref_s:.2f} s = {ref_eps / 1e6:.3f} M events/s")
    ratio = numba_eps / ref_eps

    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        eq = recompute(state)
        times.append((time.perf_counter() - t0) * 1000)
    recompute_ms = min(times)
    print(f"recompute {n_p:,} patients, {len(DIMENSIONS)} dimensions: "
          f"best {recompute_ms:.1f} ms, median {statistics.median(times):.1f} ms "
          f"(runs {', '.join(f'{t:.0f}' for t in times)})")
    assert set(eq) >= set(DIMENSIONS)

    bpp = state.bytes_per_patient()
    parts = state.state_bytes()
    print(f"bytes per patient: {bpp:.1f} "
          + ", ".join(f"{k} {v / n_p:.1f}" for k, v in parts.items() if v / n_p >= 1))

    workload = (f"{n_p} patients, {total} events over 7 days (60% readings, 35% activities, "
                f"5% links, 2% re-deliveries), batches of {args.batch}, 1 thread")
    results = {
        "kernel": merge_section("kernel", {
            "events_per_s": round(numba_eps),
            "events_per_s_cpu": round(total / numba_cpu),
            "grouped_events_per_s": round(total / g_wall),
            "grouped_events_per_s_cpu": round(total / g_cpu),
            "ceiling_events_per_s": round(total / ceiling_s),
            "fraction_of_ceiling": round(ceiling_s / numba_s, 3),
            "line_costs": costs,
            "reference_events_per_s": round(ref_eps),
            "ratio": round(ratio, 1),
            "reference_events": seen,
            "workload": workload + "; events_per_s: random patient order (headline), "
                        "grouped_*: same events with each batch sorted by patient; "
                        "ceiling_events_per_s: the same cache lines touched with no logic "
                        "(an upper bound on this machine, see bench_core.touch_lines); "
                        "line_costs: ns per event of random read-modify-writes of lines of a "
                        "320 MB table (bench_core.line_costs); "
                        f"best of {args.repeats} wall-clock runs (_cpu: thread CPU time)",
        }),
        "recompute_1m_ms": merge_section("recompute_1m_ms", {
            "ms": round(recompute_ms, 1), "median_ms": round(statistics.median(times), 1),
            "patients": n_p, "dimensions": len(DIMENSIONS),
            "what": "evaluate + partial_summary + equity_from_summary (HEAT x 4 indicators x "
                    "3 dimensions + individual measures of care minutes), best of 5",
        }),
        "bytes_per_patient": merge_section("bytes_per_patient", {
            "bytes": round(bpp, 1),
            "what": "allocated numpy state / patients, incl. hash-table slack; id maps excluded",
            "workload": workload,
        }),
    }
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
