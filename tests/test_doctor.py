"""`blendtorch-ray doctor` run as a user runs it: a subprocess, real Blenders, real renders."""

import os
import re
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version

import pytest

from conftest import REPO

pytestmark = [pytest.mark.blender]

CLI = [sys.executable, "-m", "blendtorch_ray.cli", "doctor"]


def _doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, **(env or {})})


def _row(out: str, source: str) -> list[str]:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(source)]
    return re.split(r"\s{2,}", line.strip())


@pytest.mark.slow
def test_doctor_lists_the_wheel_and_the_binary_with_versions_and_engines():
    if shutil.which("blender") is None:
        if shutil.which("apt-get"):
            pytest.fail("no `blender` on PATH: run scripts/test.sh (it installs Debian's package)")
        pytest.skip("no `blender` on PATH and no apt-get to install Debian's package")
    env = {k: v for k, v in os.environ.items() if k != "BLENDTORCH_BLENDER"}
    proc = subprocess.run([*CLI, "--engines", "workbench,cycles", "--timeout", "180"], capture_output=True,
                          text=True, timeout=900, cwd=REPO, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    header = re.split(r"\s{2,}", out.splitlines()[0].strip())
    assert header == ["found in", "kind", "path", "blender", "python", "blender_worker", "workbench", "cycles"]
    wheel = _row(out, "bpy wheel")
    assert wheel[1:4] == ["bpy", sys.executable, version("bpy")]
    binary = _row(out, "PATH")
    assert binary[1] == "binary" and binary[2] == shutil.which("blender")
    assert re.fullmatch(r"3\.\d+\.\d+", binary[3])  # Debian 12: 3.4.1
    for row in (wheel, binary):
        assert row[4].startswith("3.") and row[5] == "ok"
        assert all(re.fullmatch(r"ok \d+\.\d\ds", cell) for cell in row[6:8]), row
    assert "uses by default: bpy" in out and "Nothing to fix." in out


def test_doctor_names_a_too_old_env_blender_and_the_fix(tmp_path):
    fake = tmp_path / "blender"
    fake.write_text("#!/bin/sh\necho 'Blender 2.79 (sub 0)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    # Only the workbench probe, and the fake needs none: the version check stops it first.
    proc = _doctor("--engines", "workbench", env={"BLENDTORCH_BLENDER": str(fake)})
    out = proc.stdout
    row = _row(out, "$BLENDTORCH_BLENDER")
    assert row[1:4] == ["binary", str(fake), "2.79.0"] and row[-1] == "skipped"
    assert "What to fix:" in out and "Blender 2.79.0" in out and "too old" in out and ">= 3.0" in out
    assert "no default Blender" in out  # find_blender() with that $BLENDTORCH_BLENDER fails too
    with pytest.raises(subprocess.CalledProcessError):  # bad engine name: argparse-level error
        subprocess.run([*CLI, "--engines", "vray"], check=True, capture_output=True, timeout=60, cwd=REPO)


def test_doctor_lists_render_devices_and_gl_renderer_per_blender():
    """Per Blender found: Cycles' compute devices per backend and the GL renderer (this machine:
    no GPU, Mesa's software GL), and the GPU advice that follows from them."""
    from blender_worker.devices import BACKENDS
    from blendtorch_ray.doctor_gpu import gpu_driver

    env = {k: v for k, v in os.environ.items() if k != "BLENDTORCH_BLENDER"}
    proc = subprocess.run([*CLI, "--engines", "workbench"], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    section = out.split("\nRender devices:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    sources = ["bpy wheel"] + (["PATH"] if shutil.which("blender") else [])
    for source in sources:
        (cycles,) = [ln for ln in section if ln.startswith(f"  {source} (Blender ") and "Cycles compute devices:" in ln]
        listed = re.findall(r"([A-Z]+): (no device|not in this build|[^;]+)", cycles.split("Cycles compute devices: ")[1])
        assert [b for b, _ in listed] == list(BACKENDS), cycles
        (gl,) = [ln for ln in section if ln.startswith(f"  {source} (Blender ") and "GL renderer:" in ln]
        assert re.search(r"GL renderer: \S.+ \(.+, .+\)$", gl), gl
        if gpu_driver() is None:  # these machines: no GPU, software GL, said as such
            assert all(state in ("no device", "not in this build") for _, state in listed), cycles
            assert "llvmpipe" in gl and "software, CPU" in gl
    if shutil.which("blender"):  # Debian's 3.4 is built without OptiX
        assert "PATH (Blender 3.4" in out and "OPTIX: not in this build" in out
    if gpu_driver() is None:
        assert "\nGPU:\n" in out and "no GPU driver on this machine" in out
        assert "Nothing to fix." in out  # no GPU is not a fault of this machine's set-up
