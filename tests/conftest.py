"""Shared fixtures: one real local Ray per test session, helpers to write Blender scripts."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_SCRIPTS = Path(__file__).resolve().parent / "blender_scripts"


def pytest_configure(config):
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray shared by every test of the session (start-up costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=8, include_dashboard=False, namespace="blendtorch-tests", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def write_script(tmp_path):
    """Write a Blender-side script from source text; returns its path."""

    def _write(source: str, name: str = "script.py") -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return str(path)

    return _write


def blender_pids() -> set[int]:
    """Pids of every Blender process started by blendtorch-ray on this machine."""
    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "--btid" in cmd and p.status() != psutil.STATUS_ZOMBIE:
            pids.add(p.info["pid"])
    return pids


def wait_until(cond, timeout: float = 20.0, interval: float = 0.2) -> bool:
    """Poll ``cond()`` until true or ``timeout`` seconds pass; returns the last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())
