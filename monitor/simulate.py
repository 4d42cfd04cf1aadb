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
(:func:`publish`) or an NDJSON file (:func:`write_ndjson`, each line with its ``"type"``).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
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
    def __init__(self, total_days: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total_days, stream, enabled
        self.started = time.monotonic()

    def update(self, sent: int, day: float) -> None:
        if not self.enabled:
            return
        frac = min(max(day, 0.0) / max(self.total, 1), 1.0)
        if not self.stream.isatty():  # logs and CI: one line per tenth, no carriage returns
            tenth = int(frac * 10)
            if tenth == getattr(self, "_tenth", -1):
                return
            self._tenth = tenth
            self.stream.write(f"simulated {frac:6.1%}: {sent:,} messages\n")
            return
        bar = "#" * int(frac * 30)
        rate = sent / max(time.monotonic() - self.started, 1e-9)
        self.stream.write(f"\r[{bar:<30}] {frac:6.1%} {sent:>9,} msgs {rate:>9,.0f}/s")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.stream.isatty():
            self.stream.write("\n")


TOPIC_OF = {"reading": "readings", "gateway_batch": "readings", "carer_activity": "carer_activity",
            "care_link": "care_network", "patient": "patients"}


def publish(cfg: SimConfig, settings: Any, *, speed: float | None = None,
            progress: bool | None = None) -> dict[str, int]:
    """Publish the population to Kafka; returns messages sent per document type.

    ``speed`` (simulated seconds per wall-clock second) paces the daily events; ``None`` sends as
    fast as the producer can. Messages are keyed by patient id and partitioned by it, so every input
    topic is co-partitioned; care links are keyed ``patient|carer`` (so compaction keeps the latest
    link per pair) but still partitioned by the patient id.
    """
    from monitor.kafka.clients import producer
    from monitor.kafka.partitioning import partition_for

    prod = producer(settings)
    topics = settings.topics
    parts = settings.partitions
    counts: dict[str, int] = {}
    bar = _Progress(cfg.days, sys.stderr, sys.stderr.isatty() if progress is None else progress)
    start = cfg.end_time() - timedelta(days=cfg.days)
    wall0 = time.monotonic()
    sent = 0
    for typ, doc in generate(cfg):
        if typ.startswith("invalid:"):
            topic = topics.name(typ.split(":", 1)[1])
            prod.send(topic, key=b"invalid", value=doc["raw"].encode(), partition=0)
            counts["invalid"] = counts.get("invalid", 0) + 1
        else:
            pid = doc["patient_id"] if "patient_id" in doc else doc["readings"][0]["patient_id"]
            key = f"{pid}|{doc['carer_id']}" if typ == "care_link" else pid
            prod.send(topics.name(TOPIC_OF[typ]), key=key.encode(),
                      value=json.dumps(doc, separators=(",", ":")).encode(),
                      partition=partition_for(pid, parts))
            counts[typ] = counts.get(typ, 0) + 1
        sent += 1
        t = event_time(typ, doc)
        if t is not None and speed:
            due = (t - start).total_seconds() / speed
            lag = due - (time.monotonic() - wall0)
            if lag > 0.05:
                time.sleep(lag)
        if sent % 5000 == 0:
            bar.update(sent, ((t - start).total_seconds() / 86400) if t else 0.0)
    prod.flush()
    prod.close()
    bar.update(sent, cfg.days)
    bar.done()
    return counts
