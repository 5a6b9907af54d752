"""Find a Blender to run and build its command line.

Two kinds are supported:

* ``"bpy"``: the ``bpy`` wheel (Blender as a Python module) in a Python interpreter,
  by default this interpreter. Scripts run through ``python -m blender_worker.bootstrap``.
* ``"binary"``: a ``blender`` executable (e.g. Debian's package or a download from
  blender.org), run as ``blender --background [scene] --python script -- args``; with
  ``ui=True`` without ``--background``, so that Blender opens its window.

Resolution order: the ``blender`` argument, then ``$BLENDTORCH_BLENDER``, then the bpy
wheel in this interpreter. ``"bpy"`` / ``"binary"`` / a path / ``"blender"`` (look it up
on PATH) are accepted wherever a Blender is asked for.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from blendtorch_ray.errors import BlenderNotFoundError, BlenderVersionError

ENV_VAR = "BLENDTORCH_BLENDER"
MIN_VERSION = (3, 0)
"""Oldest Blender binary that runs blender_worker."""
_WORKER_ROOT = str(Path(__file__).resolve().parent.parent)  # dir holding blender_worker


@dataclass(frozen=True)
class BlenderExecutable:
    """A resolved Blender: ``kind`` is "bpy" or "binary", ``path`` the interpreter or binary."""

    kind: str
    path: str
    ui: bool = False
    """A binary started with its window (no ``--background``; ``BlenderSpec.ui``)."""

    def command(self, script: str, scene: Optional[str], script_args: Sequence[str]) -> list[str]:
        """The argv that runs ``script`` (optionally in ``scene``) with ``script_args``."""
        if self.kind == "bpy":
            cmd = [self.path, "-u", "-m", "blender_worker.bootstrap"]
            if scene:
                cmd += ["--blend", scene]
            return cmd + [script, "--", *script_args]
        cmd = [self.path, *([] if self.ui else ["--background"]), "--factory-startup", "-noaudio"]
        if scene:
            cmd.append(scene)
        if self.ui:  # no splash screen over the viewport (factory settings would show it)
            cmd += ["--python-expr", "import bpy; bpy.context.preferences.view.show_splash = False"]
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


def binary_version(path: str, timeout: float = 60.0) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a Blender binary, from ``blender --version`` (cached per
    path and modification time); BlenderVersionError if it does not answer like Blender."""
    path = os.path.abspath(path)
    return _binary_version(path, os.stat(path).st_mtime_ns, timeout)


@functools.lru_cache(maxsize=32)
def _binary_version(path: str, mtime_ns: int, timeout: float) -> tuple[int, int, int]:  # noqa: ARG001
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, errors="replace",
                             timeout=timeout, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BlenderVersionError(
            f"could not run `{path} --version` ({exc}); pass the path of a Blender >= "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} executable, or blender='bpy' for the bpy wheel"
        ) from None
    m = re.search(r"^Blender (\d+)\.(\d+)(?:\.(\d+))?", out, re.MULTILINE)
    if not m:
        first = out.strip().splitlines()[0] if out.strip() else "nothing"
        raise BlenderVersionError(
            f"{path} does not look like Blender: `--version` printed {first!r}. Pass the path of a "
            f"Blender >= {MIN_VERSION[0]}.{MIN_VERSION[1]} executable, or blender='bpy' for the bpy wheel"
        )
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def bundled_python(path: str) -> Optional[tuple[int, int]]:
    """Python version bundled with a blender.org build (``<dir>/<X.Y>/python/lib/python3.N``),
    or None when the binary uses the system Python (e.g. Debian's package)."""
    root = Path(os.path.realpath(path)).parent
    for lib in sorted(root.glob("[0-9]*.[0-9]*/python/lib/python3.*")):
        m = re.fullmatch(r"python(\d+)\.(\d+)", lib.name)
        if m and lib.is_dir():
            return int(m.group(1)), int(m.group(2))
    return None


def check_binary(path: str) -> tuple[int, int, int]:
    """Raise BlenderVersionError (naming what was found and the fix) if the binary at
    ``path`` cannot run blender_worker; return its version otherwise."""
    version = binary_version(path)
    found = ".".join(map(str, version))
    if version[:2] < MIN_VERSION:
        raise BlenderVersionError(
            f"Blender {found} at {path} is too old: blendtorch-ray needs Blender >= "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]}. Install a newer one (Debian 12: `apt-get install "
            "blender` gives 3.4; or a download from blender.org), or use the bpy wheel (blender='bpy')"
        )
    ours = sys.version_info[:2]
    theirs = bundled_python(path)
    if theirs is not None and theirs != ours:
        raise BlenderVersionError(
            f"Blender {found} at {path} runs its bundled Python {theirs[0]}.{theirs[1]}, but "
            f"blendtorch-ray runs on Python {ours[0]}.{ours[1]}: this environment's numpy and pyzmq "
            f"cannot load inside that Blender. Use a Blender built with Python {ours[0]}.{ours[1]}, "
            f"the bpy wheel (blender='bpy'), or run blendtorch-ray from a Python "
            f"{theirs[0]}.{theirs[1]} environment"
        )
    return version


def check_ui(blender: Optional[str], env: Optional[dict] = None, display: bool = True) -> None:
    """Raise ValueError (saying how to fix it) if a UI instance cannot start: the Blender is the
    bpy wheel, or there is no display to open its window on.

    Args:
        blender: ``BlenderSpec.blender``.
        env: ``BlenderSpec.env`` (a ``DISPLAY`` there counts).
        display: Also check that there is a display.
    """
    choice = blender or os.environ.get(ENV_VAR) or "bpy"
    if choice == "bpy":
        raise ValueError(
            "ui=True needs a Blender binary: the bpy wheel (Blender as a Python module) has no "
            "window. Pass blender= the path of a blender executable (e.g. blender='blender' "
            f"for the one on PATH, Debian: `apt-get install blender`) or set ${ENV_VAR}"
        )
    if not display:
        return
    env = env or {}
    display = env.get("DISPLAY") or os.environ.get("DISPLAY") or env.get("WAYLAND_DISPLAY") \
        or os.environ.get("WAYLAND_DISPLAY")
    if not display:
        raise ValueError(
            "ui=True needs a display for Blender's window, but $DISPLAY is not set. On a desktop, "
            "run from its terminal; over SSH, use X forwarding (`ssh -X`) or a VNC session; "
            "without a screen, start a virtual X server (`Xvfb :99 &` then DISPLAY=:99, Debian: "
            "`apt-get install xvfb`) or pass env={'DISPLAY': ':99'}"
        )


def find_blender(blender: Optional[str] = None, ui: bool = False) -> BlenderExecutable:
    """Resolve which Blender to use; raise BlenderNotFoundError with the fix if none
    (BlenderVersionError if a binary is too old or its Python does not match). ``ui``: a
    binary started with its window (``BlenderSpec.ui``; ValueError for the bpy wheel)."""
    if ui:
        import dataclasses

        check_ui(blender, display=False)  # the display: checked in the driver (BlenderSpec)
        return dataclasses.replace(find_blender(blender), ui=True)
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
        check_binary(found)
        return BlenderExecutable("binary", found)
    path = shutil.which(choice) or choice
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise BlenderNotFoundError(
            f"Blender binary {choice!r} does not exist or is not executable; pass the path "
            f"of a blender executable, or blender='bpy' for the bpy wheel"
        )
    check_binary(os.path.abspath(path))
    return BlenderExecutable("binary", os.path.abspath(path))
