"""Custom Prometheus collectors reading the pipeline state at scrape time.

No metric is updated per event (no ``.labels().inc()`` on the hot path): ``collect()`` reads the
counters and state the pipeline already keeps. No label value is ever a patient or carer identifier;
labels are bounded enumerations (document type, reason code, quintile, region, flag).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from monitor.pipeline import Pipeline


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


def registry_for(pipeline: Pipeline, *,
                 equity_snapshot: Callable[[], dict[str, Any] | None] = lambda: None) -> CollectorRegistry:
    """A fresh registry holding this pipeline's collector.

    ``equity_snapshot`` returns the latest population equity snapshot when this worker is the merge
    point (``monitor.stream.app.population_snapshot`` shape), else None.
    """
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PipelineCollector(pipeline))
    reg.register(EquityCollector(equity_snapshot))
    return reg


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
