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
