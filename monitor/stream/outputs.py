"""Outputs (flags, alerts, dead letters) are acknowledged by the broker before the input that caused
them is: the worker's delivery ledger.

faust sends outputs without waiting, and a failed delivery was only logged while the checkpoint
and the input acknowledgement went ahead: an alert the broker refused was lost for good. Here every
output is recorded, per input partition, with the future of its send. A checkpoint of a partition
first calls :meth:`OutputLedger.confirm`: it waits for the partition's outputs and re-sends every
one that failed (any error: a broker outage, a topic refusing writes, a send that raised at once)
until all are acknowledged or the time given runs out. Only then are the partition's state and
input offsets checkpointed and the input acknowledged; otherwise the partition stays dirty and its
input unacknowledged, and the next round tries again. After a crash the input is re-processed and
the outputs regenerated (a restore suppresses those already written), so nothing is lost and
nothing is emitted twice (a re-sent output that did reach the broker despite an error is the one
duplicate left possible; the producer is idempotent, which removes those of its own retries, and
every output carries a unique id for consumers).

A re-sent output may land after outputs produced later (order is kept per send, not across a
failure); consumers order by the documents' own times and ids. Nothing here logs payloads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Send = Callable[[str, bytes | None, bytes, int], Awaitable[Any]]
"""``(topic, key, value, partition)`` -> a future of the broker's acknowledgement."""


@dataclass(slots=True)
class _Output:
    topic: str
    key: bytes | None
    value: bytes
    partition: int
    future: Any = None
    error: BaseException | None = field(default=None, repr=False)

    def state(self) -> str:
        """``"ok"``, ``"failed"`` or ``"waiting"``."""
        if self.future is None:
            return "failed"
        if not self.future.done():
            return "waiting"
        if self.future.cancelled() or self.future.exception() is not None:
            return "failed"
        return "ok"


class OutputLedger:
    """Outputs not yet known to be acknowledged, per input partition (see the module docstring).

    ``send`` starts one send and returns the future of its acknowledgement (it may also raise);
    ``flush`` (optional) pushes out what the producer has buffered. ``retry_s`` is the pause
    between re-send attempts (seconds).
    """

    def __init__(self, send: Send, flush: Callable[[], Awaitable[None]] | None = None, *,
                 retry_s: float = 0.5) -> None:
        self._send = send
        self._flush = flush
        self.retry_s = retry_s
        self._pending: dict[int, list[_Output]] = {}
        self.resent = 0  # re-sends after a failed delivery, since start
        self.failed_rounds = 0  # confirm() calls that ran out of time

    def unconfirmed(self, partition: int | None = None) -> int:
        """Outputs not yet confirmed (of one input partition, or all)."""
        if partition is not None:
            return len(self._pending.get(partition, ()))
        return sum(len(v) for v in self._pending.values())

    async def send(self, source: int, topic: str, key: bytes | None, value: bytes, partition: int) -> None:
        """Start sending one output caused by input partition ``source``; never raises on a failed
        send (it is retried by :meth:`confirm`)."""
        out = _Output(topic, key, value, partition)
        await self._start(out)
        self._pending.setdefault(source, []).append(out)

    async def _start(self, out: _Output) -> None:
        try:
            out.future, out.error = await self._send(out.topic, out.key, out.value, out.partition), None
        except Exception as exc:  # noqa: BLE001 - any failure is retried at confirm()
            out.future, out.error = None, exc

    async def confirm(self, source: int, timeout_s: float) -> bool:
        """Wait until every output of input partition ``source`` is acknowledged, re-sending failed
        ones; ``False`` if some are still unacknowledged after ``timeout_s`` seconds (they stay
        recorded for the next call)."""
        pending = self._pending.get(source)
        if not pending:
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            if self._flush is not None:
                try:
                    await asyncio.wait_for(self._flush(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    pass
                except Exception as exc:  # noqa: BLE001 - the futures tell what failed
                    log.warning("flushing outputs failed: %s", type(exc).__name__)
            waiting = [o.future for o in pending if o.future is not None and not o.future.done()]
            if waiting:
                await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
            states = [o.state() for o in pending]
            failed = [o for o, s in zip(pending, states, strict=True) if s == "failed"]
            pending = [o for o, s in zip(pending, states, strict=True) if s != "ok"]
            if not pending:
                self._pending.pop(source, None)
                return True
            self._pending[source] = pending
            if time.monotonic() >= deadline:
                self.failed_rounds += 1
                log.warning("partition %d: %d output(s) not acknowledged yet (%d failed); its input "
                            "stays unacknowledged", source, len(pending), len(failed))
                return False
            if failed:
                await asyncio.sleep(min(self.retry_s, max(0.0, deadline - time.monotonic())))
                for o in failed:
                    self.resent += 1
                    await self._start(o)

    def forget(self, source: int) -> None:
        """Drop the outputs of a partition no longer ours (its new owner re-processes the input
        that caused them, which was never acknowledged)."""
        self._pending.pop(source, None)
