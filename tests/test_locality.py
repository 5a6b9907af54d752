"""Locality: each consumer reads the instances on its own node; instances pinned to nodes.

`shares` is checked on many layouts (pure); the placement and the reads run on a real
``ray.cluster_utils.Cluster`` with real Blender (node A and node B with 2 ``blender`` slots
each, see conftest's ``ray_cluster``)."""

from __future__ import annotations

import itertools

import pytest

from blendtorch_ray import BlenderLauncher
from blendtorch_ray.locality import instance_nodes, rank_share, shares
from conftest import TEST_SCRIPTS


def test_each_consumer_reads_its_own_nodes_instances():
    nodes = {0: "A", 1: "B", 2: "A", 3: "B", 4: "A"}
    assert shares(nodes, ["A", "B"]) == [[0, 2, 4], [1, 3]]
    assert shares(nodes, ["B", "A", "A"]) == [[1, 3], [0, 4], [2]]


def test_instances_without_a_local_consumer_go_to_consumers_without_a_local_instance():
    nodes = {0: "A", 1: "C", 2: "C"}
    # the consumer on B has nothing local: it takes C's first instance, then the load balances
    assert shares(nodes, ["A", "B"]) == [[0, 2], [1]]
    assert shares({0: "A", 1: "C"}, ["A", "B"]) == [[0], [1]]


def test_a_consumer_never_reads_nothing_while_another_reads_several():
    assert shares({0: "A", 1: "A", 2: "A"}, ["A", "B"]) == [[0, 1], [2]]
    assert shares({0: "A"}, ["A", "B"]) == [[0], []]  # one instance: only one reader


@pytest.mark.parametrize("layout", list(itertools.product("AB", repeat=4))[:10])
def test_every_instance_is_read_by_exactly_one_consumer(layout):
    nodes = dict(enumerate(layout))
    for consumers in (["A"], ["A", "B"], ["B", "B", "A"], ["C", "A"]):
        out = shares(nodes, consumers)
        assert sorted(b for s in out for b in s) == sorted(nodes)
        for rank, node in enumerate(consumers):
            local = [b for b, n in nodes.items() if n == node]
            if local and node in consumers[:rank]:
                continue  # shared with an earlier consumer on the same node
            if local:
                assert set(out[rank]) & set(local), (layout, consumers, out)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"consumer_nodes=\[\]"):
        shares({0: "A"}, [])
    with pytest.raises(ValueError, match="consumer_nodes has 1 entries for world_size=2"):
        rank_share(None, rank=0, world_size=2, consumer_nodes=["A"])
    with pytest.raises(TypeError, match="nodes='abc'"):
        BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), nodes="abc")


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.slow
def test_pinned_instances_are_read_where_they_run(ray_cluster):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def _consume(ds, n):  # defined here: Ray workers cannot import the test module
        import ray

        here = ray.get_runtime_context().get_node_id()
        got = []
        for item in ds:
            got.append(int(item["btid"]))
            if len(got) == n:
                break
        return here, got

    a, b = (n.node_id for n in ray_cluster.worker_nodes)
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=4, nodes=[a, b],
                         resources={"blender": 1}, instance_args=[["--size", "64"]] * 4) as bl:
        placed = instance_nodes(bl)
        assert placed == {0: a, 1: b, 2: a, 3: b}
        per_rank = shares(placed, [a, b])
        assert per_rank == [[0, 2], [1, 3]]
        consume = ray.remote(num_cpus=0)(_consume)
        refs = [consume.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote(bl.dataset(btids=share, timeout=120), 24) for node, share in zip((a, b), per_rank)]
        for (here, got), node, share in zip(ray.get(refs, timeout=300), (a, b), per_rank):
            assert here == node
            assert set(got) == set(share)  # only its own node's instances, both of them
            assert all(placed[btid] == here for btid in got)  # the same-node path, never the network


@pytest.mark.ray
def test_nodes_that_are_not_there_or_too_small_are_refused(ray_cluster):
    a = sorted(n.node_id for n in ray_cluster.worker_nodes)[0]
    with pytest.raises(ValueError, match=r"\['ffff'\] are not alive nodes of this Ray cluster; alive: "):
        BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), nodes=["ffff"], resources={"blender": 1}).start()
    with pytest.raises(ValueError, match=rf"node {a} cannot hold the 3 instance\(s\) placed on it \(blender: need 3, node has 2"):
        BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=3, nodes=[a],
                        resources={"blender": 1}).start()
