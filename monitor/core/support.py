"""Numba kernels of the per-patient support-coverage state (pure: arrays in, arrays out, no I/O).

Every kernel works on a whole batch (one call per batch, never one call per event). The arrays are
owned by :class:`monitor.core.state.SupportState`, which documents the layout; this module only
knows the conventions below.

Time
    Event times are ``int64`` seconds since the Unix epoch, UTC. A *day* is a UTC calendar day,
    ``day = t // 86400`` (floor division, so days before 1970 are negative). All windows have
    **day resolution**: "the last N days as of day D" is the days ``D - N + 1 .. D`` (``days_ago =
    D - day`` in ``0 .. N - 1``). An event on the as-of day always counts, whatever its time of day.
Durations
    Care minutes are converted once to integer **milliseconds** (``rint(minutes * 60000)``, half to
    even) so that every sum in the state is an exact integer sum, independent of event order and
    of how patients are split across workers.
Sentinels
    :data:`NO_DAY` (int32 min) marks "no day", :data:`NO_TIME` (int64 min) "no time"; a hash-table
    key of 0 marks an empty slot (event-id hashes are never 0).

Order independence
    Every update is commutative and idempotent, or guarded by the exact duplicate table:
    ``max`` (last contact, last reading, pair last-contact day), bit-or (contact-day bitmask),
    "latest wins" with a total order (care links), and integer sums whose terms are admitted at
    most once per event id. A day ring cell holds the sums of the *latest* day mapped to it; an
    older day mapped to the same cell is outside every window that can still be evaluated.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from monitor.core.jit import kernel

SECONDS_PER_DAY = 86_400
MS_PER_MINUTE = 60_000
NO_DAY = np.int32(np.iinfo(np.int32).min)
NO_TIME = np.int64(np.iinfo(np.int64).min)

FLAG_NO_SUPPORT_NETWORK = np.uint8(1)
FLAG_SUPPORT_LAPSED = np.uint8(2)
FLAG_SINGLE_CARER = np.uint8(4)

#: Columns of the per-group integer sums returned by :func:`group_sums`.
GROUP_COLUMNS: tuple[str, ...] = (
    "patients",
    "covered",
    "no_support_network",
    "support_lapsed",
    "single_carer",
    "care_ms_7d",
    "readings_received_7d",
    "readings_received_capped_micro",
    "readings_expected_micro",
)

_ONE = np.uint64(1)

#: Hot per-patient fields touched by every event of the patient (one 32-byte record, two per
#: cache line): the 64-day contact bitmask and its last day, the last contact and reading times.
HOT_DTYPE = np.dtype([
    ("contact_bits", "<u8"), ("last_contact_s", "<i8"), ("last_reading_s", "<i8"),
    ("contact_last_day", "<i4"), ("_pad", "<i4"),
])
#: One day cell of a patient's ring (16 bytes; a ring of 8 cells is two aligned cache lines).
CELL_DTYPE = np.dtype([("tag", "<i4"), ("reads", "<i4"), ("ms", "<i8")])
#: One slot of the (patient, carer) pair table (32 bytes, two per cache line; key 0 = empty).
PAIR_DTYPE = np.dtype([
    ("key", "<u8"), ("link_t", "<i8"), ("last_day", "<i4"), ("action", "i1"), ("_pad1", "i1"),
    ("_pad2", "<i2"), ("_pad3", "<i8"),
])
DEDUP_WAYS = 7
"""Keys per duplicate-table bucket: a bucket is one 64-byte line of 8 ``uint64`` words, words
0..6 the event-id hashes (0 = empty, filled in order), word 7 their ``day mod 256`` tags (byte k
= tag of key k). Probing is linear over buckets (any bucket count, see :func:`_dedup_bucket`),
so a lookup touches one line almost always."""

PREFETCH_DISTANCE = 16
"""Events ahead whose state is prefetched: the kernels are bound by random memory access (one
patient, pair and duplicate-table line per event), and event order within a batch does not
matter, so the misses of later events are overlapped with the work on the current one."""


if numba.config.DISABLE_JIT:  # pragma: no cover - plain-Python debugging mode

    def _prefetch(arr: np.ndarray, index: int) -> None:
        """No-op without the JIT."""

else:

    @intrinsic
    def _prefetch(typingctx: Any, arr: Any, index: Any) -> Any:  # pragma: no cover - codegen
        """``llvm.prefetch`` (read, high locality) of ``arr.flat[index]``; no bounds check, and a
        prefetch never faults, but callers pass valid indices anyway."""
        sig = types.void(arr, index)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = builder.gep(ary.data, [args[1]])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen


@kernel
def mix64(x: np.uint64) -> np.uint64:  # pragma: no cover - jitted
    """splitmix64 finaliser: a well-mixed 64-bit hash of a 64-bit key (probe start)."""
    z = np.uint64(x)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@kernel
def pair_key(patient: np.int64, carer: np.int64) -> np.uint64:  # pragma: no cover - jitted
    """The non-zero 64-bit key of a (patient slot, carer slot) pair: ``(patient + 1) << 32 | carer``."""
    return (np.uint64(patient + 1) << np.uint64(32)) | np.uint64(carer)


@kernel
def _pair_slot(pairs: np.ndarray, key: np.uint64) -> tuple[int, bool]:  # pragma: no cover - jitted
    """Find or insert ``key`` in the open-addressing (linear probing) pair table; (index, inserted).

    The caller keeps the table at most 70 % full, so the probe always terminates.
    """
    mask = pairs.shape[0] - 1
    i = np.int64(mix64(key) & np.uint64(mask))
    while True:
        k = pairs[i].key
        if k == key:
            return i, False
        if k == 0:
            pairs[i].key = key
            return i, True
        i = (i + 1) & mask


@kernel
def _dedup_bucket(dedup: np.ndarray, h: np.uint64) -> int:  # pragma: no cover - jitted
    """The home bucket of event-id hash ``h``: the high 32 bits of its mix scaled to the bucket
    count (multiply-shift, so the table need not be a power of two)."""
    return np.int64(((mix64(h) >> np.uint64(32)) * np.uint64(dedup.shape[0])) >> np.uint64(32))


@kernel
def _dedup_admit(dedup: np.ndarray, h: np.uint64, day: np.int64) -> bool:  # pragma: no cover
    """Insert event-id hash ``h`` seen on ``day`` (tag ``day mod 256``); False if present.

    Buckets fill their key words in order and entries are never deleted one by one (a purge
    rebuilds the table), so the first empty word ends the search. The caller keeps the table at
    most 70 % full, so the probe always terminates.
    """
    n_buckets = dedup.shape[0]
    b = _dedup_bucket(dedup, h)
    while True:
        for s in range(DEDUP_WAYS):
            k = dedup[b, s]
            if k == h:
                return False
            if k == 0:
                dedup[b, s] = h
                shift = np.uint64(8 * s)
                tags = dedup[b, DEDUP_WAYS] & ~(np.uint64(255) << shift)
                dedup[b, DEDUP_WAYS] = tags | (np.uint64(day & 255) << shift)
                return True
        b += 1
        if b == n_buckets:
            b = 0


@kernel
def _add_contact_day(rec: Any, day: np.int64) -> None:  # pragma: no cover - jitted
    """Set ``day`` in a hot record's 64-day contact bitmask (bit k = contact on ``last day - k``)."""
    last = np.int64(rec.contact_last_day)
    if last == NO_DAY:
        rec.contact_last_day = day
        rec.contact_bits = _ONE
    elif day > last:
        shift = day - last
        if shift < 64:
            rec.contact_bits = (rec.contact_bits << np.uint64(shift)) | _ONE
        else:
            rec.contact_bits = _ONE
        rec.contact_last_day = day
    else:
        k = last - day
        if k < 64:
            rec.contact_bits = rec.contact_bits | (_ONE << np.uint64(k))


@kernel
def _ring_cell(ring: np.ndarray, p: np.int64, day: np.int64) -> int:  # pragma: no cover - jitted
    """The ring cell of ``day`` for patient ``p`` (reset if it held an older day); -1 if stale."""
    c = np.int64(day & (ring.shape[1] - 1))
    cell = ring[p, c]
    tag = np.int64(cell.tag)
    if tag != day:
        if tag != NO_DAY and tag > day:
            return -1
        cell.tag = day
        cell.ms = 0
        cell.reads = 0
    return c


@kernel
def apply_activities(
    patient: np.ndarray, carer: np.ndarray, start_s: np.ndarray, minutes: np.ndarray,
    id_hash: np.ndarray, min_sum_day: np.int64,
    hot: np.ndarray, ring: np.ndarray, pairs: np.ndarray, dedup: np.ndarray,
) -> tuple[int, int, int, int]:  # pragma: no cover - jitted
    """Apply a batch of carer activities; returns (new pairs, new dedup entries, duplicates, stale).

    Idempotent parts (pair last-contact day, contact bitmask, last contact time) are applied to
    every event. Care minutes are added only for events on a day ``>= min_sum_day`` (the oldest
    day any future evaluation can still sum) whose id hash is new to the duplicate table;
    ``duplicates`` counts re-deliveries found there, ``stale`` events older than ``min_sum_day``
    (their minutes can no longer appear in any window).
    """
    new_pairs = 0
    new_dedup = 0
    duplicates = 0
    stale = 0
    n = patient.shape[0]
    width = ring.shape[1]
    pmask = np.uint64(pairs.shape[0] - 1)
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            fp = np.int64(patient[f])
            _prefetch(hot, fp)
            _prefetch(ring, fp * width + ((start_s[f] // SECONDS_PER_DAY) & (width - 1)))
            _prefetch(pairs, np.int64(mix64(pair_key(fp, np.int64(carer[f]))) & pmask))
            _prefetch(dedup, _dedup_bucket(dedup, np.uint64(id_hash[f])) * (DEDUP_WAYS + 1))
        p = np.int64(patient[i])
        t = np.int64(start_s[i])
        day = t // SECONDS_PER_DAY
        j, inserted = _pair_slot(pairs, pair_key(p, np.int64(carer[i])))
        if inserted:
            new_pairs += 1
        pr = pairs[j]
        if pr.last_day == NO_DAY or day > pr.last_day:
            pr.last_day = day
        rec = hot[p]
        _add_contact_day(rec, day)
        if t > rec.last_contact_s:
            rec.last_contact_s = t
        if day < min_sum_day:
            stale += 1
            continue
        if not _dedup_admit(dedup, np.uint64(id_hash[i]), day):
            duplicates += 1
            continue
        new_dedup += 1
        c = _ring_cell(ring, p, day)
        if c >= 0:
            ring[p, c].ms += np.int64(np.rint(minutes[i] * MS_PER_MINUTE))
    return new_pairs, new_dedup, duplicates, stale


@kernel
def apply_links(
    patient: np.ndarray, carer: np.ndarray, t_s: np.ndarray, action: np.ndarray,
    pairs: np.ndarray,
) -> int:  # pragma: no cover - jitted
    """Apply care-link events (action +1 join, -1 leave); returns the number of new pairs.

    Per pair the latest event by ``effective_at`` wins; at equal ``effective_at`` a leave wins over
    a join (a total order, so the result does not depend on arrival order, and re-deliveries are
    no-ops).
    """
    new_pairs = 0
    n = patient.shape[0]
    pmask = np.uint64(pairs.shape[0] - 1)
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            k = mix64(pair_key(np.int64(patient[f]), np.int64(carer[f]))) & pmask
            _prefetch(pairs, np.int64(k))
        j, inserted = _pair_slot(pairs, pair_key(np.int64(patient[i]), np.int64(carer[i])))
        if inserted:
            new_pairs += 1
        t = np.int64(t_s[i])
        a = np.int8(action[i])
        pr = pairs[j]
        cur_t = pr.link_t
        if t > cur_t or (t == cur_t and a < pr.action):
            pr.link_t = t
            pr.action = a
    return new_pairs


@kernel
def apply_readings(
    patient: np.ndarray, t_s: np.ndarray, id_hash: np.ndarray, min_sum_day: np.int64,
    hot: np.ndarray, ring: np.ndarray, dedup: np.ndarray,
) -> tuple[int, int, int]:  # pragma: no cover - jitted
    """Apply self-monitoring readings; returns (new dedup entries, duplicates, stale).

    Same rules as :func:`apply_activities`: the last reading time is a max over every event, the
    daily count admits each reading id at most once and only from ``min_sum_day`` on.
    """
    new_dedup = 0
    duplicates = 0
    stale = 0
    n = patient.shape[0]
    width = ring.shape[1]
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            fp = np.int64(patient[f])
            _prefetch(hot, fp)
            _prefetch(ring, fp * width + ((t_s[f] // SECONDS_PER_DAY) & (width - 1)))
            _prefetch(dedup, _dedup_bucket(dedup, np.uint64(id_hash[f])) * (DEDUP_WAYS + 1))
        p = np.int64(patient[i])
        t = np.int64(t_s[i])
        rec = hot[p]
        if t > rec.last_reading_s:
            rec.last_reading_s = t
        day = t // SECONDS_PER_DAY
        if day < min_sum_day:
            stale += 1
            continue
        if not _dedup_admit(dedup, np.uint64(id_hash[i]), day):
            duplicates += 1
            continue
        new_dedup += 1
        c = _ring_cell(ring, p, day)
        if c >= 0:
            ring[p, c].reads += 1
    return new_dedup, duplicates, stale


@kernel
def rehash_pairs(old: np.ndarray, new: np.ndarray) -> int:  # pragma: no cover - jitted
    """Re-insert every pair of an old table into a new (larger, empty) one; returns the count."""
    n = 0
    for i in range(old.shape[0]):
        k = old[i].key
        if k != 0:
            j, _ = _pair_slot(new, k)
            new[j].last_day = old[i].last_day
            new[j].link_t = old[i].link_t
            new[j].action = old[i].action
            n += 1
    return n


@kernel
def rehash_dedup(old: np.ndarray, watermark_day: np.int64, keep_days: np.int64,
                 new: np.ndarray) -> int:  # pragma: no cover - jitted
    """Copy the entries of the last ``keep_days`` days before ``watermark_day`` into a new empty
    table (purge + resize); returns the count. Day tags are ``day mod 256``: the caller guarantees
    every entry is less than 256 days older than ``watermark_day``."""
    n = 0
    for b in range(old.shape[0]):
        tags = old[b, DEDUP_WAYS]
        for s in range(DEDUP_WAYS):
            k = old[b, s]
            if k == 0:
                break
            tag = np.int64((tags >> np.uint64(8 * s)) & np.uint64(255))
            age = (watermark_day - tag) & 255
            if age < keep_days:
                _dedup_admit(new, k, watermark_day - age)
                n += 1
    return n


@kernel
def _popcount(x: np.uint64) -> int:  # pragma: no cover - jitted
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@kernel
def evaluate(
    n: np.int64, as_of_day: np.int64, coverage_days: np.int64, active_days: np.int64,
    lapse_days: np.int64, hot: np.ndarray, ring: np.ndarray, pairs: np.ndarray,
    active: np.ndarray, registered: np.ndarray, care_ms: np.ndarray, contact_days: np.ndarray,
    readings: np.ndarray, flags: np.ndarray, covered: np.ndarray,
) -> None:  # pragma: no cover - jitted
    """Per-patient metrics and flags of patients ``0 .. n-1`` as of UTC day ``as_of_day``.

    Requires ``as_of_day`` >= the day of every event applied (the caller checks the watermark).
    Output arrays (length >= n) are overwritten:

    * ``active``: carers with an activity in the last ``active_days`` days;
    * ``registered``: carers whose latest care link (effective day <= as_of_day) is a join;
    * ``care_ms``, ``readings``: care milliseconds / readings received in the last
      ``coverage_days`` days; ``contact_days``: distinct UTC days with a carer contact there;
    * ``covered``: at least one carer contact in the last ``coverage_days`` days;
    * ``flags``: bit-or of FLAG_NO_SUPPORT_NETWORK (no registered and no active carer),
      FLAG_SUPPORT_LAPSED (registered carer or any contact ever, but no contact in the last
      ``lapse_days`` days), FLAG_SINGLE_CARER (exactly one active carer).
    """
    active[:n] = 0
    registered[:n] = 0
    min_active_day = as_of_day - active_days + 1
    for i in range(pairs.shape[0]):
        pr = pairs[i]
        k = pr.key
        if k == 0:
            continue
        p = np.int64(k >> np.uint64(32)) - 1
        d = np.int64(pr.last_day)
        if d != NO_DAY and min_active_day <= d <= as_of_day:
            active[p] += 1
        if pr.action == 1 and pr.link_t // SECONDS_PER_DAY <= as_of_day:
            registered[p] += 1
    width = ring.shape[1]
    lo = as_of_day - coverage_days + 1
    for p in range(n):
        rec = hot[p]
        last = np.int64(rec.contact_last_day)
        ever = last != NO_DAY
        n_days = 0
        recent = False
        is_covered = False
        if ever:
            off = as_of_day - last  # days_ago of bit 0
            if off < lapse_days:
                recent = True
            if off < coverage_days:
                is_covered = True
                keep = coverage_days - off  # bits 0 .. keep-1 lie inside the coverage window
                b = rec.contact_bits
                if keep < 64:
                    b = b & ((_ONE << np.uint64(keep)) - _ONE)
                n_days = _popcount(b)
        ms = np.int64(0)
        reads = np.int64(0)
        # every day of the window maps to its own cell (width >= coverage_days), and a cell
        # holds the latest day mapped to it, so a cell is in the window iff its tag is
        for c in range(width):
            cell = ring[p, c]
            tag = np.int64(cell.tag)
            if lo <= tag <= as_of_day:
                ms += cell.ms
                reads += cell.reads
        care_ms[p] = ms
        readings[p] = reads
        contact_days[p] = n_days
        covered[p] = is_covered
        f = np.uint8(0)
        if registered[p] == 0 and active[p] == 0:
            f |= FLAG_NO_SUPPORT_NETWORK
        if (registered[p] > 0 or ever) and not recent:
            f |= FLAG_SUPPORT_LAPSED
        if active[p] == 1:
            f |= FLAG_SINGLE_CARER
        flags[p] = f


@kernel
def group_sums(
    codes: np.ndarray, n_groups: np.int64, flags: np.ndarray, covered: np.ndarray,
    care_ms: np.ndarray, readings: np.ndarray, expected_micro: np.ndarray,
) -> np.ndarray:  # pragma: no cover - jitted
    """Integer sums per group code (columns :data:`GROUP_COLUMNS`); code -1 goes to the last row.

    ``expected_micro`` is a patient's expected readings in the coverage window in micro-readings;
    the capped count ``min(readings * 10**6, expected_micro)`` keeps a patient who measures more
    often than planned from hiding another's gap.
    """
    out = np.zeros((n_groups + 1, 9), dtype=np.int64)
    for p in range(codes.shape[0]):
        g = np.int64(codes[p])
        if g < 0:
            g = n_groups
        f = flags[p]
        out[g, 0] += 1
        if covered[p]:
            out[g, 1] += 1
        if f & FLAG_NO_SUPPORT_NETWORK:
            out[g, 2] += 1
        if f & FLAG_SUPPORT_LAPSED:
            out[g, 3] += 1
        if f & FLAG_SINGLE_CARER:
            out[g, 4] += 1
        out[g, 5] += care_ms[p]
        r = np.int64(readings[p])
        out[g, 6] += r
        e = np.int64(expected_micro[p])
        rc = r * 1_000_000
        out[g, 7] += rc if rc < e else e
        out[g, 8] += e
    return out


@kernel
def group_sums3(
    codes0: np.ndarray, codes1: np.ndarray, codes2: np.ndarray, n_groups: np.ndarray,
    flags: np.ndarray, covered: np.ndarray, care_ms: np.ndarray, readings: np.ndarray,
    expected_micro: np.ndarray,
) -> np.ndarray:  # pragma: no cover - jitted
    """:func:`group_sums` of up to three dimensions in one pass over the patients.

    ``n_groups[d]`` is the group count of dimension d (``codes{d}`` is ignored when d >=
    ``len(n_groups)``); returns an array (dims, max groups + 1, 9): row ``n_groups[d]`` of
    dimension d holds code -1 (the other rows past it stay zero).
    """
    n_dims = n_groups.shape[0]
    width = 0
    for d in range(n_dims):
        width = max(width, np.int64(n_groups[d]))
    out = np.zeros((n_dims, width + 1, 9), dtype=np.int64)
    for p in range(flags.shape[0]):
        f = flags[p]
        cov = np.int64(1) if covered[p] else np.int64(0)
        nsn = np.int64(1) if f & FLAG_NO_SUPPORT_NETWORK else np.int64(0)
        lap = np.int64(1) if f & FLAG_SUPPORT_LAPSED else np.int64(0)
        sgl = np.int64(1) if f & FLAG_SINGLE_CARER else np.int64(0)
        ms = np.int64(care_ms[p])
        r = np.int64(readings[p])
        e = np.int64(expected_micro[p])
        rc = r * 1_000_000
        capped = rc if rc < e else e
        for d in range(n_dims):
            if d == 0:
                g = np.int64(codes0[p])
            elif d == 1:
                g = np.int64(codes1[p])
            else:
                g = np.int64(codes2[p])
            if g < 0:
                g = np.int64(n_groups[d])
            row = out[d, g]
            row[0] += 1
            row[1] += cov
            row[2] += nsn
            row[3] += lap
            row[4] += sgl
            row[5] += ms
            row[6] += r
            row[7] += capped
            row[8] += e
    return out
