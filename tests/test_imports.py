"""The actor side of the package must not drag in torch: Ray starts one actor process per
Blender instance, and each one would pay torch's import (seconds, ~150 MB) for nothing."""

import subprocess
import sys


def _modules_after(statement: str) -> set:
    code = f"{statement}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_actor_and_launcher_do_not_import_torch():
    mods = _modules_after("import blendtorch_ray.actor, blendtorch_ray.launcher\nfrom blendtorch_ray import BlenderLauncher, LaunchConfig")
    assert "torch" not in mods


def test_dataset_names_are_imported_on_first_use():
    assert "torch" not in _modules_after("from blendtorch_ray import make_loader")
    mods = _modules_after("from blendtorch_ray import RemoteIterableDataset")
    assert "torch" in mods
    out = subprocess.run([sys.executable, "-c", "import blendtorch_ray; blendtorch_ray.nope"], capture_output=True, text=True)
    assert out.returncode != 0 and "has no attribute 'nope'" in out.stderr


def test_package_import_is_light_in_ray_worker_processes():
    # Ray's worker processes (the supervising actors) have RAY_RAYLET_PID set.
    code = "import os; os.environ['RAY_RAYLET_PID'] = '1'\nimport blendtorch_ray, blendtorch_ray.actor"
    mods = _modules_after(code)
    assert "blendtorch_ray.actor" in mods
    assert not {"torch", "gymnasium"} & mods


def test_package_import_registers_the_gym_envs_in_a_driver():
    code = "import blendtorch_ray, gymnasium\nprint('REG', 'blendtorch/CartPole-v0' in gymnasium.registry)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in __import__("os").environ.items() if k != "RAY_RAYLET_PID"})
    assert "REG True" in out.stdout
    assert "zmq" not in _modules_after("import blendtorch_ray")  # nothing of the transport yet


def test_missing_extra_names_the_pip_fix():
    from blendtorch_ray.extras import require

    import pytest

    with pytest.raises(ImportError, match=r"pip install 'blendtorch-ray\[rl\]'"):
        require("gymnasium_that_is_not_installed", "rl", "blendtorch_ray.env")
