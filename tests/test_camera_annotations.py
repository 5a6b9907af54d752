"""Camera annotations and randomisation with real Blender (Workbench, 64x48).

Scene: cube A (2 m, instance 1) at the origin, cube B (0.8 m, instance 2) between A and the
camera, hiding part of A, and cube C (0.2 m, instance 3) hidden entirely behind B.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.blender
W, H = 64, 48

SCENE = """
import sys
import bpy
import numpy as np
import blender_worker as bw

out_path = sys.argv[-1]
for ob in list(bpy.data.objects):
    if ob.type == "MESH":
        bpy.data.objects.remove(ob)
def cube(name, size, loc, idx):
    bpy.ops.mesh.primitive_cube_add(size=size, location=loc)
    ob = bpy.context.object
    ob.name, ob.pass_index = name, idx
    return ob
a = cube("A", 2.0, (0, 0, 0), 1)
b = cube("B", 0.8, (0.9, -3.0, 0.2), 2)
c = cube("C", 0.2, (0.9, -2.0, 0.2), 3)
a.rotation_euler = (0.0, 0.0, 0.3)
cam_obj = bpy.context.scene.camera
cam_obj.data.lens, cam_obj.data.sensor_width, cam_obj.data.sensor_fit = 35.0, 36.0, "HORIZONTAL"
cam_obj.data.shift_x = float(sys.argv[-2])
r = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(64, 48), workbench_aa="OFF"))
cam = bw.Camera()
cam.look_at(look_at=(0, 0, 0), look_from=(1.0, -9.0, 2.0))
cam.update_proj_matrix()
res = r.render(passes=["rgba", "instance"])
rng = np.random.default_rng(0)
pts = rng.uniform(-20, 20, size=(50, 3))
res["pts"] = pts
res["pix"] = cam.world_to_pixel(pts)
res["K"] = cam.K
res["ext"] = cam.extrinsics_opencv()
p3d = cam.pytorch3d_cameras()
for k, v in p3d.items():
    res["p3d_" + k] = v
res["cam_p3d"] = cam.world_to_camera(pts, "pytorch3d")
res["cam_cv"] = cam.world_to_camera(pts, "opencv")
res["box_B"] = np.array(cam.box2d(b))
res["bbox3d_A"] = cam.bbox3d(a)
# keypoints: centre of A's face towards the camera (partly behind B?), B's front face centre,
# A's back face centre (self-occluded), a point of A hidden by B, a point far outside the image
mw = np.asarray(a.matrix_world)
front_a = (mw @ np.array([0.6, -1.0, 0.6, 1.0]))[:3]
back_a = (mw @ np.array([0.0, 1.0, 0.0, 1.0]))[:3]
res["kp"] = cam.keypoints(np.array([front_a, [0.9, -3.4, 0.2], back_a, [0.9, -1.0, 0.2], [50.0, 0.0, 0.0]]))
res["vis"] = np.array([cam.visible_fraction(o) for o in (a, b, c)])
np.savez(out_path, **res)
"""

RANDOM = """
import sys
import bpy
import numpy as np
import blender_worker as bw
from blender_worker import randomize as R

seed, out_path = int(sys.argv[-2]), sys.argv[-1]
for ob in list(bpy.data.objects):
    if ob.type == "MESH":
        bpy.data.objects.remove(ob)
objs = []
for i in range(4):
    bpy.ops.mesh.primitive_cube_add(size=0.8)
    objs.append(bpy.context.object)
rng = R.make_rng(seed)
r = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(64, 48), workbench_aa="OFF"))
bpy.context.scene.display.shading.color_type = "OBJECT"
cam = bw.Camera()
R.random_materials(objs, rng)
light = R.random_light(rng)
R.place_without_overlap(objs, rng, area=(-2.5, 2.5, -2.5, 2.5), z=0.4)
loc = R.camera_on_sphere(cam, rng, target=(0, 0, 0), radius=(7, 9), elevation=(30, 60))
out = r.render(passes=["rgba", "instance"])
out["loc"] = loc
out["xy"] = np.array([list(o.location) for o in objs])
out["radius"] = np.array([R.footprint_radius(o) for o in objs])
out["colors"] = np.array([list(o.color) for o in objs])
out["light"] = np.array(list(light.location) + [light.data.energy])
try:
    R.place_without_overlap(objs, rng, area=(-0.5, 0.5, -0.5, 0.5))
except ValueError as exc:
    out["error"] = np.array(str(exc))
np.savez(out_path, **out)
"""


def run(tmp_path, source: str, *args: str) -> dict:
    script = tmp_path / "scene.py"
    script.write_text(textwrap.dedent(source))
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "blender_worker.bootstrap", str(script), "--", *args, str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module", params=[0.0, 0.1], ids=["centred", "shifted"])
def scene(request, tmp_path_factory):
    return request.param, run(tmp_path_factory.mktemp("cam"), SCENE, str(request.param))


def test_intrinsics_analytic(scene):
    shift, r = scene
    K = r["K"]
    fx = 35.0 / 36.0 * W
    assert K[0, 0] == pytest.approx(fx) and K[1, 1] == pytest.approx(fx)
    assert K[0, 2] == pytest.approx(W / 2 - 0.5 - shift * W)
    assert K[1, 2] == pytest.approx(H / 2 - 0.5)


def test_opencv_projection_matches_camera(scene):
    _, r = scene
    ext, K = r["ext"], r["K"]
    R, t = ext[:3, :3], ext[:3, 3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
    assert np.linalg.det(R) == pytest.approx(1.0)
    xc = r["pts"] @ R.T + t
    np.testing.assert_allclose(xc, r["cam_cv"], atol=1e-9)
    front = xc[:, 2] > 0.1
    uv = (xc[front] @ K.T)[:, :2] / xc[front, 2:3]
    np.testing.assert_allclose(uv, r["pix"][front] - 0.5, atol=1e-6)


def test_pytorch3d_convention(scene):
    _, r = scene
    R, T = r["p3d_R"][0], r["p3d_T"][0]
    np.testing.assert_allclose(r["pts"] @ R + T, r["cam_p3d"], atol=1e-9)
    # PyTorch3D view axes are OpenCV's with x and y flipped (x left, y up, z forward)
    np.testing.assert_allclose(r["cam_p3d"], r["cam_cv"] * [-1, -1, 1], atol=1e-9)
    np.testing.assert_allclose(r["p3d_image_size"], [[H, W]])
    np.testing.assert_allclose(r["p3d_principal_point"][0], r["K"][:2, 2])


def test_box_matches_mask(scene):
    from blender_worker.passes import mask_boxes

    _, r = scene
    np.testing.assert_allclose(mask_boxes(r["instance"])[2], r["box_B"], atol=1.0)


def test_bbox3d_corners(scene):
    _, r = scene
    corners = r["bbox3d_A"]
    assert corners.shape == (8, 3)
    d = np.linalg.norm(corners[:, None] - corners[None], axis=-1)
    np.testing.assert_allclose(d.max(), 2.0 * np.sqrt(3), rtol=1e-6)  # space diagonal of a 2 m cube
    np.testing.assert_allclose(np.sort(corners[:, 2])[[0, -1]], [-1.0, 1.0], atol=1e-6)


def test_keypoints_land_on_their_objects(scene):
    _, r = scene
    kp, inst = r["kp"], r["instance"]
    v = kp[:, 2].astype(int)
    assert list(v) == [2, 2, 1, 1, 0]
    expected_ids = [1, 2]
    for (x, y, _), want in zip(kp[:2], expected_ids):
        assert inst[int(y), int(x)] == want
    assert inst[int(kp[3, 1]), int(kp[3, 0])] == 2  # the hidden point of A lies behind B
    assert tuple(kp[4, :2]) == (0.0, 0.0)


def test_visibility(scene):
    _, r = scene
    vis, inst = r["vis"], r["instance"]
    assert vis[2] == 0.0 and not (inst == 3).any()  # C is entirely behind B
    assert 0.0 < vis[0] < 1.0 and 0.0 < vis[1] <= 1.0


@pytest.fixture(scope="module")
def randomized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rand")
    return [run(tmp, RANDOM, str(seed)) for seed in (5, 5, 6)]


def test_same_seed_same_output(randomized):
    a, b, c = randomized
    for key in ("rgba", "instance", "loc", "xy", "colors", "light"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["rgba"], c["rgba"]) and not np.array_equal(a["xy"], c["xy"])


def test_placement_without_overlap(randomized):
    for r in randomized:
        xy, rad = r["xy"][:, :2], r["radius"]
        for i in range(len(xy)):
            for j in range(i):
                assert np.linalg.norm(xy[i] - xy[j]) >= rad[i] + rad[j]
        assert np.all(np.abs(xy) + rad[:, None] <= 2.5 + 1e-9)
        assert len(np.unique(r["instance"])) > 2  # objects are in view
        assert "does not fit" in str(r["error"]) or "could not place" in str(r["error"])
