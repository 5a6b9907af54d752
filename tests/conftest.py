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


def _init_local_ray():
    import ray

    from blendtorch_ray.runtime import ensure_ray

    if ray.is_initialized() and ray.get_runtime_context().namespace != "blendtorch-tests":
        # A Ray some test's launcher started in local mode (2 CPUs, namespace "blendtorch"),
        # perhaps with a group still running: a CI run found its CPUs all taken by one.
        ray.shutdown()
    ensure_ray(num_cpus=8, namespace="blendtorch-tests", log_to_driver=False)  # as local mode does
    return ray


@pytest.fixture(scope="session")
def _ray_shutdown_at_end():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def ray_session(_ray_shutdown_at_end):
    """A real local Ray shared by the tests of a session (start-up costs seconds).

    Started on first use and kept; restarted if a test (e.g. a multi-node Cluster test)
    shut it down in between.
    """
    return _init_local_ray()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real multi-node Ray on this machine (``ray.cluster_utils.Cluster``).

    Head without Blender resources; node A with 2 ``blender`` slots and 2 declared GPUs;
    node B with 2 ``blender`` slots. The driver connects to it; the local Ray of other
    tests is shut down first and comes back on their next use.
    """
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=3, num_gpus=2, resources={"blender": 2})
    cluster.add_node(num_cpus=3, resources={"blender": 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="blendtorch-cluster-tests", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


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


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (ProcessLookupError, OSError):
        return False


def loss_bound(batch_size: int, in_flight: int, item_bytes: int) -> int:
    """Documented bound on items lost when an instance dies with items in flight (README)."""
    if item_bytes >= 64 * 1024:  # arrays in shared-memory slots: each item in transit holds one
        in_transit = batch_size * (in_flight + 2) + 2
    else:
        zmq_queues = 4 + 4  # send and receive high-water marks
        kernel = -(-2 * 212_992 // item_bytes)  # default unix socket buffers, both ends
        in_transit = zmq_queues + kernel
    return batch_size * (in_flight + 1) + in_transit


def wait_until(cond, timeout: float = 20.0, interval: float = 0.2) -> bool:
    """Poll ``cond()`` until true or ``timeout`` seconds pass; returns the last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())
