"""A synthetic population of patients, carers and home readings with a social gradient.

Deterministic for a given ``seed`` and ``end`` time: the same arguments produce byte-identical
documents (ids, values and timestamps). Every timestamp is timezone-aware UTC.

The gradient, by deprivation quintile q (1 = most deprived ... 5 = least deprived):

* probability that a patient has no support network at all: 30 %, 20 %, 14 %, 9 %, 5 %;
* the number of registered carers of the others: 1 + Binomial(3, 0.2 + 0.1 (q - 1));
* self-monitoring adherence (share of planned readings taken): 60 %, 68 %, 76 %, 84 %, 90 %;
* about 6 % of networks lapse (carers stay registered but stop all contact 20 days before
  ``end``), about 2 % lose their carers (every carer leaves 10 days before ``end``);
* about 1 % of readings are out of the clinical range (hypoglycaemia, hypertension, low SpO2, ...).

Documents are produced in event-time order within each simulated day. Sinks: Kafka
(:func:`publish`, which counts a message only once the broker acknowledged it, retries, and reports
what it could not deliver) or an NDJSON file (:func:`write_ndjson`, each line with its ``"type"``).
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

REGIONS = ("north", "south", "east", "west", "central", "coast")
# each region's quintile mix leans deprived (north, coast) or affluent (south, west)
REGION_QUINTILE_WEIGHTS = {
    "north": (30, 25, 20, 15, 10),
    "coast": (28, 24, 20, 16, 12),
    "central": (20, 20, 20, 20, 20),
    "east": (18, 22, 22, 20, 18),
    "south": (10, 14, 20, 26, 30),
    "west": (12, 15, 20, 25, 28),
}
AGE_BANDS = ("18-44", "45-64", "65-74", "75-84", "85+")
NO_NETWORK_P = (0.30, 0.20, 0.14, 0.09, 0.05)
ADHERENCE = (0.60, 0.68, 0.76, 0.84, 0.90)
RELATIONSHIPS = ("partner", "child", "other_family", "friend", "neighbour", "volunteer")
ACTIVITY_MINUTES = {
    "visit": (30, 120), "phone_call": (5, 30), "video_call": (10, 40),
    "medication_support": (10, 30), "meal": (30, 90), "personal_care": (20, 60),
    "transport": (30, 180), "shopping": (30, 120), "household": (30, 150),
    "reading_support": (5, 20), "other": (10, 60),
}
CONDITION_PLANS: dict[str, dict[str, float]] = {
    "diabetes": {"glucose": 4},
    "hypertension": {"blood_pressure": 2},
    "heart_failure": {"body_weight": 1, "blood_pressure": 1, "heart_rate": 1},
    "copd": {"spo2": 2, "heart_rate": 1, "respiratory_rate": 1},
}
UNITS = {
    "glucose": "mmol/L", "blood_pressure": "mm[Hg]", "heart_rate": "/min", "spo2": "%",
    "respiratory_rate": "/min", "body_temperature": "Cel", "body_weight": "kg",
}
INVALID_SAMPLES: tuple[tuple[str, str], ...] = (
    ("readings", '{"reading_id": "broken", "patient_id": '),
    ("readings", '{"reading_id":"naive-1","patient_id":"P0","device_id":"d","kind":"glucose",'
                 '"value":5.0,"unit":"mmol/L","measured_at":"2026-01-01T08:00:00"}'),
    ("readings", '{"reading_id":"kind-1","patient_id":"P0","device_id":"d","kind":"ketones",'
                 '"value":0.4,"unit":"mmol/L","measured_at":"2026-01-01T08:00:00Z"}'),
    ("carer_activity", '{"activity_id":"neg-1","patient_id":"P0","carer_id":"C0","kind":"visit",'
                       '"started_at":"2026-01-01T08:00:00Z","duration_minutes":-15}'),
)


@dataclass(frozen=True)
class SimConfig:
    """``patients`` patients over ``days`` days ending at ``end`` (UTC midnight by default)."""

    patients: int = 1000
    days: int = 14
    seed: int = 1
    end: datetime | None = None
    invalid_rate: float = 0.0
    batch_share: float = 0.5  # share of patients whose gateway uploads one batch per day

    def end_time(self) -> datetime:
        if self.end is not None:
            if self.end.tzinfo is None:
                raise ValueError("end must be timezone-aware")
            return self.end.astimezone(UTC)
        now = datetime.now(UTC)
        return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Person:
    pid: str
    quintile: int
    plan: dict[str, float]
    carers: list[str]
    lapse_at: datetime | None
    leave_at: datetime | None
    batch: bool
    weight_kg: float = 78.0


def _value(kind: str, rng: random.Random, abnormal: bool, baseline_kg: float = 78.0) -> dict[str, float]:
    if kind == "blood_pressure":
        if abnormal:
            systolic, diastolic = rng.choice([(85, 55), (185, 100), (195, 122)])
            return {"systolic": float(systolic), "diastolic": float(diastolic)}
        s = round(rng.gauss(132, 12))
        return {"systolic": float(s), "diastolic": float(round(s * 0.62 + rng.gauss(0, 5)))}
    normal = {
        "glucose": (7.2, 1.8, 1), "heart_rate": (74, 9, 0), "spo2": (96.5, 1.2, 0),
        "respiratory_rate": (16, 2, 0), "body_temperature": (36.7, 0.3, 1), "body_weight": (78, 12, 1),
    }
    odd = {
        "glucose": (2.6, 24.0), "heart_rate": (38, 135), "spo2": (89, 90),
        "respiratory_rate": (7, 27), "body_temperature": (34.8, 39.4), "body_weight": (60, 95),
    }
    mu, sd, nd = normal[kind]
    if kind == "body_weight":  # a person's weight drifts slowly; abnormal = fluid gain of 2.5 kg
        return {"value": round(baseline_kg + rng.gauss(0, 0.3) + (2.5 if abnormal else 0.0), 1)}
    v = rng.choice(odd[kind]) if abnormal else rng.gauss(mu, sd)
    if kind == "spo2":
        v = min(v, 100.0)
    if kind == "glucose":
        v = max(v, 2.2)  # the normal curve's far tail would be implausible, not just low
    return {"value": round(float(v), nd)}


def generate(cfg: SimConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(type, document)`` pairs: the registry, care links, then each day's events.

    Invalid documents (when ``invalid_rate`` > 0) are yielded as ``("invalid:<topic key>", {"raw":
    text})`` so a sink can publish the raw text unchanged.
    """
    rng = random.Random(cfg.seed)
    end = cfg.end_time()
    start = end - timedelta(days=cfg.days)
    people: list[_Person] = []
    carer_seq = 0
    for i in range(cfg.patients):
        region = rng.choice(REGIONS)
        quintile = rng.choices(range(1, 6), weights=REGION_QUINTILE_WEIGHTS[region])[0]
        conditions = sorted(rng.sample(list(CONDITION_PLANS), k=rng.choice([1, 1, 2])))
        plan: dict[str, float] = {}
        for c in conditions:
            for kind, n in CONDITION_PLANS[c].items():
                plan[kind] = max(plan.get(kind, 0), n)
        pid = f"P{cfg.seed:03d}-{i:07d}"
        carers: list[str] = []
        if rng.random() >= NO_NETWORK_P[quintile - 1]:
            n = 1 + sum(rng.random() < 0.2 + 0.1 * (quintile - 1) for _ in range(3))
            for _ in range(n):
                carers.append(f"C{cfg.seed:03d}-{carer_seq:07d}")
                carer_seq += 1
        u = rng.random()
        lapse_at = end - timedelta(days=20) if carers and u < 0.06 else None
        leave_at = end - timedelta(days=10) if carers and 0.06 <= u < 0.08 else None
        people.append(_Person(pid, quintile, plan, carers, lapse_at, leave_at,
                              rng.random() < cfg.batch_share, round(rng.gauss(78, 12), 1)))
        yield "patient", {
            "patient_id": pid, "region": region, "deprivation_quintile": quintile,
            "age_band": rng.choices(AGE_BANDS, weights=(10, 25, 25, 25, 15))[0],
            "conditions": conditions, "monitoring_plan": plan,
            "registered_at": _iso(start - timedelta(days=90)),
        }
    for p in people:
        for c in p.carers:
            yield "care_link", {
                "patient_id": p.pid, "carer_id": c, "relationship": rng.choice(RELATIONSHIPS),
                "action": "join", "effective_at": _iso(start - timedelta(days=rng.randint(30, 400))),
            }
    seq = 0
    for day in range(cfg.days):
        day0 = start + timedelta(days=day)
        todays: list[tuple[datetime, str, dict[str, Any]]] = []
        for p in people:
            adherence = ADHERENCE[p.quintile - 1]
            batch: list[dict[str, Any]] = []
            for kind, per_day in sorted(p.plan.items()):
                for k in range(int(per_day)):
                    if rng.random() > adherence:
                        continue
                    t = day0 + timedelta(hours=7 + k * (14 / per_day), minutes=rng.randint(0, 50))
                    seq += 1
                    r = {"reading_id": f"R{cfg.seed:03d}-{seq:09d}", "patient_id": p.pid,
                         "device_id": f"D-{p.pid}-{kind}", "kind": kind,
                         **_value(kind, rng, rng.random() < 0.01, p.weight_kg), "unit": UNITS[kind],
                         "measured_at": _iso(t)}
                    if p.batch:
                        r["gateway_id"] = f"G-{p.pid}"
                        batch.append(r)
                    else:
                        todays.append((t, "reading", r))
            if batch:
                sent = max(datetime.fromisoformat(r["measured_at"]) for r in batch) + timedelta(minutes=5)
                todays.append((sent, "gateway_batch",
                               {"gateway_id": f"G-{p.pid}", "sent_at": _iso(sent), "readings": batch}))
            for c in p.carers:
                if p.lapse_at and day0 >= p.lapse_at:
                    continue
                if p.leave_at and day0 >= p.leave_at:
                    continue
                if rng.random() < 0.45:
                    kind = rng.choice(list(ACTIVITY_MINUTES))
                    lo, hi = ACTIVITY_MINUTES[kind]
                    t = day0 + timedelta(hours=rng.randint(8, 19), minutes=rng.randint(0, 59))
                    seq += 1
                    todays.append((t, "carer_activity", {
                        "activity_id": f"A{cfg.seed:03d}-{seq:09d}", "patient_id": p.pid,
                        "carer_id": c, "kind": kind, "started_at": _iso(t),
                        "duration_minutes": float(rng.randint(lo, hi)),
                    }))
            if p.leave_at and day0 <= p.leave_at < day0 + timedelta(days=1):
                for c in p.carers:
                    todays.append((p.leave_at, "care_link", {
                        "patient_id": p.pid, "carer_id": c, "relationship": "friend",
                        "action": "leave", "effective_at": _iso(p.leave_at)}))
            if cfg.invalid_rate and rng.random() < cfg.invalid_rate:
                topic_key, raw = rng.choice(INVALID_SAMPLES)
                todays.append((day0, f"invalid:{topic_key}", {"raw": raw}))
        todays.sort(key=lambda x: x[0])
        for _, typ, doc in todays:
            yield typ, doc


def event_time(typ: str, doc: dict[str, Any]) -> datetime | None:
    field = {"reading": "measured_at", "gateway_batch": "sent_at", "carer_activity": "started_at",
             "care_link": "effective_at"}.get(typ)
    return datetime.fromisoformat(doc[field]) if field else None


def write_ndjson(cfg: SimConfig, out: TextIO) -> int:
    """Write the population as NDJSON (each line with ``"type"``); returns the line count.

    Invalid samples are written as their raw text, so replay sees exactly what Kafka would.
    """
    n = 0
    for typ, doc in generate(cfg):
        if typ.startswith("invalid:"):
            try:  # give well-formed JSON samples their type, so replay sees the intended reason
                obj = json.loads(doc["raw"])
                doc_type = {"readings": "reading"}.get(typ.split(":", 1)[1], typ.split(":", 1)[1])
                out.write(json.dumps({"type": doc_type, **obj}, separators=(",", ":")) + "\n")
            except json.JSONDecodeError:
                out.write(doc["raw"] + "\n")
        else:
            out.write(json.dumps({"type": typ, **doc}, separators=(",", ":")) + "\n")
        n += 1
    return n


class _Progress:
    """Simulated days published so far, as a tqdm bar on stderr (``enabled``; off: nothing)."""

    def __init__(self, total_days: int, stream: TextIO, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_days, unit=" days", desc="simulate", file=stream,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total} days [{elapsed}<{remaining}{postfix}]")

    def update(self, sent: int, day: float) -> None:
        if self.bar is None:
            return
        day = min(max(day, 0.0), float(self.bar.total))
        if day > self.bar.n:
            self.bar.postfix = f"{sent:,} messages"  # shown at the next refresh (throttled)
            self.bar.update(day - self.bar.n)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.close()


TOPIC_OF = {"reading": "readings", "gateway_batch": "readings", "carer_activity": "carer_activity",
            "care_link": "care_network", "patient": "patients"}

#: Default of ``publish(delivery_timeout_s=...)`` and ``simulate --delivery-timeout``, in seconds.
DELIVERY_TIMEOUT_S = 300.0
#: Default of ``publish(max_pending=...)``: messages sent and not yet acknowledged, at most. This bounds
#: the simulator's memory while the broker is away (kafka-python's own buffer is unbounded).
MAX_PENDING = 20_000
_SEND_BACKOFF_S = 0.5  # wait between attempts when the client cannot even queue a message
_CONNECT_BACKOFF_S = 1.0  # wait between attempts to reach a broker at start-up

#: Why a message was not delivered (keys of :attr:`PublishResult.reasons`). Rejections are
#: ``"rejected:<error class>"`` (a non-retriable error of the client or the broker, e.g.
#: ``rejected:MessageSizeTooLargeError``).
UNACKNOWLEDGED = "unacknowledged"  # no acknowledgement within the deadline (or before publication stopped)
NOT_SENT = "not_sent"  # generated after publication stopped, or no broker was reachable at start-up


@dataclass(eq=False)
class PublishResult(Mapping[str, int]):
    """What :func:`publish` delivered, as a read-only mapping document type -> messages the broker
    acknowledged (``"invalid"`` for invalid samples); this is what ``publish`` returned before it
    checked deliveries, so ``sum(result.values())`` is the number of messages on the topics.

    ``undelivered`` counts per document type the messages generated but not acknowledged, ``reasons``
    the same messages per reason (:data:`UNACKNOWLEDGED`, :data:`NOT_SENT`, ``rejected:<error>``).
    ``resent`` is the number of re-sends after a retriable failure, ``stopped`` whether publication
    stopped early because a message reached its deadline (``delivery_timeout_s`` seconds) or no broker
    answered at start-up. Counts only: no payload, no patient id.
    """

    delivered: dict[str, int]
    undelivered: dict[str, int]
    reasons: dict[str, int]
    resent: int = 0
    stopped: bool = False
    delivery_timeout_s: float = DELIVERY_TIMEOUT_S

    def __getitem__(self, typ: str) -> int:
        return self.delivered[typ]

    def __iter__(self) -> Iterator[str]:
        return iter(self.delivered)

    def __len__(self) -> int:
        return len(self.delivered)

    @property
    def total_delivered(self) -> int:
        return sum(self.delivered.values())

    @property
    def total_undelivered(self) -> int:
        return sum(self.undelivered.values())

    @property
    def generated(self) -> int:
        return self.total_delivered + self.total_undelivered

    @property
    def complete(self) -> bool:
        """True when the broker acknowledged every generated message."""
        return self.total_undelivered == 0

    def loss_report(self) -> str:
        """One line for humans on what was not delivered, and why (counts only)."""
        if self.complete:
            return f"all {self.generated:,} messages were delivered"
        why = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(self.reasons.items()))
        per_type = ", ".join(f"{typ}: {n:,}" for typ, n in sorted(self.undelivered.items()))
        text = (f"{self.total_undelivered:,} of {self.generated:,} messages were NOT delivered "
                f"({per_type}; {why})")
        if self.stopped:
            text += (f"; publication stopped: a message (or the connection to a broker) went "
                     f"unacknowledged for {self.delivery_timeout_s:g} s")
        return text


@dataclass(frozen=True, slots=True)
class _Message:
    typ: str  # key of the counts: document type, or "invalid"
    topic: str
    key: bytes
    value: bytes
    partition: int
    deadline: float  # clock() after which the message is given up: first send + delivery timeout


class _Delivery:
    """Sends messages through a kafka-python producer and accounts for every one of them.

    Each sent message's future is kept (in send order) until it resolves: acknowledged -> delivered;
    failed with a retriable error before its deadline -> re-sent (same topic, partition, key and value;
    a re-sent message lands after messages sent meanwhile, the only way order within a partition can
    change); failed otherwise -> undelivered. At most ``max_pending`` messages await acknowledgement:
    ``submit`` blocks on the oldest beyond that. A message still unacknowledged at its deadline is given
    up and publication stops (``stopped``): later messages are counted :data:`NOT_SENT`, and of those
    already sent, the ones not acknowledged by then are given up too (:data:`UNACKNOWLEDGED`) without
    further waiting or re-sending.
    """

    def __init__(self, prod: Any, *, timeout_s: float, max_pending: int,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        from kafka.errors import KafkaError

        self._kafka_error = KafkaError
        self.prod, self.timeout_s, self.max_pending = prod, timeout_s, max(1, max_pending)
        self.clock, self.sleep = clock or time.monotonic, sleep or time.sleep
        self.pending: deque[tuple[Any, _Message]] = deque()
        self.delivered: Counter[str] = Counter()
        self.undelivered: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.resent = 0
        self.stopped = False
        self.abandoned = False  # some future was left unresolved: the producer must be force-closed

    def submit(self, typ: str, topic: str, key: bytes, value: bytes, partition: int) -> None:
        """Send one new message; blocks while ``max_pending`` messages await acknowledgement."""
        if self.stopped:
            self._lose(typ, NOT_SENT)
            return
        self._send(_Message(typ, topic, key, value, partition, self.clock() + self.timeout_s))
        self._reap()
        while len(self.pending) >= self.max_pending:
            self._wait_oldest()

    def finish(self) -> None:
        """Wait for every message sent (and re-sent), each until its deadline at the latest; once
        publication stopped, only the acknowledgements already received count."""
        while self.pending:
            self._wait_oldest()

    def _send(self, msg: _Message) -> None:
        while True:
            try:
                fut = self.prod.send(msg.topic, key=msg.key, value=msg.value, partition=msg.partition)
            except self._kafka_error as exc:  # not even queued: no metadata in max_block_ms, too large...
                if exc.retriable and not self.stopped and self.clock() < msg.deadline:
                    self.sleep(min(_SEND_BACKOFF_S, max(0.0, msg.deadline - self.clock())))
                    continue
                self._fail(msg, exc)
                return
            self.pending.append((fut, msg))
            return

    def _reap(self) -> None:
        """Account for the oldest messages while they are resolved (or past their deadline)."""
        while self.pending:
            fut, msg = self.pending[0]
            if not fut.is_done and self.clock() < msg.deadline:
                return
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        fut, msg = self.pending.popleft()
        if not fut.is_done and not self.stopped:
            try:
                fut.get(timeout=max(0.0, msg.deadline - self.clock()))
            except self._kafka_error:
                pass  # a failure or the wait's own timeout: told apart by fut.is_done below
        if not fut.is_done:
            self.abandoned = True
            self._give_up(msg.typ)
        elif not fut.failed():
            self.delivered[msg.typ] += 1
        elif (getattr(fut.exception, "retriable", False) and not self.stopped
              and self.clock() < msg.deadline):
            self.resent += 1
            self._send(msg)
        else:
            self._fail(msg, fut.exception)

    def _fail(self, msg: _Message, exc: BaseException) -> None:
        if getattr(exc, "retriable", False):  # retriable but out of time (or publication stopped)
            self._give_up(msg.typ)
        else:
            self._lose(msg.typ, f"rejected:{type(exc).__name__}")

    def _give_up(self, typ: str) -> None:
        self.stopped = True
        self._lose(typ, UNACKNOWLEDGED)

    def _lose(self, typ: str, reason: str) -> None:
        self.undelivered[typ] += 1
        self.reasons[reason] += 1


def _producer_overrides(timeout_s: float) -> dict[str, Any]:
    """Producer settings of :func:`publish` for a delivery timeout of ``timeout_s`` seconds."""
    ms = int(min(max(timeout_s, 1.0), 86_400.0 * 24) * 1000)  # kafka-python wants whole ms < 2**31
    return {
        # sequence numbers: a batch the client retries (say the broker wrote it, then went away before
        # it answered) is written once and in order; needs acks=all, max in flight 1 (set by the client)
        "enable_idempotence": True,
        "retries": 2**31 - 1,  # the client retries until delivery_timeout_ms, not a number of times
        "delivery_timeout_ms": ms,
        "request_timeout_ms": min(30_000, ms // 2),
        "max_block_ms": min(60_000, ms),  # longest send() may wait for a topic's metadata
        # reconnect to a broker that was away within a second of its return (kafka-python backs off
        # up to 30 s by default, Java clients up to 1 s)
        "reconnect_backoff_max_ms": 1000,
    }


def _connect(settings: Any, timeout_s: float) -> Any:
    """A producer for :func:`publish`, retried for ``timeout_s`` seconds while no broker answers;
    None when none did."""
    from kafka.errors import KafkaConnectionError, KafkaError, NoBrokersAvailable

    from monitor.kafka.clients import producer

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            prod = producer(settings, **_producer_overrides(timeout_s))
            break
        except (NoBrokersAvailable, KafkaConnectionError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(_CONNECT_BACKOFF_S, max(0.0, deadline - time.monotonic())))
    # the topics' metadata now, while a broker answers: a send() to a topic whose metadata the client
    # lacks blocks (up to max_block_ms, in practice more) when the broker goes away later
    for key in sorted(set(TOPIC_OF.values())):
        with contextlib.suppress(KafkaError):
            prod.partitions_for(settings.topics.name(key))
    return prod


def _close(prod: Any, abandon: bool) -> None:
    """Close the producer; with ``abandon``, discard the batches still unacknowledged at once.

    kafka-python (2.3) has no public way to drop unacknowledged batches: ``close()`` flushes first and
    raises while batches are incomplete. The sender thread is then force-closed (it fails the batches)
    and ``close()`` retried. An idempotent producer's sender that lost its producer id waits for a
    broker to issue a new one without checking for close: it is left to end on its own (a daemon
    thread: at the latest with the process), and the producer is marked closed so that its finaliser
    does not try (and noisily fail) to flush it again.
    """
    from kafka.errors import KafkaError, KafkaTimeoutError

    try:
        prod.close(timeout=0 if abandon else 30)
        return
    except KafkaTimeoutError:
        pass
    sender = getattr(prod, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(1.0)
    with contextlib.suppress(KafkaError):
        prod.close(timeout=0)
    if not getattr(prod, "_closed", True):
        prod._closed = True


def publish(cfg: SimConfig, settings: Any, *, speed: float | None = None,
            progress: bool | None = None, delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
            max_pending: int = MAX_PENDING) -> PublishResult:
    """Publish the population to Kafka and wait until the broker acknowledged each message.

    ``speed`` (simulated seconds per wall-clock second) paces the daily events; ``None`` sends as
    fast as the producer can. Messages are keyed by patient id and partitioned by it, so every input
    topic is co-partitioned; care links are keyed ``patient|carer`` (so compaction keeps the latest
    link per pair) but still partitioned by the patient id.

    Delivery: a message counts as delivered only once the broker acknowledged it (acks=all). The
    producer is idempotent and retries on its own; a message whose send still fails with a retriable
    error is re-sent by this function (so it may land after messages sent meanwhile: the only reordering
    within a partition). Each message is given ``delivery_timeout_s`` seconds from its first send,
    retries included; when one goes unacknowledged that long (or no broker answers at start-up for that
    long), the broker is taken to be gone: publication stops at once, later messages are not sent, and
    every message not acknowledged by then is counted undelivered: no message is waited for longer
    than ``delivery_timeout_s``. A non-retriable error (say a message too large) loses that message
    only. At most ``max_pending`` messages await acknowledgement at once (memory stays bounded).

    Never raises for undelivered messages: returns a :class:`PublishResult`, a mapping document type ->
    messages delivered (what this function returned before) with the undelivered counts
    (``result.complete`` is False when any message was not delivered). A message given up while a
    request carrying it was in flight may nevertheless have been written: the undelivered count is
    then an upper bound; every message is either acknowledged or counted undelivered.
    """
    if not 0 < delivery_timeout_s < float("inf"):
        raise ValueError(f"delivery_timeout_s must be finite seconds > 0, not {delivery_timeout_s!r}")
    bar = _Progress(cfg.days, sys.stderr, sys.stderr.isatty() if progress is None else progress)
    prod = _connect(settings, delivery_timeout_s)
    delivery = _Delivery(prod, timeout_s=delivery_timeout_s, max_pending=max_pending)
    if prod is None:  # no broker within the deadline: nothing is sent, everything is counted
        delivery.stopped = True
    try:
        _publish_all(cfg, settings, delivery, bar, speed)
    except BaseException:  # an interrupt or a bug: drop what is still pending, then re-raise
        if prod is not None:
            _close(prod, True)
        raise
    if prod is not None:
        _close(prod, delivery.abandoned)
    bar.update(delivery.delivered.total(), cfg.days)
    bar.done()
    return PublishResult(delivered=dict(delivery.delivered), undelivered=dict(delivery.undelivered),
                         reasons=dict(delivery.reasons), resent=delivery.resent, stopped=delivery.stopped,
                         delivery_timeout_s=delivery_timeout_s)


def _publish_all(cfg: SimConfig, settings: Any, delivery: _Delivery, bar: _Progress,
                 speed: float | None) -> None:
    """:func:`publish`'s loop: generate, send (paced by ``speed``), then wait for the acknowledgements."""
    from monitor.kafka.partitioning import partition_for

    topics = settings.topics
    parts = settings.partitions
    start = cfg.end_time() - timedelta(days=cfg.days)
    wall0 = time.monotonic()
    generated = 0
    for typ, doc in generate(cfg):
        generated += 1
        if typ.startswith("invalid:"):
            delivery.delivered.setdefault("invalid", 0)
            delivery.submit("invalid", topics.name(typ.split(":", 1)[1]), b"invalid", doc["raw"].encode(), 0)
        else:
            delivery.delivered.setdefault(typ, 0)
            pid = doc["patient_id"] if "patient_id" in doc else doc["readings"][0]["patient_id"]
            key = f"{pid}|{doc['carer_id']}" if typ == "care_link" else pid
            delivery.submit(typ, topics.name(TOPIC_OF[typ]), key.encode(),
                            json.dumps(doc, separators=(",", ":")).encode(), partition_for(pid, parts))
        if delivery.stopped:  # the rest is only counted: no pacing, no progress
            continue
        t = event_time(typ, doc)
        if t is not None and speed:
            due = (t - start).total_seconds() / speed
            lag = due - (time.monotonic() - wall0)
            if lag > 0.05:
                time.sleep(lag)
        if generated % 5000 == 0:
            bar.update(delivery.delivered.total(), ((t - start).total_seconds() / 86400) if t else 0.0)
    delivery.finish()
