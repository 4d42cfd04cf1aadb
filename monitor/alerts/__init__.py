"""Clinician alerting, pure logic apart from one HTTP client: the rule table (``rules``), the
episode lifecycle (``episodes``) over per-(patient, kind) dedup streams (``streams``), fed per
reading or per columnar slice (``columnar``) by the ``AlertEngine`` facade (``engine``), its
snapshot codec (``snapshot``), the reference engine the tests hold it to with the version-1
snapshot layout (``reference``), the notifier's set of firing alerts (``delivery``) and the
Alertmanager v2 client (``alertmanager``, aiohttp). The engine
turns canonical readings, patients and clock ticks (event time, aware UTC) into ``AlertEvent``
transitions and never raises on clinical input. The package may import ``monitor.contract``,
``monitor.intake.canonical`` (with the slice columns of ``monitor.intake.columnar``),
``monitor.core`` and ``monitor.errors``; it never imports ``monitor.pipeline``, ``monitor.stream``,
``monitor.metrics``, Kafka or faust.
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
