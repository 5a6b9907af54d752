"""Optical flow passes with real Blender (Cycles) on scenes of known motion, through both
Blenders (the bpy 5.0 wheel and Debian's 3.4 binary), and flow arrays in recordings.

Camera at the origin looking down -z (50 mm lens, 36 mm sensor, 64x48 px: fx = 88.9 px),
a wall facing it at z = -5. Case "translate": a 1.2 m square at z = -3 keyframed to move by
(0.1, 0.05, 0) m per frame. Case "rotate": the camera rolls about its viewing axis by 3 degrees
per frame (keyframed). Frames 2 and 3 are rendered; the analytic flow is computed here from
the pinhole model alone (not from ``Camera``).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO

W, H = 64, 48
FX = 50.0 / 36.0 * W
STEP = np.array([0.1, 0.05])  # square motion per frame (world x, y), metres
SQUARE_Z, WALL_Z = 3.0, 5.0
ROLL = np.radians(3.0)  # camera roll per frame
TOL = 0.05  # px

SCENE = """
import math
import sys
import bpy
import numpy as np
import blender_worker as bw

out_path, case = sys.argv[-2], sys.argv[-1]
sc = bpy.context.scene
for ob in list(bpy.data.objects):
    bpy.data.objects.remove(ob)
cam_data = bpy.data.cameras.new("cam")
cam_data.lens, cam_data.sensor_width, cam_data.sensor_fit = 50.0, 36.0, "HORIZONTAL"
cam = bpy.data.objects.new("cam", cam_data)
sc.collection.objects.link(cam)
sc.camera = cam
bpy.ops.mesh.primitive_plane_add(size=100, location=(0, 0, -5))
bpy.context.object.pass_index = 1
bpy.ops.mesh.primitive_plane_add(size=1.2, location=(0, 0, -3))
sq = bpy.context.object
sq.pass_index = 2
for f in range(1, 5):
    if case == "translate":
        sq.location = (0.1 * (f - 2), 0.05 * (f - 2), -3)
        sq.keyframe_insert("location", frame=f)
    else:
        sq.hide_render = True
        cam.rotation_euler = (0.0, 0.0, math.radians(3.0) * (f - 2))
        cam.keyframe_insert("rotation_euler", frame=f)
r = bw.Renderer(bw.RenderSettings(engine="cycles", resolution=(64, 48), samples=16))
res = {}
for f in (2, 3):
    sc.frame_set(f)
    out = r.render(passes=("flow_forward", "flow_backward", "instance"))
    for k, v in out.items():
        res[f"{k}{f}"] = v
errors = []
sc.render.use_motion_blur = True
try:
    r.render(passes=("flow_forward",))
except ValueError as exc:
    errors.append(str(exc))
sc.render.use_motion_blur = False
bw.render.set_engine(sc.render, "workbench")
for bad in (("flow_backward",), ("bogus",)):
    try:
        r.render(passes=bad)
    except ValueError as exc:
        errors.append(str(exc))
res["errors"] = np.array(errors)
res["version"] = np.array(bpy.app.version)
np.savez(out_path, **res)
"""

BLENDER = shutil.which("blender")


def run_scene(tmp_path, case: str, blender: str) -> dict:
    script = tmp_path / "scene.py"
    script.write_text(textwrap.dedent(SCENE))
    out = tmp_path / f"{case}.npz"
    if blender == "bpy":
        cmd = [sys.executable, "-m", "blender_worker.bootstrap", str(script), "--", str(out), case]
        env = None
    else:
        cmd = [BLENDER, "--background", "--factory-startup", "-noaudio", "--python-exit-code", "1",
               "--python", str(script), "--", str(out), case]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *site.getsitepackages()]))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return dict(np.load(out))


BLENDERS = ["bpy", pytest.param("binary", marks=pytest.mark.skipif(BLENDER is None, reason="no `blender` on PATH"))]


@pytest.fixture(scope="module", params=[(c, b) for b in ("bpy", "binary") for c in ("translate", "rotate")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def rendered(request, tmp_path_factory):
    case, blender = request.param
    if blender == "binary" and BLENDER is None:
        pytest.skip("no `blender` on PATH")
    return case, run_scene(tmp_path_factory.mktemp(f"{case}-{blender}"), case, blender)


def pixel_centres() -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)


def analytic_flow(case: str, dframe: int) -> np.ndarray:
    """(H, W, 2) flow of frame 2 to frame 2 + dframe, in image axes (x right, y down)."""
    u, v = pixel_centres()
    if case == "translate":
        d = dframe * STEP * FX / SQUARE_Z  # world x right = image x right; world y up = image y up
        return np.stack((np.full_like(u, d[0]), np.full_like(u, -d[1])), axis=-1)
    # A wall point seen at pixel (u, v) with the camera at roll 0: camera-space ray, y up
    x, y = (u - W / 2) / FX, -(v - H / 2) / FX
    p = np.stack((x * WALL_Z, y * WALL_Z), axis=-1)
    t = dframe * ROLL  # camera rotated by +t about the world (= its own) z axis
    # camera coordinates of a world point: R(t)^T p
    xc = np.cos(t) * p[..., 0] + np.sin(t) * p[..., 1]
    yc = -np.sin(t) * p[..., 0] + np.cos(t) * p[..., 1]
    u2, v2 = W / 2 + FX * xc / WALL_Z, H / 2 - FX * yc / WALL_Z
    return np.stack((u2 - u, v2 - v), axis=-1)


def interior(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """Pixels of ``mask`` at least ``margin`` pixels from its edge and from the image border."""
    out = mask.copy()
    for _ in range(margin):
        out[1:-1, 1:-1] &= out[:-2, 1:-1] & out[2:, 1:-1] & out[1:-1, :-2] & out[1:-1, 2:]
        out[[0, -1], :] = False
        out[:, [0, -1]] = False
    return out


def bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) ``img`` at continuous pixel coordinates (centres at +0.5)."""
    x, y = x - 0.5, y - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = np.clip(x0, 0, W - 2), np.clip(y0, 0, H - 2)
    return ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x0 + 1]
            + (1 - fx) * fy * img[y0 + 1, x0] + fx * fy * img[y0 + 1, x0 + 1])


def moving_region(case: str, r: dict, frame: int) -> np.ndarray:
    inst = r[f"instance{frame}"]
    return interior(inst == 2) if case == "translate" else interior(inst == 1, 1)


pytestmark = pytest.mark.blender


def test_shapes(rendered):
    _, r = rendered
    for k in ("flow_forward2", "flow_backward2", "flow_forward3"):
        assert r[k].shape == (H, W, 2) and r[k].dtype == np.float32


def test_flow_matches_analytic_motion(rendered):
    case, r = rendered
    for frame in (2, 3):
        region = moving_region(case, r, frame)
        assert region.sum() > (100 if case == "translate" else 1500)
        for key, d in (("flow_forward", 1), ("flow_backward", -1)):
            err = np.abs(r[f"{key}{frame}"] - analytic_flow(case, d))[region]
            assert err.max() < TOL, (key, frame, err.max())
    if case == "translate":  # the static wall, away from the square, does not move
        wall = interior(r["instance2"] == 1, 3) & interior(r["instance3"] == 1, 3)
        assert np.abs(r["flow_forward2"][wall]).max() < 1e-4


def test_forward_then_backward_returns_to_the_start(rendered):
    case, r = rendered
    u, v = pixel_centres()
    fwd = r["flow_forward2"]
    x, y = u + fwd[..., 0], v + fwd[..., 1]
    back = bilinear(r["flow_backward3"], x, y)
    region = moving_region(case, r, 2)
    # the landing point must lie inside the frame-3 region too (its 4 neighbours)
    land = moving_region(case, r, 3)
    xi, yi = np.clip(np.floor(x - 0.5).astype(int), 0, W - 2), np.clip(np.floor(y - 0.5).astype(int), 0, H - 2)
    region &= land[yi, xi] & land[yi + 1, xi + 1] & land[yi, xi + 1] & land[yi + 1, xi]
    assert region.sum() > 50
    err = np.hypot(x + back[..., 0] - u, y + back[..., 1] - v)[region]
    assert err.max() < TOL


def test_errors_name_the_engines_and_the_passes(rendered):
    _, r = rendered
    blur, workbench, bogus = (str(e) for e in r["errors"])
    assert "motion blur" in blur and "use_motion_blur" in blur
    assert "flow_backward" in workbench and "Cycles" in workbench and "Eevee" in workbench
    assert "bogus" in bogus and "flow_forward" in bogus and "rgba" in bogus


@pytest.mark.parametrize("version, ok", [((3, 4, 1), False), ((5, 0, 1), True)])
def test_eevee_flow_depends_on_the_version(version, ok):
    from blender_worker.passes import check_passes

    if ok:
        assert check_passes(["flow_forward"], "BLENDER_EEVEE", version) == ("flow_forward",)
    else:
        with pytest.raises(ValueError, match="Cycles, or Eevee from Blender 4.2"):
            check_passes(["flow_forward"], "BLENDER_EEVEE", version)
    with pytest.raises(ValueError, match="Cycles"):
        check_passes(["flow_forward", "depth"], "BLENDER_WORKBENCH", version)


def test_vector_to_flow_conventions():
    from blender_worker.passes import vector_to_flow

    # Blender: (x, y) previous - current, (z, w) current - next, y up
    vec = np.array([[[-3.0, -1.5, -3.0, -1.5]]], dtype=np.float32)  # moving right and up by (3, 1.5)
    fwd, bwd = vector_to_flow(vec)
    np.testing.assert_array_equal(fwd[0, 0], [3.0, -1.5])  # right, and up = -y in image axes
    np.testing.assert_array_equal(bwd[0, 0], [-3.0, 1.5])
    assert fwd.dtype == np.float32 and fwd.shape == (1, 1, 2)


STREAM = """
import bpy
import blender_worker as bw

launch, _ = bw.parse_launch_args()
sc = bpy.context.scene
cube = [o for o in sc.objects if o.type == "MESH"][0]
for f in (1, 2, 3):
    cube.location = (0.2 * (f - 2), 0.0, 0.0)
    cube.keyframe_insert("location", frame=f)
sc.frame_set(2)
r = bw.Renderer(bw.RenderSettings(engine="cycles", resolution=(32, 24), samples=1))
pub = bw.DataPublisher(launch)
for _ in range(3):
    pub.publish(**r.render(passes=("flow_forward", "flow_backward")))
pub.close()
"""


@pytest.mark.ray
def test_flow_streams_records_and_replays(ray_session, tmp_path, write_script):
    import ray

    from blendtorch_ray import BlenderLauncher
    from blendtorch_ray.recording import ReplayDataset

    with BlenderLauncher(script=write_script(STREAM), num_instances=1) as bl:
        live = [dict(it) for it in bl.dataset(max_items=3, timeout=120, record_to=str(tmp_path / "rec"))]
    assert len(live) == 3
    for it in live:  # through the shared-memory path
        assert it["flow_forward"].shape == (24, 32, 2) and it["flow_forward"].dtype == np.float32
        assert np.abs(it["flow_forward"]).max() > 0.5  # the default cube moves along x
        # x motion of +-0.2 m seen in perspective: nearly opposite, not exactly
        np.testing.assert_allclose(it["flow_backward"], -it["flow_forward"], atol=0.05)
    replay = ReplayDataset(str(tmp_path / "rec"))
    assert len(replay) == 3
    for i, it in enumerate(live):
        for k in ("flow_forward", "flow_backward"):
            back = replay[i][k]
            assert back.dtype == np.float32
            np.testing.assert_array_equal(np.asarray(back), np.asarray(it[k]))
    rows = sorted(ray.data.read_webdataset(str(tmp_path / "rec")).take_all(), key=lambda r: r["__key__"])
    assert len(rows) == 3
    for it, row in zip(live, rows):
        assert row["flow_forward.npy"].dtype == np.float32
        np.testing.assert_array_equal(row["flow_forward.npy"], np.asarray(it["flow_forward"]))
