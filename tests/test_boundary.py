"""The Blender side never loads the driver side: ``blender_worker`` runs in Blender's own
interpreter, where ray, torch, gymnasium and ``blendtorch_ray`` must not be needed."""

import json
import subprocess
import sys

from conftest import REPO

FORBIDDEN = ("ray", "torch", "gymnasium", "blendtorch_ray")

PROBE = """
import importlib, json, pkgutil, sys
import blender_worker
names = ["blender_worker"] + sorted(m.name for m in pkgutil.walk_packages(blender_worker.__path__, "blender_worker."))
forbidden = {forbidden!r}
found = {{}}
for name in names:
    # Scripts, not modules: bootstrap runs a user script, the bundled scenes are scripts
    # that Blender runs (they parse launch arguments when executed).
    if name == "blender_worker.bootstrap" or name.startswith("blender_worker.scenes."):
        continue
    importlib.import_module(name)
    bad = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
    if bad:
        found[name] = bad
        break
print(json.dumps({{"modules": names, "found": found}}))
"""


def test_every_blender_worker_module_imports_without_the_driver_side():
    out = subprocess.run([sys.executable, "-c", PROBE.format(forbidden=FORBIDDEN)], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "blender_worker.publisher" in result["modules"] and "blender_worker.render" in result["modules"]
    assert len(result["modules"]) >= 15  # every module was walked, not just the package
    assert result["found"] == {}, f"imported the driver side: {result['found']}"


def test_the_probe_detects_a_forbidden_import():
    # The check above must be able to fail: with "numpy" forbidden, the codec trips it.
    out = subprocess.run([sys.executable, "-c", PROBE.format(forbidden=("numpy",))], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    found = json.loads(out.stdout.strip().splitlines()[-1])["found"]
    assert found and "numpy" in next(iter(found.values()))
