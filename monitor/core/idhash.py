"""The 64-bit hash of event ids: one id (:func:`id_hash`, hashlib) or a batch (:func:`id_hashes`, numba).

``id_hash(prefix, identifier)`` is ``blake2b(f"{prefix}:{identifier}".encode(), digest_size=8)``
read little-endian (0 becomes 1). :func:`id_hashes` computes the same values for many identifiers
stored as byte ranges of one buffer (the columnar intake's message buffer), without a Python
object per id.
BLAKE2b as in RFC 7693 (unkeyed, 8-byte digest); a hypothesis test compares it with ``hashlib``.
Pure; never raises for valid offsets.
"""

from __future__ import annotations

import hashlib

import numpy as np

from monitor.core.jit import kernel

_IV = np.array([0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
                0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179],
               dtype=np.uint64)
_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
], dtype=np.int64)
_PARAM = np.uint64(0x01010000 ^ 8)  # digest length 8, no key, fanout 1, depth 1


def id_hash(prefix: str, identifier: str) -> int:
    """Stable non-zero 64-bit hash of an event id (blake2b; same in every process and version).

    The prefix names the id's kind: ``"a"`` activity, ``"r"`` reading, ``"p"`` registry content.
    The duplicate table does not key on it alone: :func:`monitor.core.support.dedup_key` binds
    it to the event's patient and kind (collision probability stated there)."""
    digest = hashlib.blake2b(f"{prefix}:{identifier}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


@kernel(_nrt=False)
def _rotr(x, n):  # type: ignore[no-untyped-def]
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@kernel(_nrt=False)
def _g(a, b, c, d, x, y):  # type: ignore[no-untyped-def]
    a = a + b + x
    d = _rotr(d ^ a, 32)
    c = c + d
    b = _rotr(b ^ c, 24)
    a = a + b + y
    d = _rotr(d ^ a, 16)
    c = c + d
    b = _rotr(b ^ c, 63)
    return a, b, c, d


@kernel(_nrt=False)
def _compress(h, m, t, last, iv, sigma):  # type: ignore[no-untyped-def]
    """One BLAKE2b compression of the message words ``m`` into ``h``; ``t``: bytes so far."""
    v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    v8, v9, v10, v11 = iv[0], iv[1], iv[2], iv[3]
    v12 = iv[4] ^ np.uint64(t)
    v13 = iv[5]
    v14 = ~iv[6] if last else iv[6]
    v15 = iv[7]
    for r in range(12):
        s = sigma[r % 10]
        v0, v4, v8, v12 = _g(v0, v4, v8, v12, m[s[0]], m[s[1]])
        v1, v5, v9, v13 = _g(v1, v5, v9, v13, m[s[2]], m[s[3]])
        v2, v6, v10, v14 = _g(v2, v6, v10, v14, m[s[4]], m[s[5]])
        v3, v7, v11, v15 = _g(v3, v7, v11, v15, m[s[6]], m[s[7]])
        v0, v5, v10, v15 = _g(v0, v5, v10, v15, m[s[8]], m[s[9]])
        v1, v6, v11, v12 = _g(v1, v6, v11, v12, m[s[10]], m[s[11]])
        v2, v7, v8, v13 = _g(v2, v7, v8, v13, m[s[12]], m[s[13]])
        v3, v4, v9, v14 = _g(v3, v4, v9, v14, m[s[14]], m[s[15]])
    h[0] ^= v0 ^ v8
    h[1] ^= v1 ^ v9
    h[2] ^= v2 ^ v10
    h[3] ^= v3 ^ v11
    h[4] ^= v4 ^ v12
    h[5] ^= v5 ^ v13
    h[6] ^= v6 ^ v14
    h[7] ^= v7 ^ v15


@kernel(_nrt=False)
def _hashes(buf, starts, ends, prefix, iv, sigma, param, out, h, m):  # type: ignore[no-untyped-def]
    np_ = prefix.shape[0]
    for j in range(starts.shape[0]):
        s = starts[j]
        n = np_ + ends[j] - s  # message length: prefix + id
        for i in range(8):
            h[i] = iv[i]
        h[0] ^= param
        pos = 0  # first byte of the current block
        while True:
            for i in range(16):
                m[i] = 0
            stop = min(n, pos + 128)
            for q in range(pos, stop):
                byte = prefix[q] if q < np_ else buf[s + q - np_]
                k = q - pos
                m[k >> 3] |= np.uint64(byte) << np.uint64(8 * (k & 7))
            if n - pos <= 128:
                _compress(h, m, n, True, iv, sigma)
                break
            pos += 128
            _compress(h, m, pos, False, iv, sigma)
        out[j] = h[0] if h[0] != np.uint64(0) else np.uint64(1)


def id_hashes(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, prefix: str) -> np.ndarray:
    """``id_hash(prefix, buf[s:e].decode())`` for every ``(s, e)``, as uint64 (ids are ASCII)."""
    out = np.empty(starts.shape[0], dtype=np.uint64)
    p = np.frombuffer(f"{prefix}:".encode(), dtype=np.uint8)
    _hashes(buf, np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(ends, dtype=np.int64), p,
            _IV, _SIGMA, _PARAM, out, np.empty(8, np.uint64), np.empty(16, np.uint64))
    return out


__all__ = ["id_hash", "id_hashes"]
