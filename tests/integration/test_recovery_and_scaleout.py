"""Durable partition state: SIGKILL recovery and N workers = 1 worker, on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from monitor.kafka.admin import ensure_topics
from monitor.kafka.checkpoints import CHUNK_BYTES, CheckpointStore, encode_chunks
from monitor.simulate import SimConfig, publish
from tests.integration.conftest import (
    WorkerProcess,
    deployment_env,
    free_port,
    new_tag,
    read_records,
    settings_from,
)

pytestmark = pytest.mark.integration

END = datetime(2026, 11, 1, tzinfo=UTC)
CFG = SimConfig(patients=240, days=12, seed=21, end=END, invalid_rate=0.01)


def deployment(env: dict[str, str], tmp: Path, name: str) -> dict[str, str]:
    """A separate deployment (own topics and consumer group) with the same settings."""
    tag = new_tag(8)
    e = dict(env)
    e.update({"MONITOR_TOPIC_PREFIX": f"t{tag}-", "MONITOR_APP_ID": f"monitor-{name}-{tag}",
              "MONITOR_IDLE_AFTER_S": "86400", "MONITOR_CHECKPOINT_INTERVAL_S": "1",
              # small fetches: the worker drains this input in ~1 s otherwise, and the kills
              # must land between batches and checkpoints
              "MONITOR_MAX_POLL_RECORDS": "100"})
    return e


def worker_env(env: dict[str, str], tmp: Path, i: int) -> dict[str, str]:
    e = dict(env)
    e.update({"MONITOR_WEB_PORT": str(free_port()), "MONITOR_DATA_DIR": str(tmp / f"w{i}")})
    return e


def read_all(settings, topic: str) -> list[dict]:
    return [json.loads(r.value) for r in read_records(settings, topic)]


def total_inputs(workers: list[WorkerProcess]) -> int:
    return sum(w.get("/summary")["inputs"] for w in workers)


def wait_all(workers: list[WorkerProcess], n: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if total_inputs(workers) >= n:
            return
        time.sleep(0.5)
    health = [w.get("/health") for w in workers]
    logs = "\n".join(w.log.read_text()[-2000:] for w in workers)
    raise AssertionError(f"{total_inputs(workers)} of {n} inputs accounted for; health {health}\n{logs}")


def wait_assigned(workers: list[WorkerProcess], partitions: int, timeout_s: float = 120) -> None:
    """Until the group has settled: every partition owned by exactly one worker."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned = [p for w in workers for p in w.get("/health")["partitions"]]
        if sorted(owned) == list(range(partitions)) and all(w.get("/health")["partitions"] for w in workers):
            return
        time.sleep(0.5)
    raise AssertionError("the consumer group did not settle")


def final_state(workers: list[WorkerProcess], settings) -> tuple[dict, dict]:
    """Per-patient state (union over workers) and the population equity snapshot, once stable."""
    token = workers[0].env["MONITOR_API_TOKEN"]
    previous = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(2.5)  # > one timer tick: partials published and merged
        patients: dict = {}
        for w in workers:
            patients.update(w.get("/patients/state", token=token)["patients"])
        snaps = [s for s in read_all(settings, settings.topics.name("equity"))]
        current = (patients, snaps[-1] if snaps else None)
        if current == previous and current[1] and current[1]["partitions_reported"] == settings.partitions:
            return current  # type: ignore[return-value]
        previous = current
    raise AssertionError("the state did not settle")


def wait_checkpointed(w: WorkerProcess, timeout_s: float = 60) -> None:
    """Until every partition is checkpointed (its input acknowledged)."""
    deadline = time.monotonic() + timeout_s
    while w.get("/health")["dirty_partitions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not w.get("/health")["dirty_partitions"], "not every partition was checkpointed"


def uninterrupted_run(env: dict[str, str], tmp: Path,
                      name: str) -> tuple[dict[str, str], Any, int, dict, dict]:
    """A new deployment, CFG published and processed by one worker until every partition is
    checkpointed: (env, settings, messages sent, per-patient state, equity snapshot)."""
    e = deployment(env, tmp, name)
    settings = settings_from(e)
    ensure_topics(settings)
    sent = sum(publish(CFG, settings, progress=False).values())
    w = WorkerProcess(worker_env(e, tmp, 0), tmp / f"{name}.log")
    w.start()
    try:
        wait_all([w], sent)
        wait_checkpointed(w)
        patients, equity = final_state([w], settings)
    finally:
        w.stop()
    return e, settings, sent, patients, equity


def assert_no_output_twice(settings) -> None:
    for topic, key in (("flags", "flag_id"), ("alerts", "event_id")):
        copies: dict[str, list[Any]] = {}
        for r in read_records(settings, settings.topics.name(topic)):
            copies.setdefault(json.loads(r.value)[key], []).append(r)
        twice = {k: [(r.partition, r.offset, json.loads(r.value)) for r in rs]
                 for k, rs in copies.items() if len(rs) > 1}
        assert not twice, f"{topic} events emitted more than once (partition, offset, event): {twice}"


@pytest.fixture(scope="module")
def reference(bootstrap, tmp_path_factory) -> tuple[int, dict, dict]:
    """One uninterrupted run of CFG shared by the tests that only compare with it: (messages
    sent, per-patient state, equity snapshot)."""
    tmp = tmp_path_factory.mktemp("reference")
    _, _, sent, patients, equity = uninterrupted_run(deployment_env(bootstrap, tmp), tmp, "ref")
    return sent, patients, equity


def test_sigkill_three_times_gives_the_uninterrupted_answer(env, tmp_path, reference):
    sent, ref_patients, ref_equity = reference

    # the same input, killed with SIGKILL three times at random points
    crash_env = deployment(env, tmp_path, "crash")
    settings = settings_from(crash_env)
    ensure_topics(settings)
    assert sum(publish(CFG, settings, progress=False).values()) == sent
    rng = random.Random(5)
    w = WorkerProcess(worker_env(crash_env, tmp_path, 1), tmp_path / "crash.log")
    kills = 0
    for fraction in sorted(rng.uniform(0.1, 0.9) for _ in range(3)):
        w.start()
        target = int(sent * fraction)
        deadline = time.monotonic() + 120
        # killed once past the target and once this run has written a checkpoint (otherwise a
        # fast run can die before its first round, and the restart has nothing to restore)
        while time.monotonic() < deadline and (w.get("/summary")["inputs"] < target
                                               or w.get("/health")["checkpoints_written"] == 0):
            time.sleep(0.05)
        os.killpg(w.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        w.proc.wait()  # type: ignore[union-attr]
        kills += 1
    w.start()
    try:
        deadline = time.monotonic() + 60
        # restores run in the background once the partitions are assigned
        while time.monotonic() < deadline and (not w.get("/health")["partitions"]
                                               or w.get("/health")["restoring_partitions"]):
            time.sleep(0.2)
        assert w.get("/health")["restored"] > 0, "the restarted worker restored no checkpoint"
        wait_all([w], sent)
        patients, equity = final_state([w], settings)
        summary = w.get("/summary")
    finally:
        w.stop()
    assert kills == 3
    assert summary["inputs"] == sent  # every input accounted for exactly once
    assert patients == ref_patients
    assert equity["equity"] == ref_equity["equity"] and equity["groups"] == ref_equity["groups"]
    assert_no_output_twice(settings)
    dead = read_all(settings, settings.topics.name("dead_letters"))
    keys = [(d["topic"], d["partition"], d["offset"], d["reason"], d["detail"]) for d in dead]
    assert len(keys) == len(set(keys)), "a dead letter was emitted twice"
    assert len(dead) == sum(summary["dead_letters"].values())


def test_three_workers_give_the_same_answer_as_one(env, tmp_path):
    answers = []
    for n in (1, 3):
        e = deployment(env, tmp_path, f"n{n}")
        settings = settings_from(e)
        ensure_topics(settings)
        workers = [WorkerProcess(worker_env(e, tmp_path, 10 * n + i), tmp_path / f"n{n}-{i}.log")
                   for i in range(n)]
        for w in workers:
            w.start()
        try:
            wait_assigned(workers, settings.partitions)
            sent = sum(publish(CFG, settings, progress=False).values())
            wait_all(workers, sent)
            if n == 3:
                owned = [set(w.get("/health")["partitions"]) for w in workers]
                assert all(owned), "every worker should own partitions"
                assert sorted(p for o in owned for p in o) == list(range(settings.partitions))
            answers.append(final_state(workers, settings))
        finally:
            for w in workers:
                w.stop()
    (one_patients, one_equity), (three_patients, three_equity) = answers
    assert three_patients == one_patients
    assert three_equity["equity"] == one_equity["equity"]
    assert three_equity["groups"] == one_equity["groups"]


def test_workers_joining_and_leaving_mid_stream_change_nothing(env, tmp_path, reference):
    """Rebalances while outputs are in flight: a second worker joins a quarter of the way through
    the stream, the first leaves (graceful stop) half way; the survivor's answer equals the
    uninterrupted one and no flag or alert is emitted twice (outputs of revoked partitions are
    flushed before their next owner reads them back)."""
    sent, ref_patients, ref_equity = reference
    e = deployment(env, tmp_path, "moves")
    settings = settings_from(e)
    ensure_topics(settings)
    assert sum(publish(CFG, settings, progress=False).values()) == sent
    first = WorkerProcess(worker_env(e, tmp_path, 1), tmp_path / "first.log")
    second = WorkerProcess(worker_env(e, tmp_path, 2), tmp_path / "second.log")
    first.start()
    try:
        wait_all([first], sent // 4)
        second.start()
        wait_assigned([first, second], settings.partitions)
        wait_all([first, second], sent // 2)
        first.stop()
        wait_all([second], sent)
        patients, equity = final_state([second], settings)
        summary = second.get("/summary")
    finally:
        first.stop()
        second.stop()
    assert summary["inputs"] == sent
    assert patients == ref_patients
    assert equity["equity"] == ref_equity["equity"] and equity["groups"] == ref_equity["groups"]
    assert_no_output_twice(settings)


@pytest.mark.parametrize("spoil", ["incompatible", "torn"])
def test_an_unusable_checkpoint_is_rebuilt_from_the_input(env, tmp_path, reference, spoil):
    """A checkpoint the worker cannot use does not stop it: the partition is rebuilt from its
    input up to the group's committed offsets, to the same answer, and no output is emitted twice.
    ``incompatible``: after a whole run, the newest checkpoint of every partition is undecodable
    (another version). ``torn``: a new deployment whose checkpoint partitions hold only part of a
    write (nothing committed yet: the rebuild reads nothing, and the input is processed as usual,
    with its alerts and flags published). Either way the rebuilt partitions' checkpoints win the
    next restore."""
    if spoil == "incompatible":  # spoils the checkpoints of this very run
        e, settings, sent, ref_patients, ref_equity = uninterrupted_run(env, tmp_path, "rebuild")
    else:
        sent, ref_patients, ref_equity = reference
        e = deployment(env, tmp_path, "torn")
        settings = settings_from(e)
        ensure_topics(settings)
        assert sum(publish(CFG, settings, progress=False).values()) == sent

    async def spoil_checkpoints() -> None:
        topic = settings.topics.name("checkpoints")
        store = CheckpointStore(settings, topic)
        producer = AIOKafkaProducer(**settings.aiokafka_config(), acks="all",
                                    max_request_size=CHUNK_BYTES + 100_000)
        await producer.start()
        try:
            for p in range(settings.partitions):
                if spoil == "incompatible":
                    await store.save(p, 10**9, b"CMPART1\n written by another version")
                else:  # the first chunk of a two-chunk write
                    key, value = encode_chunks(p, 10**9, random.Random(p).randbytes(CHUNK_BYTES + 10))[0]
                    await producer.send_and_wait(topic, key=key, value=value, partition=p)
        finally:
            await producer.stop()
            await store.stop()

    def run_worker(i: int) -> tuple[dict, dict, dict, dict]:
        """A worker until it has every input and its checkpoints are written: (patients,
        equity, /health, /summary)."""
        w = WorkerProcess(worker_env(e, tmp_path, i), tmp_path / f"worker{i}.log")
        w.start()
        try:
            wait_all([w], sent)
            patients, equity = final_state([w], settings)
            health, summary = w.get("/health"), w.get("/summary")
            wait_checkpointed(w)
        finally:
            w.stop()
        return patients, equity, health, summary

    asyncio.run(spoil_checkpoints())
    patients, equity, health, summary = run_worker(1)
    assert health["rebuilt"] == settings.partitions and health["restored"] == 0
    assert summary["inputs"] == sent
    assert patients == ref_patients
    assert equity["equity"] == ref_equity["equity"] and equity["groups"] == ref_equity["groups"]
    assert_no_output_twice(settings)
    assert read_records(settings, settings.topics.name("alerts"))  # published once, not lost

    patients, _, health, _ = run_worker(2)  # restarted: the rebuilt partitions' checkpoints win
    assert health["restored"] == settings.partitions and health["rebuilt"] == 0
    assert patients == ref_patients
