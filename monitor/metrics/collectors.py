"""Custom Prometheus collectors reading the pipeline state at scrape time.

No metric is updated per event (no ``.labels().inc()`` on the hot path): ``collect()`` reads the
counters and state the pipeline already keeps. No label value is ever a patient or carer identifier;
labels are bounded enumerations (document type, reason code, quintile, region, age band, flag,
status, input topic and partition number).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from monitor.latency import LatencyHistogram
from monitor.metrics.groups import GROUP_LABELS, STATUSES, CachedGroupTable
from monitor.pipeline import Pipeline, utc_now


class PipelineCollector(Collector):
    """Exposes a :class:`~monitor.pipeline.Pipeline`'s counts and support state."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        p = self.pipeline
        docs = CounterMetricFamily(
            "monitor_documents_processed", "Input documents applied to state, by document type",
            labels=["type"],
        )
        for kind, n in sorted(p.counts.processed.items()):
            docs.add_metric([kind], n)
        yield docs
        yield CounterMetricFamily(
            "monitor_readings_ingested", "Self-monitoring readings applied (batches counted by reading)",
            value=p.counts.readings,
        )
        dl = CounterMetricFamily(
            "monitor_dead_letters", "Rejected inputs sent to the dead-letter topic, by reason code",
            labels=["reason"],
        )
        for reason, n in sorted(p.counts.dead_letters.items()):
            dl.add_metric([reason], n)
        yield dl
        fl = CounterMetricFamily(
            "monitor_flag_transitions", "Support flag transitions published, by flag and status",
            labels=["flag", "status"],
        )
        for key, n in sorted(p.counts.flags_published.items()):
            flag, status = key.split(":")
            fl.add_metric([flag, status], n)
        yield fl
        al = CounterMetricFamily(
            "monitor_alert_notifications", "Clinical alert notifications published, by rule, severity "
            "and notification (firing, renotify, resolved)", labels=["rule", "severity", "notification"],
        )
        for key, n in sorted(p.counts.alerts_published.items()):
            rule, severity, notification = key.split(":")
            al.add_metric([rule, severity, notification], n)
        yield al
        yield CounterMetricFamily(
            "monitor_duplicates", "Re-delivered or re-sent events recognised and applied only once",
            value=p.counts.duplicates,
        )
        patients = GaugeMetricFamily(
            "monitor_patients", "Registered patients held by this worker, by deprivation quintile",
            labels=["deprivation_quintile"],
        )
        for q, n in p.patients_by_quintile().items():
            patients.add_metric([str(q)], n)
        yield patients
        unsup = GaugeMetricFamily(
            "monitor_patients_without_support",
            "Registered patients flagged no_support_network, by deprivation quintile",
            labels=["deprivation_quintile"],
        )
        for q, n in p.unsupported_by_quintile().items():
            unsup.add_metric([str(q)], n)
        yield unsup
        wm = p.watermark
        yield GaugeMetricFamily(
            "monitor_event_time_watermark_seconds",
            "Latest event time seen (seconds since the Unix epoch, UTC)",
            value=wm.timestamp() if wm else 0.0,
        )


HighWater = Callable[[], Mapping[tuple[str, int], int | None]]
"""Returns ``{(topic, partition): high-water offset}`` of the assigned input partitions (the
next offset to be written), e.g. from the faust consumer; used for consumer lag in messages."""


def registry_for(pipeline: Pipeline, *,
                 equity_snapshot: Callable[[], dict[str, Any] | None] = lambda: None,
                 highwater: HighWater | None = None,
                 clock: Callable[[], datetime] | None = None,
                 max_evaluation_age_s: float = 2.0) -> CollectorRegistry:
    """A fresh registry holding this pipeline's collectors.

    ``equity_snapshot`` returns the latest population equity snapshot when this worker is the merge
    point (``monitor.stream.merge.population_snapshot`` shape), else None. ``highwater`` (optional)
    gives the input partitions' high-water offsets for ``monitor_consumer_lag_messages``.
    ``clock`` is the wall clock of the lag gauges (default: the pipeline's); the per-group support
    evaluation is shared by scrapes less than ``max_evaluation_age_s`` apart.
    """
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PipelineCollector(pipeline))
    reg.register(SupportGroupCollector(CachedGroupTable(pipeline, max_evaluation_age_s)))
    reg.register(StreamHealthCollector(pipeline, highwater=highwater, clock=clock or pipeline.clock))
    reg.register(EquityCollector(equity_snapshot))
    return reg


class SupportGroupCollector(Collector):
    """Patients, support statuses, care minutes and carers per group (region x quintile x age band).

    Read from one cached evaluation per partition (:class:`~monitor.metrics.groups.CachedGroupTable`).
    Counts of this worker's partitions: sum over workers in PromQL.
    """

    def __init__(self, table: CachedGroupTable) -> None:
        self.table = table

    def collect(self) -> Iterator[GaugeMetricFamily]:
        t = self.table.get()
        labels = list(GROUP_LABELS)
        patients = GaugeMetricFamily(
            "monitor_group_patients",
            "Registered patients held by this worker, by region, deprivation quintile and age band",
            labels=labels)
        status = GaugeMetricFamily(
            "monitor_group_support_patients",
            "Registered patients by group and support status (covered: a carer contact in the last "
            "7 days; no_support_network; support_lapsed; single_carer - not exclusive)",
            labels=[*labels, "status"])
        minutes = GaugeMetricFamily(
            "monitor_group_care_minutes_7d",
            "Carer minutes in the last 7 days (UTC days) received by the group's patients",
            labels=labels)
        links = GaugeMetricFamily(
            "monitor_group_active_carer_links",
            "Sum over the group's patients of their active carers (activity in the last 28 days)",
            labels=labels)
        for i, key in enumerate(t.keys):
            k = list(key)
            patients.add_metric(k, float(t.patients[i]))
            for s in STATUSES:
                status.add_metric([*k, s], float(t.status[s][i]))
            minutes.add_metric(k, float(t.care_minutes_7d[i]))
            links.add_metric(k, float(t.active_carer_links[i]))
        yield patients
        yield status
        yield minutes
        yield links
        yield GaugeMetricFamily(
            "monitor_active_carers",
            "Distinct carers with an activity in the last 28 days (per partition, summed)",
            value=float(t.active_carers))
        yield GaugeMetricFamily(
            "monitor_unregistered_patients",
            "Patients not registered whose events are held for a registration (grace period)",
            value=float(t.unregistered))
        yield GaugeMetricFamily(
            "monitor_held_events",
            "Events of unregistered patients held for a registration (capped per partition; "
            "dead-lettered unknown_patient after the grace period)",
            value=float(t.held_events))
        yield GaugeMetricFamily(
            "monitor_support_evaluation_seconds",
            "Wall time of the latest per-group support evaluation behind these metrics",
            value=t.evaluation_seconds)


class StreamHealthCollector(Collector):
    """Offsets, lag, idle time and processing latency of the input partitions held here."""

    def __init__(self, pipeline: Pipeline, *, highwater: HighWater | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.pipeline = pipeline
        self.highwater = highwater
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        p = self.pipeline
        now = self.clock().timestamp()
        applied = GaugeMetricFamily(
            "monitor_input_offset_applied", "Highest offset applied to the state, by input topic and "
            "partition (rate() of it = consumption rate)", labels=["topic", "partition"])
        lag_s = GaugeMetricFamily(
            "monitor_event_time_lag_seconds", "Wall clock now minus the partition's event-time "
            "watermark (latest event time seen)", labels=["partition"])
        idle = GaugeMetricFamily(
            "monitor_partition_idle_seconds", "Seconds since the partition last applied an event",
            labels=["partition"])
        for n in sorted(p.partitions):
            st = p.partitions[n]
            for topic, off in sorted(st.offsets.items()):
                applied.add_metric([topic, str(n)], float(off))
            if st.support.watermark_s is not None:
                lag_s.add_metric([str(n)], now - st.support.watermark_s)
            if st.last_arrival is not None:
                idle.add_metric([str(n)], max(0.0, now - st.last_arrival.timestamp()))
        yield applied
        yield lag_s
        yield idle
        yield GaugeMetricFamily("monitor_owned_partitions", "Input partitions held by this worker",
                                value=float(len(p.partitions)))
        lag = GaugeMetricFamily(
            "monitor_consumer_lag_messages", "High-water offset minus the next offset to apply, by "
            "input topic and partition", labels=["topic", "partition"])
        marks: Mapping[tuple[str, int], int | None] = {}
        if self.highwater is not None:
            try:
                marks = self.highwater()
            except Exception:  # consumer not started or rebalancing: no lag samples this scrape
                marks = {}
        for (topic, part), hw in sorted(marks.items()):
            if hw is not None:  # unknown until the first fetch response of the partition
                st = p.partitions.get(part)
                done = st.offsets.get(topic, -1) + 1 if st is not None else 0
                lag.add_metric([topic, str(part)], float(max(0, int(hw) - done)))
        yield lag
        for attr, name, doc in (
            ("batch_seconds", "monitor_batch_processing_seconds",
             "Wall time to decode, validate and apply one ingested batch"),
            ("alert_delay_seconds", "monitor_alert_delay_seconds",
             "Reading measured -> alert notification decided (firing notifications from ingest)"),
        ):
            h = getattr(p, attr, None)
            if isinstance(h, LatencyHistogram):
                yield HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


class EquityCollector(Collector):
    """Population equity snapshot (only on the worker that is the merge point)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot()
        measures = GaugeMetricFamily(
            "monitor_equity_measure",
            "Population inequality measure (WHO HEAT definitions) by dimension and indicator",
            labels=["dimension", "indicator", "measure"],
        )
        if snap:
            for dim, indicators in sorted(snap.get("equity", {}).items()):
                for indicator, values in sorted(indicators.items()):
                    for measure, value in sorted(values.items()):
                        if isinstance(value, int | float) and not isinstance(value, bool):
                            measures.add_metric([dim, indicator, measure], float(value))
        yield measures
        groups = GaugeMetricFamily(
            "monitor_group_indicator",
            "Population group indicator (all partitions merged): patients, pct_covered, "
            "pct_no_support_network, mean_care_minutes_per_week, pct_readings_received",
            labels=["dimension", "group", "indicator"],
        )
        reported = GaugeMetricFamily(
            "monitor_equity_partitions_reported",
            "Input partitions whose partial summary is in the population equity snapshot",
            labels=[],
        )
        if snap:
            for dim, per_group in sorted(snap.get("groups", {}).items()):
                for group, values in sorted(per_group.items()):
                    for indicator, value in sorted(values.items()):
                        if isinstance(value, int | float) and not isinstance(value, bool):
                            groups.add_metric([dim, str(group), indicator], float(value))
            if "partitions_reported" in snap:
                reported.add_metric([], float(snap["partitions_reported"]))
        yield groups
        yield reported
        yield from _carer_metrics(snap or {})


def _carer_metrics(snap: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    """Carers' view from the merge point's snapshot: overload, hours, participation measures."""
    from datetime import datetime, timedelta

    from monitor.carers.ledger import week_of

    carers = snap.get("carers") or {}
    overloaded = GaugeMetricFamily(
        "monitor_carers_overloaded",
        "Carers with at least 35 hours (2100 minutes) of care in the ISO week, all patients summed",
        labels=["period"],
    )
    hours = GaugeMetricFamily("monitor_carer_hours", "Hours of informal care logged in the ISO week",
                              labels=["period"])
    active = GaugeMetricFamily("monitor_carers_in_week", "Carers with any activity in the ISO week",
                               labels=["period"])
    if carers.get("as_of"):
        at = datetime.fromisoformat(carers["as_of"])
        for period, week in (("current", week_of(at)), ("last", week_of(at - timedelta(days=7)))):
            w = carers.get("weeks", {}).get(week, {"carers": 0, "hours": 0.0, "overloaded": 0})
            overloaded.add_metric([period], float(w["overloaded"]))
            hours.add_metric([period], float(w["hours"]))
            active.add_metric([period], float(w["carers"]))
    yield overloaded
    yield hours
    yield active
    participation = GaugeMetricFamily(
        "monitor_participation_measure",
        "Who takes part: inequality (HEAT) of carer participation and self-monitoring by group",
        labels=["dimension", "indicator", "measure"],
    )
    part = carers.get("participation") or {}
    tables = {**part.get("equity", {}), "individual": part.get("individual", {})}
    for dim, indicators in sorted(tables.items()):
        for indicator, values in sorted(indicators.items()):
            for measure, value in sorted(values.items()):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    participation.add_metric([dim, indicator, measure], float(value))
    yield participation
