"""Prometheus collectors: values against a pipeline fed known events; no identifier in any label."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from monitor.kafka.partitioning import partition_for
from monitor.latency import LatencyHistogram
from monitor.metrics.collectors import registry_for
from monitor.metrics.groups import group_table
from monitor.pipeline import Pipeline, RawRecord
from monitor.simulate import TOPIC_OF, SimConfig, generate

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
EXPECTED = {"r": "reading", "a": "carer_activity", "n": "care_link", "p": "patient"}


def clock() -> datetime:
    return NOW


class Feed:
    """Records of one partition with consecutive offsets per topic."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.offsets: Counter[str] = Counter()

    def __call__(self, topic: str, obj: object) -> RawRecord:
        raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        off = self.offsets[topic]
        self.offsets[topic] += 1
        return RawRecord(raw, topic, self.partition, off)


def patient(pid: str, region: str, q: int, age: str) -> dict:
    return {"patient_id": pid, "region": region, "deprivation_quintile": q, "age_band": age}


def activity(aid: str, pid: str, carer: str, t: datetime, minutes: float = 30) -> dict:
    return {"activity_id": aid, "patient_id": pid, "carer_id": carer, "kind": "visit",
            "started_at": t.isoformat(), "duration_minutes": minutes}


def link(pid: str, carer: str, t: datetime) -> dict:
    return {"patient_id": pid, "carer_id": carer, "relationship": "friend", "action": "join",
            "effective_at": t.isoformat()}


def known_pipeline() -> Pipeline:
    """Four registered patients and one unregistered, as of 2026-11-01 (the watermark day).

    * P1 north/1/65-74: carer C1 joined, 45 + 15 min two days ago -> covered, single_carer;
    * P2 north/1/65-74: nobody -> no_support_network;
    * P3 south/5/85+: C2 and C3 joined, C2's only visit 20 days ago -> support_lapsed, single_carer;
    * P4 south/5/85+: C4 (no link) visited today 60 min -> covered, single_carer;
    * P9: a visit by C1 but never registered -> unregistered (not in any group);
    * two dead letters (malformed JSON, not UTF-8).
    """
    p = Pipeline(clock=clock)
    f = Feed(0)
    t = NOW - timedelta(hours=2)
    records = [
        f("p", patient("P1", "north", 1, "65-74")), f("p", patient("P2", "north", 1, "65-74")),
        f("p", patient("P3", "south", 5, "85+")), f("p", patient("P4", "south", 5, "85+")),
        f("n", link("P1", "C1", t - timedelta(days=40))),
        f("n", link("P3", "C2", t - timedelta(days=40))), f("n", link("P3", "C3", t - timedelta(days=40))),
        f("a", activity("a1", "P1", "C1", t - timedelta(days=2), 45)),
        f("a", activity("a2", "P1", "C1", t - timedelta(days=2), 15)),
        f("a", activity("a3", "P3", "C2", t - timedelta(days=20), 50)),
        f("a", activity("a4", "P4", "C4", t, 60)),
        f("a", activity("a5", "P9", "C1", t, 10)),
        f("r", b"{oops"), f("a", b"\xff"),
    ]
    p.ingest(records, EXPECTED)
    p.tick()
    return p


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_group_metrics_of_known_events() -> None:
    reg = registry_for(known_pipeline())
    north = {"region": "north", "deprivation_quintile": "1", "age_band": "65-74"}
    south = {"region": "south", "deprivation_quintile": "5", "age_band": "85+"}
    assert value(reg, "monitor_group_patients", **north) == 2
    assert value(reg, "monitor_group_patients", **south) == 2
    expected_status = {
        ("north", "covered"): 1, ("north", "no_support_network"): 1, ("north", "single_carer"): 1,
        ("north", "support_lapsed"): 0,
        ("south", "covered"): 1, ("south", "no_support_network"): 0, ("south", "single_carer"): 2,
        ("south", "support_lapsed"): 1,
    }
    for (region, status), n in expected_status.items():
        labels = north if region == "north" else south
        assert value(reg, "monitor_group_support_patients", **labels, status=status) == n, (region, status)
    assert value(reg, "monitor_group_care_minutes_7d", **north) == pytest.approx(60.0)
    assert value(reg, "monitor_group_care_minutes_7d", **south) == pytest.approx(60.0)  # a3 is 20 days old
    assert value(reg, "monitor_group_active_carer_links", **north) == 1
    assert value(reg, "monitor_group_active_carer_links", **south) == 2
    assert value(reg, "monitor_active_carers") == 3  # C1, C2, C4 (C3 never active)
    assert value(reg, "monitor_unregistered_patients") == 1
    # a group that does not exist has no series
    assert value(reg, "monitor_group_patients", region="north", deprivation_quintile="5",
                 age_band="85+") is None


def test_existing_counters_and_stream_health() -> None:
    reg = registry_for(known_pipeline())
    assert value(reg, "monitor_documents_processed_total", type="Patient") == 4
    assert value(reg, "monitor_documents_processed_total", type="CarerActivity") == 5
    assert value(reg, "monitor_dead_letters_total", reason="malformed_json") == 1
    assert value(reg, "monitor_dead_letters_total", reason="not_utf8") == 1
    assert value(reg, "monitor_patients_without_support", deprivation_quintile="1") == 1
    assert value(reg, "monitor_input_offset_applied", topic="a", partition="0") == 5  # 6 records
    assert value(reg, "monitor_input_offset_applied", topic="p", partition="0") == 3
    assert value(reg, "monitor_event_time_lag_seconds", partition="0") == pytest.approx(2 * 3600)
    assert value(reg, "monitor_partition_idle_seconds", partition="0") == pytest.approx(0.0)
    assert value(reg, "monitor_owned_partitions") == 1
    assert value(reg, "monitor_consumer_lag_messages", topic="a", partition="0") is None  # no hook


def test_consumer_lag_from_high_water_offsets() -> None:
    pipe = known_pipeline()
    reg = registry_for(pipe, highwater=lambda: {("a", 0): 10, ("p", 0): 4, ("r", 1): 5})
    assert value(reg, "monitor_consumer_lag_messages", topic="a", partition="0") == 4  # applied 0..5
    assert value(reg, "monitor_consumer_lag_messages", topic="p", partition="0") == 0
    assert value(reg, "monitor_consumer_lag_messages", topic="r", partition="1") == 5  # not held here
    unknown = registry_for(pipe, highwater=lambda: {("a", 0): None})
    assert value(unknown, "monitor_consumer_lag_messages", topic="a", partition="0") is None

    def broken() -> dict:
        raise RuntimeError("consumer not started")

    failing = registry_for(pipe, highwater=broken)
    assert value(failing, "monitor_consumer_lag_messages", topic="a", partition="0") is None
    assert value(failing, "monitor_group_patients", region="north", deprivation_quintile="1",
                 age_band="65-74") == 2  # the rest of the scrape still works


def test_latency_histograms_when_the_pipeline_keeps_them() -> None:
    pipe = known_pipeline()
    assert value(registry_for(pipe), "monitor_batch_processing_seconds_count") == 1  # one batch fed
    h = LatencyHistogram((0.01, 0.1, 1.0))
    h.observe_many([0.005, 0.05, 0.05, 3.0, -1.0])
    pipe.batch_seconds = h  # type: ignore[attr-defined]
    reg = registry_for(pipe)
    assert value(reg, "monitor_batch_processing_seconds_bucket", le="0.01") == 2
    assert value(reg, "monitor_batch_processing_seconds_bucket", le="0.1") == 4
    assert value(reg, "monitor_batch_processing_seconds_bucket", le="1.0") == 4
    assert value(reg, "monitor_batch_processing_seconds_bucket", le="+Inf") == 5
    assert value(reg, "monitor_batch_processing_seconds_count") == 5
    assert value(reg, "monitor_batch_processing_seconds_sum") == pytest.approx(3.105)


def test_latency_histogram_rejects_bad_buckets() -> None:
    with pytest.raises(ValueError):
        LatencyHistogram(())
    with pytest.raises(ValueError):
        LatencyHistogram((0.1, 0.1))
    with pytest.raises(ValueError):
        LatencyHistogram((0.0, 1.0))


def test_equity_snapshot_measures_and_group_indicators() -> None:
    snap = {
        "as_of_day": 20758, "partitions_reported": 3, "partitions": 8,
        "groups": {"deprivation_quintile": {"1": {"patients": 10, "pct_covered": 40.0,
                                                  "pct_readings_received": None}}},
        "equity": {"deprivation_quintile": {"pct_covered": {"SII": 12.5, "RII": None}},
                   "individual": {"care_minutes_7d": {"gini": 0.4, "lorenz_p": [0.0, 1.0]}}},
    }
    reg = registry_for(Pipeline(clock=clock), equity_snapshot=lambda: snap)
    assert value(reg, "monitor_equity_measure", dimension="deprivation_quintile",
                 indicator="pct_covered", measure="SII") == 12.5
    assert value(reg, "monitor_equity_measure", dimension="deprivation_quintile",
                 indicator="pct_covered", measure="RII") is None
    assert value(reg, "monitor_equity_measure", dimension="individual",
                 indicator="care_minutes_7d", measure="gini") == 0.4
    assert value(reg, "monitor_group_indicator", dimension="deprivation_quintile", group="1",
                 indicator="pct_covered") == 40.0
    assert value(reg, "monitor_group_indicator", dimension="deprivation_quintile", group="1",
                 indicator="patients") == 10
    assert value(reg, "monitor_equity_partitions_reported") == 3
    empty = registry_for(Pipeline(clock=clock))
    assert value(empty, "monitor_equity_partitions_reported") is None
    assert value(empty, "monitor_group_patients", region="north", deprivation_quintile="1",
                 age_band="65-74") is None


def simulated_pipeline(partitions: int = 4) -> tuple[Pipeline, set[str]]:
    """A simulated population spread over ``partitions`` partitions; returns it and every id."""
    cfg = SimConfig(patients=300, days=21, seed=11, end=datetime(2026, 11, 1, tzinfo=UTC),
                    invalid_rate=0.01)
    pipe = Pipeline(clock=lambda: datetime(2026, 11, 1, 0, 30, tzinfo=UTC))
    feeds = {p: Feed(p) for p in range(partitions)}
    ids: set[str] = set()
    records = []
    for typ, doc in generate(cfg):
        if typ.startswith("invalid:"):
            records.append(feeds[0](typ.split(":", 1)[1], doc["raw"].encode()))
            continue
        pid = doc["patient_id"] if "patient_id" in doc else doc["readings"][0]["patient_id"]
        ids.add(pid)
        if "carer_id" in doc:
            ids.add(doc["carer_id"])
        for r in doc.get("readings", [doc]):
            ids.update(str(r[k]) for k in ("reading_id", "device_id", "activity_id") if k in r)
        ids.update(str(doc[k]) for k in ("gateway_id",) if k in doc)
        records.append(feeds[partition_for(pid, partitions)](TOPIC_OF[typ], doc))
    expected = {"readings": "reading", "carer_activity": "carer_activity",
                "care_network": "care_link", "patients": "patient"}
    for i in range(0, len(records), 3000):
        pipe.ingest(records[i:i + 3000], expected)
    pipe.tick()
    return pipe, ids


def test_group_metrics_agree_with_the_partial_summaries_of_the_core() -> None:
    """Oracle: the core's own per-dimension sums (partial_summary via group_sums3) of each partition."""
    pipe, _ = simulated_pipeline()
    table = group_table(pipe)
    assert sum(table.patients) == pipe.patients_by_quintile()[1] + sum(
        pipe.patients_by_quintile()[q] for q in range(2, 6))
    for d, dim in enumerate(("region", "deprivation_quintile", "age_band")):
        ours: dict[str, Counter[str]] = {}
        for i, key in enumerate(table.keys):
            c = ours.setdefault(key[d], Counter())
            c["patients"] += int(table.patients[i])
            c["covered"] += int(table.status["covered"][i])
            c["no_support_network"] += int(table.status["no_support_network"][i])
            c["support_lapsed"] += int(table.status["support_lapsed"][i])
            c["single_carer"] += int(table.status["single_carer"][i])
            c["care_ms_7d"] += round(float(table.care_minutes_7d[i]) * 60_000)
        core: dict[str, Counter[str]] = {}
        for st in pipe.partitions.values():
            summary = st.support.partial_summary(as_of=pipe.effective_time(st))
            for g, counts in summary.groups[dim].items():
                if g == "unknown":
                    continue
                c = core.setdefault(g, Counter())
                for f in ("patients", "covered", "no_support_network", "support_lapsed",
                          "single_carer", "care_ms_7d"):
                    c[f] += getattr(counts, f)
        assert ours == core, dim
    assert table.active_carers > 0
    # the published no_support_network flags (timer) agree with the evaluation behind the gauges
    by_q: Counter[str] = Counter()
    for i, key in enumerate(table.keys):
        by_q[key[1]] += int(table.status["no_support_network"][i])
    assert {int(q): n for q, n in by_q.items()} == {
        q: n for q, n in pipe.unsupported_by_quintile().items() if n}


def test_no_label_value_is_an_identifier() -> None:
    pipe, ids = simulated_pipeline()
    assert len(ids) > 300
    reg = registry_for(pipe, highwater=lambda: {("readings", 0): 10**6})
    seen = 0
    for family in reg.collect():
        for sample in family.samples:
            for label, v in sample.labels.items():
                seen += 1
                assert v not in ids, f"{sample.name}{{{label}={v!r}}} is an identifier"
    assert seen > 500
    text = generate_latest(reg).decode()
    assert not any(i in text for i in ids if len(i) >= 6)


def test_evaluation_is_cached_for_a_short_while() -> None:
    pipe = known_pipeline()
    reg = registry_for(pipe, max_evaluation_age_s=3600)
    north = {"region": "north", "deprivation_quintile": "1", "age_band": "65-74"}
    assert value(reg, "monitor_group_patients", **north) == 2
    pipe.ingest([RawRecord(json.dumps(patient("P5", "north", 1, "65-74")).encode(), "p", 0, 100)],
                EXPECTED)
    assert value(reg, "monitor_group_patients", **north) == 2  # cached
    assert value(registry_for(pipe, max_evaluation_age_s=0), "monitor_group_patients", **north) == 3
