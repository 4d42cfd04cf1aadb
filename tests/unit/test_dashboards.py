"""Grafana dashboards, provisioning, the Prometheus config and docker-compose.yml are consistent.

No Docker engine is needed: the compose file is checked structurally (every file it mounts or
builds from exists, every service has an image or a build, references resolve). PromQL syntax is
checked offline with ``promtool check rules`` (every panel expression as a recording rule); the
integration test ``tests/integration/test_prometheus_dashboards.py`` runs them against a real
Prometheus scraping a real worker.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (test dependency) is not installed")

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
PROVISIONING = DASHBOARDS / "provisioning"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROM_TYPE = "prometheus"
INFINITY_TYPE = "yesoreyeram-infinity-datasource"
BUILTIN_VARIABLES = {"__rate_interval", "__range", "__interval", "__range_s", "__interval_ms"}
FILTERED_BOARDS = {"cm-support-coverage", "cm-patients-attention", "cm-carers"}
promtool = shutil.which("promtool")

sys.path.insert(0, str(DASHBOARDS))
import generate  # noqa: E402  (dashboards/generate.py)

sys.path.pop(0)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        for ds in load_yaml(path).get("datasources", []):
            assert ds["uid"] not in out, f"duplicate datasource uid {ds['uid']}"
            out[ds["uid"]] = ds
    return out


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return [p for p in out if p.get("type") != "row"]


def variables_of(text: str) -> set[str]:
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))


def substitute(expr: str) -> str:
    """Template variables -> concrete values (all groups; fixed ranges)."""
    expr = re.sub(r"\$\{?__rate_interval\}?", "1m", expr)
    expr = re.sub(r"\$\{?__range\}?", "1h", expr)
    expr = re.sub(r"\$\{?__interval\}?", "15s", expr)
    return re.sub(r"\$\{?(region|quintile)(:[a-z]+)?\}?", ".*", expr)


def test_there_are_four_dashboards_with_unique_uids() -> None:
    boards = dashboards()
    assert set(boards) == {"support-coverage.json", "patients-attention.json", "carers.json",
                           "pipeline-health.json"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, b in boards.items():
        assert b["title"] and b["uid"], name
        assert 1 <= len(b["uid"]) <= 40, name
        assert int(b["schemaVersion"]) >= 36, name


def test_committed_dashboards_are_what_the_generator_produces() -> None:
    for name, board in generate.boards().items():
        committed = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert committed == generate.render(board), f"dashboards/{name} is stale: run dashboards/generate.py"


@pytest.mark.parametrize("name", sorted(generate.boards()))
def test_panels_are_valid_and_use_provisioned_datasources(name: str) -> None:
    board = dashboards()[name]
    sources = provisioned_datasources()
    panels = all_panels(board)
    assert panels, name
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
    defined = {v["name"] for v in board.get("templating", {}).get("list", [])}
    for p in panels:
        where = f"{name}: panel {p.get('title')!r}"
        assert p.get("title") and p.get("type"), where
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), where
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, where
        ds = p["datasource"]
        assert ds["uid"] in sources, f"{where}: datasource uid {ds['uid']} is not provisioned"
        assert sources[ds["uid"]]["type"] == ds["type"], where
        assert p.get("targets"), f"{where}: no targets"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), where
        for t in p["targets"]:
            tds = t.get("datasource", ds)
            assert tds["uid"] in sources, where
            if tds["type"] == PROM_TYPE:
                assert t.get("expr", "").strip(), f"{where}: target {t['refId']} has no expr"
                unknown = variables_of(t["expr"]) - defined - BUILTIN_VARIABLES
                assert not unknown, f"{where}: undefined template variables {unknown}"
            else:
                assert tds["type"] == INFINITY_TYPE, where
                assert t["type"] == "json" and t["source"] == "url", where
                assert urlparse(t["url"]).path.startswith("/patients/"), where


def test_template_variables_region_and_quintile() -> None:
    for name, board in dashboards().items():
        variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
        if board["uid"] not in FILTERED_BOARDS:
            continue
        assert {"region", "quintile"} <= set(variables), name
        for v in variables.values():
            assert v["datasource"]["uid"] == "monitor-prometheus", name
            assert v["includeAll"] and v["allValue"] == ".*", name
            assert "label_values(" in v["definition"], name
        used = " ".join(t.get("expr", "") for p in all_panels(board) for t in p["targets"])
        assert "$region" in used and "$quintile" in used, f"{name} never filters by its variables"


def test_the_boards_cover_the_issue() -> None:
    exprs = {b["uid"]: " ".join(t.get("expr", "") + t.get("url", "") for p in all_panels(b)
                                for t in p["targets"]) for b in dashboards().values()}
    cov = exprs["cm-support-coverage"]
    for needle in ('status="covered"', "deprivation_quintile", "by (region)", 'no_support_network',
                   "SII", "RII", "ACI", "gini"):
        assert needle in cov, needle
    att = exprs["cm-patients-attention"]
    assert "/patients/unsupported" in att and "/patients/alerts" in att and "support_lapsed" in att
    car = exprs["cm-carers"]
    assert "monitor_active_carers" in car and "monitor_carers_overloaded" in car
    assert "monitor_group_care_minutes_7d" in car
    pipe = exprs["cm-pipeline-health"]
    for needle in ("monitor_documents_processed_total", "monitor_event_time_lag_seconds",
                   "monitor_dead_letters_total", "monitor_alert_notifications_total",
                   "monitor_alert_delay_seconds", "monitor_batch_processing_seconds"):
        assert needle in pipe, needle
    pending = [p["title"] for b in dashboards().values() for p in all_panels(b)
               if "requires " in p.get("description", "")]
    assert pending == []  # every panel is backed by a metric the worker exports
    assert "monitor_participation_measure" in car


@pytest.mark.skipif(promtool is None, reason="promtool not installed")
def test_every_panel_expression_parses(tmp_path: Path) -> None:
    rules = []
    for board in dashboards().values():
        for p in all_panels(board):
            for t in p["targets"]:
                if "expr" in t:
                    rules.append({"record": f"dashboard:check:{len(rules)}", "expr": substitute(t["expr"])})
    assert len(rules) > 30
    path = tmp_path / "panel-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_infinity_datasource_takes_the_token_from_the_environment() -> None:
    sources = provisioned_datasources()
    api = sources["monitor-patient-api"]
    assert api["type"] == INFINITY_TYPE
    assert api["jsonData"]["auth_method"] == "bearerToken"
    assert api["secureJsonData"]["bearerToken"] in ("${MONITOR_API_TOKEN}", "$MONITOR_API_TOKEN")
    allowed = set(api["jsonData"]["allowedHosts"])
    for board in dashboards().values():
        for p in all_panels(board):
            for t in p["targets"]:
                if t.get("datasource", p["datasource"])["type"] == INFINITY_TYPE:
                    u = urlparse(t["url"])
                    assert f"{u.scheme}://{u.netloc}" in allowed, t["url"]
    prom = sources["monitor-prometheus"]
    assert prom["type"] == PROM_TYPE and prom["url"] == "http://prometheus:9090"


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    providers = load_yaml(PROVISIONING / "dashboards" / "dashboards.yml")["providers"]
    compose = load_yaml(COMPOSE)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    for prov in providers:
        path = prov["options"]["path"]
        assert path in mounts, f"provider path {path} is not mounted into grafana"
        assert (ROOT / mounts[path]).resolve() == DASHBOARDS
    assert mounts["/etc/grafana/provisioning/datasources"] == "./dashboards/provisioning/datasources"
    assert "yesoreyeram-infinity-datasource" in compose["services"]["grafana"]["environment"][
        "GF_INSTALL_PLUGINS"]


def _compose_services() -> dict[str, dict[str, Any]]:
    return load_yaml(COMPOSE)["services"]


def test_compose_services_reference_defined_images_builds_and_files() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert {"kafka", "worker-1", "worker-2", "simulator", "prometheus", "alertmanager",
            "grafana"} <= set(services)
    volumes = set(compose.get("volumes") or {})
    built_images = {s["image"] for s in services.values() if "build" in s and "image" in s}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name} has neither image nor build"
        if "build" in svc:
            build = svc["build"]
            context = ROOT / (build["context"] if isinstance(build, dict) else build)
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict)
                                    else "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        elif ":local" in svc["image"]:
            assert svc["image"] in built_images, f"{name}: local image {svc['image']} is never built"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mounted {source} does not exist"
            else:
                assert source in volumes, f"{name}: named volume {source} is not declared"
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on undefined service {dep}"
        for arg in svc.get("command", []) if isinstance(svc.get("command"), list) else []:
            for flag in ("--config.file=",):
                if arg.startswith(flag):
                    target = arg[len(flag):]
                    assert any(v.split(":")[1] == target for v in svc.get("volumes", [])), (name, arg)
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"]), kafka["image"]
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    for w in ("worker-1", "worker-2"):
        env = services[w]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert "MONITOR_API_TOKEN" in env and "?" in env["MONITOR_API_TOKEN"]  # required, never a default


def test_dockerfile_copies_only_existing_paths() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    copies = re.findall(r"^COPY\s+(.+)$", text, flags=re.M)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"deploy/Dockerfile copies missing {src}"
    assert re.search(r"^FROM python:3\.11", text, flags=re.M)
    assert 'ENTRYPOINT ["coproduction-monitor"]' in text


def test_prometheus_scrapes_the_compose_workers_and_alerts_to_alertmanager() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    services = _compose_services()
    assert config["rule_files"] == ["rules.yml"]
    assert (PROMETHEUS_CONFIG.parent / "rules.yml").is_file()
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for sc in jobs["coproduction-monitor"]["static_configs"] for t in sc["targets"]]
    assert {t.split(":")[0] for t in targets} == {"worker-1", "worker-2"}
    for t in targets:
        assert t.split(":")[0] in services
    am = [t for a in config["alerting"]["alertmanagers"] for sc in a["static_configs"]
          for t in sc["targets"]]
    assert am == ["alertmanager:9093"] and "alertmanager" in services
    # the pipeline dashboard's "Workers up" panel and the job name agree
    exprs = [t.get("expr", "") for p in all_panels(dashboards()["pipeline-health.json"])
             for t in p["targets"]]
    assert any('job="coproduction-monitor"' in e for e in exprs)


@pytest.mark.skipif(promtool is None, reason="promtool not installed")
def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
