"""Every alert a person can receive has a runbook, and every page links to it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from monitor.alerts.alertmanager import AlertmanagerClient
from monitor.alerts.episodes import AlertEvent
from monitor.alerts.rules import RULES
from monitor.stream.views import RUNBOOKS, runbook
from tests.unit.test_deploy_configs import ROOT

PROMETHEUS_RULES = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
ALERTS = [r for g in PROMETHEUS_RULES["groups"] for r in g["rules"] if "alert" in r]
NAMES = [r.rule_id for r in RULES] + [r["alert"] for r in ALERTS]


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_has_a_runbook_with_the_sections_a_responder_needs(name: str) -> None:
    text = runbook(name)
    assert text is not None, f"docs/runbooks/{name}.md is missing"
    assert text.startswith(f"# {name}\n")
    for section in ("## What it means", "## First checks"):
        assert section in text


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_prometheus_rules_link_their_runbook(rule: dict) -> None:
    assert rule["annotations"]["runbook_url"].endswith(f"/runbooks/{rule['alert']}")


def test_engine_alerts_link_their_runbook() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    ev = AlertEvent("a", "e", "p", "glucose_very_low", "glucose", "critical", "firing", "firing", False,
                    2.9, 3.0, "mmol/L", at, None, at)
    (alert,) = AlertmanagerClient("http://127.0.0.1:9093", runbook_url="https://m.example/rb/{rule}").alerts_for(ev)
    assert alert["annotations"]["runbook_url"] == "https://m.example/rb/glucose_very_low"
    assert alert["annotations"]["support"] == "has carer support"


@pytest.mark.parametrize("name", ["../README", "glucose_very_low.md", "", "a/b", ".hidden", "x" * 65])
def test_runbook_names_cannot_leave_the_runbooks_folder(name: str) -> None:
    assert runbook(name) is None
    assert RUNBOOKS.name == "runbooks"
