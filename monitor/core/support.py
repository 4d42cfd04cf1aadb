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
def _pair_slot(keys: np.ndarray, key: np.uint64) -> tuple[int, bool]:  # pragma: no cover - jitted
    """Find or insert ``key`` in an open-addressing (linear probing) table; (index, inserted).

    The caller keeps the table at most 70 % full, so the probe always terminates.
    """
    mask = keys.shape[0] - 1
    i = np.int64(mix64(key) & np.uint64(mask))
    while True:
        k = keys[i]
        if k == key:
            return i, False
        if k == 0:
            keys[i] = key
            return i, True
        i = (i + 1) & mask


@kernel
def _dedup_admit(
    keys: np.ndarray, days: np.ndarray, h: np.uint64, day: np.int64
) -> bool:  # pragma: no cover - jitted
    """Insert event-id hash ``h`` seen on ``day`` (stored as ``day mod 256``); False if present.

    The caller keeps the table at most 70 % full, so the probe always terminates.
    """
    mask = keys.shape[0] - 1
    i = np.int64(mix64(h) & np.uint64(mask))
    while True:
        k = keys[i]
        if k == h:
            return False
        if k == 0:
            keys[i] = h
            days[i] = np.uint8(day & 255)
            return True
        i = (i + 1) & mask


@kernel
def _add_contact_day(
    p: np.int64, day: np.int64, last_day: np.ndarray, bits: np.ndarray
) -> None:  # pragma: no cover - jitted
    """Set ``day`` in patient ``p``'s 64-day contact bitmask (bit k = contact on ``last_day - k``)."""
    last = np.int64(last_day[p])
    if last == NO_DAY:
        last_day[p] = day
        bits[p] = _ONE
    elif day > last:
        shift = day - last
        if shift < 64:
            bits[p] = (bits[p] << np.uint64(shift)) | _ONE
        else:
            bits[p] = _ONE
        last_day[p] = day
    else:
        k = last - day
        if k < 64:
            bits[p] = bits[p] | (_ONE << np.uint64(k))


@kernel
def _ring_cell(p: np.int64, day: np.int64, ring_tag: np.ndarray, ring_ms: np.ndarray,
               ring_reads: np.ndarray) -> int:  # pragma: no cover - jitted
    """The ring cell of ``day`` for patient ``p`` (reset if it held an older day); -1 if stale."""
    c = np.int64(day & (ring_tag.shape[1] - 1))
    tag = np.int64(ring_tag[p, c])
    if tag != day:
        if tag != NO_DAY and tag > day:
            return -1
        ring_tag[p, c] = day
        ring_ms[p, c] = 0
        ring_reads[p, c] = 0
    return c


@kernel
def apply_activities(
    patient: np.ndarray, carer: np.ndarray, start_s: np.ndarray, minutes: np.ndarray,
    id_hash: np.ndarray, min_sum_day: np.int64,
    contact_last_day: np.ndarray, contact_bits: np.ndarray, last_contact_s: np.ndarray,
    ring_tag: np.ndarray, ring_ms: np.ndarray, ring_reads: np.ndarray,
    pair_keys: np.ndarray, pair_last_day: np.ndarray,
    dedup_keys: np.ndarray, dedup_days: np.ndarray,
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
    width = ring_tag.shape[1]
    pmask = np.uint64(pair_keys.shape[0] - 1)
    dmask = np.uint64(dedup_keys.shape[0] - 1)
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            fp = np.int64(patient[f])
            cell = fp * width + ((start_s[f] // SECONDS_PER_DAY) & (width - 1))
            _prefetch(contact_bits, fp)
            _prefetch(contact_last_day, fp)
            _prefetch(last_contact_s, fp)
            _prefetch(ring_tag, cell)
            _prefetch(ring_ms, cell)
            _prefetch(pair_keys, np.int64(mix64(pair_key(fp, np.int64(carer[f]))) & pmask))
            _prefetch(dedup_keys, np.int64(mix64(np.uint64(id_hash[f])) & dmask))
        p = np.int64(patient[i])
        t = np.int64(start_s[i])
        day = t // SECONDS_PER_DAY
        j, inserted = _pair_slot(pair_keys, pair_key(p, np.int64(carer[i])))
        if inserted:
            new_pairs += 1
        if pair_last_day[j] == NO_DAY or day > pair_last_day[j]:
            pair_last_day[j] = day
        _add_contact_day(p, day, contact_last_day, contact_bits)
        if t > last_contact_s[p]:
            last_contact_s[p] = t
        if day < min_sum_day:
            stale += 1
            continue
        if not _dedup_admit(dedup_keys, dedup_days, np.uint64(id_hash[i]), day):
            duplicates += 1
            continue
        new_dedup += 1
        c = _ring_cell(p, day, ring_tag, ring_ms, ring_reads)
        if c >= 0:
            ring_ms[p, c] += np.int64(np.rint(minutes[i] * MS_PER_MINUTE))
    return new_pairs, new_dedup, duplicates, stale


@kernel
def apply_links(
    patient: np.ndarray, carer: np.ndarray, t_s: np.ndarray, action: np.ndarray,
    pair_keys: np.ndarray, pair_link_t: np.ndarray, pair_link_action: np.ndarray,
) -> int:  # pragma: no cover - jitted
    """Apply care-link events (action +1 join, -1 leave); returns the number of new pairs.

    Per pair the latest event by ``effective_at`` wins; at equal ``effective_at`` a leave wins over
    a join (a total order, so the result does not depend on arrival order, and re-deliveries are
    no-ops).
    """
    new_pairs = 0
    n = patient.shape[0]
    pmask = np.uint64(pair_keys.shape[0] - 1)
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            k = mix64(pair_key(np.int64(patient[f]), np.int64(carer[f]))) & pmask
            _prefetch(pair_keys, np.int64(k))
            _prefetch(pair_link_t, np.int64(k))
        j, inserted = _pair_slot(pair_keys, pair_key(np.int64(patient[i]), np.int64(carer[i])))
        if inserted:
            new_pairs += 1
        t = np.int64(t_s[i])
        a = np.int8(action[i])
        cur_t = pair_link_t[j]
        if t > cur_t or (t == cur_t and a < pair_link_action[j]):
            pair_link_t[j] = t
            pair_link_action[j] = a
    return new_pairs


@kernel
def apply_readings(
    patient: np.ndarray, t_s: np.ndarray, id_hash: np.ndarray, min_sum_day: np.int64,
    last_reading_s: np.ndarray, ring_tag: np.ndarray, ring_ms: np.ndarray, ring_reads: np.ndarray,
    dedup_keys: np.ndarray, dedup_days: np.ndarray,
) -> tuple[int, int, int]:  # pragma: no cover - jitted
    """Apply self-monitoring readings; returns (new dedup entries, duplicates, stale).

    Same rules as :func:`apply_activities`: the last reading time is a max over every event, the
    daily count admits each reading id at most once and only from ``min_sum_day`` on.
    """
    new_dedup = 0
    duplicates = 0
    stale = 0
    n = patient.shape[0]
    width = ring_tag.shape[1]
    dmask = np.uint64(dedup_keys.shape[0] - 1)
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            fp = np.int64(patient[f])
            cell = fp * width + ((t_s[f] // SECONDS_PER_DAY) & (width - 1))
            _prefetch(last_reading_s, fp)
            _prefetch(ring_tag, cell)
            _prefetch(ring_reads, cell)
            _prefetch(dedup_keys, np.int64(mix64(np.uint64(id_hash[f])) & dmask))
        p = np.int64(patient[i])
        t = np.int64(t_s[i])
        if t > last_reading_s[p]:
            last_reading_s[p] = t
        day = t // SECONDS_PER_DAY
        if day < min_sum_day:
            stale += 1
            continue
        if not _dedup_admit(dedup_keys, dedup_days, np.uint64(id_hash[i]), day):
            duplicates += 1
            continue
        new_dedup += 1
        c = _ring_cell(p, day, ring_tag, ring_ms, ring_reads)
        if c >= 0:
            ring_reads[p, c] += 1
    return new_dedup, duplicates, stale


@kernel
def rehash_pairs(
    old_keys: np.ndarray, old_last_day: np.ndarray, old_link_t: np.ndarray, old_action: np.ndarray,
    keys: np.ndarray, last_day: np.ndarray, link_t: np.ndarray, action: np.ndarray,
) -> int:  # pragma: no cover - jitted
    """Re-insert every pair of an old table into a new (larger, empty) one; returns the count."""
    n = 0
    for i in range(old_keys.shape[0]):
        k = old_keys[i]
        if k != 0:
            j, _ = _pair_slot(keys, k)
            last_day[j] = old_last_day[i]
            link_t[j] = old_link_t[i]
            action[j] = old_action[i]
            n += 1
    return n


@kernel
def rehash_dedup(old_keys: np.ndarray, old_days: np.ndarray, watermark_day: np.int64,
                 keep_days: np.int64, keys: np.ndarray, days: np.ndarray) -> int:  # pragma: no cover
    """Copy the entries of the last ``keep_days`` days before ``watermark_day`` into a new empty
    table (purge + resize); returns the count. Day tags are ``day mod 256``: the caller guarantees
    every entry is less than 256 days older than ``watermark_day``."""
    n = 0
    for i in range(old_keys.shape[0]):
        k = old_keys[i]
        if k != 0:
            age = (watermark_day - np.int64(old_days[i])) & 255
            if age < keep_days:
                _dedup_admit(keys, days, k, watermark_day - age)
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
    lapse_days: np.int64,
    contact_last_day: np.ndarray, contact_bits: np.ndarray,
    ring_tag: np.ndarray, ring_ms: np.ndarray, ring_reads: np.ndarray,
    pair_keys: np.ndarray, pair_last_day: np.ndarray, pair_link_t: np.ndarray,
    pair_link_action: np.ndarray,
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
    for i in range(pair_keys.shape[0]):
        k = pair_keys[i]
        if k == 0:
            continue
        p = np.int64(k >> np.uint64(32)) - 1
        d = np.int64(pair_last_day[i])
        if d != NO_DAY and min_active_day <= d <= as_of_day:
            active[p] += 1
        if pair_link_action[i] == 1 and pair_link_t[i] // SECONDS_PER_DAY <= as_of_day:
            registered[p] += 1
    mask = ring_tag.shape[1] - 1
    for p in range(n):
        last = np.int64(contact_last_day[p])
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
                b = contact_bits[p]
                if keep < 64:
                    b = b & ((_ONE << np.uint64(keep)) - _ONE)
                n_days = _popcount(b)
        ms = np.int64(0)
        reads = np.int64(0)
        for j in range(coverage_days):
            day = as_of_day - j
            c = day & mask
            if ring_tag[p, c] == day:
                ms += ring_ms[p, c]
                reads += ring_reads[p, c]
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
