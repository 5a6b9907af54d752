"""Render passes with real Blender: a scene of known geometry gives known depth, ids and normals.

Scene: camera at the origin looking down -z (50 mm lens, 36 mm sensor, 64x48 pixels); a large
wall facing the camera at z = -5 (instance 1, class 3 through its collection) and a 1x1 square
facing the camera at z = -3, centred at (0.3, 0.2) (instance 2, class 7 on the object).
Eevee (software GL here: about a minute for its first frame) runs only without ``-m "not slow"``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO

W, H = 64, 48
WALL_Z, SQUARE_Z = 5.0, 3.0
SQUARE_C, SQUARE_S = (0.3, 0.2), 1.0

SCENE = """
import sys
import bpy
import numpy as np
import blender_worker as bw
from blender_worker import passes as P

out_path, engine = sys.argv[-2], sys.argv[-1]
for ob in list(bpy.data.objects):
    bpy.data.objects.remove(ob)
cam_data = bpy.data.cameras.new("cam")
cam_data.lens, cam_data.sensor_width, cam_data.sensor_fit = 50.0, 36.0, "HORIZONTAL"
cam = bpy.data.objects.new("cam", cam_data)
bpy.context.scene.collection.objects.link(cam)
bpy.context.scene.camera = cam
walls = bpy.data.collections.new("walls")
walls["category_id"] = 3
bpy.context.scene.collection.children.link(walls)
bpy.ops.mesh.primitive_plane_add(size=100, location=(0, 0, -5))
wall = bpy.context.object
for c in wall.users_collection:
    c.objects.unlink(wall)
walls.objects.link(wall)
wall.pass_index = 1
bpy.ops.mesh.primitive_plane_add(size=1.0, location=(0.3, 0.2, -3))
square = bpy.context.object
square.pass_index = 2
square["category_id"] = 7
square.color = (1.0, 0.1, 0.1, 1.0)  # Workbench shows object colours: the square stands out
bpy.context.scene.display.shading.color_type = "OBJECT"
light = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
bpy.context.scene.collection.objects.link(light)
bpy.context.scene.view_settings.view_transform = "AgX"

r = bw.Renderer(bw.RenderSettings(engine=engine, resolution=(64, 48), samples=2, workbench_aa="OFF"))
names = sorted(P.SUPPORT[bpy.context.scene.render.engine], key=P.PASSES.index)
out = r.render(passes=names)
res = {k: v for k, v in out.items()}
res["plain"] = r.render()["image"]
res["linear"] = r.render(color="linear", passes=["rgba"])["rgba"]
camera = bw.Camera()
res["K"] = camera.K
corners = np.array([[0.3 + dx, 0.2 + dy, -3.0] for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)])
res["square_px"] = camera.world_to_pixel(corners)
res["box2d"] = np.array(camera.box2d(square))
square.location.x += 0.5  # a second frame must show the change (no stale image datablock)
res["rgba2"] = r.render(passes=["rgba"])["rgba"]
res["plain2"] = r.render()["image"]
try:
    r.render(passes=["normal"]) if engine == "workbench" else r.render(passes=["bogus"])
except ValueError as exc:
    res["error"] = np.array(str(exc))
np.savez(out_path, **res)
"""


def run_scene(tmp_path, engine: str) -> dict:
    script = tmp_path / "scene.py"
    script.write_text(textwrap.dedent(SCENE))
    out = tmp_path / f"{engine}.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "blender_worker.bootstrap", str(script), "--", str(out), engine],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module", params=["workbench", "cycles", pytest.param("eevee", marks=pytest.mark.slow)])
def rendered(request, tmp_path_factory):
    return request.param, run_scene(tmp_path_factory.mktemp(request.param), request.param)


def centre_rule_mask(square_px: np.ndarray) -> np.ndarray:
    """Pixels whose centre falls inside the projected (axis-aligned) square."""
    x0, y0 = square_px.min(axis=0)
    x1, y1 = square_px.max(axis=0)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    return (u > x0) & (u < x1) & (v > y0) & (v < y1)


def near_edge(square_px: np.ndarray, tol: float = 1.0) -> np.ndarray:
    x0, y0 = square_px.min(axis=0)
    x1, y1 = square_px.max(axis=0)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    inside_grown = (u > x0 - tol) & (u < x1 + tol) & (v > y0 - tol) & (v < y1 + tol)
    inside_shrunk = (u > x0 + tol) & (u < x1 - tol) & (v > y0 + tol) & (v < y1 - tol)
    return inside_grown & ~inside_shrunk


pytestmark = pytest.mark.blender


def test_shapes_and_dtypes(rendered):
    engine, r = rendered
    assert r["rgba"].shape == (H, W, 4) and r["rgba"].dtype == np.uint8
    assert r["depth"].shape == (H, W) and r["depth"].dtype == np.float32
    assert r["instance"].dtype == np.int32 and r["semantic"].dtype == np.int32
    assert r["linear"].dtype == np.float32 and r["linear"].shape == (H, W, 4)
    if engine != "workbench":
        assert r["normal"].shape == (H, W, 3)
    assert "normal" in str(r["error"]) or "bogus" in str(r["error"])


def test_depth_is_z_depth_of_known_planes(rendered):
    engine, r = rendered
    inst, depth = r["instance"], r["depth"]
    # z-depth, not ray length: constant over a plane facing the camera, even in the corners
    np.testing.assert_allclose(depth[inst == 1], WALL_Z, rtol=1e-4)
    np.testing.assert_allclose(depth[inst == 2], SQUARE_Z, rtol=1e-4)
    assert depth[0, 0] == pytest.approx(WALL_Z, rel=1e-4)


def test_instance_mask_matches_projected_square(rendered):
    engine, r = rendered
    inst = r["instance"]
    assert set(np.unique(inst)) == {1, 2}
    expected = centre_rule_mask(r["square_px"])
    # projected area of a 1x1 square at distance 3: (fx / 3)^2 pixels
    fx = 50.0 / 36.0 * W
    area = (SQUARE_S * fx / SQUARE_Z) ** 2
    assert abs(expected.sum() - area) < 2 * np.sqrt(area) + 2  # rasterisation of the edges
    wrong = (inst == 2) != expected
    assert not (wrong & ~near_edge(r["square_px"], 0.5)).any()
    if engine == "workbench":  # no anti-aliasing: the pixel-centre rule holds exactly
        assert (inst == 2).sum() == expected.sum()


def test_semantic_from_object_and_collection(rendered):
    _, r = rendered
    np.testing.assert_array_equal(r["semantic"], np.where(r["instance"] == 2, 7, 3))


def test_boxes_match_masks(rendered):
    from blender_worker.passes import mask_boxes

    _, r = rendered
    box = mask_boxes(r["instance"])[2]
    np.testing.assert_allclose(box, r["box2d"], atol=1.0)


def test_srgb8_matches_plain_render_and_linear(rendered):
    _, r = rendered
    assert np.abs(r["rgba"].astype(int) - r["plain"]).max() <= 1
    assert np.abs(r["rgba2"].astype(int) - r["plain2"]).max() <= 1
    assert not np.array_equal(r["rgba2"], r["rgba"])
    assert r["linear"][..., :3].max() > 0 and not np.array_equal(
        np.rint(r["linear"][..., :3] * 255), r["rgba"][..., :3]
    )  # the linear pass is not display-referred


def test_normals_face_the_camera(rendered):
    engine, r = rendered
    if engine == "workbench":
        pytest.skip("Workbench has no normal pass")
    inner = r["instance"] > 0
    np.testing.assert_allclose(r["normal"][inner], np.tile([0.0, 0.0, 1.0], (inner.sum(), 1)), atol=1e-4)


def test_depth_to_distance_uses_ray_length(rendered):
    from blender_worker.passes import depth_to_distance

    _, r = rendered
    dist = depth_to_distance(r["depth"], r["K"])
    K = r["K"]
    x, y = (0 - K[0, 2]) / K[0, 0], (0 - K[1, 2]) / K[1, 1]
    assert dist[0, 0] == pytest.approx(WALL_Z * np.sqrt(1 + x * x + y * y), rel=1e-4)
    assert dist[0, 0] > r["depth"][0, 0]
