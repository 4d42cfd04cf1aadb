"""Generate the Grafana dashboards of coproduction-monitor (``python dashboards/generate.py``).

The JSON files next to this script are its output and are committed; ``tests/unit/test_dashboards.py``
fails when they differ from what this script produces, so edit here and re-run.

Datasources are referenced by the uids provisioned in ``dashboards/provisioning/datasources/``:
``monitor-prometheus`` (Prometheus) and ``monitor-patient-api`` (the Infinity plugin, reading the
workers' token-protected JSON API). Conventions the tests rely on:

* every Prometheus target has an ``expr``; template variables are ``$region`` and ``$quintile``
  (regex matchers, "All" = ``.*``);
* a panel whose description contains ``requires carers ledger`` or ``requires worker hook`` reads a
  metric that is not exported yet (see the description); the integration test skips it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROM = {"type": "prometheus", "uid": "monitor-prometheus"}
API = {"type": "yesoreyeram-infinity-datasource", "uid": "monitor-patient-api"}
WORKERS = ("http://worker-1:6066", "http://worker-2:6066")
SCHEMA_VERSION = 39
F = 'region=~"$region",deprivation_quintile=~"$quintile"'
LEDGER = "(requires carers ledger: monitor_carers_overloaded is added by the carers-ledger work)"
HOOK = ("(requires worker hook: exported once the pipeline/app hook described in "
        "monitor/metrics/collectors.py is wired)")


def _variables() -> dict[str, Any]:
    def var(name: str, label: str, source_label: str) -> dict[str, Any]:
        query = f"label_values(monitor_group_patients, {source_label})"
        return {
            "name": name, "label": label, "type": "query", "datasource": PROM,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 3, "hide": 0, "options": [],
        }
    return {"list": [var("region", "Region", "region"),
                     var("quintile", "Deprivation quintile (1 = most deprived)", "deprivation_quintile")]}


class Board:
    """Panels laid out left to right, 24 columns per row."""

    def __init__(self, uid: str, title: str, description: str, tags: list[str]) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def to_json(self, variables: bool = True) -> dict[str, Any]:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["coproduction-monitor", *self.tags], "timezone": "utc",
            "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True,
            "graphTooltip": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
            "templating": _variables() if variables else {"list": []},
            "annotations": {"list": []}, "links": [], "panels": self.panels,
        }


def prom(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": PROM, "expr": expr, "legendFormat": legend or "__auto",
            "range": not instant, "instant": instant}


def panel(kind: str, title: str, description: str, targets: list[dict[str, Any]], *,
          unit: str = "short", decimals: int | None = None, options: dict[str, Any] | None = None,
          ds: dict[str, Any] = PROM, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    p = {"type": kind, "title": title, "description": description, "datasource": ds,
         "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
         "options": options or {}}
    p.update(extra or {})
    return p


def ratio(status: str, by: str) -> str:
    return (f'100 * sum by ({by}) (monitor_group_support_patients{{status="{status}",{F}}})'
            f" / sum by ({by}) (monitor_group_patients{{{F}}})")


BAR = {"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
       "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
STAT = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value", "graphMode": "area", "textMode": "auto"}


def coverage() -> Board:
    b = Board("cm-support-coverage", "Support coverage and inequality",
              "Who is covered by carers, who has no support network, and how unequal coverage is "
              "across deprivation quintiles and regions (WHO HEAT measures from the merge point).",
              ["equity"])
    b.add(panel("stat", "Patients covered (carer contact in 7 days)",
                "Share of registered patients (selected groups) with a carer contact in the last 7 UTC days.",
                [prom(f'100 * sum(monitor_group_support_patients{{status="covered",{F}}}) / '
                      f"sum(monitor_group_patients{{{F}}})")], unit="percent", decimals=1,
                options=STAT), 6, 5)
    b.add(panel("stat", "Patients without a support network",
                "Registered patients with no registered carer and no carer active in 28 days.",
                [prom(f'sum(monitor_group_support_patients{{status="no_support_network",{F}}})')],
                options=STAT), 6, 5)
    b.add(panel("stat", "Lapsed support networks",
                "A carer registered (or ever in contact) but no contact in the last 14 days.",
                [prom(f'sum(monitor_group_support_patients{{status="support_lapsed",{F}}})')],
                options=STAT), 6, 5)
    b.add(panel("stat", "Registered patients", "Registered patients in the selected groups.",
                [prom(f"sum(monitor_group_patients{{{F}}})")], options=STAT), 6, 5)
    b.add(panel("bargauge", "Coverage by deprivation quintile (1 = most deprived)",
                "Share of patients with a carer contact in the last 7 days, per quintile.",
                [prom(ratio("covered", "deprivation_quintile"), "Q{{deprivation_quintile}}",
                      instant=True)], unit="percent", decimals=1,
                options=BAR | {"minVizHeight": 10}), 12, 9)
    b.add(panel("bargauge", "Coverage by region", "Share of patients with a carer contact in the "
                "last 7 days, per region.",
                [prom(ratio("covered", "region"), "{{region}}", instant=True)], unit="percent",
                decimals=1, options=BAR), 12, 9)
    b.add(panel("timeseries", "Patients without a support network, by quintile",
                "Count over time; the flag timer re-evaluates every few seconds.",
                [prom(f'sum by (deprivation_quintile) (monitor_group_support_patients'
                      f'{{status="no_support_network",{F}}})', "Q{{deprivation_quintile}}")]), 12, 8)
    b.add(panel("timeseries", "Share without a support network, by region",
                "Percent of the region's registered patients.",
                [prom(ratio("no_support_network", "region"), "{{region}}")], unit="percent"), 12, 8)
    eq = 'monitor_equity_measure{dimension="deprivation_quintile",indicator="pct_covered"'
    b.add(panel("timeseries", "Coverage inequality: SII and ACI (quintiles)",
                "Slope index of inequality (percentage points between the least and most deprived "
                "ends of the ranked population) and absolute concentration index of pct_covered, "
                "population-wide (merge point). Positive = coverage favours the less deprived.",
                [prom(f'{eq},measure=~"SII|ACI"}}', "{{measure}}")]), 8, 8)
    b.add(panel("timeseries", "Coverage inequality: RII (quintiles)",
                "Relative index of inequality of pct_covered (1 = equal).",
                [prom(f'{eq},measure="RII"}}', "RII")]), 8, 8)
    b.add(panel("timeseries", "No-support inequality: SII (quintiles)",
                "Slope index of inequality of pct_no_support_network (adverse indicator).",
                [prom('monitor_equity_measure{dimension="deprivation_quintile",'
                      'indicator="pct_no_support_network",measure=~"SII|ACI"}', "{{measure}}")]), 8, 8)
    b.add(panel("timeseries", "Gini and Theil of care minutes (7 days)",
                "Individual-level inequality of carer minutes per patient (0 = equal).",
                [prom('monitor_equity_measure{dimension="individual",indicator="care_minutes_7d",'
                      'measure=~"gini|theil_t"}', "{{measure}}")]), 12, 8)
    b.add(panel("table", "Population indicators by region (merge point)",
                "Group indicators of the population snapshot (all partitions merged).",
                [prom('monitor_group_indicator{dimension="region",indicator=~"pct_covered|'
                      'pct_no_support_network|mean_care_minutes_per_week"}', instant=True)],
                options={"showHeader": True},
                extra={"transformations": [
                    {"id": "labelsToFields", "options": {"mode": "columns"}},
                    {"id": "groupingToMatrix", "options": {"columnField": "indicator",
                                                          "rowField": "group", "valueField": "Value"}},
                ]}), 12, 8)
    return b


def _api_table(title: str, description: str, path: str, root: str,
               columns: list[tuple[str, str, str]]) -> dict[str, Any]:
    targets = []
    for i, base in enumerate(WORKERS):
        targets.append({
            "refId": chr(ord("A") + i), "datasource": API, "type": "json", "source": "url",
            "format": "table", "parser": "backend", "url": f"{base}{path}",
            "url_options": {"method": "GET", "data": ""}, "root_selector": root,
            "columns": [{"selector": s, "text": t, "type": ty} for s, t, ty in columns],
        })
    return panel("table", title, description, targets, ds=API,
                 options={"showHeader": True, "cellHeight": "sm"},
                 extra={"transformations": [{"id": "merge", "options": {}}],
                        "fieldConfig": {"defaults": {"custom": {"filterable": True}},
                                        "overrides": []}})


def attention() -> Board:
    b = Board("cm-patients-attention", "Patients needing attention",
              "For care coordinators: patients without a support network, lapsed networks and open "
              "clinical alerts. Tables read the workers' token-protected JSON API (/patients/*) "
              "through the Infinity datasource (bearer token MONITOR_API_TOKEN from provisioning); "
              "each worker lists the patients of its partitions, so every worker is queried.",
              ["coordinators"])
    b.add(panel("stat", "Without a support network",
                "Registered patients flagged no_support_network (selected groups).",
                [prom(f'sum(monitor_group_support_patients{{status="no_support_network",{F}}})')],
                options=STAT), 8, 4)
    b.add(panel("stat", "Lapsed networks", "Registered patients flagged support_lapsed.",
                [prom(f'sum(monitor_group_support_patients{{status="support_lapsed",{F}}})')],
                options=STAT), 8, 4)
    b.add(panel("stat", "Open clinical alert episodes (approx.)",
                "Firing notifications minus resolved notifications since the workers started.",
                [prom('sum(monitor_alert_notifications_total{notification="firing"}) - '
                      '(sum(monitor_alert_notifications_total{notification="resolved"}) or vector(0))')],
                options=STAT), 8, 4)
    cols = [("patient_id", "Patient", "string"), ("region", "Region", "string"),
            ("deprivation_quintile", "Quintile", "number"), ("flags", "Flags", "string")]
    b.add(_api_table("Patients without a support network",
                     "From /patients/unsupported: published flags include no_support_network.",
                     "/patients/unsupported", 'patients["no_support_network" in flags]', cols), 12, 12)
    b.add(_api_table("Lapsed support networks",
                     "From /patients/unsupported: published flags include support_lapsed.",
                     "/patients/unsupported", 'patients["support_lapsed" in flags]', cols), 12, 12)
    b.add(_api_table("Open clinical alerts", "From /patients/alerts: firing episodes.",
                     "/patients/alerts", "alerts",
                     [("patient_id", "Patient", "string"), ("rule", "Rule", "string"),
                      ("severity", "Severity", "string"), ("unsupported", "No support", "string"),
                      ("value", "Value", "number"), ("threshold", "Threshold", "number"),
                      ("unit", "Unit", "string"), ("opened_at", "Opened", "timestamp"),
                      ("region", "Region", "string")]), 24, 12)
    return b


def carers() -> Board:
    b = Board("cm-carers", "Carers", "Informal carers' contribution: active carers, care hours, "
              "single-carer networks and overloaded carers.", ["carers"])
    b.add(panel("stat", "Active carers (28 days)",
                "Distinct carers with an activity in the last 28 days (all patients; a carer of "
                "patients in two partitions counts twice).",
                [prom("sum(monitor_active_carers)")], options=STAT), 6, 5)
    b.add(panel("stat", "Care hours in the last 7 days", "Carer hours received by the selected groups.",
                [prom(f"sum(monitor_group_care_minutes_7d{{{F}}}) / 60")], unit="h", decimals=0,
                options=STAT), 6, 5)
    b.add(panel("stat", "Carers over 35 h/week",
                "Carers with at least 35 hours (2100 minutes) of care in the current ISO week, summed "
                "over all the patients they support (UK Carer's Allowance threshold).",
                [prom('sum(monitor_carers_overloaded{period="current"})')], options=STAT), 6, 5)
    b.add(panel("timeseries", "Carer participation gap by deprivation (SII)",
                "Slope index of inequality of active carers per 100 patients across deprivation "
                "quintiles (linear SII; positive = more carers in less deprived areas).",
                [prom('monitor_participation_measure{dimension="deprivation_quintile",'
                      'indicator="active_carers_per_100_patients",measure="SII"}')]), 12, 8)
    b.add(panel("stat", "Gini of care minutes across carers",
                "How unequally the care load is shared among carers (28 days; 0 = equal).",
                [prom('monitor_participation_measure{dimension="individual",measure="gini"}')],
                decimals=3, options=STAT), 6, 5)
    b.add(panel("stat", "Single-carer networks", "Patients with exactly one active carer.",
                [prom(f'sum(monitor_group_support_patients{{status="single_carer",{F}}})')],
                options=STAT), 6, 5)
    b.add(panel("timeseries", "Care hours per patient per week, by quintile",
                "Carer minutes in the last 7 days / registered patients, in hours.",
                [prom(f"sum by (deprivation_quintile) (monitor_group_care_minutes_7d{{{F}}}) / 60 / "
                      f"sum by (deprivation_quintile) (monitor_group_patients{{{F}}})",
                      "Q{{deprivation_quintile}}")], unit="h"), 12, 8)
    b.add(panel("timeseries", "Active carers per patient, by region",
                "Average number of carers active in the last 28 days per registered patient.",
                [prom(f"sum by (region) (monitor_group_active_carer_links{{{F}}}) / "
                      f"sum by (region) (monitor_group_patients{{{F}}})", "{{region}}")]), 12, 8)
    b.add(panel("bargauge", "Care hours (7 days) by age band", "Carer hours received per age band.",
                [prom(f"sum by (age_band) (monitor_group_care_minutes_7d{{{F}}}) / 60", "{{age_band}}",
                      instant=True)], unit="h", options=BAR), 12, 8)
    b.add(panel("timeseries", "Carer activities applied per second", "Throughput of carer activities.",
                [prom('sum(rate(monitor_documents_processed_total{type="CarerActivity"}'
                      '[$__rate_interval]))', "activities/s")], unit="ops"), 12, 8)
    return b


def pipeline() -> Board:
    b = Board("cm-pipeline-health", "Pipeline health",
              "Throughput, lag, dead letters, duplicates, latency and alert notifications of the workers.",
              ["platform"])
    b.add(panel("stat", "Workers up", "Scrape targets of the worker job that answer.",
                [prom('sum(up{job="coproduction-monitor"})')], options=STAT), 6, 4)
    b.add(panel("stat", "Input partitions held", "Sum over workers (should equal MONITOR_PARTITIONS).",
                [prom("sum(monitor_owned_partitions)")], options=STAT), 6, 4)
    b.add(panel("stat", "Partitions in the equity snapshot", "Reported to the merge point.",
                [prom("max(monitor_equity_partitions_reported)")], options=STAT), 6, 4)
    b.add(panel("stat", "Support evaluation time (max)", "Wall time of the per-group evaluation "
                "behind the group metrics (one per partition per scrape, cached 2 s).",
                [prom("max(monitor_support_evaluation_seconds)")], unit="s", options=STAT), 6, 4)
    b.add(panel("timeseries", "Documents applied per second, by type", "Input throughput.",
                [prom("sum by (type) (rate(monitor_documents_processed_total[$__rate_interval]))",
                      "{{type}}"),
                 prom("sum(rate(monitor_readings_ingested_total[$__rate_interval]))", "readings",
                      ref="B")], unit="ops"), 12, 8)
    b.add(panel("timeseries", "Messages consumed per second, by topic",
                "rate() of the highest applied offset per input partition.",
                [prom("sum by (topic) (rate(monitor_input_offset_applied[$__rate_interval]))",
                      "{{topic}}")], unit="ops"), 12, 8)
    b.add(panel("timeseries", "Event-time lag (max over partitions)",
                "Now minus the partition's latest event time. Grows when no data arrives or "
                "gateways upload late; a replayed history shows its age.",
                [prom("max by (instance) (monitor_event_time_lag_seconds)", "{{instance}}")],
                unit="s"), 8, 8)
    b.add(panel("timeseries", "Idle time (max over partitions)",
                "Seconds since a partition last applied an event.",
                [prom("max by (instance) (monitor_partition_idle_seconds)", "{{instance}}")],
                unit="s"), 8, 8)
    b.add(panel("timeseries", "Consumer lag (messages)",
                "High-water offset minus the next offset to apply, per topic.",
                [prom("sum by (topic) (monitor_consumer_lag_messages)", "{{topic}}")]), 8, 8)
    b.add(panel("timeseries", "Dead letters per second, by reason",
                "Rejected inputs (see the README's reason codes).",
                [prom("sum by (reason) (rate(monitor_dead_letters_total[$__rate_interval]))",
                      "{{reason}}")], unit="ops"), 12, 8)
    b.add(panel("timeseries", "Duplicates and flag transitions per second",
                "Re-delivered events applied once; support flags raised/cleared.",
                [prom("sum(rate(monitor_duplicates_total[$__rate_interval]))", "duplicates"),
                 prom("sum by (flag, status) (rate(monitor_flag_transitions_total[$__rate_interval]))",
                      "{{flag}} {{status}}", ref="B")], unit="ops"), 12, 8)
    b.add(panel("timeseries", "Batch processing time (p50, p95)",
                "Wall time to decode, validate and apply one batch.",
                [prom("histogram_quantile(0.5, sum by (le) "
                      "(rate(monitor_batch_processing_seconds_bucket[$__rate_interval])))", "p50"),
                 prom("histogram_quantile(0.95, sum by (le) "
                      "(rate(monitor_batch_processing_seconds_bucket[$__rate_interval])))", "p95",
                      ref="B")], unit="s"), 8, 8)
    b.add(panel("timeseries", "Alert latency (p95): reading measured -> alert decided",
                "Includes the device's upload delay.",
                [prom("histogram_quantile(0.95, sum by (le) "
                      "(rate(monitor_alert_delay_seconds_bucket[$__rate_interval])))", "p95")],
                unit="s"), 8, 8)
    b.add(panel("timeseries", "Alert notifications by rule and severity",
                "Clinical alert notifications (firing) over the selected range.",
                [prom('sum by (rule, severity) (increase(monitor_alert_notifications_total'
                      '{notification="firing"}[$__range]))', "{{rule}} ({{severity}})")]), 8, 8)
    return b


def boards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON."""
    return {
        "support-coverage.json": coverage().to_json(),
        "patients-attention.json": attention().to_json(),
        "carers.json": carers().to_json(),
        "pipeline-health.json": pipeline().to_json(variables=False),
    }


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, sort_keys=False) + "\n"


def main() -> None:
    for name, board in boards().items():
        (HERE / name).write_text(render(board), encoding="utf-8")
        print(f"wrote dashboards/{name}")


if __name__ == "__main__":
    main()
