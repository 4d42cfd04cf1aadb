"""``make demo``: a local broker if none is configured, a worker, the notifier, the simulator, a summary.

Starts only what is missing and stops what it started (also on Ctrl-C or an error). The worker runs
as a child process (``coproduction-monitor worker``) on its own web port; the summary is read from the
worker's ``/summary`` endpoint (aggregates only, no patient identifiers). Alerts go to
``MONITOR_ALERTMANAGER_URL`` through the notifier (``coproduction-monitor notify``); when it is unset
and Alertmanager is installed (Debian ``prometheus-alertmanager``), the demo starts one on
127.0.0.1 with ``deploy/alertmanager.yml`` (its receivers are placeholders: it holds the alerts,
the pages go nowhere) and reports how many alerts it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from monitor.settings import Settings


def _get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def wait_for_worker(base: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _get_json(f"{base}/health")
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the worker did not answer on {base} within {timeout_s:.0f} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def start_alertmanager(state: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """A local Alertmanager with ``deploy/alertmanager.yml`` (``None`` when not installed)."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    config = Path(__file__).resolve().parents[1] / "deploy" / "alertmanager.yml"
    if binary is None or not config.exists():
        return None
    port = _free_port()
    state.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.path={state}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
        stdout=open(state / "alertmanager.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/-/ready", timeout=1)  # noqa: S310 - loopback only
            return proc, url
        except OSError:
            time.sleep(0.2)
    _stop(proc)
    return None


def wait_until_processed(base: str, expected_inputs: int, timeout_s: float) -> dict[str, Any]:
    """Poll ``/summary`` until the worker has accounted for ``expected_inputs`` inputs."""
    deadline = time.monotonic() + timeout_s
    summary: dict[str, Any] = {}
    while time.monotonic() < deadline:
        summary = _get_json(f"{base}/summary")
        if summary["inputs"] >= expected_inputs:
            break
        time.sleep(0.5)
    return summary


def run_demo(settings: Settings, *, patients: int, days: int, duration_s: float, seed: int) -> int:
    from monitor.kafka import local
    from monitor.kafka.admin import ensure_topics
    from monitor.simulate import SimConfig, publish

    started_broker = False
    broker = local.LocalBroker(settings.local_kafka_home, port=settings.local_kafka_port)
    worker: subprocess.Popen[bytes] | None = None
    notifier: subprocess.Popen[bytes] | None = None
    alertmanager: subprocess.Popen[bytes] | None = None
    am_url: str | None = None
    base = f"http://{settings.web_host}:{settings.web_port}"
    t0 = time.monotonic()
    try:
        if settings.uses_local_broker:
            if not local.status(broker)["running"]:
                print(f"starting a local Kafka {broker.version} broker on {broker.bootstrap} ...", flush=True)
                local.up(broker)
                started_broker = True
            print(f"broker: {broker.bootstrap} (log: {broker.log_file})", flush=True)
        else:
            print(f"broker: {settings.bootstrap} (KAFKA_BOOTSTRAP_SERVERS)", flush=True)
        ensure_topics(settings)
        env = dict(os.environ)
        log_path = settings.data_dir.parent / "demo-worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"starting the worker (log: {log_path}) ...", flush=True)
        worker = subprocess.Popen(
            [sys.executable, "-m", "monitor", "worker"], env=env,
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_worker(base)
        am_url = settings.alertmanager_url
        if am_url is None:
            started = start_alertmanager(settings.data_dir.parent / "demo-alertmanager")
            if started is not None:
                alertmanager, am_url = started
                print(f"started a local Alertmanager on {am_url}", flush=True)
            else:
                print("no Alertmanager: alerts stay on the alerts topic (set MONITOR_ALERTMANAGER_URL, "
                      "or install prometheus-alertmanager)", flush=True)
        if am_url is not None:
            notify_log = settings.data_dir.parent / "demo-notifier.log"
            print(f"starting the notifier to {am_url} (log: {notify_log}) ...", flush=True)
            notifier = subprocess.Popen(
                [sys.executable, "-m", "monitor", "notify"],
                env={**env, "MONITOR_ALERTMANAGER_URL": am_url, "MONITOR_NOTIFY_PORT": str(_free_port())},
                stdout=open(notify_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        cfg = SimConfig(patients=patients, days=days, seed=seed, invalid_rate=0.0005)
        speed = timedelta(days=days).total_seconds() / max(duration_s, 1.0)
        print(f"simulating {patients} patients over {days} days in about {duration_s:.0f} s ...", flush=True)
        counts = publish(cfg, settings, speed=speed, progress=True)
        total = sum(counts.values())
        summary = wait_until_processed(base, total, timeout_s=90)
        time.sleep(settings.flag_interval_s + 1)  # one more flag evaluation after the last event
        summary = _get_json(f"{base}/summary")
        print_summary(summary, counts, base, time.monotonic() - t0)
        if am_url is not None:
            time.sleep(3)  # the notifier's last fetch
            try:
                held = _get_json(f"{am_url}/api/v2/alerts", timeout=10)
                print(f"alerts firing in Alertmanager ({am_url}): {len(held):,}")
            except OSError as exc:
                print(f"Alertmanager at {am_url} did not answer: {type(exc).__name__}")
        if not counts.complete:  # the broker did not acknowledge everything: say so, fail
            print(counts.loss_report(), file=sys.stderr)
            return 1
        return 0 if summary["inputs"] >= total else 1
    finally:
        for proc in (notifier, worker, alertmanager):
            _stop(proc)
        if started_broker:
            local.down(broker)
            print("stopped the local broker the demo started", flush=True)


def print_summary(summary: dict[str, Any], sent: dict[str, int], base: str, elapsed: float) -> None:
    processed = summary["processed"]
    print("\n=== coproduction-monitor demo summary ===")
    print(f"messages published:        {sum(sent.values()):>9,}  {dict(sorted(sent.items()))}")
    print(f"inputs accounted for:      {summary['inputs']:>9,}")
    print(f"patients registered:       {processed.get('Patient', 0):>9,}")
    print(f"readings processed:        {summary['readings']:>9,}")
    print(f"carer activities:          {processed.get('CarerActivity', 0):>9,}")
    print(f"care-network changes:      {processed.get('CareLink', 0):>9,}")
    dead = summary["dead_letters"]
    print(f"dead letters:              {sum(dead.values()):>9,}  {dead}")
    print("patients without any support network, by deprivation quintile (1 = most deprived):")
    for q in range(1, 6):
        n = summary["patients_by_quintile"][str(q)]
        u = summary["without_support_by_quintile"][str(q)]
        share = 100.0 * u / n if n else 0.0
        print(f"  Q{q}: {u:>6,} of {n:>6,}  ({share:5.1f} %)  {'#' * int(share)}")
    alerts: dict[str, int] = {}
    for key, n in summary.get("alerts_published", {}).items():
        rule, severity, notification = key.split(":")
        if notification == "firing":
            alerts[severity] = alerts.get(severity, 0) + n
    print(f"clinical alerts opened:    {sum(alerts.values()):>9,}  {dict(sorted(alerts.items()))}")
    flags = {k.split(":")[0]: n for k, n in summary.get("flags_published", {}).items()
             if k.endswith(":raised")}
    print(f"coordinator flags raised:  {sum(flags.values()):>9,}  {dict(sorted(flags.items()))}")
    print(f"metrics were served at {base}/metrics (Prometheus); summary at {base}/summary")
    print(f"event-time watermark: {summary['watermark']}; demo took {elapsed:.0f} s")
