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
    key of 0 marks an empty slot (event keys, :func:`dedup_key`, are never 0).

Order independence
    Every update is commutative and idempotent, or guarded by the exact duplicate table:
    ``max`` (last contact, last reading, pair last-contact day), bit-or (contact-day bits),
    "latest wins" with a total order (care links), and integer sums whose terms are admitted at
    most once per (patient, kind, event id). A day ring holds the ``coverage_days`` days up to
    its head (the day of the last contact / reading); a day that leaves the ring when the head
    advances is outside every window that can still be evaluated (an admitted event is on a day
    >= watermark day - coverage_days + 1, and a head is never after the watermark day).
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
from monitor.core.timeutil import MS_PER_MINUTE, SECONDS_PER_DAY

NO_DAY = np.int32(np.iinfo(np.int32).min)
NO_TIME = np.int64(np.iinfo(np.int64).min)

FLAG_NO_SUPPORT_NETWORK = np.uint8(1)
FLAG_SUPPORT_LAPSED = np.uint8(2)
FLAG_SINGLE_CARER = np.uint8(4)

#: Columns of the per-group integer sums returned by :func:`group_sums3`.
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

_M32 = np.uint64(0xFFFFFFFF)

#: One slot of the (patient, carer) activity-pair table: the day of the pair's last activity
#: (16 bytes, four per cache line; key 0 = empty, see :func:`pair_key`).
PAIR_DTYPE = np.dtype([("key", "<u8"), ("last_day", "<i4"), ("_pad", "<i4")])
#: One slot of the (patient, carer) care-link table: the pair's latest care link, encoded as
#: ``2 * effective_at + (1 if leave else 0)`` so that one integer max orders links by time and,
#: at the same instant, a leave after a join (``NO_TIME`` = none; 16 bytes, key 0 = empty).
LINK_DTYPE = np.dtype([("key", "<u8"), ("link", "<i8")])
PAIR_WAYS = 4
"""Slots per bucket of the pair and link tables (one 64-byte line): a probe scans the home
bucket's slots, then the next buckets (linear probing over buckets), so a lookup touches one
line almost always."""
LINK_T_LIMIT = 1 << 62
"""Care-link times must lie strictly inside ``(-LINK_T_LIMIT, LINK_T_LIMIT)`` (the encoding)."""

LINE_BYTES = 64
HI_MS = np.uint8(1)
HI_READS = np.uint8(2)

LAST_CONTACT = 0
"""int64 word of the record holding the last contact time (``NO_TIME`` if none)."""
LAST_READING = 1
"""int64 word of the record holding the last reading time (``NO_TIME`` if none)."""
_MS_BYTE = 16
"""First byte of the care-ms ring: right after the two int64 times (2 x 8 bytes)."""


@kernel
def record_offsets(coverage_days: np.int64) -> tuple[int, int, int, int, int]:  # pragma: no cover
    """The record layout for a coverage window of ``coverage_days`` days, the one table every
    kernel and :func:`record_layout` derive their offsets from: byte offsets ``(ms, reads, bits,
    flags, bytes)`` - the care-ms ring (uint32 cells), the readings ring (uint16 cells), the
    contact-day bits, the flag byte, and the record size rounded up to whole 64-byte lines."""
    ms = _MS_BYTE
    reads = ms + 4 * coverage_days
    bits = reads + 2 * coverage_days
    flags = bits + (coverage_days + 7) // 8
    size = -(-(flags + 1) // LINE_BYTES) * LINE_BYTES
    return ms, reads, bits, flags, size


@kernel
def _cells(coverage_days: np.int64) -> tuple[int, int, int, int]:  # pragma: no cover - jitted
    """:func:`record_offsets` as element indices of the kernels' views: (first care-ms cell in
    the uint32 view, first readings cell in the uint16 view, contact-bits byte, flag byte)."""
    ms, reads, bits, flags, _ = record_offsets(coverage_days)
    return ms // 4, reads // 2, bits, flags


def record_layout(coverage_days: int) -> dict[str, int]:
    """Byte layout of the per-patient record for a coverage window of ``coverage_days`` days.

    One record (64 bytes, one cache line, for ``coverage_days`` <= 7: 16 + 7 x 4 + 7 x 2 + 1 + 1
    = 60 bytes) holds everything an activity or a reading of the patient touches, so an event
    touches one patient line:

    * ``last_contact_s`` (int64, word :data:`LAST_CONTACT`) and ``last_reading_s`` (int64, word
      :data:`LAST_READING`), ``NO_TIME`` if none. Their days are the *heads* of two day rings;
    * ``ms``: the care-ms ring, ``coverage_days`` uint32 cells (low 32 bits of a day's care ms);
    * ``reads``: the readings ring, ``coverage_days`` uint16 cells (low 16 bits of a day's count);
    * ``bits``: the contact-day bits, bit ``c`` = a carer contact on the day of cell ``c``;
    * ``flags``: a byte, :data:`HI_MS` / :data:`HI_READS` = the high parts (in the ``hi`` array,
      an overflow that practically never happens) may be non-zero;
    * ``bytes``: the record size, whole 64-byte lines.

    Ring cell ``c`` of a ring with head day ``H`` holds day ``H - ((H - c) mod coverage_days)``,
    the unique day of ``H - coverage_days + 1 .. H`` congruent to ``c``: when the head advances,
    the cells of the new days are cleared, so no per-cell day tag is needed. The head of the care
    ring is the day of the last contact (the day of the largest contact time is the largest
    contact day), that of the readings ring the day of the last reading.
    """
    values = record_offsets(np.int64(coverage_days))
    return dict(zip(("ms", "reads", "bits", "flags", "bytes"), map(int, values), strict=True))


DEDUP_WAYS = 7
"""Keys per duplicate-table bucket: a bucket is one 64-byte line of 8 ``uint64`` words, words
0..6 the event keys (:func:`dedup_key`; 0 = empty, filled in order), word 7 their ``day mod 256`` tags (byte k
= tag of key k). Probing is linear over buckets (any bucket count, see :func:`_dedup_bucket`),
so a lookup touches one line almost always."""

PREFETCH_DISTANCE = 32
"""Events ahead whose state is prefetched: the kernels are bound by random memory access (one
patient record, pair and duplicate-table line per event), and event order within a batch does
not matter, so the misses of later events are overlapped with the work on the current one."""


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


DEDUP_ACTIVITY = 0x100
"""The kind field of an activity's duplicate-table tag (bit 8): above every reading kind byte
(``kind & 0xFF``, 0..255), so an activity and a reading never share a tag."""


@kernel
def dedup_key(id_hash: np.uint64, patient: np.int64, kind: np.int64) -> np.uint64:  # pragma: no cover
    """The duplicate-table key of an event: its id hash bound to its patient slot and kind.

    A duplicate is the same (patient, kind, id): a reading is ``(patient, reading kind code,
    id_hash("r", reading_id))``, a carer activity ``(patient, DEDUP_ACTIVITY, id_hash("a",
    activity_id))`` - an activity id is unique per patient, a reading id per patient and kind.
    The key is ``id_hash ^ mix64(tag)`` with the injective tag ``(patient + 1) << 9 | kind``
    (``kind`` = :data:`DEDUP_ACTIVITY` or a reading kind code ``& 0xFF``; slots < 2**31, so the
    tag fits in 41 bits); a key 0 (the empty slot) becomes 1.

    The patient *slot* (not a hash of its id) is safe here: the table lives and is snapshotted
    with the slot map of its :class:`~monitor.core.state.SupportState` (slots are append-only
    and restored as they were; a rebuild from input builds a new table with its own slots), as
    the pair and link tables keyed by slots already require. It costs no memory access: one
    splitmix64 of the tag, a few ns, next to the ~20 ns cache misses the kernels wait for.

    Collisions: the same id for two different (patient, kind) never collides (``mix64`` is a
    bijection, so different tags give different keys; the 0 -> 1 remap aside, probability
    2**-64). Two different ids collide with probability 2**-64 per pair (BLAKE2b-64 of distinct
    strings modelled as independent uniform values), whatever their tags. With ``n`` events
    (activities and readings together) in one duplicate window (``coverage_days`` days), the
    birthday bound gives ``P(any false duplicate) ~= n**2 / 2**65``: for n = 20 million,
    4e14 / 3.7e19 ~= 1.1e-5 per window (~1.1e-12 for any one event, n / 2**64); a false
    duplicate drops that one event from the sums.
    """
    tag = (np.uint64(patient + 1) << np.uint64(9)) | (np.uint64(kind) & np.uint64(0x1FF))
    k = np.uint64(id_hash) ^ mix64(tag)
    return k if k != np.uint64(0) else np.uint64(1)


@kernel
def _pair_slot(table: np.ndarray, i: np.int64, key: np.uint64) -> tuple[int, bool]:  # pragma: no cover
    """Find or insert ``key`` in a pair or link table (buckets of :data:`PAIR_WAYS` slots, a
    power-of-two slot count, linear probing over buckets) from its home slot ``i`` (see
    :func:`_pair_home`); (slot index, inserted).

    Slots of a bucket fill in order and are never deleted, so the first empty slot ends the
    search. The caller keeps the table at most 70 % full, so the probe always terminates.
    """
    mask = table.shape[0] - 1
    while True:
        for s in range(PAIR_WAYS):
            k = table[i + s].key
            if k == key:
                return i + s, False
            if k == 0:
                table[i + s].key = key
                return i + s, True
        i = (i + PAIR_WAYS) & mask


@kernel
def _pair_home(table: np.ndarray, key: np.uint64) -> int:  # pragma: no cover - jitted
    """The first slot of ``key``'s home bucket."""
    return np.int64(mix64(key) & np.uint64(table.shape[0] - 1)) & ~(PAIR_WAYS - 1)


@kernel
def _dedup_bucket(dedup: np.ndarray, h: np.uint64) -> int:  # pragma: no cover - jitted
    """The home bucket of event key ``h`` (:func:`dedup_key`): the high 32 bits of its mix scaled
    to the bucket
    count (multiply-shift, so the table need not be a power of two)."""
    return np.int64(((mix64(h) >> np.uint64(32)) * np.uint64(dedup.shape[0])) >> np.uint64(32))


@kernel
def _dedup_insert(dedup: np.ndarray, b: np.int64, h: np.uint64, day: np.int64
                  ) -> bool:  # pragma: no cover - jitted
    """Insert event key ``h`` (:func:`dedup_key`) seen on ``day`` (tag ``day mod 256``) from its home bucket
    ``b`` (see :func:`_dedup_bucket`); False if present.

    Buckets fill their key words in order and entries are never deleted one by one (a purge
    rebuilds the table), so the first empty word ends the search. The caller keeps the table at
    most 70 % full, so the probe always terminates.
    """
    n_buckets = dedup.shape[0]
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
def _dedup_admit(dedup: np.ndarray, h: np.uint64, day: np.int64) -> bool:  # pragma: no cover
    """:func:`_dedup_insert` of ``h`` from its home bucket."""
    return _dedup_insert(dedup, _dedup_bucket(dedup, h), h, day)


BATCH_ERRORS: tuple[str, ...] = (
    "", "activity_patient", "link_patient", "reading_patient", "activity_carer", "link_carer",
    "activity_minutes", "link_action", "activity_id_hash", "reading_id_hash", "link_t",
)
"""Error codes of :func:`scan_batch`: the index of the first invalid column (0 = valid)."""


@kernel
def _slots_ok(slots: np.ndarray, n: np.int64) -> bool:  # pragma: no cover - jitted
    ok = True
    for i in range(slots.shape[0]):
        s = np.int64(slots[i])
        ok &= (s >= 0) & (s < n)
    return ok


@kernel
def _no_zero(h: np.ndarray) -> bool:  # pragma: no cover - jitted
    ok = True
    for i in range(h.shape[0]):
        ok &= h[i] != 0
    return ok


@kernel
def _t_max(t: np.ndarray, acc: np.int64) -> np.int64:  # pragma: no cover - jitted
    for i in range(t.shape[0]):
        acc = max(acc, np.int64(t[i]))
    return acc


@kernel
def scan_batch(
    activity_patient: np.ndarray, activity_carer: np.ndarray, activity_start_s: np.ndarray,
    activity_minutes: np.ndarray, activity_id_hash: np.ndarray, link_patient: np.ndarray,
    link_carer: np.ndarray, link_t: np.ndarray, link_action: np.ndarray,
    reading_patient: np.ndarray, reading_t: np.ndarray, reading_id_hash: np.ndarray,
    n_patients: np.int64, n_carers: np.int64,
) -> tuple[int, int]:  # pragma: no cover - jitted
    """Validate the value ranges of a batch in one pass per column; (error code, latest time).

    The error code indexes :data:`BATCH_ERRORS` (the first invalid column in that order, 0 if
    all are valid): slots outside ``0 .. n - 1``, minutes not in (0, 1440] (NaN included), an
    action other than +1 / -1, an id hash 0, a link time outside ``+-LINK_T_LIMIT``. The latest
    time is ``NO_TIME`` for no event.
    """
    if not _slots_ok(activity_patient, n_patients):
        return 1, NO_TIME
    if not _slots_ok(link_patient, n_patients):
        return 2, NO_TIME
    if not _slots_ok(reading_patient, n_patients):
        return 3, NO_TIME
    if not _slots_ok(activity_carer, n_carers):
        return 4, NO_TIME
    if not _slots_ok(link_carer, n_carers):
        return 5, NO_TIME
    ok = True
    for i in range(activity_minutes.shape[0]):
        m = activity_minutes[i]
        ok &= (m > 0.0) & (m <= 1440.0)
    if not ok:
        return 6, NO_TIME
    for i in range(link_action.shape[0]):
        a = link_action[i]
        ok &= (a == 1) | (a == -1)
    if not ok:
        return 7, NO_TIME
    if not _no_zero(activity_id_hash):
        return 8, NO_TIME
    if not _no_zero(reading_id_hash):
        return 9, NO_TIME
    for i in range(link_t.shape[0]):
        lt = link_t[i]
        ok &= (lt > -LINK_T_LIMIT) & (lt < LINK_T_LIMIT)
    if not ok:
        return 10, NO_TIME
    t = _t_max(activity_start_s, NO_TIME)
    t = _t_max(link_t, t)
    return 0, _t_max(reading_t, t)


@kernel
def _mod_magic(cov: np.int64) -> tuple[int, int]:  # pragma: no cover - jitted
    """(m, s) with ``d // cov == (d * m) >> s`` for every ``0 <= d < 2**30`` (``cov`` >= 1): the
    round-up reciprocal ``m = ceil(2**s / cov)``, ``s = 30 + ceil(log2(cov))`` (then ``m * cov -
    2**s < cov <= 2**(s - 30)``, the exactness condition, and ``d * m < 2**61``)."""
    lg = 0
    while (np.int64(1) << lg) < cov:
        lg += 1
    s = 30 + lg
    return ((np.int64(1) << s) + cov - 1) // cov, s


@kernel
def _ring_cell(day: np.int64, cov: np.int64, m: np.int64, s: np.int64) -> int:  # pragma: no cover
    """``day mod cov`` (floor modulo) by the reciprocal ``(m, s)`` of :func:`_mod_magic` for the
    days ``0 .. 2**30 - 1`` (years 1970 to 2.9 million), by a division otherwise."""
    if np.uint64(day) < np.uint64(1 << 30):
        return day - ((day * m) >> s) * cov
    return day % cov


@kernel
def _ring_head(r64: np.ndarray, p: np.int64, word: np.int64, t: np.int64,
               day: np.int64) -> int:  # pragma: no cover - jitted
    """Raise patient ``p``'s last time in record word ``word`` (:data:`LAST_CONTACT` or
    :data:`LAST_READING`) to ``t`` (a max: idempotent, order independent) and return the ring's
    head day before this event (``day`` for a ring without any event yet, so nothing is cleared).
    The caller clears the cells of the days after that head up to ``day`` (:func:`_clear_cells`)."""
    last = r64[p, word]
    if last == NO_TIME:
        r64[p, word] = t
        return day
    if t > last:
        r64[p, word] = t
    return last // SECONDS_PER_DAY


@kernel
def _clear_cells(cells: np.ndarray, first: np.int64, r8: np.ndarray, bits: np.int64,
                 flags: np.int64, hi_flag: np.uint8, hi: np.ndarray, hi_first: np.int64,
                 p: np.int64, old_head: np.int64, day: np.int64, c: np.int64,
                 cov: np.int64) -> None:  # pragma: no cover - jitted
    """Advance a ring of patient ``p`` from head ``old_head`` to ``day`` (in cell ``c``): clear
    the cells of the days ``old_head + 1 .. day`` (at most ``cov``), i.e. cells ``c, c - 1, ..``
    mod cov (no division), in ``cells[p, first + cell]``, their high parts ``hi[p, hi_first +
    cell]`` when the flag byte has ``hi_flag``, and their contact bits when ``bits`` >= 0.

    The care ring: ``cells`` = the uint32 view, ``hi_flag`` = :data:`HI_MS`, ``hi_first`` = 0,
    with contact bits; the readings ring: the uint16 view, :data:`HI_READS`, ``hi_first`` =
    ``cov``, ``bits`` = -1.
    """
    has_hi = (r8[p, flags] & hi_flag) != 0
    for _ in range(min(day - old_head, cov)):
        cells[p, first + c] = 0
        if bits >= 0:
            r8[p, bits + (c >> 3)] &= ~np.uint8(1 << (c & 7))
        if has_hi:
            hi[p, hi_first + c] = 0
        c = c - 1 if c > 0 else cov - 1


@kernel
def apply_activities(
    patient: np.ndarray, carer: np.ndarray, start_s: np.ndarray, minutes: np.ndarray,
    id_hash: np.ndarray, min_sum_day: np.int64, cov: np.int64,
    r64: np.ndarray, r32: np.ndarray, r16: np.ndarray, r8: np.ndarray, hi: np.ndarray,
    pairs: np.ndarray, dedup: np.ndarray,
) -> tuple[int, int, int, int]:  # pragma: no cover - jitted
    """Apply a batch of carer activities; returns (new pairs, new dedup entries, duplicates, stale).

    ``r64`` / ``r32`` / ``r16`` / ``r8`` are views of the patient records (see
    :func:`record_layout`), ``hi`` the high parts of their ring cells. Idempotent parts (pair
    last-contact day, contact-day bit, last contact time) are applied to every event. Care
    minutes are added only for events on a day ``>= min_sum_day`` (the oldest day any future
    evaluation can still sum) whose (patient, activity id) is new to the duplicate table (key
    :func:`dedup_key`); ``duplicates`` counts re-deliveries found there, ``stale`` events older
    than ``min_sum_day`` (their minutes can no longer appear in any window).

    Two passes: the first computes every event's pair and duplicate-table key and home bucket
    (one hash each, plus the tag mix of the key), the second prefetches the lines of the event
    :data:`PREFETCH_DISTANCE` ahead and applies the events.
    """
    new_pairs = 0
    new_dedup = 0
    duplicates = 0
    stale = 0
    n = patient.shape[0]
    words = r64.shape[1]
    ms0, _, bits, flags = _cells(cov)
    pair_home = np.empty(n, np.int64)
    dedup_home = np.empty(n, np.int64)
    keys = np.empty(n, np.uint64)
    for i in range(n):
        p = np.int64(patient[i])
        pair_home[i] = _pair_home(pairs, pair_key(p, np.int64(carer[i])))
        keys[i] = dedup_key(np.uint64(id_hash[i]), p, np.int64(DEDUP_ACTIVITY))
        dedup_home[i] = _dedup_bucket(dedup, keys[i])
    mul, shift = _mod_magic(cov)
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            _prefetch(r64, np.int64(patient[f]) * words)
            _prefetch(pairs, pair_home[f])
            _prefetch(dedup, dedup_home[f] * (DEDUP_WAYS + 1))
        p = np.int64(patient[i])
        t = np.int64(start_s[i])
        day = t // SECONDS_PER_DAY
        j, inserted = _pair_slot(pairs, pair_home[i], pair_key(p, np.int64(carer[i])))
        if inserted:
            new_pairs += 1
        pr = pairs[j]
        if pr.last_day == NO_DAY or day > pr.last_day:
            pr.last_day = day
        c = _ring_cell(day, cov, mul, shift)
        head = _ring_head(r64, p, LAST_CONTACT, t, day)
        if day > head:
            _clear_cells(r32, ms0, r8, bits, flags, HI_MS, hi, 0, p, head, day, c, cov)
            head = day
        in_ring = day > head - cov
        if in_ring:
            r8[p, bits + (c >> 3)] |= np.uint8(1 << (c & 7))
        if day < min_sum_day:
            stale += 1
            continue
        if not _dedup_insert(dedup, dedup_home[i], keys[i], day):
            duplicates += 1
            continue
        new_dedup += 1
        if in_ring:  # always, for an admitted event (its day is >= watermark day - cov + 1)
            v = np.uint64(r32[p, ms0 + c]) + np.uint64(np.rint(minutes[i] * MS_PER_MINUTE))
            if v > _M32:
                hi[p, c] += np.uint32(v >> np.uint64(32))
                r8[p, flags] |= HI_MS
                v &= _M32
            r32[p, ms0 + c] = v
    return new_pairs, new_dedup, duplicates, stale


@kernel
def apply_links(
    patient: np.ndarray, carer: np.ndarray, t_s: np.ndarray, action: np.ndarray,
    links: np.ndarray,
) -> int:  # pragma: no cover - jitted
    """Apply care-link events (action +1 join, -1 leave); returns the number of new link slots.

    Per pair the latest event by ``effective_at`` wins; at equal ``effective_at`` a leave wins over
    a join (a total order - one integer max of the encoding of :data:`LINK_DTYPE` - so the result
    does not depend on arrival order, and re-deliveries are no-ops). Two passes as in
    :func:`apply_activities`.
    """
    new_links = 0
    n = patient.shape[0]
    home = np.empty(n, np.int64)
    for i in range(n):
        home[i] = _pair_home(links, pair_key(np.int64(patient[i]), np.int64(carer[i])))
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            _prefetch(links, home[f])
        j, inserted = _pair_slot(links, home[i], pair_key(np.int64(patient[i]), np.int64(carer[i])))
        if inserted:
            new_links += 1
        e = 2 * np.int64(t_s[i]) + (1 if action[i] < 0 else 0)
        if e > links[j].link:
            links[j].link = e
    return new_links


@kernel
def apply_readings(
    patient: np.ndarray, kind: np.ndarray, t_s: np.ndarray, id_hash: np.ndarray,
    min_sum_day: np.int64,
    cov: np.int64, r64: np.ndarray, r16: np.ndarray, r8: np.ndarray, hi: np.ndarray,
    dedup: np.ndarray,
) -> tuple[int, int, int]:  # pragma: no cover - jitted
    """Apply self-monitoring readings; returns (new dedup entries, duplicates, stale).

    Same rules and passes as :func:`apply_activities`: the last reading time is a max over every
    event, the daily count admits each (patient, kind, reading id) at most once (``kind``: the
    int8 kind codes, key :func:`dedup_key`) and only from ``min_sum_day`` on.
    """
    new_dedup = 0
    duplicates = 0
    stale = 0
    n = patient.shape[0]
    words = r64.shape[1]
    _, base, _, flags = _cells(cov)
    dedup_home = np.empty(n, np.int64)
    keys = np.empty(n, np.uint64)
    for i in range(n):
        # & 0xFF: the kind byte of the tag (an unknown kind, code -1, is 255)
        keys[i] = dedup_key(np.uint64(id_hash[i]), np.int64(patient[i]),
                            np.int64(kind[i]) & 0xFF)
        dedup_home[i] = _dedup_bucket(dedup, keys[i])
    mul, shift = _mod_magic(cov)
    for i in range(n):
        f = i + PREFETCH_DISTANCE
        if f < n:
            _prefetch(r64, np.int64(patient[f]) * words)
            _prefetch(dedup, dedup_home[f] * (DEDUP_WAYS + 1))
        p = np.int64(patient[i])
        t = np.int64(t_s[i])
        day = t // SECONDS_PER_DAY
        c = _ring_cell(day, cov, mul, shift)
        head = _ring_head(r64, p, LAST_READING, t, day)
        if day > head:
            _clear_cells(r16, base, r8, -1, flags, HI_READS, hi, cov, p, head, day, c, cov)
            head = day
        if day < min_sum_day:
            stale += 1
            continue
        if not _dedup_insert(dedup, dedup_home[i], keys[i], day):
            duplicates += 1
            continue
        new_dedup += 1
        if day > head - cov:  # always, for an admitted event
            v = r16[p, base + c]
            if v == np.uint16(0xFFFF):
                hi[p, cov + c] += np.uint32(1)
                r8[p, flags] |= HI_READS
                r16[p, base + c] = 0
            else:
                r16[p, base + c] = v + np.uint16(1)
    return new_dedup, duplicates, stale


@kernel
def rehash_table(old: np.ndarray, new: np.ndarray) -> int:  # pragma: no cover - jitted
    """Re-insert every slot of an old pair or link table (:data:`PAIR_DTYPE` /
    :data:`LINK_DTYPE`) into a new, larger, empty one of the same dtype; returns the count."""
    n = 0
    for i in range(old.shape[0]):
        k = old[i].key
        if k != 0:
            j, _ = _pair_slot(new, _pair_home(new, k), k)
            new[j] = old[i]
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


NARROW_COUNT_LIMIT = 255
"""Limit of the uint8 carer counts of :func:`evaluate` (a quarter of the cache footprint of
int32 counts for the random increments); a patient with more carers sends the table to a second
count in int32."""
WIDE_COUNT_LIMIT = (1 << 31) - 1
"""Limit of the int32 carer counts (never reached: below 2**31 slots)."""


@kernel
def _bump(counts: np.ndarray, p: np.int64, limit: np.int64) -> bool:  # pragma: no cover - jitted
    """``counts[p] += 1`` unless it is at ``limit``; True if it was (the count is then short)."""
    c = counts[p]
    if c == limit:
        return True
    counts[p] = c + 1
    return False


@kernel
def _count_pairs(pairs: np.ndarray, min_day: np.int64, max_day: np.int64, counts: np.ndarray,
                 limit: np.int64) -> bool:  # pragma: no cover - jitted
    """Add 1 to ``counts[patient]`` per pair with a last activity day in ``min_day .. max_day``
    (counts at ``limit`` stay there); True if a count would pass ``limit`` (counts incomplete)."""
    over = False
    for i in range(pairs.shape[0]):
        k = pairs[i].key
        if k == 0:
            continue
        d = np.int64(pairs[i].last_day)
        if d != NO_DAY and min_day <= d <= max_day:
            over |= _bump(counts, np.int64(k >> np.uint64(32)) - 1, limit)
    return over


@kernel
def _count_links(links: np.ndarray, t_end: np.int64, counts: np.ndarray,
                 limit: np.int64) -> bool:  # pragma: no cover - jitted
    """Add 1 to ``counts[patient]`` per link whose latest event is a join effective before
    ``t_end``; True if a count would pass ``limit``, as :func:`_count_pairs`."""
    over = False
    for i in range(links.shape[0]):
        k = links[i].key
        e = links[i].link
        if k != 0 and e != NO_TIME and (e & 1) == 0 and (e >> 1) < t_end:
            over |= _bump(counts, np.int64(k >> np.uint64(32)) - 1, limit)
    return over


@kernel
def evaluate(
    n: np.int64, as_of_day: np.int64, coverage_days: np.int64, active_days: np.int64,
    lapse_days: np.int64, r64: np.ndarray, r32: np.ndarray, r16: np.ndarray, r8: np.ndarray,
    hi: np.ndarray, pairs: np.ndarray, links: np.ndarray, expected_per_day: np.ndarray,
    active: np.ndarray, registered: np.ndarray, care_ms: np.ndarray, contact_days: np.ndarray,
    readings: np.ndarray, flags: np.ndarray, covered: np.ndarray, expected: np.ndarray,
    last_contact: np.ndarray, last_reading: np.ndarray,
) -> None:  # pragma: no cover - jitted
    """Per-patient metrics and flags of patients ``0 .. n-1`` as of UTC day ``as_of_day``.

    Requires ``as_of_day`` >= the day of every event applied (the caller checks the watermark),
    and ``coverage_days`` = the ring size of the records. Output arrays (length >= n, contents
    on entry ignored) are overwritten:

    * ``active``: carers with an activity in the last ``active_days`` days;
    * ``registered``: carers whose latest care link (effective day <= as_of_day) is a join;
    * ``care_ms``, ``readings``: care milliseconds / readings received in the last
      ``coverage_days`` days; ``contact_days``: distinct UTC days with a carer contact there;
    * ``covered``: at least one carer contact in the last ``coverage_days`` days;
    * ``flags``: bit-or of FLAG_NO_SUPPORT_NETWORK (no registered and no active carer),
      FLAG_SUPPORT_LAPSED (registered carer or any contact ever, but no contact in the last
      ``lapse_days`` days), FLAG_SINGLE_CARER (exactly one active carer);
    * ``expected``: ``expected_per_day * coverage_days``; ``last_contact`` / ``last_reading``:
      the record's last contact / reading times (``NO_TIME`` if none).

    One sequential pass per table and one over the records; no integer division by a runtime
    value per patient (ring cells are found from ``as_of_day mod coverage_days``).
    """
    # carer counts in uint8 (a quarter of the cache footprint of the random increments); a
    # patient with 255 or more carers sends the table to the int32 count in the output instead
    min_active_day = as_of_day - active_days + 1
    act8 = np.zeros(n, np.uint8)
    wide_active = _count_pairs(pairs, min_active_day, as_of_day, act8, NARROW_COUNT_LIMIT)
    if wide_active:
        active[:] = 0
        _count_pairs(pairs, min_active_day, as_of_day, active, WIDE_COUNT_LIMIT)
    # (e >> 1) // SECONDS_PER_DAY <= as_of_day  <=>  (e >> 1) < (as_of_day + 1) * SECONDS_PER_DAY
    t_end = (as_of_day + 1) * SECONDS_PER_DAY
    reg8 = np.zeros(n, np.uint8)
    wide_registered = _count_links(links, t_end, reg8, NARROW_COUNT_LIMIT)
    if wide_registered:
        registered[:] = 0
        _count_links(links, t_end, registered, WIDE_COUNT_LIMIT)
    cov = coverage_days
    ms0, rbase, bits, fl = _cells(cov)
    as_of_mod = as_of_day % cov
    small = cov <= 8  # the contact bits are one byte: the branch-free path below
    for p in range(n):
        last = r64[p, LAST_CONTACT]
        last_r = r64[p, LAST_READING]
        last_contact[p] = last
        last_reading[p] = last_r
        expected[p] = expected_per_day[p] * cov
        if not wide_active:
            active[p] = act8[p]
        if not wide_registered:
            registered[p] = reg8[p]
        ever = last != NO_TIME
        hif = r8[p, fl]
        off = as_of_day - last // SECONDS_PER_DAY if ever else cov  # days_ago of the ring head
        off_r = as_of_day - last_r // SECONDS_PER_DAY if last_r != NO_TIME else cov
        recent = ever and off < lapse_days
        is_covered = ever and off < cov
        if small and (hif & (HI_MS | HI_READS)) == 0 and off >= 0 and off_r >= 0:
            # the cells of days head, head - 1, .., as_of_day - cov + 1 as bit masks
            wc = _window_cells(cov, as_of_mod, off)
            wr = _window_cells(cov, as_of_mod, off_r)
            bitv = np.int64(r8[p, bits]) & wc
            ms = np.int64(0)
            reads = np.int64(0)
            n_days = np.int64(0)
            for c in range(cov):
                ms += np.int64(r32[p, ms0 + c]) & -((wc >> c) & 1)
                reads += np.int64(r16[p, rbase + c]) & -((wr >> c) & 1)
                n_days += (bitv >> c) & 1
        else:
            ms, n_days, reads = _ring_sums(p, cov, as_of_day, off, off_r, ever,
                                           last_r != NO_TIME, r32, r16, r8, hi)
        care_ms[p] = ms
        readings[p] = reads
        contact_days[p] = n_days
        covered[p] = is_covered
        a = active[p]
        f = np.uint8(0)
        if registered[p] == 0 and a == 0:
            f |= FLAG_NO_SUPPORT_NETWORK
        if (registered[p] > 0 or ever) and not recent:
            f |= FLAG_SUPPORT_LAPSED
        if a == 1:
            f |= FLAG_SINGLE_CARER
        flags[p] = f


@kernel
def _window_cells(cov: np.int64, as_of_mod: np.int64, off: np.int64) -> np.int64:  # pragma: no cover
    """Bit mask of the cells (``cov`` <= 62) of a ring whose head is ``off`` >= 0 days before
    the as-of day that hold the days ``as_of_day - cov + 1 .. head`` (``as_of_mod`` = as-of day
    mod cov): cells ``hm, hm - 1, .., hm - (cov - off) + 1`` mod cov, ``hm`` = the head's cell."""
    if off >= cov:
        return np.int64(0)
    lim = cov - off
    hm = as_of_mod - off
    if hm < 0:
        hm += cov
    lo = hm - lim + 1
    if lo >= 0:
        return ((np.int64(1) << lim) - 1) << lo
    return ((np.int64(1) << (hm + 1)) - 1) | (((np.int64(1) << (-lo)) - 1) << (cov + lo))


@kernel
def _ring_sums(p: np.int64, cov: np.int64, as_of_day: np.int64, off: np.int64, off_r: np.int64,
               ever: bool, ever_r: bool, r32: np.ndarray, r16: np.ndarray, r8: np.ndarray,
               hi: np.ndarray) -> tuple[int, int, int]:  # pragma: no cover - jitted
    """(care ms, contact days, readings) of patient ``p``'s rings in the window, walking the
    cells one by one with the high parts (the general path of :func:`evaluate`)."""
    ms0, rbase, bits, fl = _cells(cov)
    hif = r8[p, fl]
    n_days = np.int64(0)
    ms = np.int64(0)
    if ever and off < cov:
        # the cells of days head, head - 1, .., as_of_day - cov + 1 (cov - off days)
        c = (as_of_day - off) % cov
        for _ in range(cov - off):
            ms += np.int64(r32[p, ms0 + c])
            if hif & HI_MS:
                ms += np.int64(hi[p, c]) << 32
            n_days += (r8[p, bits + (c >> 3)] >> (c & 7)) & 1
            c = c - 1 if c > 0 else cov - 1
    reads = np.int64(0)
    if ever_r and off_r < cov:
        c = (as_of_day - off_r) % cov
        for _ in range(cov - off_r):
            reads += np.int64(r16[p, rbase + c])
            if hif & HI_READS:
                reads += np.int64(hi[p, cov + c]) << 16
            c = c - 1 if c > 0 else cov - 1
    return ms, n_days, reads


HIST_MAX_DISTINCT = 1 << 16
"""Distinct values up to which :func:`value_counts` builds a histogram with a hash table (beyond
that the caller sorts, as ``np.unique`` does)."""


@kernel
def _hist_fill(values: np.ndarray, start: np.int64, keys: np.ndarray, counts: np.ndarray,
               distinct: np.int64) -> tuple[int, int]:  # pragma: no cover - jitted
    """Count ``values[start:]`` into the open-addressing table (``keys``, ``counts``; count 0 =
    empty slot, power-of-two size) until it is half full; (next index, distinct keys)."""
    cap = keys.shape[0]
    mask = cap - 1
    for i in range(start, values.shape[0]):
        v = np.int64(values[i])
        j = np.int64(mix64(np.uint64(v)) & np.uint64(mask))
        while True:
            c = counts[j]
            if c == 0:
                keys[j] = v
                counts[j] = 1
                distinct += 1
                break
            if keys[j] == v:
                counts[j] = c + 1
                break
            j = (j + 1) & mask
        if 2 * distinct > cap:
            return i + 1, distinct
    return values.shape[0], distinct


@kernel
def _hist_grow(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """The table of :func:`_hist_fill` rehashed into twice the slots."""
    cap = keys.shape[0] * 2
    mask = np.uint64(cap - 1)
    nk = np.empty(cap, np.int64)
    nc = np.zeros(cap, np.int64)
    for i in range(keys.shape[0]):
        if counts[i] != 0:
            j = np.int64(mix64(np.uint64(keys[i])) & mask)
            while nc[j] != 0:
                j = (j + 1) & (cap - 1)
            nk[j] = keys[i]
            nc[j] = counts[i]
    return nk, nc


@kernel
def value_counts(values: np.ndarray, max_distinct: np.int64
                 ) -> tuple[bool, np.ndarray, np.ndarray]:  # pragma: no cover - jitted
    """``np.unique(values, return_counts=True)`` of an integer array by hashing (no sort of the
    values): (True, sorted distinct values, counts) if there are at most ``max_distinct``
    distinct values, else (False, empty, empty) - the caller sorts instead."""
    keys = np.empty(1024, np.int64)
    counts = np.zeros(1024, np.int64)
    i = 0
    distinct = 0
    n = values.shape[0]
    while True:
        i, distinct = _hist_fill(values, i, keys, counts, distinct)
        if i >= n:
            break
        if distinct > max_distinct:
            return False, np.empty(0, np.int64), np.empty(0, np.int64)
        keys, counts = _hist_grow(keys, counts)
    if distinct > max_distinct:
        return False, np.empty(0, np.int64), np.empty(0, np.int64)
    vals = np.empty(distinct, np.int64)
    cnt = np.empty(distinct, np.int64)
    m = 0
    for j in range(keys.shape[0]):
        if counts[j] != 0:
            vals[m] = keys[j]
            cnt[m] = counts[j]
            m += 1
    order = np.argsort(vals)
    return True, vals[order], cnt[order]


GROUP_COMBOS_MAX = 1 << 14
"""Largest product of the group counts (+1 each) for which :func:`group_sums3` first sums per
combination of the three groups (few additions per patient), then folds per dimension."""


@kernel
def group_sums3(
    codes0: np.ndarray, codes1: np.ndarray, codes2: np.ndarray, n_groups: np.ndarray,
    flags: np.ndarray, covered: np.ndarray, care_ms: np.ndarray, readings: np.ndarray,
    expected_micro: np.ndarray,
) -> np.ndarray:  # pragma: no cover - jitted
    """Integer sums per group code (columns :data:`GROUP_COLUMNS`) of up to three dimensions in
    one pass over the patients; code -1 (not registered) goes to the row after the groups.

    ``expected_micro`` is a patient's expected readings in the coverage window in micro-readings;
    the capped count ``min(readings * 10**6, expected_micro)`` keeps a patient who measures more
    often than planned from hiding another's gap.

    ``n_groups[d]`` is the group count of dimension d (``codes{d}`` is ignored when d >=
    ``len(n_groups)``); returns an array (dims, max groups + 1, 9): row ``n_groups[d]`` of
    dimension d holds code -1 (the other rows past it stay zero).

    With few groups, the patients are first counted per (group of each dimension, flags,
    covered) and summed per combination of groups, then folded into each dimension: integer
    sums, so the result is the same as summing per dimension directly.
    """
    n_dims = n_groups.shape[0]
    width = 0
    for d in range(n_dims):
        width = max(width, np.int64(n_groups[d]))
    out = np.zeros((n_dims, width + 1, 9), dtype=np.int64)
    g0n = np.int64(n_groups[0]) + 1 if n_dims > 0 else np.int64(1)
    g1n = np.int64(n_groups[1]) + 1 if n_dims > 1 else np.int64(1)
    g2n = np.int64(n_groups[2]) + 1 if n_dims > 2 else np.int64(1)
    combos = g0n * g1n * g2n
    n = flags.shape[0]
    if combos > GROUP_COMBOS_MAX:
        for p in range(n):
            f = flags[p]
            cv = np.int64(1) if covered[p] else np.int64(0)
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
                out[d, g, 0] += 1
                out[d, g, 1] += cv
                out[d, g, 2] += np.int64(f & FLAG_NO_SUPPORT_NETWORK)
                out[d, g, 3] += np.int64((f & FLAG_SUPPORT_LAPSED) >> 1)
                out[d, g, 4] += np.int64((f & FLAG_SINGLE_CARER) >> 2)
                out[d, g, 5] += np.int64(care_ms[p])
                out[d, g, 6] += r
                out[d, g, 7] += capped
                out[d, g, 8] += e
        return out
    # per combination: patient counts by (covered, flags) class, and the four sums
    cnt = np.zeros(combos * 16, np.int64)
    sums = np.zeros(combos * 4, np.int64)
    for p in range(n):
        k = np.int64(0)
        if n_dims > 0:
            g = np.int64(codes0[p])
            k = g if g >= 0 else g0n - 1
        if n_dims > 1:
            g = np.int64(codes1[p])
            k = k * g1n + (g if g >= 0 else g1n - 1)
        if n_dims > 2:
            g = np.int64(codes2[p])
            k = k * g2n + (g if g >= 0 else g2n - 1)
        cls = (np.int64(flags[p] & 7) << 1) | (np.int64(1) if covered[p] else np.int64(0))
        cnt[k * 16 + cls] += 1
        r = np.int64(readings[p])
        e = np.int64(expected_micro[p])
        rc = r * 1_000_000
        b = k * 4
        sums[b] += np.int64(care_ms[p])
        sums[b + 1] += r
        sums[b + 2] += rc if rc < e else e
        sums[b + 3] += e
    for k in range(combos):
        col = np.zeros(9, np.int64)
        for cls in range(16):
            c = cnt[k * 16 + cls]
            if c:
                col[0] += c
                col[1] += c * (cls & 1)
                col[2] += c * ((cls >> 1) & 1)
                col[3] += c * ((cls >> 2) & 1)
                col[4] += c * ((cls >> 3) & 1)
        if col[0] == 0:
            continue
        col[5] = sums[k * 4]
        col[6] = sums[k * 4 + 1]
        col[7] = sums[k * 4 + 2]
        col[8] = sums[k * 4 + 3]
        g2 = k % g2n
        g1 = (k // g2n) % g1n
        g0 = k // (g2n * g1n)
        for d in range(n_dims):
            g = g0 if d == 0 else (g1 if d == 1 else g2)
            for j in range(9):
                out[d, g, j] += col[j]
    return out
