"""Worker readiness (``GET /readyz``), next to the liveness endpoint ``GET /health``.

Liveness (``/health``, in :mod:`monitor.stream.views`, unchanged): 200 whenever the worker's web server
answers, with counts; it never depends on Kafka, so an orchestrator does not restart a worker that
is only waiting for the broker.

Readiness (``/readyz``, added by :func:`add_readiness`): 200 ``{"status": "ready", ...}`` when

1. **connected**: the consumer knows its group coordinator, i.e. its latest request to the broker
   (heartbeats every few seconds) succeeded. aiokafka forgets the coordinator on a failed request
   or when no heartbeat succeeded for the session timeout, so a lost broker shows within a heartbeat
   interval (<= 3 s) when connections are refused, within ``MONITOR_SESSION_TIMEOUT_S`` when they hang;
2. **settled**: the group gave this worker an assignment (at least once since start) and no
   rebalance is in progress (faust: from the revocation until its recovery ended). A worker whose
   settled assignment holds **no input partition** is ready: in a group of more workers than
   partitions it is a hot standby that takes partitions over at the next rebalance, and reporting it
   not ready would keep a healthy deployment "unhealthy" forever;
3. **restored**: no assigned input partition is still being restored from its checkpoint
   (``PartitionManager.assigned - owned`` is empty);
4. **caught up**: the consumer lag, in **messages**, summed over the worker's assigned input
   partitions, is at most ``max_lag``. Per partition it is the high-water offset (the next offset the
   broker will write) minus the next offset to apply (one past the highest offset applied to the
   state or read by the consumer, whichever is further; when neither is known yet, the consumer's
   fetch position) - the number ``monitor_consumer_lag_messages`` shows, except that records already
   read and waiting for their partition's restore are not counted (condition 3 covers them), and
   that it may be one message per partition short right after a rebalance (faust records the
   committed offset, the next one to read, as the partition's read offset). It is unknown (not
   ready, ``lag_unknown``) until the first fetch of each assigned partition returned its high-water
   mark.

Otherwise 503 ``{"status": "not_ready", "reason": <code>, ...}``; the reason is the first failing
condition in that order (:data:`REASONS`). The body never holds identifiers or configuration:
partition numbers and counts only. No token (like ``/health``).

Everything is read from memory (no request to the broker per call, except the rare fetch-position
look-up above, bounded by :data:`POSITION_TIMEOUT_S`), so ``/readyz`` may be polled freely.
The decision itself is the pure function :func:`decide`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from monitor.settings import Settings
from monitor.stream.faust_adapter import group_coordinator_known, read_offsets

DEFAULT_LAG_FETCHES = 10
"""Default ``max_lag``: this many fetches' worth of records (``MONITOR_MAX_POLL_RECORDS`` each,
100,000 messages with the defaults). A worker that keeps up has up to a fetch of records read but
not applied, so a threshold below one fetch would flap under normal load."""
POSITION_TIMEOUT_S = 1.0
"""Longest ``/readyz`` waits for the consumer's fetch positions (only of partitions with neither an
applied nor a read offset; then the lag is ``lag_unknown``)."""

REASONS = {
    "not_connected": "the consumer does not reach its group coordinator (broker down or unreachable, "
                     "or the consumer has not started)",
    "joining": "the consumer group has not given this worker an assignment yet",
    "rebalancing": "a consumer group rebalance is in progress",
    "restoring": "assigned partitions are still being restored from their checkpoints",
    "lag_unknown": "the high-water mark or position of an assigned input partition is not known yet",
    "lagging": "the consumer lag is above the threshold",
}
"""The ``reason`` codes of a 503, in the order they are checked, with their meaning."""


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What readiness is decided on (see the module docstring)."""

    connected: bool
    """The consumer knows its group coordinator."""
    joined: bool
    """The consumer group gave this worker an assignment at least once (possibly empty)."""
    rebalancing: bool
    """A rebalance is in progress."""
    assigned: int
    """Input partitions assigned to this worker."""
    restoring: int
    """Of those, partitions not restored from their checkpoint yet."""
    lag: int | None
    """Messages not yet applied, summed over the assigned input partitions; None: unknown."""


def decide(state: WorkerState, max_lag: int) -> str | None:
    """``None`` when a worker in ``state`` is ready, else the reason code (:data:`REASONS`).

    A settled worker with no input partition is ready (its lag is 0 and nothing is restoring)."""
    if not state.connected:
        return "not_connected"
    if not state.joined:
        return "joining"
    if state.rebalancing:
        return "rebalancing"
    if state.restoring > 0:
        return "restoring"
    if state.assigned and state.lag is None:
        return "lag_unknown"
    if (state.lag or 0) > max_lag:
        return "lagging"
    return None


def next_offset(applied: int | None, read: int | None) -> int | None:
    """The next offset of a partition to apply: one past the highest offset applied to its state or
    read by the consumer, whichever is further; None when neither is known."""
    known = [o + 1 for o in (applied, read) if o is not None and o >= 0]
    return max(known) if known else None


def partition_lag(highwater: int, next_to_apply: int) -> int:
    """Messages of a partition not applied yet (never negative)."""
    return max(0, highwater - next_to_apply)


def consumer_connected(app: Any) -> bool:
    """The faust app's consumer knows its group coordinator (False before the consumer started).

    No public API tells whether the consumer reaches the broker: this reads aiokafka's
    ``GroupCoordinator.coordinator_id`` through faust's consumer thread, in
    :func:`monitor.stream.faust_adapter.group_coordinator_known`. A faust or aiokafka upgrade that
    moves these attributes makes this False (the worker is never ready), and fails
    ``tests/unit/test_faust_contract.py`` first."""
    try:
        consumer = app.consumer
    except AttributeError:
        return False
    return group_coordinator_known(consumer)


async def input_lag(consumer: Any, input_topics: Iterable[str],
                    applied: Mapping[tuple[str, int], int]) -> int | None:
    """Consumer lag in messages over the assigned partitions of ``input_topics``; None when unknown.

    ``consumer`` is faust's (``assignment()``, ``highwater(tp)``, ``position(tp)`` and the read
    offsets it keeps, :func:`monitor.stream.faust_adapter.read_offsets`); ``applied`` maps
    ``(topic, partition)`` to the highest offset applied to the state. Raises whatever
    ``assignment()`` raises before the consumer started."""
    topics = set(input_topics)
    read = read_offsets(consumer)
    total = 0
    unknown = []
    for tp in consumer.assignment():
        if tp.topic not in topics:
            continue
        hw = consumer.highwater(tp)
        if hw is None:  # before the first fetch response of the partition
            return None
        nxt = next_offset(applied.get((tp.topic, tp.partition)), read.get(tp))
        if nxt is not None:
            total += partition_lag(hw, nxt)
        elif hw > 0:  # nothing applied or read yet (a new group, or a partition emptied by retention)
            unknown.append((tp, hw))
        # else: a partition never written to, no lag
    if unknown:
        try:
            positions = await asyncio.wait_for(
                asyncio.gather(*(consumer.position(tp) for tp, _ in unknown)), POSITION_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - timeout, rebalance, consumer stopping: unknown
            return None
        for (_, hw), position in zip(unknown, positions, strict=True):
            if position is None:
                return None
            total += partition_lag(hw, position)
    return total


class WorkerReadiness:
    """Gathers a :class:`WorkerState` from a faust app and its ``PartitionManager`` and decides."""

    def __init__(self, app: Any, mgr: Any, *, max_lag: int) -> None:
        if max_lag < 0:
            raise ValueError("max_lag must not be negative")
        self.app = app
        self.mgr = mgr
        self.max_lag = max_lag
        self.joined = False  # set by the on_partitions_assigned receiver of add_readiness

    async def state(self) -> WorkerState:
        mgr = self.mgr
        connected = consumer_connected(self.app)
        lag: int | None = None
        if connected:
            applied = {(topic, p): off for p, st in list(mgr.pipe.partitions.items())
                       for topic, off in st.offsets.items()}
            try:
                lag = await input_lag(self.app.consumer, mgr.input_topics, applied)
            except Exception:  # noqa: BLE001 - consumer not started or stopping
                lag = None
        return WorkerState(connected=connected, joined=self.joined,
                           rebalancing=bool(getattr(self.app, "rebalancing", False)),
                           assigned=len(mgr.assigned), restoring=len(mgr.assigned - mgr.owned), lag=lag)

    async def report(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status (200 or 503) and JSON body of ``/readyz``."""
        state = await self.state()
        reason = decide(state, self.max_lag)
        body: dict[str, Any] = {
            "status": "ready" if reason is None else "not_ready",
            "connected": state.connected, "joined": state.joined, "rebalancing": state.rebalancing,
            "partitions": sorted(self.mgr.assigned), "restoring_partitions": state.restoring,
            "lag_messages": state.lag, "max_lag_messages": self.max_lag,
        }
        if reason is not None:
            body["reason"], body["detail"] = reason, REASONS[reason]
        return (200 if reason is None else 503), body


def add_readiness(app: Any, mgr: Any, settings: Settings, *, max_lag: int | None = None) -> WorkerReadiness:
    """Register ``GET /readyz`` on the faust ``app`` (see the module docstring); returns the
    :class:`WorkerReadiness` behind it.

    ``mgr`` is the app's ``monitor.stream.partitions.PartitionManager``. ``max_lag`` (messages, summed over
    the worker's input partitions) defaults to :data:`DEFAULT_LAG_FETCHES` x
    ``settings.max_poll_records``. Call it in ``create_app`` before the worker starts. Idempotent:
    on an app that has it already, it returns the existing one (arguments ignored).
    """
    from faust.web import Request, Response, View  # faust is the worker's dependency, not the intake's

    existing = getattr(app, "monitor_readiness", None)
    if isinstance(existing, WorkerReadiness):
        return existing
    readiness = WorkerReadiness(
        app, mgr, max_lag=DEFAULT_LAG_FETCHES * settings.max_poll_records if max_lag is None else max_lag)
    app.monitor_readiness = readiness

    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        readiness.joined = True  # an empty assignment counts: the group settled without us

    app.on_partitions_assigned.connect(on_assigned)

    @app.page("/readyz")
    class Readyz(View):
        async def get(self, request: Request) -> Response:
            status, body = await readiness.report()
            return self.json(body, status=status, headers={"Cache-Control": "no-store"})

    return readiness


__all__ = ["DEFAULT_LAG_FETCHES", "POSITION_TIMEOUT_S", "REASONS", "WorkerReadiness", "WorkerState",
           "add_readiness", "consumer_connected", "decide", "input_lag", "next_offset", "partition_lag"]
