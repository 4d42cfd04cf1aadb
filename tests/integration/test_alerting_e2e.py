"""Clinical alerting end to end: real broker, real worker, real notifier, real Alertmanager, a
webhook receiver.

A glucose of 2.8 mmol/L from a patient without any support network must reach the clinicians'
webhook through Alertmanager as an emergency with ``unsupported`` true; the next normal reading
resolves it; a duplicate of the low reading and a worker restart produce no second notification.
Alertmanager stopped for 60 s in the middle of a stream, and the notifier SIGKILLed meanwhile:
afterwards Alertmanager holds exactly the alerts the topic says are firing, each once.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from monitor.kafka.partitioning import partition_for
from tests.integration.conftest import ROOT, NotifierProcess, WorkerProcess, free_port

pytestmark = pytest.mark.integration

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Webhook:
    """The clinicians' paging system: records every notification Alertmanager sends."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict]:
        return [a for n in self.received for a in n["alerts"]]

    def close(self) -> None:
        self.server.shutdown()


def alertmanager_config(hook_port: int, path: Path) -> Path:
    """deploy/alertmanager.yml with the webhook on our port and short timings for the test."""
    text = (ROOT / "deploy" / "alertmanager.yml").read_text()
    text = text.replace("http://127.0.0.1:9099/hook", f"http://127.0.0.1:{hook_port}/hook")
    text = re.sub(r"group_wait: \S+", "group_wait: 0s", text)
    text = re.sub(r"group_interval: \S+", "group_interval: 1s", text)
    path.write_text(text)
    return path


def start_alertmanager(tmp_path: Path, hook: Webhook, port: int) -> subprocess.Popen:
    """A real Alertmanager on ``port`` sending to ``hook``, ready (its /-/ready answers)."""
    cluster = free_port()
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={alertmanager_config(hook.port, tmp_path / 'am.yml')}",
         f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
         f"--cluster.listen-address=127.0.0.1:{cluster}", "--log.level=warn"],
        stdout=open(tmp_path / "am.log", "wb"), stderr=subprocess.STDOUT,
    )
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError((tmp_path / "am.log").read_text())


class AlertmanagerUnderTest(tuple):
    """``(url, webhook)`` with the process as ``proc`` (a test may restart it)."""

    def __new__(cls, url: str, hook: Webhook, proc: subprocess.Popen):
        obj = super().__new__(cls, (url, hook))
        obj.proc = proc
        return obj


@pytest.fixture
def alertmanager(tmp_path):
    if ALERTMANAGER is None:
        pytest.skip("Debian package prometheus-alertmanager is not installed (.ci/run installs it)")
    hook = Webhook()
    port = free_port()
    am = AlertmanagerUnderTest(f"http://127.0.0.1:{port}", hook, start_alertmanager(tmp_path, hook, port))
    try:
        yield am
    finally:
        am.proc.terminate()
        am.proc.wait(timeout=10)
        hook.close()


def emergency_pages(hook: Webhook) -> list[dict]:
    return [a for a in hook.alerts() if a["status"] == "firing" and a["labels"]["severity"] == "emergency"]


def wait_for(predicate, timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_unsupported_hypoglycaemia_pages_once_and_resolves(env, settings, alertmanager, tmp_path):
    am_url, hook = alertmanager
    env = {**env, "MONITOR_ALERTMANAGER_URL": am_url, "MONITOR_CHECKPOINT_INTERVAL_S": "1",
           "MONITOR_IDLE_AFTER_S": "86400"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    notifier = NotifierProcess(env, tmp_path / "notifier.log")
    notifier.start()
    prod = KafkaProducer(**settings.kafka_python_config())
    pid = "P-ALONE-1"
    part = partition_for(pid, settings.partitions)

    def send(topic: str, doc: dict) -> None:
        prod.send(settings.topics.name(topic), key=pid.encode(), value=json.dumps(doc).encode(),
                  partition=part)
        prod.flush()

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    low = {"reading_id": "low-1", "patient_id": pid, "device_id": "meter", "kind": "glucose",
           "value": 2.8, "unit": "mmol/L", "measured_at": now}
    try:
        send("patients", {"patient_id": pid, "region": "north", "deprivation_quintile": 1,
                          "age_band": "75-84", "conditions": ["diabetes"]})
        send("readings", low)
        # compound risk is the patient's flags at the latest timer evaluation: a patient registered
        # just before the reading may be paged at the rule's level first and escalated at the next
        # timer (1 s here; production's 10 s group_wait for critical never sends that first copy)
        wait_for(lambda: emergency_pages(hook), what="the emergency page")
        firing = emergency_pages(hook)
        assert len(firing) == 1
        labels, annotations = firing[0]["labels"], firing[0]["annotations"]
        assert labels["severity"] == "emergency" and labels["rule"] == "glucose_very_low"
        assert labels["patient_id"] == pid
        assert annotations["unsupported"] == "true"
        assert float(annotations["value"]) == pytest.approx(2.8)

        send("readings", low)  # the same reading again (a second uploader, a retry)
        time.sleep(3)
        worker.stop()  # a restart: state comes back from the checkpoint
        worker.start()
        send("readings", low)
        time.sleep(4)
        assert len(emergency_pages(hook)) == 1

        send("readings", {**low, "reading_id": "ok-1", "value": 6.2, "measured_at": later})
        wait_for(lambda: any(a["status"] == "resolved" and a["labels"]["severity"] == "emergency"
                             for a in hook.alerts()), what="the resolution")
        assert len(emergency_pages(hook)) == 1
    finally:
        prod.close()
        worker.stop()
        notifier.stop()

    consumer = KafkaConsumer(settings.topics.name("alerts"), **settings.kafka_python_config(),
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    events = [json.loads(r.value) for r in consumer]
    consumer.close()
    mine = [e for e in events if e["rule"] == "glucose_very_low"]
    notes = [e["notification"] for e in mine]
    assert notes in (["firing", "resolved"], ["firing", "renotify", "resolved"])  # escalated or not
    assert all(e["escalated_from"] == "critical" for e in mine if e["notification"] == "renotify")
    assert len({e["alert_id"] for e in mine}) == 1
    assert mine[-1]["unsupported"] is True and mine[-1]["severity"] == "emergency"


class Gate:
    """A TCP forwarder in front of Alertmanager that can be shut (new connections refused, open
    ones cut) and opened again: an outage during which Alertmanager keeps its alerts, so a
    resolution that never arrived stays visible as an active alert."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target = free_port(), target_port
        self.server: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.open()

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for sock in (a, b):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def shut(self) -> None:
        assert self.server is not None
        self.server.close()
        for sock in self.conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.conns = []


def active_alerts(am_url: str) -> list[dict]:
    """Alertmanager's API: the alerts it holds that have not ended (silenced/inhibited included)."""
    import urllib.request

    with urllib.request.urlopen(f"{am_url}/api/v2/alerts", timeout=10) as resp:
        return json.loads(resp.read())


def topic_docs(settings, kind: str) -> list[dict]:
    """Every document on the topic of ``kind`` (``alerts``, ``alert_actions``), in order."""
    consumer = KafkaConsumer(settings.topics.name(kind), **settings.kafka_python_config(),
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        return [json.loads(r.value) for r in consumer]
    finally:
        consumer.close()


def topic_events(settings) -> list[dict]:
    return topic_docs(settings, "alerts")


def expected_firing(events: list[dict]) -> dict[str, str]:
    """alert_id -> severity of every episode whose last event on the topic is firing (paged)."""
    last: dict[str, dict] = {}
    for e in events:  # per partition in order; an episode lives on one partition
        last[e["alert_id"]] = e
    return {a: e["severity"] for a, e in last.items()
            if e["status"] == "firing" and e["notification"] != "recorded"}


@pytest.mark.timeout(240)
def test_alertmanager_away_for_60s_and_a_killed_notifier_lose_and_duplicate_nothing(
        env, settings, alertmanager, tmp_path):
    """A stream of lows and recoveries for 30 patients without support. Alertmanager is out of
    reach for 60 s (its port refuses connections; the process keeps its alerts); 20 s into that the
    notifier is SIGKILLed and restarted, and the stream ends 25 s before Alertmanager is back.
    Afterwards Alertmanager's API holds exactly the episodes
    whose last event on the alerts topic is firing, each once and with its latest severity: no
    firing alert lost, no resolution lost (a lost one would leave its alert active for
    resolve_timeout, 3 h). Then Alertmanager itself restarts (it keeps alerts in memory only): the
    notifier's keep-alive gives it every firing alert back. Before the notifier, the worker dropped
    a post that failed (2,952 of 5,741 alerts in a 60 s outage)."""
    am_url, hook = alertmanager
    gate = Gate(int(am_url.rsplit(":", 1)[1]))
    env = {**env, "MONITOR_ALERTMANAGER_URL": f"http://127.0.0.1:{gate.port}",
           "MONITOR_ALERT_REPOST_S": "2", "MONITOR_IDLE_AFTER_S": "86400",
           "MONITOR_NOTIFY_RETRY_WINDOW_S": "3", "MONITOR_SESSION_TIMEOUT_S": "6"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    notifier = NotifierProcess(env, tmp_path / "notifier.log")
    notifier.start()
    prod = KafkaProducer(**settings.kafka_python_config())
    pids = [f"P-OUT-{i}" for i in range(30)]
    low = dict.fromkeys(pids, False)
    sent = 0

    def send(topic: str, pid: str, doc: dict) -> None:
        prod.send(settings.topics.name(topic), key=pid.encode(), value=json.dumps(doc).encode(),
                  partition=partition_for(pid, settings.partitions))

    def stream(seconds: float) -> None:
        nonlocal sent
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pid = pids[sent % len(pids)]
            low[pid] = not low[pid]
            sent += 1
            send("readings", pid, {
                "reading_id": f"r-{sent}", "patient_id": pid, "device_id": "meter", "kind": "glucose",
                "value": 2.6 if low[pid] else 6.1, "unit": "mmol/L",
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30))})
            prod.flush()
            time.sleep(0.2)

    def holds_the_firing_alerts() -> bool:
        want = expected_firing(topic_events(settings))
        have = {a["annotations"]["alert_id"]: a["labels"]["severity"] for a in active_alerts(am_url)}
        return bool(want) and want == have and notifier.metrics()["monitor_notifier_lag_messages"] == 0

    am = alertmanager.proc
    try:
        for i, pid in enumerate(pids):
            send("patients", pid, {"patient_id": pid, "region": "north", "deprivation_quintile": 1 + i % 5,
                                   "age_band": "75-84", "conditions": ["diabetes"]})
        prod.flush()
        stream(10)
        wait_for(lambda: active_alerts(am_url), what="the first alerts in Alertmanager")
        gate.shut()  # 60 s without Alertmanager
        stream(20)
        notifier.kill()
        stream(5)
        notifier.start()
        stream(10)
        # the stream stops 25 s before Alertmanager is back: each patient's last event waits out
        # several retry rounds (3 s here) of the notifier. (Alertmanager identifies an alert by
        # its labels, not by episode: a later episode of the same patient and rule would overwrite
        # an alert whose resolution was lost, hiding the loss.)
        time.sleep(25)
        failures = sum(v for k, v in notifier.metrics().items()
                       if k.startswith("monitor_notifier_post_failures_total"))
        assert failures > 0  # the restarted notifier met the outage
        assert notifier.metrics()["monitor_notifier_oldest_unaccepted_seconds"] > 0
        gate.open()
        wait_for(holds_the_firing_alerts, timeout_s=90, what="Alertmanager to hold the topic's firing alerts")
        ids = [a["annotations"]["alert_id"] for a in active_alerts(am_url)]
        assert len(ids) == len(set(ids))  # each once (an escalation ended its old-severity copy)
        events = topic_events(settings)
        resolved = {e["alert_id"] for e in events if e["status"] == "resolved"}
        assert resolved and not resolved & set(ids)
        assert sent > 200 and len({e["alert_id"] for e in events}) > 100

        am.terminate()  # Alertmanager restarts and has forgotten every alert
        am.wait(timeout=10)
        alertmanager.proc = start_alertmanager(tmp_path, hook, int(am_url.rsplit(":", 1)[1]))
        wait_for(holds_the_firing_alerts, timeout_s=60, what="the firing alerts after Alertmanager's restart")
    finally:
        prod.close()
        worker.stop()
        notifier.stop()


def silences_for(am_url: str, alert_id: str) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(f"{am_url}/api/v2/silences", timeout=10) as resp:
        return [s for s in json.loads(resp.read())
                if s["comment"].startswith(f"ack {alert_id}") and s["status"]["state"] != "expired"]


def actions_on_topic(settings) -> list[dict]:
    return topic_docs(settings, "alert_actions")


@pytest.mark.timeout(240)
def test_an_ack_silences_the_alert_and_an_unacked_one_escalates_once_across_restarts(
        env, settings, alertmanager, tmp_path):
    """Two patients without support, both paged (emergency). Dr A acknowledges one through the
    worker's API: Alertmanager gets a silence for it (its alert suppressed) and it never escalates.
    Nobody answers the other: after MONITOR_ESCALATE_EMERGENCY_S (8 s here) a tier-2 copy reaches
    Alertmanager, once. Worker and notifier restart: still one silence, one escalation. The
    acknowledged episode resolves: its silence ends, so the patient's next episode pages."""
    import urllib.request

    am_url, _hook = alertmanager
    env = {**env, "MONITOR_ALERTMANAGER_URL": am_url, "MONITOR_ALERT_REPOST_S": "2",
           "MONITOR_ESCALATE_EMERGENCY_S": "8", "MONITOR_ESCALATE_CRITICAL_S": "8",
           "MONITOR_IDLE_AFTER_S": "86400", "MONITOR_CHECKPOINT_INTERVAL_S": "1"}
    def credential(role: str, name: str) -> str:
        made = subprocess.run([sys.executable, "-m", "monitor", "credentials", "add", "--role", role,
                               "--name", name], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=True)
        return json.loads(made.stdout)["token"]

    clinician, coordinator = credential("clinician", "dr-a"), credential("coordinator", "coord-b")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    notifier = NotifierProcess(env, tmp_path / "notifier.log")
    notifier.start()
    prod = KafkaProducer(**settings.kafka_python_config())

    def send(topic: str, pid: str, doc: dict) -> None:
        prod.send(settings.topics.name(topic), key=pid.encode(), value=json.dumps(doc).encode(),
                  partition=partition_for(pid, settings.partitions))
        prod.flush()

    def reading(pid: str, rid: str, value: float, ago_s: float) -> dict:
        return {"reading_id": rid, "patient_id": pid, "device_id": "meter", "kind": "glucose",
                "value": value, "unit": "mmol/L",
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - ago_s))}

    token = env["MONITOR_API_TOKEN"]

    def alert_id_of(pid: str) -> str | None:
        """The patient's open alert, from the worker (the clinician's view; fast)."""
        return next((a["alert_id"] for a in worker.get("/patients/alerts", token=token)["alerts"]
                     if a["patient_id"] == pid), None)

    def tier2(pid: str) -> list[dict]:
        return [a for a in active_alerts(am_url)
                if a["labels"]["patient_id"] == pid and a["labels"].get("tier") == "2"]

    try:
        for pid in ("P-ACK", "P-ESC"):
            send("patients", pid, {"patient_id": pid, "region": "north", "deprivation_quintile": 2,
                                   "age_band": "75-84", "conditions": ["diabetes"]})
        time.sleep(2)  # flagged without support at the next timer: the lows page as emergencies
        send("readings", "P-ACK", reading("P-ACK", "a-low", 2.7, 60))
        send("readings", "P-ESC", reading("P-ESC", "e-low", 2.6, 60))
        wait_for(lambda: alert_id_of("P-ACK") and alert_id_of("P-ESC"), what="both alerts on the topic")
        acked = alert_id_of("P-ACK")

        def ack(bearer: str) -> int:
            req = urllib.request.Request(
                f"{worker.base}/alerts/{acked}/ack", method="POST",
                data=json.dumps({"by": "someone else", "note": "called, eating"}).encode(),
                headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        # a coordinator reads the patient-level views but does not acknowledge; the clinician's
        # credential, not the body, says who answered
        assert worker.get("/patients/alerts", token=coordinator)["alerts"]
        assert ack(coordinator) == 403
        assert ack(clinician) == 202
        wait_for(lambda: silences_for(am_url, acked), what="the silence of the acknowledged alert")
        wait_for(lambda: tier2("P-ESC"), timeout_s=30, what="the escalation of the unanswered alert")
        wait_for(lambda: any(a["labels"]["patient_id"] == "P-ACK" and a["status"]["state"] == "suppressed"
                             for a in active_alerts(am_url)), what="the acknowledged alert suppressed")
        metrics = notifier.metrics()
        acks = {k: v for k, v in metrics.items() if k.startswith("monitor_alert_time_to_ack_seconds_count")}
        assert sum(acks.values()) == 1, acks
        (labels,) = [k for k, v in acks.items() if v]
        assert 'region="north"' in labels and 'deprivation_quintile="2"' in labels

        worker.stop()
        notifier.stop()
        worker.start()
        notifier.start()
        time.sleep(10)  # past another escalation period, several keep-alives after the restart
        assert len(silences_for(am_url, acked)) == 1
        assert not tier2("P-ACK") and len(tier2("P-ESC")) == 1
        actions = actions_on_topic(settings)
        assert [a["action"] for a in actions if a["alert_id"] == acked] == ["ack"]
        assert [a["action"] for a in actions if a["alert_id"] == alert_id_of("P-ESC")] == ["escalate"]

        send("readings", "P-ACK", reading("P-ACK", "a-ok", 6.0, 30))
        wait_for(lambda: not silences_for(am_url, acked), what="the silence to end with the episode")
        # who answered, and when: the timeline behind the alert's link
        steps = [e["what"] for e in worker.get(f"/alerts/{acked}", token=token)["timeline"]]
        assert steps[0] == "firing" and steps[-1] == "resolved" and steps.count("ack") == 1
        assert "escalate" not in steps
        ack = next(e for e in worker.get(f"/alerts/{acked}", token=token)["timeline"] if e["what"] == "ack")
        assert ack["by"] == "dr-a" and ack["note"] == "called, eating"
    finally:
        prod.close()
        worker.stop()
        notifier.stop()
