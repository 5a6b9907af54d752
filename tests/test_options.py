"""Launch options end to end, each with real Blender processes and a real Ray: recycle_rss_mb,
wait_for_resources, scene=, codec="json", prestart=False, log_dir, the shared-memory-off branch
in the actor, and the ``demo`` / ``bench`` commands. Kept small: few items, small images."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from blendtorch_ray import BlenderLauncher
from conftest import REPO, TEST_SCRIPTS, wait_until
from drivers.driver_process import DriverProcess, driver_env

pytestmark = [pytest.mark.blender, pytest.mark.ray]

DRIVERS = REPO / "tests" / "drivers"
BIN = Path(sys.executable).parent
FOREVER = str(TEST_SCRIPTS / "forever.py")


def _cli() -> str:
    return str(BIN / "blendtorch-ray") if (BIN / "blendtorch-ray").exists() else "blendtorch-ray"


def test_recycle_rss_mb_replaces_blender_without_a_gap(ray_session):
    """A limit below any Blender's RSS: the actor replaces Blender at each check (every 8
    items), transparently: same btid, one sequence of seqs across the epochs, nothing lost.
    With 64 KiB items, whose arrays are in the old Blender's slot file while it is replaced
    (tests/test_robustness.py has the same with small inline items)."""
    with BlenderLauncher(script=FOREVER, recycle_rss_mb=1, instance_args=[["--size", "128"]]) as bl:
        it = iter(bl.dataset(timeout=60))
        items = []
        while len({i["epoch"] for i in items}) < 3 and len(items) < 3000:
            items.append(next(it))
        health = bl.health()[0]
    epochs = sorted({i["epoch"] for i in items})
    assert epochs[:3] == [0, 1, 2], f"no recycling seen in {len(items)} items"
    assert health.recycles >= 2 and health.restarts == 0 and health.lost_items == 0
    # One sequence across the recycles (blendtorch_ray/resume.py): every item, in order.
    assert [i["seq"] for i in items] == list(range(len(items)))
    assert all(len([i for i in items if i["epoch"] == e]) >= 8 for e in epochs[:-1])
    assert {i["btid"] for i in items} == {0}
    assert all(i["arr"].shape == (128, 128) and np.all(i["arr"] == i["seq"]) for i in items)
    assert len({i["pid"] for i in items}) == len(epochs)  # one Blender process per epoch
    assert health.items >= len(items)


def test_wait_for_resources_waits_for_a_node_that_brings_them(ray_session, tmp_path):
    """An instance needs a custom resource nobody has. Without wait_for_resources: ValueError
    at once. With it: start() registers the actor and waits (no error) until a node with the
    resource joins (``ray start --block`` into this Ray), then the instance runs there."""
    import ray

    from blendtorch_ray.runtime import gcs_address

    opts = dict(script=FOREVER, resources={"btr_late": 1})
    with pytest.raises(ValueError, match="btr_late: need 1, cluster has 0"):
        BlenderLauncher(**opts).start()

    name = f"late-{uuid.uuid4().hex[:6]}"
    bl = BlenderLauncher(**opts, name=name, wait_for_resources=True)
    outcome: dict = {}

    def start() -> None:
        try:
            bl.start()
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - reported by the asserts below
            outcome["error"] = exc

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    node = None
    try:
        # Past the capacity check: the actor exists, pending a node, and start() still waits.
        assert wait_until(lambda: _named_actor(f"{name}/0", bl.namespace) or outcome, timeout=60)
        assert not outcome, f"start() returned before any node had the resource: {outcome}"
        assert starter.is_alive()
        node = subprocess.Popen(
            [str(BIN / "ray"), "start", "--address", gcs_address(), "--num-cpus", "1",
             "--resources", json.dumps({"btr_late": 1}), "--object-store-memory", str(200 * 2**20),
             "--disable-usage-stats", "--block"],
            stdout=open(tmp_path / "node.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        starter.join(180)
        assert outcome.get("ok"), f"start() did not finish once the node joined: {outcome}\n" + (
            (tmp_path / "node.log").read_text()[-3000:])
        items = list(bl.dataset(max_items=10, timeout=60))
        late_nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("btr_late")]
        assert len(items) == 10 and bl.health()[0].node_id in late_nodes
    finally:
        bl.close()
        if node is not None:
            node.terminate()  # the node drains and shuts its own processes down
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(10)
        starter.join(10)


def _named_actor(name: str, namespace: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=namespace)
        return True
    except ValueError:
        return False


SCENE_SCRIPT = """
import bpy
import blender_worker as bw

launch, _ = bw.parse_launch_args()
pub = bw.DataPublisher(launch)
marker = bpy.data.objects.get("BtrMarker")
pub.publish(objects=sorted(o.name for o in bpy.data.objects), filepath=bpy.data.filepath,
            location=list(marker.location) if marker else None, tag=marker.get("btr_tag") if marker else None)
pub.close()
"""

MAKE_BLEND = """
import sys
import bpy
path, tag = sys.argv[sys.argv.index("--") + 1:]
bpy.data.objects.remove(bpy.data.objects["Cube"], do_unlink=True)
bpy.ops.mesh.primitive_uv_sphere_add(location=(1.0, 2.0, 3.0))
obj = bpy.context.active_object
obj.name = "BtrMarker"
obj["btr_tag"] = tag
bpy.ops.wm.save_as_mainfile(filepath=path)
"""


@pytest.mark.parametrize("blender", ["bpy", "blender"])
def test_scene_blend_file_is_opened_before_the_script(ray_session, write_script, tmp_path, blender):
    """A .blend made here (default scene without its Cube, plus a tagged sphere) with the same
    Blender: the script sees exactly that scene (bpy wheel: bootstrap --blend; binary: argv)."""
    if blender == "blender" and shutil.which("blender") is None:
        pytest.skip("no Blender binary on PATH")
    blend, tag = tmp_path / "marker.blend", uuid.uuid4().hex
    maker = write_script(MAKE_BLEND, name="make_blend.py")
    if blender == "bpy":
        cmd = [sys.executable, maker, "--", str(blend), tag]
    else:
        cmd = ["blender", "--background", "--factory-startup", "-noaudio", "--python-exit-code", "1",
               "--python", maker, "--", str(blend), tag]
    made = subprocess.run(cmd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert made.returncode == 0 and blend.is_file(), made.stdout[-2000:] + made.stderr[-2000:]
    with BlenderLauncher(script=write_script(SCENE_SCRIPT), scene=str(blend), blender=blender) as bl:
        (item,) = list(bl.dataset(timeout=60))
    assert "BtrMarker" in item["objects"] and "Cube" not in item["objects"]
    assert item["tag"] == tag and item["filepath"] == str(blend)
    assert item["location"] == pytest.approx([1.0, 2.0, 3.0])


JSON_SCRIPT = """
import numpy as np
import blender_worker as bw

launch, _ = bw.parse_launch_args()
pub = bw.DataPublisher(launch)
for k in range(12):
    pub.publish(
        image=np.full((160, 160, 4), k, np.uint8),          # 100 KiB: a shared-memory slot
        depth=np.arange(256 * 256, dtype=np.float32).reshape(256, 256) + k,
        ids=np.arange(5, dtype=np.int64) * k,
        big_endian=np.arange(3, dtype=">f8") + k,
        transposed=np.arange(6, dtype=np.int16).reshape(2, 3).T,
        mask=np.array([True, False, k % 2 == 0]),
        empty=np.zeros((0, 3), np.float32),
        k=k, name=f"item-{k}", pair=(k, -k), meta={"nested": [1, 2.5, None, True]},
    )
pub.close()
"""


def test_json_codec_through_the_launcher(ray_session, write_script):
    """codec="json" end to end (slots, ring, dataset): every item arrives, arrays keep dtype
    (byte order too), shape and values; plain values come back as JSON has them (tuples as
    lists, which also shows the item did not travel as pickle)."""
    with BlenderLauncher(script=write_script(JSON_SCRIPT), codec="json") as bl:
        items = list(bl.dataset(timeout=60))
    assert [i["k"] for i in items] == list(range(12)) and [i["seq"] for i in items] == list(range(12))
    for i in items:
        k = i["k"]
        expect = {
            "image": np.full((160, 160, 4), k, np.uint8),
            "depth": np.arange(256 * 256, dtype=np.float32).reshape(256, 256) + k,
            "ids": np.arange(5, dtype=np.int64) * k,
            "big_endian": np.arange(3, dtype=">f8") + k,
            "transposed": np.arange(6, dtype=np.int16).reshape(2, 3).T,
            "mask": np.array([True, False, k % 2 == 0]),
            "empty": np.zeros((0, 3), np.float32),
        }
        for key, want in expect.items():
            got = i[key]
            assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, key
            assert np.array_equal(got, want), key
        assert i["name"] == f"item-{k}" and i["pair"] == [k, -k] and i["meta"] == {"nested": [1, 2.5, None, True]}


def test_prestart_false_blender_is_the_actors_child(tmp_path):
    """In a fresh driver (the launcher starts Ray) prestart=False starts no Blender in the
    driver: each Blender is the child of its actor. (prestart=True: tests/test_prestart.py.)"""
    driver = DriverProcess([str(DRIVERS / "no_prestart.py"), FOREVER], tmp_path / "driver.err")
    try:
        out = json.loads(driver.wait_line("RESULT", timeout=240))
    finally:
        driver.cleanup()
    assert out["prestarted"] == 0
    assert out["parents"] == out["actor_pids"] and out["driver"] not in out["parents"]
    assert len(out["items"]) >= 20 and {b for b, _ in out["items"]} == {0, 1}


LOG_SCRIPT = """
import sys
import blender_worker as bw

launch, _ = bw.parse_launch_args()
print(f"btr-log-test stdout of instance {launch.btid}", flush=True)
print(f"btr-log-test stderr of instance {launch.btid}", file=sys.stderr, flush=True)
pub = bw.DataPublisher(launch)
pub.publish(x=launch.btid)
pub.close()
"""


def test_log_dir_keeps_each_instances_blender_output(ray_session, write_script, tmp_path):
    """log_dir: one log per instance, named after the group, with Blender's command line,
    stdout and stderr; health() points at it; it stays after close()."""
    log_dir = tmp_path / "logs"  # does not exist yet
    with BlenderLauncher(script=write_script(LOG_SCRIPT), num_instances=2, name="logtest",
                         log_dir=str(log_dir)) as bl:
        items = list(bl.dataset(timeout=60))
        paths = [h.log_path for h in bl.health()]
    assert sorted(i["x"] for i in items) == [0, 1]
    assert paths == [str(log_dir / "logtest-0.log"), str(log_dir / "logtest-1.log")]
    for btid, path in enumerate(paths):
        text = Path(path).read_text()
        assert text.startswith("$ ") and f"--btid {btid} " in text.splitlines()[0]
        assert f"btr-log-test stdout of instance {btid}" in text
        assert f"btr-log-test stderr of instance {btid}" in text
        assert f"instance {1 - btid}" not in text


def test_shared_memory_off_in_the_actor(ray_session, tmp_path):
    """The actor's own process sees too little /dev/shm room (BLENDTORCH_SHM_MIN_FREE set for
    the job's workers only, through a runtime_env; the driver lacks it): it warns, starts every
    Blender without a slot file and makes no ring; 64 KiB items still arrive intact, also after
    a restart."""
    from blendtorch_ray.runtime import gcs_address

    driver = DriverProcess([str(DRIVERS / "shm_off.py"), FOREVER], tmp_path / "driver.err",
                           env=driver_env(RAY_ADDRESS=gcs_address()))
    try:
        out = json.loads(driver.wait_line("RESULT", timeout=240))
    finally:
        driver.cleanup()
    assert any(w.startswith("Blender instance 0: shared-memory paths off: less than ") for w in out["warnings"]), out
    assert len(out["cmdlines"]) == 2 and not any("--btslots" in c for c in out["cmdlines"]), out["cmdlines"]
    assert out["shm_files"] == []
    assert out["restarts"] == 1 and out["items"] >= 40 and out["arrays_ok"] and out["unique"]


def test_demo_cli(tmp_path):
    """``blendtorch-ray demo`` with small arguments, in a fresh process (starts its own Ray)."""
    sheet = tmp_path / "sheet.png"
    run = subprocess.run(
        [_cli(), "demo", "--instances", "2", "--items", "8", "--batch-size", "4", "--width", "64",
         "--height", "48", "--out", str(sheet)],
        capture_output=True, text=True, timeout=300, env=driver_env(), cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "received 8 items: image (48, 64, 4) torch.uint8" in out, out
    counts = {int(line.split()[1].rstrip(":")): int(line.split()[2]) for line in out.splitlines()
              if line.startswith("  instance ")}
    assert set(counts) <= {0, 1} and sum(counts.values()) == 8, out  # 8 items need not come from both
    health_rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1]) for r in health_rows] == [("0", "True"), ("1", "True")], out
    assert f"contact sheet of 8 frames: {sheet}" in out
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.size == (4 * 240, 2 * 180)


def test_bench_cli(ray_session):
    """``blendtorch-ray bench``: an unknown name lists the benchmarks; ``memory`` with small
    arguments (joining this session's Ray) prints its table."""
    from blendtorch_ray.runtime import gcs_address

    unknown = subprocess.run([_cli(), "bench", "nope"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2
    assert "no benchmark 'nope'; available:" in unknown.stderr and "memory" in unknown.stderr
    assert "common" not in unknown.stderr
    run = subprocess.run([_cli(), "bench", "memory", "--pause", "1", "--instances", "1", "--items", "16"],
                         capture_output=True, text=True, timeout=300, env=driver_env(RAY_ADDRESS=gcs_address()))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in run.stdout.splitlines() if line.startswith("| ")}
    assert {"steady state (after 16 items)", "consumer paused: first second", "resumed (+16 items)"} <= set(rows), run.stdout
    assert int(rows["resumed (+16 items)"].split("|")[-2]) >= 32
