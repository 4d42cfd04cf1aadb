"""Checkpoint chunks (pure): which checkpoint a partition's log of chunks restores.

The log of a checkpoint partition can hold torn writes (a crash between chunks), and after a crash
the restarted owner reuses sequence numbers of writes that never completed. These tests build
such logs with :func:`encode_chunks` and check :func:`assemble` against a plain model.
"""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.kafka import checkpoints
from monitor.kafka.checkpoints import assemble, decode_chunk, encode_chunks


def chunks_of(partition: int, seq: int, data: bytes) -> list[tuple[dict, bytes]]:
    out = []
    for _, value in encode_chunks(partition, seq, zlib.compress(data, 1), compressed=True):
        decoded = decode_chunk(value)
        assert decoded is not None
        out.append(decoded)
    return out


def test_a_complete_rewrite_of_a_torn_sequence_number_is_restored(monkeypatch):
    monkeypatch.setattr(checkpoints, "CHUNK_BYTES", 8)
    old5 = bytes(range(40))
    torn6 = bytes(range(100, 200))  # many chunks, only the first three reach the log
    new6 = b"the restarted owner's checkpoint 6"  # fewer chunks than the torn write
    log = chunks_of(0, 5, old5) + chunks_of(0, 6, torn6)[:3] + chunks_of(0, 6, new6)
    assert len(chunks_of(0, 6, new6)) < len(chunks_of(0, 6, torn6))
    assert assemble(log) == (6, new6)


def test_a_torn_rewrite_does_not_mix_with_an_earlier_write_of_the_same_sequence(monkeypatch):
    monkeypatch.setattr(checkpoints, "CHUNK_BYTES", 8)
    first = bytes(range(64))
    second = bytes(range(64, 128))  # same size, same chunk count: indices collide
    log = chunks_of(0, 6, first) + chunks_of(0, 6, second)[:2]
    assert assemble(log) == (6, first)


writes = st.lists(
    st.tuples(st.integers(1, 4), st.binary(min_size=0, max_size=60), st.booleans()),
    min_size=1, max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(writes=writes, chunk=st.integers(4, 32))
def test_assemble_restores_the_last_complete_write_of_the_highest_sequence(writes, chunk):
    """Model: among the writes that reached the log whole, the highest sequence number wins, and
    among writes of that number the last one in the log."""
    old, checkpoints.CHUNK_BYTES = checkpoints.CHUNK_BYTES, chunk
    try:
        log: list[tuple[dict, bytes]] = []
        complete: list[tuple[int, int, bytes]] = []
        for i, (seq, data, torn) in enumerate(writes):
            parts = chunks_of(0, seq, data)
            if torn and len(parts) > 1:
                log += parts[: len(parts) // 2]
            else:
                log += parts
                complete.append((seq, i, data))
        expected = max(complete, default=None)
        assert assemble(log) == (None if expected is None else (expected[0], expected[2]))
    finally:
        checkpoints.CHUNK_BYTES = old
