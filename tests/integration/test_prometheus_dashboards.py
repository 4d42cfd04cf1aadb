"""Every dashboard query returns data from a real Prometheus scraping a real worker.

Simulator -> Kafka -> worker (``worker`` fixture) -> ``/metrics`` <- Prometheus (the Debian
``prometheus`` binary on a free loopback port, scraping every second, with ``deploy/prometheus/
rules.yml``). Each PromQL expression of each Prometheus panel is run through ``/api/v1/query`` with
the template variables set to "All" and must return at least one series. Panels whose description
says ``requires carers ledger`` or ``requires worker hook`` read metrics that are not exported yet
and are skipped (listed in the test output). Finally, no label value of any scraped series is a
patient or carer id.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.simulate import SimConfig, generate, publish

from .conftest import ROOT, free_port

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARDS = ROOT / "dashboards"
END = datetime(2026, 11, 1, tzinfo=UTC)
CFG = SimConfig(patients=150, days=10, seed=7, end=END, invalid_rate=0.02)
SKIP_MARKERS = ("requires carers ledger", "requires worker hook")
JOB = "coproduction-monitor"  # the job name of deploy/prometheus/prometheus.yml and the dashboards

sys.path.insert(0, str(ROOT / "tests" / "unit"))
from test_dashboards import all_panels, substitute  # noqa: E402

sys.path.pop(0)


class Prometheus:
    """A real Prometheus server in a temporary directory, stopped by :meth:`stop`."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": JOB, "scrape_interval": "1s", "scrape_timeout": "1s",
                                "static_configs": [{"targets": [target]}]}],
        }), encoding="utf-8")
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query", query=expr)["result"]

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"prometheus not ready in {timeout_s} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def prometheus(worker, tmp_path: Path) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (Debian package prometheus)")
    prom = Prometheus(tmp_path, worker.base.removeprefix("http://"))
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


def wait_for(what: str, check, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def dashboard_queries() -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(dashboard, panel title, expr)`` of every Prometheus target, and the skipped panels."""
    queries: list[tuple[str, str, str]] = []
    skipped: list[str] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for p in all_panels(board):
            if p["datasource"]["type"] != "prometheus":
                continue
            if any(m in p.get("description", "").lower() for m in SKIP_MARKERS):
                skipped.append(f"{board['uid']}: {p['title']}")
                continue
            for t in p["targets"]:
                if t.get("datasource", p["datasource"])["type"] == "prometheus":
                    queries.append((board["uid"], p["title"], substitute(t["expr"])))
    return queries, skipped


def test_every_dashboard_query_returns_series_and_no_label_is_an_id(settings, worker, prometheus):
    counts = publish(CFG, settings, progress=False)
    worker.wait_inputs(sum(counts.values()), timeout_s=180)
    wait_for("the population equity snapshot", lambda: worker.get("/equity"), 60)

    wait_for("successful scrapes", lambda: any(
        float(r["value"][1]) >= 5 for r in prometheus.query(f'count_over_time(up{{job="{JOB}"}}[1m])')
    ) and all(float(r["value"][1]) == 1 for r in prometheus.query(f'up{{job="{JOB}"}}')), 60)
    wait_for("the equity measures in Prometheus", lambda: prometheus.query("monitor_equity_measure"), 60)

    queries, skipped = dashboard_queries()
    assert len(queries) > 30
    print(f"\nskipped panels ({len(skipped)}): {skipped}")
    # a few rate() windows need another scrape or two: retry the empty ones for a bounded time
    pending = list(queries)
    deadline = time.monotonic() + 30
    while True:
        pending = [q for q in pending if not prometheus.query(q[2])]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not pending, "queries without series:\n" + "\n".join(f"{d} / {t}: {e}" for d, t, e in pending)

    # the group metrics add up to the worker's registry
    total = prometheus.query(f'sum(monitor_group_patients{{job="{JOB}"}})')
    assert float(total[0]["value"][1]) == CFG.patients

    # the rules file is loaded
    groups = prometheus.api("/api/v1/rules")["groups"]
    assert {g["name"] for g in groups} == {"coproduction-monitor-population",
                                            "coproduction-monitor-pipeline",
                                            "coproduction-monitor-alert-delivery"}

    ids = set()
    for _typ, doc in generate(CFG):
        for key in ("patient_id", "carer_id", "activity_id", "reading_id", "device_id", "gateway_id"):
            if key in doc:
                ids.add(str(doc[key]))
    series = prometheus.api("/api/v1/series", **{"match[]": '{__name__=~"monitor_.+"}'})
    assert len(series) > 100
    offending = [(s["__name__"], k, v) for s in series for k, v in s.items() if v in ids]
    assert not offending, offending[:10]
    for s in series:
        for k, v in s.items():
            assert not (v.startswith("P") and "-" in v and v.split("-")[-1].isdigit()), (s["__name__"], k, v)
