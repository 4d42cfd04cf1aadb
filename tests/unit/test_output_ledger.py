"""The worker's delivery ledger: a checkpoint goes ahead only when every output of its partition is
acknowledged; failed sends are re-sent, in-flight ones awaited, nothing dropped or doubled.

A broker stand-in (a real class with a topic log) refuses writes while ``refusing`` holds, as a
topic with a tiny ``max.message.bytes`` does; the integration test does it on the real broker.
"""

from __future__ import annotations

import asyncio

from monitor.stream.outputs import OutputLedger


class Broker:
    def __init__(self) -> None:
        self.log: list[tuple[str, bytes | None, bytes, int]] = []
        self.refusing = False
        self.raise_on_send = False
        self.attempts = 0

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int) -> asyncio.Future:
        self.attempts += 1
        if self.raise_on_send:
            raise ConnectionError("no broker")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()

        def settle() -> None:
            if self.refusing:
                fut.set_exception(ValueError("MESSAGE_TOO_LARGE"))
            else:
                self.log.append((topic, key, value, partition))
                fut.set_result(len(self.log) - 1)

        asyncio.get_running_loop().call_later(0.01, settle)
        return fut


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_confirm_waits_for_in_flight_outputs() -> None:
    async def main() -> None:
        broker = Broker()
        ledger = OutputLedger(broker.send, retry_s=0.01)
        for i in range(5):
            await ledger.send(3, "alerts", b"k", f"a{i}".encode(), 3)
        assert ledger.unconfirmed(3) == 5 and broker.log == []  # in flight
        assert await ledger.confirm(3, 1.0)
        assert [v for _, _, v, _ in broker.log] == [b"a0", b"a1", b"a2", b"a3", b"a4"]
        assert ledger.unconfirmed() == 0

    run(main())


def test_refused_outputs_block_the_checkpoint_then_are_resent_once() -> None:
    async def main() -> None:
        broker = Broker()
        broker.refusing = True
        ledger = OutputLedger(broker.send, retry_s=0.01)
        await ledger.send(1, "alerts", b"P1", b"alert-1", 1)
        await ledger.send(2, "flags", b"P2", b"flag-1", 2)  # another partition, unaffected
        assert not await ledger.confirm(1, 0.2)  # refused all along: no checkpoint of partition 1
        assert ledger.unconfirmed(1) == 1 and ledger.failed_rounds == 1
        broker.refusing = False
        assert await ledger.confirm(1, 1.0)
        assert await ledger.confirm(2, 1.0)
        assert sorted(v for _, _, v, _ in broker.log) == [b"alert-1", b"flag-1"]  # each exactly once
        assert ledger.resent >= 1

    run(main())


def test_a_send_that_raises_is_retried() -> None:
    async def main() -> None:
        broker = Broker()
        broker.raise_on_send = True
        ledger = OutputLedger(broker.send, retry_s=0.01)
        await ledger.send(0, "dead-letters", None, b"d1", 0)  # does not raise
        assert not await ledger.confirm(0, 0.05)
        broker.raise_on_send = False
        assert await ledger.confirm(0, 1.0)
        assert broker.log == [("dead-letters", None, b"d1", 0)]

    run(main())


def test_a_revoked_partition_forgets_its_outputs() -> None:
    async def main() -> None:
        broker = Broker()
        broker.refusing = True
        ledger = OutputLedger(broker.send, retry_s=0.01)
        await ledger.send(4, "alerts", b"k", b"x", 4)
        ledger.forget(4)  # the new owner re-processes the unacknowledged input
        assert ledger.unconfirmed() == 0 and await ledger.confirm(4, 0.01)

    run(main())
