"""Find a Blender to run and build its command line.

Two kinds are supported:

* ``"bpy"``: the ``bpy`` wheel (Blender as a Python module) in a Python interpreter,
  by default this interpreter. Scripts run through ``python -m blender_worker.bootstrap``.
* ``"binary"``: a ``blender`` executable (e.g. Debian's package or a download from
  blender.org), run as ``blender --background [scene] --python script -- args``.

Resolution order: the ``blender`` argument, then ``$BLENDTORCH_BLENDER``, then the bpy
wheel in this interpreter. ``"bpy"`` / ``"binary"`` / a path / ``"blender"`` (look it up
on PATH) are accepted wherever a Blender is asked for.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from blendtorch_ray.errors import BlenderNotFoundError

ENV_VAR = "BLENDTORCH_BLENDER"
_WORKER_ROOT = str(Path(__file__).resolve().parent.parent)  # dir holding blender_worker


@dataclass(frozen=True)
class BlenderExecutable:
    """A resolved Blender: ``kind`` is "bpy" or "binary", ``path`` the interpreter or binary."""

    kind: str
    path: str

    def command(self, script: str, scene: Optional[str], script_args: Sequence[str]) -> list[str]:
        """The argv that runs ``script`` (optionally in ``scene``) with ``script_args``."""
        if self.kind == "bpy":
            cmd = [self.path, "-u", "-m", "blender_worker.bootstrap"]
            if scene:
                cmd += ["--blend", scene]
            return cmd + [script, "--", *script_args]
        cmd = [self.path, "--background", "--factory-startup", "-noaudio"]
        if scene:
            cmd.append(scene)
        return cmd + ["--python-exit-code", "1", "--python", script, "--", *script_args]

    def environment(self, base: Optional[dict] = None) -> dict:
        """Environment for the subprocess: blender_worker (and, for a binary, this
        interpreter's site-packages for numpy/pyzmq) on PYTHONPATH."""
        env = dict(os.environ if base is None else base)
        paths = [_WORKER_ROOT]
        if self.kind == "binary":
            paths += [p for p in site.getsitepackages() if os.path.isdir(p)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def find_blender(blender: Optional[str] = None) -> BlenderExecutable:
    """Resolve which Blender to use; raise BlenderNotFoundError with the fix if none."""
    choice = blender or os.environ.get(ENV_VAR) or "bpy"
    if choice == "bpy":
        if importlib.util.find_spec("bpy") is None:
            raise BlenderNotFoundError(
                "the bpy wheel is not installed in this Python; install it with "
                "`pip install bpy==5.0.1 'numpy<2'` or point blendtorch-ray at a Blender "
                f"binary with blender=... or ${ENV_VAR}"
            )
        return BlenderExecutable("bpy", sys.executable)
    if choice in ("binary", "blender"):
        found = shutil.which("blender")
        if not found:
            raise BlenderNotFoundError(
                "no `blender` on PATH; install one (e.g. `apt-get install blender`) or pass "
                f"its full path with blender=... or ${ENV_VAR}"
            )
        return BlenderExecutable("binary", found)
    path = shutil.which(choice) or choice
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise BlenderNotFoundError(
            f"Blender binary {choice!r} does not exist or is not executable; pass the path "
            f"of a blender executable, or blender='bpy' for the bpy wheel"
        )
    return BlenderExecutable("binary", os.path.abspath(path))
