"""Integration tests of the local stream: real Blender (bpy wheel), real Ray, real ZeroMQ."""

from collections import Counter

import numpy as np
import pytest
import torch

from blendtorch_ray import BlenderLauncher, BlenderStartError, StreamTimeout, make_loader
from conftest import TEST_SCRIPTS

pytestmark = [pytest.mark.blender, pytest.mark.ray]


def test_launch_contract_ids_seeds_and_instance_args(ray_session):
    with BlenderLauncher(
        script=str(TEST_SCRIPTS / "launch_info.py"),
        num_instances=3,
        seed=100,
        instance_args=[["--tag", f"t{i}", "--items", "2"] for i in range(3)],
    ) as bl:
        items = list(bl.dataset(timeout=60))
    assert len(items) == 6
    by_id = {}
    for it in items:
        by_id.setdefault(it["btid"], []).append(it)
    assert sorted(by_id) == [0, 1, 2]
    for btid, its in by_id.items():
        assert [it["seq"] for it in sorted(its, key=lambda x: x["seq"])] == [0, 1]
        assert {it["seed"] for it in its} == {100 + btid}
        assert {it["tag"] for it in its} == {f"t{btid}"}
        assert its[0]["remainder"] == ["--tag", f"t{btid}", "--items", "2"]
        np.testing.assert_array_equal(its[0]["arr"], np.full((4, 4), btid, np.int32))


def test_animation_controller_callback_order_over_two_episodes(ray_session):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "callbacks.py")) as bl:
        (item,) = list(bl.dataset(timeout=60))
    calls = item["calls"]
    names = [c[0] for c in calls]
    episode = ["pre_animation"] + ["pre_frame", "post_frame"] * 3 + ["post_animation"]
    assert names == ["pre_play"] + episode + episode + ["post_play"]
    # frameid in pre_frame/post_frame is the frame being processed; both see it current.
    frames = [(c[1], c[2]) for c in calls if c[0] == "post_frame"]
    assert frames == [(0, 3), (0, 4), (0, 5), (1, 3), (1, 4), (1, 5)]
    assert all(c[3] == c[2] for c in calls if c[0] in ("pre_frame", "post_frame"))  # new frame current in both
    assert [c[2] for c in calls if c[0] == "pre_animation"] == [3, 3]


def test_camera_projections_match_hand_computed_pinhole(ray_session):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "camera_check.py")) as bl:
        (it,) = list(bl.dataset(timeout=60))
    # Camera at (0,-10,0) looking at the origin, 50 mm lens, 36 mm sensor, 640x480 px.
    f = 50.0 / 36.0 * 640  # focal length in pixels (sensor fit AUTO -> horizontal)
    W, H = 640, 480

    def pinhole(p):
        x, y, z = p
        depth = y + 10.0  # distance along the viewing axis (+y)
        return np.array([W / 2 + f * x / depth, H / 2 - f * z / depth]), depth

    assert tuple(it["shape"]) == (480, 640)
    for p, pix, d in zip(it["pts"], it["pix"], it["depth"]):
        exp_pix, exp_d = pinhole(p)
        np.testing.assert_allclose(pix, exp_pix, atol=1e-3)
        assert d == pytest.approx(exp_d, abs=1e-4)
    np.testing.assert_allclose(it["pix_ll"][:, 1], H - it["pix"][:, 1], atol=1e-6)
    np.testing.assert_allclose(it["ndc"][1, :2], [f * 0.1 / (W / 2), 0.0], atol=1e-6)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    expected = np.array(sorted(tuple(np.round(pinhole(c)[0], 3)) for c in corners))
    got_bbox = np.array(sorted(tuple(np.round(p, 3)) for p in it["bbox_pix"]))
    np.testing.assert_allclose(got_bbox, expected, atol=2e-3)
    got_obj = np.array(sorted(tuple(np.round(p, 3)) for p in it["obj_pix"]))
    np.testing.assert_allclose(got_obj, expected, atol=2e-3)
    np.testing.assert_allclose(it["cam_location"], [0, -10, 0], atol=1e-6)


@pytest.mark.slow
def test_multiworker_dataloader_neither_duplicates_nor_drops(ray_session):
    per_instance = 12
    with BlenderLauncher(
        script=str(TEST_SCRIPTS / "launch_info.py"),
        num_instances=4,
        instance_args=[["--items", str(per_instance)]] * 4,
        batch_size=4,
    ) as bl:
        loader = make_loader(bl.dataset(timeout=90), batch_size=5, num_workers=2)
        seen = []
        for batch in loader:
            assert isinstance(batch["arr"], torch.Tensor)
            seen += list(zip(batch["btid"].tolist(), batch["seq"].tolist()))
    assert len(seen) == 4 * per_instance
    assert len(set(seen)) == len(seen)
    assert Counter(b for b, _ in seen) == {b: per_instance for b in range(4)}


def test_max_items_and_item_transform(ray_session):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), num_instances=2) as bl:
        ds = bl.dataset(max_items=25, item_transform=lambda it: (it["btid"], int(it["arr"][0, 0])))
        out = list(ds)
        assert len(out) == 25 == len(ds)
        assert all(seq >= 0 and b in (0, 1) for b, seq in out)
        # A second pass over the same dataset works (generators of the first were cancelled).
        assert len(list(ds)) == 25
        loader = make_loader(bl.dataset(max_items=10), batch_size=4, num_workers=2)
        assert sum(len(b["btid"]) for b in loader) == 10


def test_bundled_cube_scene_renders_real_images(ray_session):
    from blender_worker.scenes import CUBE

    with BlenderLauncher(script=CUBE, instance_args=[["--width", "64", "--height", "48", "--frames", "3"]]) as bl:
        items = list(bl.dataset(timeout=60))
    assert len(items) == 3
    img = items[0]["image"]
    assert img.shape == (48, 64, 4) and img.dtype == np.uint8
    assert img[..., :3].std() > 5  # not blank: a cube on a background
    assert items[0]["xy"].shape == (8, 2)


def test_stream_timeout_names_instance_and_shows_log(ray_session):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "stalls.py")) as bl:
        got = []
        with pytest.raises(StreamTimeout) as err:
            for item in bl.dataset(timeout=4):
                got.append(item["x"])
    assert got == [1, 2]
    assert err.value.btid == 0
    msg = str(err.value)
    assert "instance(s) [0]" in msg and "within 4s" in msg
    assert "now hanging on purpose" in msg


def test_script_error_on_start_raises_with_blender_traceback(ray_session):
    with pytest.raises(BlenderStartError) as err:
        BlenderLauncher(script=str(TEST_SCRIPTS / "raises_on_start.py"), num_instances=2).start()
    msg = str(err.value)
    assert "boom from the test script" in msg and "Traceback" in msg
    assert "exited with code 1" in msg


def test_script_that_never_publishes_fails_readiness_clearly(ray_session):
    with pytest.raises(BlenderStartError, match="no readiness handshake within 6s"):
        BlenderLauncher(script=str(TEST_SCRIPTS / "never_ready.py"), ready_timeout=6).start()


def test_consumer_that_starts_late_still_gets_every_item(ray_session):
    """Blender finishes publishing long before anyone reads: it waits for the actor's
    acknowledgement of its end marker, so nothing in transit is dropped."""
    import time

    with BlenderLauncher(
        script=str(TEST_SCRIPTS / "launch_info.py"), num_instances=2, instance_args=[["--items", "30"]] * 2
    ) as bl:
        time.sleep(4.0)  # both instances have published everything they can and wait
        items = list(bl.dataset(timeout=60))
        health = bl.health()
    assert sorted((i["btid"], i["seq"]) for i in items) == [(b, s) for b in (0, 1) for s in range(30)]
    assert all(h.lost_items == 0 and not h.alive for h in health)


def test_local_mode_blender_runs_at_the_drivers_priority(ray_session):
    """Ray nices its workers to 15 by default; in local mode Blender must not inherit that
    (it would lose the CPU to the trainer). health() reports the niceness it runs at."""
    import os

    with BlenderLauncher(script=str(TEST_SCRIPTS / "forever.py"), instance_args=[["--size", "8"]]) as bl:
        health = bl.health()[0]
        assert health.alive and health.niceness == os.getpriority(os.PRIO_PROCESS, 0) == 0


def test_pre_frame_has_the_new_frame_current_and_physics_steps_once(ray_session):
    with BlenderLauncher(script=str(TEST_SCRIPTS / "physics_frames.py")) as bl:
        (it,) = list(bl.dataset(timeout=60))
    assert it["pre"] == [(f, f) for f in range(1, 31)]  # frame_current is the new frame in pre_frame
    assert [p[:2] for p in it["post"]] == [(f, f) for f in range(1, 31)]
    heights = [p[2] for p in it["post"]]
    assert heights[-1] < heights[0] - 1.0  # the cube fell: physics ran
    # Same trajectory as a plain frame_set loop: no frame evaluated twice or skipped.
    assert heights == pytest.approx(it["reference"], abs=1e-6)
