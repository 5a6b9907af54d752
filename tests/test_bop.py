"""BOP export: poses from ``Camera.object_poses``, full masks from ``id_render.amodal_masks``, a
real Blender render (Workbench, 64x48) of two cubes, one partly hiding the other; the scene
written by ``export_bop`` and by ``blendtorch-ray bop`` is read back as the BOP format
description says (the BOP toolkit is not on PyPI) and checked against the geometry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

SIZES = {1: 1.0, 2: 0.5}  # instance id -> cube edge (m)

SCENE = """
import sys
import bpy
import numpy as np
import blender_worker as bw
from blender_worker.id_render import amodal_masks

out_path = sys.argv[-1]
for ob in list(bpy.data.objects):
    if ob.type == "MESH":
        bpy.data.objects.remove(ob)
bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0, 0, 0), rotation=(0.3, 0.2, 0.5))
a = bpy.context.object
a.pass_index, a["category_id"] = 1, 5
bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.35, -2.0, 0.1), rotation=(0.0, 0.0, 0.7))
b = bpy.context.object
b.scale = (0.5, 0.5, 0.5)  # left out of the pose: the model carries the size
b.pass_index = 2
r = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(64, 48), workbench_aa="OFF"))
cam = bw.Camera()
cam.look_at(look_at=(0, 0, 0), look_from=(1.0, -6.0, 1.5))
out = r.render(passes=("rgba", "depth", "instance"))
objs = [a, b]
res = dict(out, **cam.object_poses(objs), K=cam.K, extrinsics=cam.extrinsics_opencv(),
           amodal_masks=amodal_masks(objs, r._dir + "/amodal.exr"))
res["instance_after"] = r.render(passes=("instance",))["instance"]  # hide_render restored
np.savez(out_path, **res)
"""


@pytest.fixture(scope="module")
def item(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bop")
    script = tmp / "scene.py"
    script.write_text(textwrap.dedent(SCENE))
    out = tmp / "item.npz"
    proc = subprocess.run([sys.executable, "-m", "blender_worker.bootstrap", str(script), "--", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def read_bop_scene(root: str) -> dict:
    """Read a BOP scene as the format description defines it (json keys are image ids)."""
    def load(name):
        with open(os.path.join(root, name)) as f:
            return {int(k): v for k, v in json.load(f).items()}

    cams, gts, infos = load("scene_camera.json"), load("scene_gt.json"), load("scene_gt_info.json")
    for cam in cams.values():
        cam["cam_K"] = np.array(cam["cam_K"]).reshape(3, 3)
        if "cam_R_w2c" in cam:
            cam["cam_R_w2c"] = np.array(cam["cam_R_w2c"]).reshape(3, 3)
            cam["cam_t_w2c"] = np.array(cam["cam_t_w2c"]).reshape(3, 1)
    for gt in gts.values():
        for g in gt:
            g["cam_R_m2c"] = np.array(g["cam_R_m2c"]).reshape(3, 3)
            g["cam_t_m2c"] = np.array(g["cam_t_m2c"]).reshape(3, 1)
    return {"camera": cams, "gt": gts, "info": infos}


def cube_corners_mm(size_m: float) -> np.ndarray:
    s = 500.0 * size_m
    return np.array([[x, y, z] for x in (-s, s) for y in (-s, s) for z in (-s, s)])


pytestmark = pytest.mark.blender


def check_scene(root: str, item: dict) -> None:
    scene = read_bop_scene(root)
    assert set(scene["gt"]) == {0, 1}
    cam, gt, info = scene["camera"][0], scene["gt"][0], scene["info"][0]
    K = cam["cam_K"]
    assert [g["obj_id"] for g in gt] == [5, 2]  # category_id, else the instance id
    for g_id, (g, inf) in enumerate(zip(gt, info)):
        R, t = g["cam_R_m2c"], g["cam_t_m2c"]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)  # a rotation, scale left out
        size = SIZES[[1, 2][g_id]]
        # s * p_i = K [R | t] p_m: the projected model corners bound the full mask
        p = K @ (R @ cube_corners_mm(size).T + t)
        uv = (p[:2] / p[2]).T
        x, y, w, h = inf["bbox_obj"]
        assert abs(uv[:, 0].min() - x) < 1.0 and abs(uv[:, 0].max() - (x + w - 1)) < 1.0
        assert abs(uv[:, 1].min() - y) < 1.0 and abs(uv[:, 1].max() - (y + h - 1)) < 1.0
        mask = np.array(Image.open(os.path.join(root, "mask", f"000000_{g_id:06d}.png"))) > 0
        visib = np.array(Image.open(os.path.join(root, "mask_visib", f"000000_{g_id:06d}.png"))) > 0
        assert inf["px_count_all"] == mask.sum() and inf["px_count_visib"] == visib.sum()
        assert not (visib & ~mask).any()
        assert inf["visib_fract"] == pytest.approx(visib.sum() / mask.sum())
        # world-to-camera and model-to-camera agree: t_m2c = R_w2c @ (object location in mm) + t_w2c
    t_a = cam["cam_R_w2c"] @ np.zeros((3, 1)) + cam["cam_t_w2c"]
    np.testing.assert_allclose(gt[0]["cam_t_m2c"], t_a, atol=1e-3)
    assert info[0]["visib_fract"] < 0.9 and info[1]["visib_fract"] == 1.0  # the small cube hides part of A
    depth = np.array(Image.open(os.path.join(root, "depth", "000000.png")))
    assert depth.dtype == np.uint16
    hit = np.isfinite(item["depth"]) & (item["depth"] * 10000 < 65535)
    np.testing.assert_allclose(depth[hit] * cam["depth_scale"], item["depth"][hit] * 1000.0, atol=0.05)
    assert (depth[~np.isfinite(item["depth"])] == 0).all()
    rgb = np.array(Image.open(os.path.join(root, "rgb", "000000.png")))
    np.testing.assert_array_equal(rgb, item["rgba"][..., :3])


def test_poses_and_masks(item):
    np.testing.assert_array_equal(item["pose_ids"], [1, 2])
    assert item["amodal_masks"].shape == (2, 48, 64)
    np.testing.assert_array_equal(item["instance_after"], item["instance"])
    visible_a = item["instance"] == 1
    assert not (visible_a & ~item["amodal_masks"][0]).any() and item["amodal_masks"][0].sum() > visible_a.sum()


def test_export_bop_layout_and_geometry(item, tmp_path):
    from blendtorch_ray.bop import export_bop

    root = export_bop([item, item], str(tmp_path / "train_pbr"))
    assert root.endswith("000000")
    assert sorted(os.listdir(root)) == ["depth", "mask", "mask_visib", "rgb", "scene_camera.json",
                                        "scene_gt.json", "scene_gt_info.json"]
    check_scene(root, item)


def test_cli_from_a_recording_and_items_without_poses(item, tmp_path):
    from blendtorch_ray.bop import export_bop
    from blendtorch_ray.recording import Recorder

    with Recorder(str(tmp_path / "rec")) as rec:
        rec.write(dict(item, btid=0, seq=0))
        rec.write(dict(item, btid=0, seq=1))
    bin_dir = os.path.dirname(sys.executable)
    proc = subprocess.run([os.path.join(bin_dir, "blendtorch-ray"), "bop", str(tmp_path / "rec"), "-o",
                           str(tmp_path / "out"), "--scene-id", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "000003" in proc.stdout
    check_scene(str(tmp_path / "out" / "000003"), item)

    no_poses = {k: v for k, v in item.items() if k not in ("cam_R_m2c", "cam_t_m2c")}
    with pytest.raises(KeyError, match="object_poses"):
        export_bop([no_poses], str(tmp_path / "bad"))
    with Recorder(str(tmp_path / "rec_bad")) as rec:
        rec.write(no_poses)
    proc = subprocess.run([os.path.join(bin_dir, "blendtorch-ray"), "bop", str(tmp_path / "rec_bad"), "-o",
                           str(tmp_path / "bad2")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "cam_R_m2c" in proc.stderr
