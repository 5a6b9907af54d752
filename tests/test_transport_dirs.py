"""``transport.sweep_stale_dirs``: what a killed process left is removed, and only that.

Directories are named ``btr-<kind>-<pid>-<pid namespace>-...`` (``owned_prefix``): a pid means a
process only within its PID namespace, so a sweep leaves other namespaces' directories alone
(containers or ``unshare`` sandboxes sharing /dev/shm used to lose live directories to it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from blendtorch_ray.transport import _pid_namespace, owned_prefix, sweep_stale_dirs


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _foreign_namespace() -> int:
    """The PID-namespace id of a real process in a namespace of its own (``unshare``)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                        "import os; print(os.stat('/proc/self/ns/pid').st_ino)"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode:
        pytest.skip(f"cannot make a PID namespace here: {r.stderr.strip()[-200:]}")
    return int(r.stdout.strip())


def test_owned_prefix_names_the_pid_and_its_namespace():
    assert owned_prefix("shm") == f"btr-shm-{os.getpid()}-{_pid_namespace()}-"
    assert _pid_namespace() > 0


def test_sweep_removes_dead_processes_dirs_of_this_namespace_only():
    base = tempfile.gettempdir()
    own, foreign, dead = _pid_namespace(), _foreign_namespace(), _dead_pid()
    assert foreign != own
    made = {
        "dead here": tempfile.mkdtemp(prefix=f"btr-test-{dead}-{own}-", dir=base),
        "alive here": tempfile.mkdtemp(prefix=owned_prefix("test"), dir=base),
        "other namespace": tempfile.mkdtemp(prefix=f"btr-test-{dead}-{foreign}-", dir=base),
        "old name": tempfile.mkdtemp(prefix=f"btr-test-{dead}-", dir=base),
    }
    try:
        sweep_stale_dirs()
        left = {k for k, p in made.items() if os.path.isdir(p)}
        assert left == {"alive here", "other namespace", "old name"}
    finally:
        for p in made.values():
            shutil.rmtree(p, ignore_errors=True)
