"""Every Python block of the README and the examples' READMEs runs as written.

Blocks run in fresh interpreters, as a newcomer would run them: the driver in local mode
(Ray started by the launcher on this machine). Only ``max_items`` is shortened; checks of
what the README's comments promise are appended after each block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.blender, pytest.mark.ray, pytest.mark.slow]


def python_blocks(path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _run(code: str, cwd, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_has_the_blocks_this_test_knows():
    blocks = python_blocks(REPO / "README.md")
    assert len(blocks) == 2, "a README Python block was added or removed: teach tests/test_readme.py to run it"
    assert "blender_worker" in blocks[0] and "BlenderLauncher" in blocks[1]


def test_readme_usage_example_runs_unchanged(tmp_path):
    scene, driver = python_blocks(REPO / "README.md")
    (tmp_path / "scene.py").write_text(scene)
    assert "max_items=10_000" in driver
    driver = driver.replace("max_items=10_000", "max_items=32")  # 16 per DataLoader worker: full batches
    checks = (
        "\nassert tuple(images.shape) == (8, 480, 640, 4), images.shape"
        "\nassert tuple(corners.shape) == (8, 8, 2), corners.shape"
        "\nassert images[..., :3].float().std() > 0  # a real render, not a blank image"
        "\nassert len(ids) == len(seqs) == 8"
        "\nprint('README-OK')"
    )
    out = _run(driver + checks, tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "README-OK" in out.stdout
    assert out.stdout.count("InstanceHealth(btid=") == 4  # the example's 4 instances ran on this machine


def test_control_readme_example_runs_unchanged(tmp_path):
    (block,) = python_blocks(REPO / "examples" / "control" / "README.md")
    checks = "\nassert frame.shape == (240, 320, 3) and frame.dtype.name == 'uint8', frame.shape\nprint('CONTROL-OK')"
    out = _run(block + checks, tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "CONTROL-OK" in out.stdout
