"""Render-device choice (``RenderSettings(device=...)``, ``blender_worker.devices``) with real
Blenders: the bpy wheel (5.0) and Debian's binary (3.4), through the launcher.

These machines have no GPU, so the CPU paths are what is tested here: device="cpu", "auto"
falling back with its one warning, "gpu" raising its error, ``samples`` forcing nothing, the
GL renderer of Workbench, and what reaches ``health()``. Enabling a GPU is not (see README).
"""

import os
import shutil
import subprocess
import sys

import pytest

from blendtorch_ray import BlenderCrashedError, BlenderLauncher, BlenderStartError
from blender_worker.devices import BACKENDS
from conftest import REPO

pytestmark = [pytest.mark.blender]

BLENDERS = ["bpy", pytest.param("blender", marks=pytest.mark.skipif(shutil.which("blender") is None,
                                                                       reason="no `blender` on PATH"))]

SCRIPT = """
import sys
import bpy
import blender_worker as bw

launch, args = bw.parse_launch_args()
engine, device = args[0], args[1]
first = args[2] if len(args) > 2 else "renderer"
if first == "publisher":
    pub = bw.DataPublisher(launch)
r = bw.Renderer(bw.RenderSettings(engine=engine, resolution=(32, 24), samples=1, device=device))
if first != "publisher":
    pub = bw.DataPublisher(launch)
for i in range(3):
    img = r.render()["image"]
    pub.publish(i=i, cycles_device=bpy.context.scene.cycles.device, shape=img.shape,
                choice=r.device.to_dict())
pub.close()
"""


def _run(write_script, blender, engine, device, *extra, **options):
    script = write_script(SCRIPT)
    with BlenderLauncher(script=script, blender=blender, num_instances=1, max_restarts=0,
                         instance_args=[[engine, device, *extra]], **options) as bl:
        items = list(bl.dataset(max_items=3, timeout=300))
        health = bl.health()[0]
    return items, health


@pytest.mark.ray
@pytest.mark.parametrize("blender", BLENDERS)
def test_cycles_cpu_renders_on_the_cpu_and_health_says_so(ray_session, write_script, blender):
    items, h = _run(write_script, blender, "cycles", "cpu")
    assert [i["cycles_device"] for i in items] == ["CPU"] * 3
    assert all(tuple(i["shape"]) == (24, 32, 4) for i in items)
    assert items[0]["choice"]["device"] == "CPU" and items[0]["choice"]["seen"] == {}  # no backend probed
    assert h.render_device == "CPU" and h.render_backend is None and h.gl_renderer is None
    assert h.warnings == [] and h.last_error is None  # "cpu" was asked for: nothing to warn about


@pytest.mark.ray
@pytest.mark.parametrize("blender", BLENDERS)
def test_auto_falls_back_to_the_cpu_with_exactly_one_warning_in_health(ray_session, write_script, blender):
    items, h = _run(write_script, blender, "cycles", "auto")
    assert [i["cycles_device"] for i in items] == ["CPU"] * 3
    seen = items[0]["choice"]["seen"]
    assert list(seen) == list(BACKENDS)  # every backend was tried, in order
    assert all(v == "not in this build" or v == [] for v in seen.values())
    assert h.render_device == "CPU" and h.render_backend is None
    assert len(h.warnings) == 1, h.warnings
    (w,) = h.warnings
    assert w.startswith("Blender instance 0: device='auto': no Cycles GPU device found")
    assert "OPTIX" in w and "CUDA" in w and "rendering on the CPU" in w
    assert h.last_error == w
    if blender == "blender":  # Debian's build has no OptiX
        assert seen["OPTIX"] == "not in this build" and "OPTIX: not in this build" in w


@pytest.mark.ray
@pytest.mark.parametrize("blender", BLENDERS)
def test_gpu_without_a_gpu_is_a_clear_error_in_the_log_tail(ray_session, write_script, blender):
    # Renderer before the publisher: the script dies before it is ready -> BlenderStartError.
    with pytest.raises(BlenderStartError) as exc:
        _run(write_script, blender, "cycles", "gpu")
    tail = exc.value.log_tail
    assert "GPUNotFoundError: device='gpu' but Blender" in tail
    assert "found no GPU for Cycles" in tail and "OPTIX" in tail and "CUDA_VISIBLE_DEVICES" in tail
    assert "GPUNotFoundError" in str(exc.value)  # the message the user reads carries the tail
    # Publisher first: the instance was ready, then crashed -> BlenderCrashedError (no restarts).
    with pytest.raises(BlenderCrashedError) as exc:
        _run(write_script, blender, "cycles", "gpu", "publisher")
    assert "GPUNotFoundError: device='gpu'" in exc.value.log_tail


@pytest.mark.ray
def test_workbench_reports_its_gl_renderer_and_gpu_refuses_software_gl(ray_session, write_script):
    items, h = _run(write_script, "bpy", "workbench", "auto")
    assert h.gl_renderer == items[0]["choice"]["gl_renderer"]  # known from the first frame on
    assert h.gl_renderer and "llvmpipe" in h.gl_renderer  # this machine draws with Mesa's software GL
    assert h.render_device == "CPU"
    assert h.warnings == []  # no GPU was given to the instance: software GL is no surprise
    # The same instance told by its actor that it has a GPU: now software GL is worth one warning.
    items, h = _run(write_script, "bpy", "workbench", "auto", env={"BLENDTORCH_GPU_IDS": "0"})
    assert len(h.warnings) == 1 and "has GPU(s) 0 but BLENDER_WORKBENCH draws with software GL" in h.warnings[0]
    with pytest.raises(BlenderCrashedError) as exc:
        _run(write_script, "bpy", "workbench", "gpu", "publisher")
    assert "GPUNotFoundError: device='gpu' but BLENDER_WORKBENCH draws with software GL (llvmpipe" in exc.value.log_tail


PROBE = """
import bpy, json, sys
import blender_worker as bw
from blender_worker import devices
bpy.context.scene.cycles.device = "GPU"   # what a .blend saved on a GPU machine says
r = bw.Renderer(bw.RenderSettings(engine="cycles", resolution=(32, 24), samples=3))
v, choice, warnings = devices.current()
print("BTR-TEST " + json.dumps({"samples": bpy.context.scene.cycles.samples, "seen": choice.seen,
      "requested": choice.requested, "warnings": warnings, "device": bpy.context.scene.cycles.device}))
"""


@pytest.mark.parametrize("blender", BLENDERS)
def test_samples_given_forces_no_device(tmp_path, blender):
    """``samples`` sets samples only: the device goes through the default choice ("auto"),
    which tries every backend (the old code set the CPU without looking)."""
    from blendtorch_ray.blender import find_blender

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    exe = find_blender(blender)
    proc = subprocess.run(exe.command(str(script), None, []), env=exe.environment(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("BTR-TEST ")]
    import json

    out = json.loads(line[len("BTR-TEST "):])
    assert out["samples"] == 3 and out["requested"] == "auto"
    assert list(out["seen"]) == list(BACKENDS)
    assert len(out["warnings"]) == 1 and "no Cycles GPU device found" in out["warnings"][0]
    assert out["device"] == "CPU"  # no GPU here: the fallback, said in the warning


def test_unknown_device_is_refused(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import blender_worker as bw\ntry:\n    bw.Renderer(bw.RenderSettings(device='cuda'))\n"
                      "except ValueError as e:\n    print('BTR-TEST', e)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "BTR-TEST device='cuda': use one of ['auto', 'cpu', 'gpu']" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_gpu_check_script_says_no_gpu_with_exit_code_2():
    """scripts/gpu_check.sh on a machine without GPUs: the CPU row runs, the table shows the
    device used, and the exit code says that the GPU path was not checked."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU driver: run scripts/gpu_check.sh itself")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--engines", "workbench", "--frames", "2"],
                          capture_output=True, text=True, timeout=400, cwd=REPO)
    out = proc.stdout
    assert proc.returncode == 2, out + proc.stderr
    assert "no GPU: only the CPU rows run" in out and "the GPU path is NOT checked (exit code 2)" in out
    (row,) = [ln for ln in out.splitlines() if ln.startswith("|") and "workbench" in ln]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["workbench", "CPU", "1"] and float(cells[3]) > 0
    assert cells[6].startswith("CPU (llvmpipe")  # the device the instance reported through health()
    assert "FAIL" not in out
