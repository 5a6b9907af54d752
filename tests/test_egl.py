"""The EGL device shim (``blendtorch_ray.egl``): a headless Blender draws with its actor's GPU.

Real compiler, real libEGL (Mesa here: one software device, no DRM node), real Blender (the
3.4 binary and the bpy wheel) rendering Eevee through the shim, and the actor handing it to
instances that were given (declared) GPUs on a ``cluster_utils`` node. Which *hardware* GPU an
NVIDIA node's Blender then draws on is checked by ``bash scripts/gpu_check.sh``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from blendtorch_ray import BlenderLauncher
from blendtorch_ray.egl import ENV_DEVICE, EGLShimError, build_shim, egl_device_for, egl_environment, real_libegl
from conftest import TEST_SCRIPTS

needs_egl = pytest.mark.skipif(real_libegl() is None or shutil.which("cc") is None,
                               reason="needs libEGL.so.1 and a C compiler")

EEVEE = textwrap.dedent("""
    import bpy, gpu
    s = bpy.context.scene
    s.render.engine = "BLENDER_EEVEE_NEXT" if (4, 2, 0) <= bpy.app.version < (5, 0, 0) else "BLENDER_EEVEE"
    s.render.resolution_x, s.render.resolution_y = 32, 24
    s.render.filepath = {out!r}
    bpy.ops.render.render(write_still=True)
    print("RENDERER:", gpu.platform.renderer_get())
""")


def _blenders() -> list[str]:
    return ["bpy"] + (["blender"] if shutil.which("blender") else [])


def _render(which: str, tmp_path, env: dict) -> subprocess.CompletedProcess:
    script = tmp_path / f"eevee-{which}.py"
    script.write_text(EEVEE.format(out=str(tmp_path / f"{which}.png")))
    cmd = [sys.executable, str(script)] if which == "bpy" else \
        ["blender", "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1", "--python", str(script)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, **env})


def test_device_names_prefer_the_pci_address():
    assert egl_device_for(["1", "0"], pci={"0": "00000000:17:00.0", "1": "00000000:3B:00.0"}) == "pci:00000000:3B:00.0"
    assert egl_device_for(["2"], pci={"0": "00000000:17:00.0"}) == "index:2"
    assert egl_device_for([], pci={}) is None


@needs_egl
def test_the_shim_is_built_once_and_depends_on_the_real_libegl(tmp_path):
    first = build_shim(directory=str(tmp_path))
    assert build_shim(directory=str(tmp_path)) == first
    assert os.listdir(tmp_path) == [os.path.basename(first)]  # no leftover build directories
    dynamic = subprocess.run(["readelf", "-d", os.path.join(first, "libEGL.so.1")], capture_output=True, text=True).stdout
    assert f"[{real_libegl()}]" in dynamic and "Library soname: [libEGL.so.1]" in dynamic


def test_no_compiler_is_a_warning_and_changes_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BLENDTORCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(EGLShimError, match="no-such-cc' is not one"):
        build_shim()
    with caplog.at_level("WARNING", logger="blendtorch_ray"):
        assert egl_environment(["0"], {}) == {}
    assert "Eevee/Workbench will draw on EGL's default GPU" in caplog.text
    assert egl_environment(["0"], {ENV_DEVICE: "off"}) == {}
    assert egl_environment([], {}) == {}


@needs_egl
@pytest.mark.blender
@pytest.mark.parametrize("which", _blenders())
def test_blender_draws_eevee_through_the_shim_on_the_chosen_device(which, tmp_path):
    env = egl_environment(["0"], {ENV_DEVICE: "index:0"})
    assert env[ENV_DEVICE] == "index:0" and env["LD_LIBRARY_PATH"].split(os.pathsep)[0].startswith(os.path.expanduser("~"))
    r = _render(which, tmp_path, env)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "blendtorch-egl: BLENDTORCH_EGL_DEVICE=index:0 -> EGL device 0 of " in log
    assert "RENDERER:" in log and (tmp_path / f"{which}.png").stat().st_size > 0
    # A device that is not there: said in the log with what EGL lists; Blender still draws.
    r = _render(which, tmp_path, {**env, ENV_DEVICE: "pci:0000:3b:00.0"})
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "blendtorch-egl: no EGL device matches BLENDTORCH_EGL_DEVICE=pci:0000:3b:00.0 among " in log
    assert "EGL's default device is used" in log and "RENDERER:" in log


@needs_egl
@pytest.mark.blender
@pytest.mark.ray
@pytest.mark.slow
def test_instances_given_gpus_get_the_shim_and_their_device(ray_cluster):
    with BlenderLauncher(
        script=str(TEST_SCRIPTS / "forever.py"),
        num_instances=2,
        num_gpus=1,
        instance_args=[["--env", "CUDA_VISIBLE_DEVICES", ENV_DEVICE, "LD_LIBRARY_PATH"]] * 2,
    ) as bl:
        items = {}
        for item in bl.dataset(timeout=60):
            items[item["btid"]] = item["env"]
            if len(items) == 2:
                break
    for env in items.values():
        gpu = env["CUDA_VISIBLE_DEVICES"]
        assert env[ENV_DEVICE] in (f"index:{gpu}",) or env[ENV_DEVICE].startswith("pci:")
        shim_dir = env["LD_LIBRARY_PATH"].split(os.pathsep)[0]
        assert os.path.exists(os.path.join(shim_dir, "libEGL.so.1"))
    assert sorted(e[ENV_DEVICE] for e in items.values()) == ["index:0", "index:1"]
