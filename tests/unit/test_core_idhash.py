"""The numba BLAKE2b of event ids equals hashlib's (through :func:`monitor.core.idhash.id_hash`)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.idhash import id_hash, id_hashes

IDS = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(IDS, min_size=1, max_size=20), st.sampled_from(["r", "a", "p"]))
def test_matches_hashlib(ids: list[str], prefix: str) -> None:
    raw = "".join(ids).encode("ascii")
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    ends = np.cumsum(lengths)
    got = id_hashes(np.frombuffer(raw, dtype=np.uint8), ends - lengths, ends, prefix).tolist()
    assert got == [id_hash(prefix, i) for i in ids]


def test_block_boundaries() -> None:
    """Messages of 127-129 and 255-257 bytes (prefix included) cross BLAKE2b's 128-byte blocks."""
    ids = ["x" * n for n in (0, 1, 125, 126, 127, 253, 254, 255, 1000)]
    raw = "".join(ids).encode()
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    ends = np.cumsum(lengths)
    got = id_hashes(np.frombuffer(raw, dtype=np.uint8), ends - lengths, ends, "r").tolist()
    assert got == [id_hash("r", i) for i in ids]
