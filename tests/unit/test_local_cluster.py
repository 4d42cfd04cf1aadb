"""The local multi-node KRaft cluster's layout and configuration, rendered without starting Java."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.kafka import local


def props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            assert name not in out, f"{name} set twice"
            out[name] = value
    return out


def test_three_nodes_have_distinct_ports_and_one_quorum(tmp_path: Path) -> None:
    cluster = local.LocalCluster(tmp_path, brokers=3, base_port=29092)
    rendered = {i: props(local._cluster_server_properties(cluster, i)) for i in cluster.node_ids}
    ports = [cluster.client_port(i) for i in cluster.node_ids] + [
        cluster.controller_port(i) for i in cluster.node_ids
    ]
    assert ports == [29092, 29192, 29292, 39092, 39192, 39292]
    assert cluster.bootstrap == "127.0.0.1:29092,127.0.0.1:29192,127.0.0.1:29292"
    voters = "1@127.0.0.1:39092,2@127.0.0.1:39192,3@127.0.0.1:39292"
    for i, p in rendered.items():
        assert p["node.id"] == str(i)
        assert p["process.roles"] == "broker,controller"
        assert p["controller.quorum.voters"] == voters  # every node: the same three voters
        assert "controller.quorum.bootstrap.servers" not in p  # static quorum: one or the other
        node = cluster.node(i)
        assert p["listeners"] == (f"PLAINTEXT://127.0.0.1:{node.port},"
                                  f"CONTROLLER://127.0.0.1:{node.controller_port}")
        assert p["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert p["log.dirs"] == str((tmp_path / f"node-{i}" / "data").resolve())
    assert len({p["log.dirs"] for p in rendered.values()}) == 3


def test_replication_settings_of_three_nodes(tmp_path: Path) -> None:
    p = props(local._cluster_server_properties(local.LocalCluster(tmp_path), 2))
    assert p["default.replication.factor"] == "3"
    assert p["min.insync.replicas"] == "2"
    assert p["offsets.topic.replication.factor"] == "3"
    assert p["transaction.state.log.replication.factor"] == "3"
    assert p["transaction.state.log.min.isr"] == "2"
    assert p["share.coordinator.state.topic.replication.factor"] == "3"
    assert p["share.coordinator.state.topic.min.isr"] == "2"
    assert p["unclean.leader.election.enable"] == "false"  # an out-of-sync replica never leads


@pytest.mark.parametrize(("brokers", "rf", "isr"), [(1, 1, 1), (2, 2, 2), (5, 3, 2)])
def test_replication_follows_the_cluster_size(tmp_path: Path, brokers: int, rf: int, isr: int) -> None:
    cluster = local.LocalCluster(tmp_path, brokers=brokers, base_port=20000)
    assert (cluster.replication_factor, cluster.min_insync_replicas) == (rf, isr)
    p = props(local._cluster_server_properties(cluster, brokers))
    assert p["default.replication.factor"] == p["offsets.topic.replication.factor"] == str(rf)
    assert p["min.insync.replicas"] == p["transaction.state.log.min.isr"] == str(isr)
    assert p["controller.quorum.voters"].count("@") == brokers


def test_nodes_share_the_jar_cache_and_keep_their_own_state(tmp_path: Path) -> None:
    cluster = local.LocalCluster(tmp_path / "cluster", jars=tmp_path / "cache")
    assert cluster.jar_cache.jar_dir == tmp_path / "cache" / f"jars-{local.KAFKA_VERSION}"
    homes = [n.home for n in cluster.nodes]
    assert homes == [tmp_path / "cluster" / f"node-{i}" for i in (1, 2, 3)]
    assert len({n.pid_file for n in cluster.nodes}) == 3
    assert local.LocalCluster(tmp_path).jar_cache.jar_dir == tmp_path / f"jars-{local.KAFKA_VERSION}"


def test_the_single_broker_is_unchanged(tmp_path: Path) -> None:
    p = props(local._server_properties(local.LocalBroker(tmp_path)))
    assert p["node.id"] == "1"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:19092"
    assert p["offsets.topic.replication.factor"] == "1"
    assert "default.replication.factor" not in p and "min.insync.replicas" not in p


def test_bad_layouts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(local.BrokerError, match="at least one"):
        local.LocalCluster(tmp_path, brokers=0)
    # node 2's client port would be node 1's controller port
    with pytest.raises(local.BrokerError, match="overlap or are out of range"):
        local.LocalCluster(tmp_path, brokers=2, port_step=10000)
    with pytest.raises(local.BrokerError, match="overlap or are out of range"):
        local.LocalCluster(tmp_path, base_port=60000)
    with pytest.raises(local.BrokerError, match="no node 4"):
        local.LocalCluster(tmp_path).node(4)


def test_status_of_a_cluster_that_never_ran(tmp_path: Path) -> None:
    st = local.cluster_status(local.LocalCluster(tmp_path, base_port=21092))
    assert st["running"] is False
    assert st["bootstrap_servers"] == "127.0.0.1:21092,127.0.0.1:21192,127.0.0.1:21292"
    assert sorted(st["nodes"]) == ["1", "2", "3"]  # type: ignore[arg-type]
    assert local.kill(local.LocalCluster(tmp_path, base_port=21092), 1) is False
    assert local.down_cluster(local.LocalCluster(tmp_path, base_port=21092)) == 0
