"""Clinician alerting: the rule table, the episode lifecycle and the Alertmanager client.

Pure logic (no Kafka, no faust): :class:`~monitor.alerts.engine.AlertEngine` turns canonical
readings, patients and clock ticks into :class:`~monitor.alerts.engine.AlertEvent` transitions;
:class:`~monitor.alerts.alertmanager.AlertmanagerClient` posts them to Alertmanager's v2 API.
"""

from monitor.alerts.alertmanager import AlertmanagerClient, AlertmanagerError
from monitor.alerts.engine import AlertConfig, AlertEngine, AlertEvent, AlertStateError, alert_id_for
from monitor.alerts.rules import RULES, RULES_BY_ID, Rule, Severity, effective_thresholds, evaluate

__all__ = [
    "RULES",
    "RULES_BY_ID",
    "AlertConfig",
    "AlertEngine",
    "AlertEvent",
    "AlertStateError",
    "AlertmanagerClient",
    "AlertmanagerError",
    "Rule",
    "Severity",
    "alert_id_for",
    "effective_thresholds",
    "evaluate",
]
