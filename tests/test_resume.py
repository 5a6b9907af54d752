"""Resumable, reproducible streams (blendtorch_ray/resume.py): real Blender, real Ray.

- every item's ``(seed, btid, seq)`` renders it again, pixel for pixel;
- a Blender killed mid-stream comes back at the next ``seq`` with the seeds of that ``seq``;
- a training run killed after a checkpoint resumes from it: the items of both runs are
  gap-free and duplicate-free per instance;
- bad checkpoints (another group or script, a newer version, not a state dict) fail clearly.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap

import numpy as np
import pytest

from blender_worker.protocol import LaunchArgs, item_seed, parse_launch_args
from blendtorch_ray import BlenderLauncher, LaunchConfig
from blendtorch_ray.resume import STATE_VERSION, ResumeError, group_identity, make_state, merge_states
from conftest import REPO, pid_alive, wait_until
from drivers.driver_process import DriverProcess, driver_env

SCENE = """
import os

import bpy
import numpy as np

import blender_worker as bw

launch, rest = bw.parse_launch_args()
cube = bpy.data.objects["Cube"]
bpy.context.scene.display.shading.color_type = "OBJECT"
renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(48, 32), workbench_aa="OFF"))
bw.Camera().look_at(look_at=(0, 0, 0), look_from=(6.0, -6.0, 4.5))
pub = bw.DataPublisher(launch)
while True:
    draw = pub.rng().uniform(size=6)  # all of this item's randomness, from its (seed, seq)
    cube.rotation_euler = draw[:3] * np.pi
    cube.color = (*(0.2 + 0.8 * draw[3:]), 1.0)
    pub.publish(image=renderer.render()["image"], draw=draw, pid=os.getpid())
"""
"""Each item's pixels depend on its seed: a random rotation and colour of the cube."""

COUNTER = """
import time

import numpy as np

import blender_worker as bw

launch, _ = bw.parse_launch_args()
pub = bw.DataPublisher(launch)
while True:
    pub.publish(draw=pub.rng().uniform(size=2))
    time.sleep(0.002)
"""
"""Fast items without rendering, for the training-run test."""


def _draws(seed: int, seq: int) -> np.ndarray:
    """What the scene draws for item ``seq`` of stream seed ``seed`` (the documented rule)."""
    return np.random.default_rng(item_seed(seed, seq)).uniform(size=6)


# -- no Blender -------------------------------------------------------------------------------
def test_item_seed_is_a_pure_function_and_start_seq_travels_in_launch_args():
    assert item_seed(7, 3) == item_seed(7, 3)
    seeds = {item_seed(s, q) for s in range(5) for q in range(200)}
    assert len(seeds) == 1000 and all(0 <= x < 2**63 for x in seeds)
    # The value itself is fixed by the definition (blake2b of "seed:seq"), on every machine.
    import hashlib

    assert item_seed(0, 0) == int.from_bytes(hashlib.blake2b(b"0:0", digest_size=8).digest(), "little") >> 1
    argv = LaunchArgs(btid=1, seed=11, start_seq=42).to_argv()
    assert ["--btseq", "42"] == argv[argv.index("--btseq"):argv.index("--btseq") + 2]
    launch, _ = parse_launch_args(["--", *argv])
    assert (launch.btid, launch.seed, launch.start_seq) == (1, 11, 42)
    assert parse_launch_args(["--", "--btid", "0", "--btseed", "0"])[0].start_seq == 0


def _dataset(identity):
    from blendtorch_ray.dataset import RemoteIterableDataset

    return RemoteIterableDataset(identity["group"], "ns", identity["num_instances"], identity=identity)


def test_bad_checkpoints_fail_naming_what_differs(write_script):
    script = write_script(COUNTER)
    cfg = LaunchConfig(script=script, num_instances=2, seed=5, name="group-a")
    ident = group_identity(cfg)
    ds = _dataset(ident)
    good = make_state(ident, {0: (5, 10), 1: (6, 3)})
    ds.load_state_dict(json.loads(json.dumps(good)))  # JSON turns btids into strings: still fine
    assert ds.state_dict()["positions"] == {0: {"seed": 5, "seq": 10}, 1: {"seed": 6, "seq": 3}}

    other_group = make_state({**ident, "group": "group-b"}, {0: (5, 1)})
    with pytest.raises(ResumeError, match=r"group: checkpoint 'group-b', here 'group-a'.*name='group-b'"):
        ds.load_state_dict(other_group)
    other = write_script(COUNTER + "\n# changed\n", name="other.py")
    other_script = make_state(group_identity(cfg.with_options(script=other)), {0: (5, 1)})
    with pytest.raises(ResumeError) as err:
        ds.load_state_dict(other_script)
    assert "script: checkpoint 'other.py', here 'script.py'" in str(err.value)
    assert "script_sha256" in str(err.value) and "group:" not in str(err.value)
    with pytest.raises(ResumeError, match=r"seed: checkpoint 9, here 5"):
        ds.load_state_dict(make_state({**ident, "seed": 9}, {}))
    newer = {**good, "version": STATE_VERSION + 1}
    with pytest.raises(ResumeError, match=rf"version={STATE_VERSION + 1} comes from a newer blendtorch-ray.*upgrade"):
        ds.load_state_dict(newer)
    with pytest.raises(ResumeError, match="not a RemoteIterableDataset state dict"):
        ds.load_state_dict({"epoch": 3})
    with pytest.raises(ResumeError, match=r"positions\['0'\]"):
        ds.load_state_dict({**json.loads(json.dumps(good)), "positions": {"0": {"seq": 1}}})
    # A failed load changed nothing.
    assert ds.state_dict()["positions"] == {0: {"seed": 5, "seq": 10}, 1: {"seed": 6, "seq": 3}}
    # The project's own error class, and a ValueError.
    from blendtorch_ray.errors import BlendtorchError

    assert issubclass(ResumeError, BlendtorchError) and issubclass(ResumeError, ValueError)
    # Launching from a checkpoint of another script fails before anything starts.
    with pytest.raises(ResumeError, match="LaunchConfig"):
        LaunchConfig(script=script, num_instances=2, seed=5, resume_from=other_script)
    # Without a name, the group takes the checkpoint's.
    assert LaunchConfig(script=script, num_instances=2, seed=5, resume_from=good).name == "group-a"
    with pytest.raises(ResumeError, match="group"):
        merge_states([good, other_group])


def test_mark_consumed_reads_collated_batches(write_script):
    import torch

    cfg = LaunchConfig(script=write_script(COUNTER), num_instances=2, name="g")
    ds = _dataset(group_identity(cfg))
    ds.mark_consumed({"seed": torch.tensor([0, 1, 0]), "btid": torch.tensor([0, 1, 0]), "seq": torch.tensor([4, 0, 5])})
    ds.mark_consumed([{"seed": 1, "btid": 1, "seq": 1, "x": 0}])
    assert ds.state_dict()["positions"] == {0: {"seed": 0, "seq": 6}, 1: {"seed": 1, "seq": 2}}
    with pytest.raises(ResumeError, match=r"no \['seed', 'btid', 'seq'\].*item_transform"):
        ds.mark_consumed({"image": torch.zeros(2, 3)})


# -- real Blender, real Ray -----------------------------------------------------------------------
@pytest.mark.blender
@pytest.mark.ray
def test_restarted_instance_continues_its_sequence_with_its_seeds(ray_session, write_script):
    """Blender of instance 0 is SIGKILLed mid-stream: it comes back at the next seq (nothing
    skipped, nothing twice) with the same stream seed and the draws of each seq."""
    script = write_script(SCENE)
    with BlenderLauncher(script=script, num_instances=2, seed=20, restart_backoff=0.2, batch_size=4) as bl:
        it = iter(bl.dataset(timeout=60))
        items = []
        while len(items) < 24 or sum(i["btid"] == 0 for i in items) < 8:  # instance 0 delivered some
            items.append(next(it))
        killed_at = len(items)
        old = bl.pids()
        os.kill(old[0], signal.SIGKILL)
        while not any(i["btid"] == 0 and i["epoch"] == 1 for i in items[killed_at:]) or len(items) < killed_at + 56:
            items.append(next(it))
        health = bl.health()
    assert health[0].restarts == 1 and health[1].restarts == 0
    assert not pid_alive(old[0])
    for b in (0, 1):
        mine = [i for i in items if i["btid"] == b]
        assert [i["seq"] for i in mine] == list(range(len(mine))), f"instance {b}: gap or repeat"
        assert {i["seed"] for i in mine} == {20 + b}
        for i in mine:
            np.testing.assert_array_equal(i["draw"], _draws(20 + b, i["seq"]))
    restarted = [i for i in items if i["btid"] == 0 and i["epoch"] == 1]
    assert restarted and restarted[0]["seq"] > 0 and len({i["pid"] for i in restarted}) == 1
    assert restarted[0]["pid"] != old[0]


@pytest.mark.blender
@pytest.mark.ray
def test_reseed_on_restart_starts_a_fresh_seed_epoch(ray_session, write_script):
    script = write_script(COUNTER)
    with BlenderLauncher(script=script, seed=3, restart_backoff=0.2, reseed_on_restart=True) as bl:
        it = iter(bl.dataset(timeout=60))
        items = [next(it) for _ in range(10)]
        os.kill(bl.pids()[0], signal.SIGKILL)
        while not any(i["epoch"] == 1 for i in items[10:]) or items[-1]["epoch"] != 1:
            items.append(next(it))
    fresh = [i for i in items if i["epoch"] == 1]
    assert fresh[0]["seq"] == 0 and fresh[0]["seed"] == bl.config.seed_for(0, 1) != 3


@pytest.mark.blender
@pytest.mark.ray
def test_an_item_renders_again_from_its_provenance(ray_session, write_script):
    """Items streamed by two instances, one of them restarted on the way, render again from
    ``(seed, btid, seq)`` alone with the same pixels; another seq gives other pixels."""
    from blendtorch_ray.rerender import render_again

    script = write_script(SCENE)
    with BlenderLauncher(script=script, num_instances=2, seed=40, restart_backoff=0.2, batch_size=4) as bl:
        it = iter(bl.dataset(timeout=60))
        items = [next(it) for _ in range(16)]
        os.kill(bl.pids()[1], signal.SIGKILL)
        while not any(i["btid"] == 1 and i["epoch"] == 1 for i in items):
            items.append(next(it))
        config = bl.config
    picked = [next(i for i in items if i["btid"] == 0 and i["seq"] == 5),
              next(i for i in items if i["btid"] == 1 and i["epoch"] == 1)]
    for item in picked:
        again = render_again(config, item["seed"], item["btid"], item["seq"], count=2)
        assert [a["seq"] for a in again] == [item["seq"], item["seq"] + 1]
        assert again[0]["seed"] == item["seed"] and again[0]["btid"] == item["btid"]
        assert again[0]["image"].shape == (32, 48, 4) and again[0]["image"].std() > 0
        np.testing.assert_array_equal(again[0]["image"], item["image"])
        np.testing.assert_array_equal(again[0]["draw"], item["draw"])
        assert not np.array_equal(again[1]["image"], item["image"]), "pixels do not depend on the seed"
        assert again[0]["pid"] != item["pid"]


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_stateful_dataloader_resumes_each_worker_where_its_snapshot_was(ray_session, write_script):
    """torchdata's StatefulDataLoader (2 workers, one instance each) calls the dataset's
    state_dict/load_state_dict in its workers: a new loader from its state_dict goes on with
    the next items of every instance, also those its workers had prefetched."""
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    from blendtorch_ray.loader import collate

    def loader(ds):
        return sdl.StatefulDataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate,
                                      multiprocessing_context="forkserver")

    with BlenderLauncher(script=write_script(COUNTER), num_instances=2, seed=50, batch_size=4) as bl:
        first_loader = loader(bl.dataset(timeout=60))
        it = iter(first_loader)
        first = [next(it) for _ in range(6)]
        state = first_loader.state_dict()
        ahead = [next(it) for _ in range(2)]  # taken after the snapshot: not part of it
        del it
        resumed = loader(bl.dataset(timeout=60))
        resumed.load_state_dict(state)
        it = iter(resumed)
        second = [next(it) for _ in range(6)]
        del it
    keys = [(int(b), int(q), int(s)) for batch in first + second
            for b, q, s in zip(batch["btid"], batch["seq"], batch["seed"])]
    for b in (0, 1):
        seqs = [q for btid, q, _ in keys if btid == b]
        assert seqs == list(range(len(seqs))) and len(seqs) >= 8, f"instance {b}: {seqs}"
        assert {s for btid, _, s in keys if btid == b} == {50 + b}
    # What the first loader took after its snapshot came again from the resumed one.
    redone = {(int(b), int(q)) for batch in ahead for b, q in zip(batch["btid"], batch["seq"])}
    assert redone <= {(b, q) for b, q, _ in keys}


TRAIN_DRIVER = """
import json, os, sys, time

import ray

from blendtorch_ray import BlenderLauncher, make_loader
from blendtorch_ray.runtime import ensure_ray


def main() -> None:
    address, namespace, group, script, ckpt, total, workers, launch_at, stall_at = sys.argv[1:10]
    total, workers, stall_at = int(total), int(workers), int(stall_at)
    ensure_ray(address=address, namespace=namespace, log_to_driver=False)
    saved = json.load(open(ckpt)) if os.path.exists(ckpt) else None
    bl = BlenderLauncher(script=script, num_instances=2, name=group, seed=100, batch_size=4,
                         resume_from=saved["stream"] if saved and launch_at == "1" else None).start()
    print("PIDS", " ".join(map(str, bl.pids())), flush=True)
    ds = bl.dataset(timeout=60)
    if saved:  # without resume_from, the actors start their Blenders again at the positions
        ds.load_state_dict(saved["stream"])
    consumed = saved["consumed"] if saved else []
    print("START", len(consumed), flush=True)
    for step, batch in enumerate(make_loader(ds, batch_size=4, num_workers=workers)):
        ds.mark_consumed(batch)  # a plain DataLoader with workers: say what the loop took
        consumed += [[int(b), int(q), int(s)] for b, q, s in zip(batch["btid"], batch["seq"], batch["seed"])]
        if step % 5 == 4:
            with open(ckpt + ".tmp", "w") as f:
                json.dump({"stream": ds.state_dict(), "consumed": consumed}, f)
            os.replace(ckpt + ".tmp", ckpt)
            print("CKPT", len(consumed), flush=True)
        print("STEP", len(consumed), flush=True)
        if len(consumed) == stall_at:  # a training step that never ends: the test kills this run here
            print("STALLED", flush=True)
            time.sleep(600)
        if len(consumed) >= total:
            break
    print("DONE", json.dumps(consumed), flush=True)
    bl.close()



if __name__ == "__main__":  # DataLoader workers import this module again
    main()
"""


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.timeout(600)
@pytest.mark.parametrize("launch_at", ["1", "0"], ids=["resume_from", "load_state_dict-only"])
def test_killed_training_run_resumes_gap_free_from_its_checkpoint(ray_session, tmp_path, write_script, launch_at):
    """A training run (its own process, DataLoader with 2 workers, a checkpoint every 5
    steps) is SIGKILLed a few steps after a checkpoint; nothing of it is left. A new run
    resumes from the checkpoint: the items of the checkpoint and of the new run are, per
    instance, seq 0..n-1 exactly once, with the instance's seeds. The new run launches its
    Blenders at the checkpoint (``resume_from``), or at seq 0 and the dataset's loaded state
    moves them (``load_state_dict`` alone)."""
    import ray

    from blendtorch_ray.runtime import actor_name, gcs_address

    script = write_script(COUNTER)
    driver_path = tmp_path / "train_driver.py"
    driver_path.write_text(textwrap.dedent(TRAIN_DRIVER))
    ckpt = str(tmp_path / "ckpt.json")
    group, namespace = f"resume-{os.getpid()}", "blendtorch-tests"
    argv = [str(driver_path), gcs_address(), namespace, group, script, ckpt, "400", "2", launch_at]
    # Checkpoints every 5 steps of 4 items; the first run stalls 3 steps after its 2nd one.
    env = driver_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))

    first = DriverProcess(argv + ["52"], tmp_path / "first.err", env=env)
    try:
        pids = [int(p) for p in first.wait_line("PIDS", timeout=180).split()]
        assert [int(first.wait_line("CKPT", timeout=180)) for _ in range(2)] == [20, 40]
        first.wait_line("STALLED", timeout=120)  # 12 items consumed beyond the checkpoint
        first.kill(signal.SIGKILL)
        assert first.proc.wait(30) == -signal.SIGKILL
        # Nothing of the killed run is left: its Blenders and its actors (owned by it) go.
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=60), "a Blender outlived its run"

        def actors_gone() -> bool:
            for b in range(2):
                try:
                    ray.get_actor(actor_name(group, b), namespace="blendtorch")  # the launcher's
                    return False
                except ValueError:
                    pass
            return True

        assert wait_until(actors_gone, timeout=60), "the killed run's actors are still registered"
    finally:
        first.cleanup()
    saved = json.load(open(ckpt))
    ckpt_at = len(saved["consumed"])
    assert ckpt_at == 40  # the last checkpoint the first run wrote

    second = DriverProcess(argv + ["0"], tmp_path / "second.err", env=env)
    try:
        assert int(second.wait_line("START", timeout=180)) == ckpt_at
        union = json.loads(second.wait_line("DONE", timeout=300))
        assert second.proc.wait(60) == 0
    finally:
        second.cleanup()
    assert union[:ckpt_at] == saved["consumed"] and len(union) >= 400
    for b in (0, 1):
        seqs = [q for btid, q, _ in union if btid == b]
        assert sorted(seqs) == list(range(len(seqs))), f"instance {b}: gaps or repeats"
        assert {s for btid, _, s in union if btid == b} == {100 + b}
        resumed = [q for btid, q, _ in union[ckpt_at:] if btid == b]
        assert resumed and min(resumed) == saved["stream"]["positions"][str(b)]["seq"]


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_train_example_resumes_its_stream_from_the_checkpoint(ray_session, tmp_path):
    """examples/ray_train: a named run stops after epoch 0; the same command with more epochs
    restores it (Ray Train's latest checkpoint) and each rank's stream goes on from the
    checkpoint's positions: epoch 1 consumes exactly the next ``items`` of the instances."""
    import glob
    from dataclasses import replace

    from test_ray_train import _load_example

    example = _load_example()
    name = f"cube-resume-{os.getpid()}"
    settings = example.TrainSettings.tiny(source="stream", epochs=1, storage=str(tmp_path), name=name)

    def latest_stream_state() -> dict:
        paths = sorted(glob.glob(str(tmp_path / name / "checkpoint_*" / "stream.json")), key=os.path.getmtime)
        assert paths, f"no checkpoint with a stream state under {tmp_path / name}"
        state = json.load(open(paths[-1]))
        return {int(b): (p["seed"], p["seq"]) for b, p in state["positions"].items()}

    first = example.run(settings)
    assert [int(r["epoch"]) for r in first] == [0]
    after_first = latest_stream_state()
    assert sorted(after_first) == [0, 1] and sum(q for _, q in after_first.values()) == settings.items
    second = example.run(replace(settings, epochs=2))
    assert int(second[-1]["epoch"]) == 1 and 0 not in [int(r["epoch"]) for r in second[-1:]]
    after_second = latest_stream_state()
    for b in (0, 1):
        assert after_second[b][0] == after_first[b][0] == settings.seed + b
    # Epoch 1 went on from the checkpoint: every instance's next seq moved by what it consumed,
    # together exactly one epoch of items (had it started from seq 0 again, the sum would be 0).
    moved = [after_second[b][1] - after_first[b][1] for b in (0, 1)]
    assert all(m > 0 for m in moved) and sum(moved) == settings.items, (after_first, after_second)


@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_instances_recreated_after_a_node_loss_go_on_from_the_consumer(ray_cluster):
    """Last in this module: ``ray_cluster`` replaces the local Ray. A node with instances is
    removed; Ray recreates their actors elsewhere and the dataset reopens each stream at its
    position: per instance one gap-free, duplicate-free sequence with one seed, the items lost
    in flight with the node rendered again."""
    from conftest import TEST_SCRIPTS

    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2, seed=70,
                         resources={"blender": 1}, batch_size=8) as bl:
        health = bl.health()
        victim_node = health[0].node_id
        victims = [h.btid for h in health if h.node_id == victim_node]
        it = iter(bl.dataset(timeout=120, reconnect_timeout=180))
        seen = [next(it) for _ in range(60)]
        ray_cluster.remove_node(next(n for n in ray_cluster.worker_nodes if n.node_id == victim_node))
        back: set = set()
        while back != set(victims):
            item = next(it)
            seen.append(item)
            if item["btid"] in victims and item["epoch"] > 1000:  # from a recreated actor
                back.add(item["btid"])
        seen += [next(it) for _ in range(20)]
    for b in (0, 1):
        mine = [i for i in seen if i["btid"] == b]
        assert [i["seq"] for i in mine] == list(range(len(mine))), f"instance {b}: gap or repeat"
        assert {i["seed"] for i in mine} == {70 + b}
        assert all(np.all(i["arr"] == i["seq"]) for i in mine)
