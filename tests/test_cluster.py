"""Multi-node tests on one machine with ray.cluster_utils.Cluster: placement by the
``blender`` resource, GPU hand-over, and surviving the loss of a node."""

import pytest

from blendtorch_ray import BlenderLauncher
from conftest import TEST_SCRIPTS, loss_bound, pid_alive, wait_until

pytestmark = [pytest.mark.blender, pytest.mark.ray, pytest.mark.slow]

ITEM_SIDE = 128  # 64 KiB items: kernel socket buffers hold only a few of them


def test_instances_use_the_blender_resource_and_gpus_are_handed_over(ray_cluster):
    with BlenderLauncher(
        script=str(TEST_SCRIPTS / "forever.py"),
        num_instances=2,
        num_gpus=1,
        instance_args=[["--env", "CUDA_VISIBLE_DEVICES", "BLENDTORCH_GPU_IDS"]] * 2,
    ) as bl:
        items = {}
        for item in bl.dataset(timeout=60):
            items[item["btid"]] = item
            if len(items) == 2:
                break
        nodes = {h.node_id for h in bl.health()}
    assert len(nodes) == 1  # only node A declares GPUs
    gpus = sorted(items[b]["env"]["CUDA_VISIBLE_DEVICES"] for b in (0, 1))
    assert gpus == ["0", "1"]
    assert all(items[b]["env"]["BLENDTORCH_GPU_IDS"] == items[b]["env"]["CUDA_VISIBLE_DEVICES"] for b in (0, 1))


def test_lost_node_instances_are_recreated_and_the_stream_goes_on(ray_cluster, tmp_path):
    batch_size, in_flight = 8, 4
    progress = [str(tmp_path / f"progress-{b}") for b in range(2)]
    with BlenderLauncher(
        script=str(TEST_SCRIPTS / "forever.py"),
        num_instances=2,
        resources={"blender": 1},
        batch_size=batch_size,
        max_batches_in_flight=in_flight,
        instance_args=[["--size", str(ITEM_SIDE), "--progress", progress[b]] for b in range(2)],
    ) as bl:
        health = bl.health()
        victim_node = health[0].node_id
        victims = [h.btid for h in health if h.node_id == victim_node]
        old_pids = {h.btid: h.pid for h in health}
        it = iter(bl.dataset(timeout=120, reconnect_timeout=180))
        seen = [next(it) for _ in range(60)]
        node = next(n for n in ray_cluster.worker_nodes if n.node_id == victim_node)
        ray_cluster.remove_node(node)
        # Keep reading until every lost instance delivers from its recreated actor.
        back = set()
        while back != set(victims):
            item = next(it)
            seen.append(item)
            if item["btid"] in victims and item["epoch"] > 1000:
                back.add(item["btid"])
        seen += [next(it) for _ in range(20)]
        new_nodes = {h.btid: h.node_id for h in bl.health()}
    # Recreated on the surviving node; the old Blender processes are gone.
    assert all(new_nodes[b] != victim_node for b in victims)
    assert wait_until(lambda: not any(pid_alive(old_pids[b]) for b in victims), timeout=30)
    # Nothing delivered twice; before the loss, each instance's items are gap-free.
    keys = [(i["btid"], i["epoch"], i["seq"]) for i in seen]
    assert len(keys) == len(set(keys))
    item_bytes = ITEM_SIDE * ITEM_SIDE * 4
    for b in victims:
        first_epoch = sorted(i["seq"] for i in seen if i["btid"] == b and i["epoch"] == 0)
        assert first_epoch == list(range(len(first_epoch)))
        published = int(open(progress[b] + "-0").read())
        lost = published - len(first_epoch)
        bound = loss_bound(batch_size, in_flight, item_bytes)
        print(f"instance {b}: published {published}, delivered {len(first_epoch)}, lost {lost}, bound {bound}")
        assert 0 <= lost <= bound
