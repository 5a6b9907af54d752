"""The display-referred image is the same whichever file it goes through (Targa or TIFF; the
default, TIFF, is the faster writer), within 1/255, on the bpy wheel and on the `blender` binary;
``color="linear"`` stays scene-linear float32. Each case runs one Blender, no Ray."""

import json
import shutil
import subprocess

import pytest

from blendtorch_ray.blender import find_blender

SCRIPT = r"""
import json, sys
import bpy, numpy as np
import blender_worker as bw
from blender_worker.render import SRGB8_FORMATS, default_srgb8_format

scene = bpy.context.scene
cube = bpy.data.objects["Cube"]
scene.display.shading.color_type = "OBJECT"
renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(160, 120), workbench_aa="OFF"))
bw.Camera().look_at(look_at=(0, 0, 0), look_from=(6.0, -6.0, 4.5))
rng = np.random.default_rng(3)
report = {"version": bpy.app.version[:2], "default": renderer.srgb8_format,
          "default_fn": default_srgb8_format(), "cases": []}
for transparent in (False, True):
    scene.render.film_transparent = transparent
    for i in range(3):
        cube.rotation_euler = rng.uniform(0, np.pi, size=3)
        cube.color = (*rng.uniform(0.05, 1.0, size=3), 1.0)
        scene.view_settings.exposure = [0.0, 1.5, -1.0][i]  # bright and dark, clipped highlights
        images = {}
        for fmt in SRGB8_FORMATS:
            renderer.srgb8_format = fmt
            images[fmt] = renderer.render()["image"]
        renderer.srgb8_format = report["default"]
        default = renderer.render()["image"]
        linear = renderer.render(color="linear")["image"]
        ref = images["tga"].astype(int)
        report["cases"].append({
            "transparent": transparent,
            "shapes": {k: list(v.shape) for k, v in images.items()},
            "dtypes": {k: str(v.dtype) for k, v in images.items()},
            "maxdiff": {k: int(np.abs(v.astype(int) - ref).max()) for k, v in images.items()},
            "default_maxdiff": int(np.abs(default.astype(int) - ref).max()),
            "colours": int(len(np.unique(ref[..., :3].reshape(-1, 3), axis=0))),
            "alpha_min": int(ref[..., 3].min()),
            "linear": [str(linear.dtype), list(linear.shape), float(linear[..., :3].max())],
        })
print("BTR_REPORT " + json.dumps(report), flush=True)
"""


@pytest.fixture(params=["bpy", "blender"])
def blender(request):
    if request.param == "blender" and shutil.which("blender") is None:
        pytest.skip("no `blender` on PATH")
    return find_blender(request.param)


@pytest.mark.blender
def test_every_readback_gives_the_targa_image(blender, write_script):
    script = write_script(SCRIPT)
    proc = subprocess.run(blender.command(script, None, ["--btid", "0", "--btseed", "0"]), env=blender.environment(),
                          capture_output=True, text=True, timeout=300)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BTR_REPORT ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(line.split(" ", 1)[1])
    assert report["default"] == report["default_fn"] == "tiff"
    assert len(report["cases"]) == 6
    for case in report["cases"]:
        assert all(s == [120, 160, 4] for s in case["shapes"].values())
        assert set(case["dtypes"].values()) == {"uint8"}
        assert case["colours"] > 3  # a cube on a background, not a blank frame
        assert all(d <= 1 for d in case["maxdiff"].values()), case  # within 1/255 of the Targa writer's image
        assert case["default_maxdiff"] <= 1, case
        assert case["linear"][:2] == ["float32", [120, 160, 4]]
    assert any(c["alpha_min"] == 0 for c in report["cases"] if c["transparent"])  # alpha survives
