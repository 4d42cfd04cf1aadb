"""numba kernel: scan a fetch of readings-topic messages (JSON bytes) into reading columns.

Pure and batch-oriented: one call parses every message of a fetch, concatenated in ``buf`` with
``starts``/``ends`` offsets, and writes one row per reading into preallocated arrays. It recognises
only the strict, common shape of native readings and gateway batches and *declines* (status 0)
anything else - escapes in strings, unknown or repeated keys, ``true``/``false``, numbers that are
not exactly representable by the fast decimal-to-double rule, impossible dates, bad identifiers,
unknown kinds or units, ... - so the caller runs its per-message path on those. Unit conversion,
plausibility and the event-time horizons are left to the caller (numpy, exact IEEE arithmetic).

Numbers: a JSON number with at most 15 significant digits and a decimal exponent in [-22, 22] is
converted as ``m * 10**e`` or ``m / 10**-e`` with ``m`` and the power exact doubles, which IEEE
rounding makes the correctly rounded value (Clinger's fast path), i.e. exactly what ``orjson`` and
``float()`` give. JSON integers give ``float(int)`` (so ``-0`` gives ``0.0``, as in Python).

Time: timestamps ``YYYY-MM-DDTHH:MM:SSZ`` or ``...±HH:MM`` give whole epoch seconds, UTC.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from monitor.core.jit import kernel

# keys of a reading object and of a gateway batch
K_READING_ID, K_PATIENT_ID, K_DEVICE_ID, K_GATEWAY_ID, K_KIND, K_UNIT, K_MEASURED_AT = range(7)
K_VALUE, K_SYSTOLIC, K_DIASTOLIC, K_TYPE, K_SENT_AT, K_READINGS = range(7, 13)
KEYS = ("reading_id", "patient_id", "device_id", "gateway_id", "kind", "unit", "measured_at", "value",
        "systolic", "diastolic", "type", "sent_at", "readings")

LITERALS = ("reading", "gateway_batch")
LIT_READING, LIT_GATEWAY_BATCH = 0, 1

STATUS_DECLINED, STATUS_READING, STATUS_BATCH = 0, 1, 2
MAX_BATCH = 10_000
POW10 = np.array([10.0 ** k for k in range(23)])  # exact doubles 1e0 .. 1e22

# the bytes the scanner looks at (ASCII codes, compile-time constants of the kernels)
_TAB, _LF, _CR, _SPACE = ord("\t"), ord("\n"), ord("\r"), ord(" ")
_FIRST_PRINTABLE = ord(" ")  # a byte below it is a control byte, never raw in a JSON string
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = ord("{"), ord("}"), ord("["), ord("]")
_COMMA, _COLON = ord(","), ord(":")
_PLUS, _MINUS, _DOT = ord("+"), ord("-"), ord(".")
_ZERO, _ONE, _NINE = ord("0"), ord("1"), ord("9")
_UPPER_A, _UPPER_Z, _LOWER_A, _LOWER_Z = ord("A"), ord("Z"), ord("a"), ord("z")
_UNDERSCORE, _AT = ord("_"), ord("@")
_DATE_TIME_SEPARATOR, _UTC_DESIGNATOR = ord("T"), ord("Z")
_EXP_LOWER, _EXP_UPPER = ord("e"), ord("E")
_N, _U, _L = ord("n"), ord("u"), ord("l")  # null


class ScanTables(NamedTuple):
    """The lookup tables of a scan (see :func:`tables`): padded words and their lengths (keys,
    ``"type"`` literals, kinds, units), ``allowed[kind, unit]``, the exact powers of ten and the
    kind code of blood pressure."""

    keys: np.ndarray
    key_lens: np.ndarray
    literals: np.ndarray
    literal_lens: np.ndarray
    kinds: np.ndarray
    kind_lens: np.ndarray
    units: np.ndarray
    unit_lens: np.ndarray
    allowed: np.ndarray
    pow10: np.ndarray
    bp: int


class Rows(NamedTuple):
    """The output columns of a scan, one row per reading (see :func:`scan`)."""

    ids: np.ndarray
    kind_code: np.ndarray
    unit_code: np.ndarray
    nums: np.ndarray
    t_s: np.ndarray


def word_table(words: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """ASCII words -> (padded uint8 matrix, lengths) for :func:`_match`."""
    width = max(len(w) for w in words)
    out = np.zeros((len(words), width), dtype=np.uint8)
    for i, w in enumerate(words):
        out[i, : len(w)] = np.frombuffer(w.encode("ascii"), dtype=np.uint8)
    return out, np.array([len(w) for w in words], dtype=np.int64)


def tables(kinds: tuple[str, ...], units: tuple[str, ...], allowed: np.ndarray) -> ScanTables:
    """The scan's lookup tables for reading kinds and units by code (``allowed[kind, unit]``);
    :mod:`monitor.intake.columnar` builds them from :mod:`monitor.intake.rules`."""
    return ScanTables(*word_table(KEYS), *word_table(LITERALS), *word_table(kinds), *word_table(units),
                      np.ascontiguousarray(allowed, dtype=np.bool_), POW10, kinds.index("blood_pressure"))


@kernel(_nrt=False)
def _ws(buf, i, end):  # type: ignore[no-untyped-def]
    while i < end:
        c = buf[i]
        if c == _SPACE or c == _TAB or c == _LF or c == _CR:
            i += 1
        else:
            break
    return i


@kernel(_nrt=False)
def _string_end(buf, i, end):  # type: ignore[no-untyped-def]
    """``buf[i]`` is the opening quote: index of the closing quote, -1 to decline."""
    j = i + 1
    while j < end:
        c = buf[j]
        if c == _QUOTE:
            return j
        if c == _BACKSLASH or c < _FIRST_PRINTABLE:
            return -1  # an escape (or invalid control byte): declined
        j += 1
    return -1


@kernel(_nrt=False)
def _match(buf, s, e, words, lens):  # type: ignore[no-untyped-def]
    n = e - s
    for w in range(words.shape[0]):
        if lens[w] != n:
            continue
        same = True
        for k in range(n):
            if buf[s + k] != words[w, k]:
                same = False
                break
        if same:
            return w
    return -1


@kernel(_nrt=False)
def _is_ident(buf, s, e):  # type: ignore[no-untyped-def]
    n = e - s
    if n < 1 or n > 128:
        return False
    for k in range(s, e):
        c = buf[k]
        if not ((_ZERO <= c <= _NINE) or (_UPPER_A <= c <= _UPPER_Z) or (_LOWER_A <= c <= _LOWER_Z)
                or c == _UNDERSCORE or c == _DOT or c == _COLON or c == _AT or c == _MINUS):
            return False
    return True


@kernel(_nrt=False)
def _digits(buf, s, n):  # type: ignore[no-untyped-def]
    v = 0
    for k in range(s, s + n):
        c = buf[k]
        if c < _ZERO or c > _NINE:
            return -1
        v = v * 10 + (c - _ZERO)
    return v


@kernel(_nrt=False)
def _days_from_civil(y, m, d):  # type: ignore[no-untyped-def]
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@kernel(_nrt=False)
def _timestamp(buf, s, e):  # type: ignore[no-untyped-def]
    """Epoch seconds (UTC) of ``YYYY-MM-DDTHH:MM:SS`` + ``Z`` or ``±HH:MM``; (ok, seconds)."""
    n = e - s
    if n != 20 and n != 25:
        return False, 0
    if buf[s + 4] != _MINUS or buf[s + 7] != _MINUS or buf[s + 10] != _DATE_TIME_SEPARATOR \
            or buf[s + 13] != _COLON or buf[s + 16] != _COLON:
        return False, 0
    y = _digits(buf, s, 4)
    mo = _digits(buf, s + 5, 2)
    d = _digits(buf, s + 8, 2)
    h = _digits(buf, s + 11, 2)
    mi = _digits(buf, s + 14, 2)
    sec = _digits(buf, s + 17, 2)
    if y < 1 or mo < 1 or mo > 12 or d < 1 or h < 0 or h > 23 or mi < 0 or mi > 59 or sec < 0 or sec > 59:
        return False, 0
    leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
    dim = 31
    if mo == 2:
        dim = 29 if leap else 28
    elif mo == 4 or mo == 6 or mo == 9 or mo == 11:
        dim = 30
    if d > dim:
        return False, 0
    t = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec
    if n == 20:
        if buf[s + 19] != _UTC_DESIGNATOR:
            return False, 0
    else:
        sign = buf[s + 19]
        if (sign != _PLUS and sign != _MINUS) or buf[s + 22] != _COLON:
            return False, 0
        oh = _digits(buf, s + 20, 2)
        om = _digits(buf, s + 23, 2)
        if oh < 0 or oh > 23 or om < 0 or om > 59:
            return False, 0
        off = oh * 3600 + om * 60
        t = t - off if sign == _PLUS else t + off
    if t < -62135596800 or t >= 253402300800:  # outside 0001-01-01 .. 9999-12-31 (UTC)
        return False, 0
    return True, t


@kernel(_nrt=False)
def _number(buf, i, end, pow10):  # type: ignore[no-untyped-def]
    """A JSON number at ``buf[i]``: (ok, value, next index)."""
    j = i
    neg = False
    if j < end and buf[j] == _MINUS:
        neg = True
        j += 1
    if j >= end:
        return False, 0.0, j
    m = 0
    digits = 0
    c = buf[j]
    if c == _ZERO:
        j += 1
        if j < end and _ZERO <= buf[j] <= _NINE:
            return False, 0.0, j  # a leading zero: not JSON
    elif _ONE <= c <= _NINE:
        while j < end and _ZERO <= buf[j] <= _NINE:
            m = m * 10 + (buf[j] - _ZERO)
            digits += 1
            if digits > 15:
                return False, 0.0, j
            j += 1
    else:
        return False, 0.0, j
    is_int = True
    frac = 0
    if j < end and buf[j] == _DOT:
        is_int = False
        j += 1
        start = j
        while j < end and _ZERO <= buf[j] <= _NINE:
            if m > 0 or buf[j] != _ZERO:
                digits += 1
            m = m * 10 + (buf[j] - _ZERO)
            frac += 1
            if digits > 15 or frac > 40:
                return False, 0.0, j
            j += 1
        if j == start:
            return False, 0.0, j
    exp = 0
    if j < end and (buf[j] == _EXP_LOWER or buf[j] == _EXP_UPPER):
        is_int = False
        j += 1
        eneg = False
        if j < end and (buf[j] == _PLUS or buf[j] == _MINUS):
            eneg = buf[j] == _MINUS
            j += 1
        start = j
        while j < end and _ZERO <= buf[j] <= _NINE:
            exp = exp * 10 + (buf[j] - _ZERO)
            if exp > 400:
                return False, 0.0, j
            j += 1
        if j == start:
            return False, 0.0, j
        if eneg:
            exp = -exp
    if is_int:
        return True, float(-m if neg else m), j  # float(int): no negative zero
    e10 = exp - frac
    if m == 0:
        v = 0.0
    elif 0 <= e10 <= 22:
        v = float(m) * pow10[e10]
    elif -22 <= e10 < 0:
        v = float(m) / pow10[-e10]
    else:
        return False, 0.0, j
    return True, (-v if neg else v), j


@kernel(_nrt=False)
def _reading(buf, i, end, in_batch, row, tables, out):  # type: ignore[no-untyped-def]
    """A reading object at ``buf[i]`` ('{') into row ``row`` of ``out``: (ok, next index)."""
    ids, nums, t_s = out.ids, out.nums, out.t_s
    if i >= end or buf[i] != _LBRACE or row >= t_s.shape[0]:
        return False, i
    i = _ws(buf, i + 1, end)
    seen = 0
    present = 0  # value/systolic/diastolic given as numbers (bits 0..2)
    kind = -1
    unit = -1
    ids[row, 6] = -1
    ids[row, 7] = -1
    nums[row, 0] = np.nan
    nums[row, 1] = np.nan
    nums[row, 2] = np.nan
    if i < end and buf[i] == _RBRACE:
        return False, i
    while True:
        if i >= end or buf[i] != _QUOTE:
            return False, i
        ke = _string_end(buf, i, end)
        if ke < 0:
            return False, i
        key = _match(buf, i + 1, ke, tables.keys, tables.key_lens)
        if key < 0 or key > K_TYPE or (seen >> key) & 1:
            return False, i  # unknown, batch-only or repeated key
        seen |= 1 << key
        i = _ws(buf, ke + 1, end)
        if i >= end or buf[i] != _COLON:
            return False, i
        i = _ws(buf, i + 1, end)
        if i >= end:
            return False, i
        c = buf[i]
        if c == _QUOTE:
            se = _string_end(buf, i, end)
            if se < 0:
                return False, i
            s = i + 1
            if key <= K_GATEWAY_ID:
                if not _is_ident(buf, s, se):
                    return False, i
                ids[row, 2 * key] = s
                ids[row, 2 * key + 1] = se
            elif key == K_KIND:
                kind = _match(buf, s, se, tables.kinds, tables.kind_lens)
                if kind < 0:
                    return False, i
            elif key == K_UNIT:
                unit = _match(buf, s, se, tables.units, tables.unit_lens)
                if unit < 0:
                    return False, i
            elif key == K_MEASURED_AT:
                ok, t = _timestamp(buf, s, se)
                if not ok:
                    return False, i
                t_s[row] = t
            elif key == K_TYPE:
                if in_batch or _match(buf, s, se, tables.literals, tables.literal_lens) != LIT_READING:
                    return False, i  # only "reading", and only outside a batch
            else:
                return False, i  # a string value, systolic or diastolic
            i = se + 1
        elif c == _N:  # null: allowed for gateway_id, value, systolic, diastolic
            if i + 4 > end or buf[i + 1] != _U or buf[i + 2] != _L or buf[i + 3] != _L:
                return False, i
            if key != K_GATEWAY_ID and key != K_VALUE and key != K_SYSTOLIC and key != K_DIASTOLIC:
                return False, i
            i += 4
        elif c == _MINUS or _ZERO <= c <= _NINE:
            if key < K_VALUE or key > K_DIASTOLIC:
                return False, i
            ok, v, i = _number(buf, i, end, tables.pow10)
            if not ok:
                return False, i
            nums[row, key - K_VALUE] = v
            present |= 1 << (key - K_VALUE)
        else:
            return False, i
        i = _ws(buf, i, end)
        if i >= end:
            return False, i
        if buf[i] == _COMMA:
            i = _ws(buf, i + 1, end)
            continue
        if buf[i] == _RBRACE:
            i += 1
            break
        return False, i
    required = (1 << K_READING_ID) | (1 << K_PATIENT_ID) | (1 << K_DEVICE_ID) | (1 << K_KIND) \
        | (1 << K_UNIT) | (1 << K_MEASURED_AT)
    if seen & required != required or not tables.allowed[kind, unit]:
        return False, i
    if kind == tables.bp:
        if present != 6:
            return False, i  # systolic and diastolic numbers, no value
    elif present != 1:
        return False, i  # a value number, no systolic or diastolic
    out.kind_code[row] = kind
    out.unit_code[row] = unit
    return True, i


@kernel(_nrt=False)
def _has_readings_key(buf, i, end, tables):  # type: ignore[no-untyped-def]
    """Whether the object whose first key is at ``buf[i]`` has a top-level key ``"readings"``
    (False on doubt: the reading path then declines)."""
    depth = 0
    k = i
    while k < end:
        c = buf[k]
        if c == _QUOTE:
            ke = _string_end(buf, k, end)
            if ke < 0:
                return False
            if depth == 0 and ke - k - 1 == 8 \
                    and _match(buf, k + 1, ke, tables.keys, tables.key_lens) == K_READINGS:
                after = _ws(buf, ke + 1, end)
                if after < end and buf[after] == _COLON:
                    return True
            k = ke + 1
            continue
        if c == _LBRACE or c == _LBRACKET:
            depth += 1
        elif c == _RBRACE or c == _RBRACKET:
            depth -= 1
        k += 1
    return False


@kernel(_nrt=False)
def _batch(buf, i, end, row, tables, out):  # type: ignore[no-untyped-def]
    """The keys of a gateway batch from ``buf[i]`` (its first key) on: ``gateway_id``,
    ``sent_at``, ``readings`` and an optional ``"type": "gateway_batch"``; the readings go to rows
    ``row...`` of ``out``. Returns (ok, the row after the last reading)."""
    seen = 0
    while True:
        if i >= end or buf[i] != _QUOTE:
            return False, row
        ke = _string_end(buf, i, end)
        key = _match(buf, i + 1, ke, tables.keys, tables.key_lens) if ke > 0 else -1
        if key != K_GATEWAY_ID and key != K_SENT_AT and key != K_READINGS and key != K_TYPE:
            return False, row
        if (seen >> key) & 1:
            return False, row
        seen |= 1 << key
        i = _ws(buf, ke + 1, end)
        if i >= end or buf[i] != _COLON:
            return False, row
        i = _ws(buf, i + 1, end)
        if key == K_READINGS:
            if i >= end or buf[i] != _LBRACKET:
                return False, row
            i = _ws(buf, i + 1, end)
            count = 0
            while True:
                ok, i = _reading(buf, i, end, True, row, tables, out)
                if not ok:
                    return False, row
                row += 1
                count += 1
                i = _ws(buf, i, end)
                if i < end and buf[i] == _COMMA:
                    i = _ws(buf, i + 1, end)
                    continue
                if i < end and buf[i] == _RBRACKET:
                    i += 1
                    break
                return False, row
            if count > MAX_BATCH:
                return False, row
        else:
            if i >= end or buf[i] != _QUOTE:
                return False, row
            se = _string_end(buf, i, end)
            if se < 0:
                return False, row
            s = i + 1
            if key == K_GATEWAY_ID:
                good = _is_ident(buf, s, se)
            elif key == K_SENT_AT:
                good, _t = _timestamp(buf, s, se)
            else:  # type
                good = _match(buf, s, se, tables.literals, tables.literal_lens) == LIT_GATEWAY_BATCH
            if not good:
                return False, row
            i = se + 1
        i = _ws(buf, i, end)
        if i < end and buf[i] == _COMMA:
            i = _ws(buf, i + 1, end)
            continue
        if i < end and buf[i] == _RBRACE:
            i += 1
            break
        return False, row
    need = (1 << K_GATEWAY_ID) | (1 << K_SENT_AT) | (1 << K_READINGS)
    return seen & need == need and _ws(buf, i, end) == end, row


@kernel(_nrt=False)
def scan(buf, starts, ends, tables, status, row_start, row_end, out):  # type: ignore[no-untyped-def]
    """Scan every message; returns the number of rows written.

    Per message ``m``: ``status[m]`` (0 declined, 1 reading, 2 gateway batch) and its rows
    ``row_start[m]:row_end[m]``. ``tables`` are the lookup tables (:class:`ScanTables`); per row of
    ``out`` (:class:`Rows`): ``ids[row]`` = start/end offsets in ``buf`` of reading_id, patient_id,
    device_id, gateway_id (-1: none); ``kind_code``, ``unit_code`` (indexes of the tables' kinds
    and units); ``nums`` = value, systolic, diastolic (nan: none); ``t_s`` epoch s UTC.
    """
    row = 0
    for m in range(starts.shape[0]):
        status[m] = STATUS_DECLINED
        first = row
        row_start[m] = first
        row_end[m] = first
        end = ends[m]
        i = _ws(buf, starts[m], end)
        if i >= end or buf[i] != _LBRACE:
            continue
        # a gateway batch is recognised by its "readings" key; anything else is a single reading
        j = _ws(buf, i + 1, end)
        if not _has_readings_key(buf, j, end, tables):
            ok, i = _reading(buf, i, end, False, row, tables, out)
            if ok and _ws(buf, i, end) == end:
                status[m] = STATUS_READING
                row += 1
                row_end[m] = row
            continue
        ok, after = _batch(buf, j, end, row, tables, out)
        if ok:
            status[m] = STATUS_BATCH
            row = after
            row_end[m] = row
        else:
            row = first  # the rows of a declined batch are dropped
    return row


@kernel(_nrt=False)
def _same_as_previous(buf, starts, ends, out):  # type: ignore[no-untyped-def]
    n = starts.shape[0]
    for i in range(1, n):
        a, b = starts[i - 1], starts[i]
        size = ends[i] - b
        if size != ends[i - 1] - a:
            continue
        same = True
        for k in range(size):
            if buf[a + k] != buf[b + k]:
                same = False
                break
        out[i] = same
    return out


def same_as_previous(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per row: whether ``buf[starts[i]:ends[i]]`` equals the previous row's bytes (row 0: False)."""
    out = np.zeros(starts.shape[0], dtype=np.bool_)
    _same_as_previous(buf, np.ascontiguousarray(starts), np.ascontiguousarray(ends), out)
    return out
