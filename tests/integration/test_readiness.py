"""Readiness follows the broker: a private broker is stopped and started again under a running
intake and a running worker.

The broker is this module's own (``monitor.kafka.local.LocalBroker`` in a temporary folder, on free
ports, with the project's cached jars): the shared test broker (``KAFKA_BOOTSTRAP_SERVERS``, or the
project's local one on 127.0.0.1:9092) is never stopped. Each test leaves the broker running.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from monitor.intake.http import create_intake_app
from monitor.intake.serve import ProbingPublisher, attach_publisher
from monitor.kafka import local
from monitor.kafka.admin import ensure_topics
from tests.integration.conftest import ROOT, deployment_env, free_port, settings_from

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalBroker]:
    """A broker of this module only, stopped at its end."""
    jars = local.fetch_jars(local.LocalBroker(ROOT / ".kafka"))  # the project's cache (no-op when cached)
    home = tmp_path_factory.mktemp("private-kafka")
    port = free_port()
    controller = free_port()
    while controller == port:
        controller = free_port()
    broker = local.LocalBroker(home, port=port, controller_port=controller)
    assert broker.bootstrap != "127.0.0.1:9092"
    (home / broker.jar_dir.name).symlink_to(jars.resolve(), target_is_directory=True)
    local.up(broker)
    try:
        yield broker
    finally:
        local.down(broker)


async def wait_status(get: Any, want: int, within_s: float) -> tuple[float, dict[str, Any]]:
    """Poll ``get()`` (-> status, body) every 0.25 s until it answers ``want``; (seconds, body)."""
    t0 = time.monotonic()
    last: Any = None
    while time.monotonic() - t0 < within_s:
        try:
            status, body = await get()
        except (OSError, aiohttp.ClientError) as exc:
            status, body = None, repr(exc)
        if status == want:
            return time.monotonic() - t0, body
        last = (status, body)
        await asyncio.sleep(0.25)
    raise AssertionError(f"no {want} within {within_s} s; last answer {last}")


@pytest.mark.timeout(120)
def test_intake_readyz_follows_the_broker(private_broker: local.LocalBroker, tmp_path: Path) -> None:
    settings = settings_from(deployment_env(private_broker.bootstrap, tmp_path))
    ensure_topics(settings)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    timings: dict[str, float] = {}

    async def go() -> None:
        publisher = ProbingPublisher(settings)
        app = create_intake_app(settings, publisher)
        attach_publisher(app, publisher)
        runner = web.AppRunner(app)
        await runner.setup()
        loop = asyncio.get_running_loop()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            async with aiohttp.ClientSession() as session:

                async def readyz() -> tuple[int, Any]:
                    async with session.get(base + "/readyz") as resp:
                        return resp.status, await resp.json()

                async def healthz() -> int:
                    async with session.get(base + "/healthz") as resp:
                        return resp.status

                timings["ready"], body = await wait_status(readyz, 200, 10)
                assert body["status"] == "ready"

                stopping = loop.run_in_executor(None, local.down, private_broker)  # SIGTERM now
                timings["not_ready_after_sigterm"], body = await wait_status(readyz, 503, 15)
                await stopping
                assert body["status"] == "not_ready"
                assert body["reason"] in ("broker_unreachable", "broker_timeout")
                assert await healthz() == 200  # liveness does not follow the broker

                t0 = time.monotonic()
                await loop.run_in_executor(None, local.up, private_broker)
                timings["broker_start"] = time.monotonic() - t0
                timings["ready_after_start"], body = await wait_status(readyz, 200, 30)
                assert body["status"] == "ready"
        finally:
            await runner.cleanup()

    asyncio.run(go())
    print("intake readiness timings (s):", {k: round(v, 2) for k, v in timings.items()})


# The worker as ``coproduction-monitor worker`` runs it, with /readyz registered (a no-op once
# monitor.stream.app.create_app registers it itself: add_readiness is idempotent).
WORKER = """
import monitor.stream.app as worker_app
from monitor.settings import load_settings
from monitor.stream.health import add_readiness

plain_create_app = worker_app.create_app


def create_app(settings, *args, **kwargs):
    app = plain_create_app(settings, *args, **kwargs)
    add_readiness(app, app.partition_manager, settings)
    return app


worker_app.create_app = create_app
worker_app.run_worker(load_settings())
"""


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.timeout(120)
def test_worker_readyz_follows_the_broker(private_broker: local.LocalBroker, tmp_path: Path) -> None:
    env = deployment_env(private_broker.bootstrap, tmp_path)
    ensure_topics(settings_from(env))
    base = f"http://127.0.0.1:{env['MONITOR_WEB_PORT']}"
    log = tmp_path / "worker.log"
    timings: dict[str, float] = {}
    proc = subprocess.Popen([sys.executable, "-c", WORKER], env=env, cwd=ROOT, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)

    async def get(path: str) -> tuple[int, Any]:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        return await asyncio.get_running_loop().run_in_executor(None, http_get, base + path)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        timings["live"], _ = await wait_status(lambda: get("/health"), 200, 60)
        timings["ready"], body = await wait_status(lambda: get("/readyz"), 200, 60)
        assert body["connected"] and body["joined"] and body["lag_messages"] == 0
        assert body["partitions"] == list(range(settings_from(env).partitions))  # the only worker

        stopping = loop.run_in_executor(None, local.down, private_broker)  # SIGTERM now
        timings["not_ready_after_sigterm"], body = await wait_status(lambda: get("/readyz"), 503, 20)
        await stopping
        assert body["reason"] == "not_connected"
        assert (await get("/health"))[0] == 200  # liveness does not follow the broker

        await loop.run_in_executor(None, local.up, private_broker)
        timings["ready_after_start"], body = await wait_status(lambda: get("/readyz"), 200, 45)
        assert body["status"] == "ready"

    try:
        asyncio.run(go())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
    print("worker readiness timings (s):", {k: round(v, 2) for k, v in timings.items()})
