"""Which GPU a headless Blender draws with: steering EGL to the actor's GPU.

Cycles takes its GPU from ``CUDA_VISIBLE_DEVICES``; Eevee, Workbench and the viewport renderer
draw through OpenGL, and a headless Blender gets its GL context from
``eglGetDisplay(EGL_DEFAULT_DISPLAY)`` (Blender's ``GHOST_SystemHeadless``), on a device EGL
picks by itself: ``CUDA_VISIBLE_DEVICES`` does not steer it (NVIDIA's EGL lists every GPU
whatever it says), so every Blender on a multi-GPU node would draw on the same GPU.

Blender has no option for it, so the launcher gives each GPU instance a small library of ours
(``egl_shim/egl_device_select.c``) as ``libEGL.so.1``, first on ``LD_LIBRARY_PATH``. It forwards
everything to the real libEGL except the default display, which it replaces with the display
of the EGL device named by ``BLENDTORCH_EGL_DEVICE`` (``pci:<bus id>``, ``cuda:<n>`` or
``index:<n>``), and writes its choice into the Blender log (a line starting with
``blendtorch-egl:``). `egl_device_for` names the actor's GPU by its PCI address (from
``nvidia-smi``), which is what the EGL device's DRM node says too, so the match does not depend
on how CUDA or EGL number their devices.

The library is compiled once per machine with the C compiler (``cc``, or ``$CC``) into
``~/.cache/blendtorch-ray/egl/`` (or ``$BLENDTORCH_CACHE``). Without a compiler, EGL headers or
a libEGL, nothing changes and one warning says why. ``BLENDTORCH_EGL_DEVICE`` in the
instance's ``env`` overrides the choice; ``BLENDTORCH_EGL_DEVICE=off`` turns the shim off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Optional, Sequence

log = logging.getLogger("blendtorch_ray")

SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "egl_shim", "egl_device_select.c")
"""The C source of the shim library."""

ENV_DEVICE = "BLENDTORCH_EGL_DEVICE"
"""Environment variable the shim reads: ``pci:<bus id>``, ``cuda:<n>``, ``index:<n>`` or ``off``."""

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
            "/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64", "/lib")
"""Where `real_libegl` looks for the system's libEGL.so.1 when ``ldconfig`` does not say."""


class EGLShimError(RuntimeError):
    """The EGL shim cannot be built here (no compiler, no EGL headers, no libEGL)."""


def real_libegl() -> Optional[str]:
    """The absolute path of the system's libEGL.so.1 (symlinks resolved), or None.

    Returns:
        The path ``ldconfig -p`` lists for ``libEGL.so.1`` (this architecture), else the first
        found in `LIB_DIRS`, else None.
    """
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            name, _, path = line.strip().partition(" => ")
            if name.startswith("libEGL.so.1 ") and os.path.exists(path.strip()):
                if "x86-64" in name or "AArch64" in name or "64bit" in name or "," not in name:
                    return os.path.realpath(path.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for d in LIB_DIRS:
        p = os.path.join(d, "libEGL.so.1")
        if os.path.exists(p):
            return os.path.realpath(p)
    return None


def cache_dir() -> str:
    """Where built shims are kept: ``$BLENDTORCH_CACHE/egl`` or ``~/.cache/blendtorch-ray/egl``."""
    root = os.environ.get("BLENDTORCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "blendtorch-ray")
    return os.path.join(root, "egl")


def build_shim(libegl: Optional[str] = None, directory: Optional[str] = None) -> str:
    """Compile the shim for ``libegl`` (once; later calls return the cached build).

    Args:
        libegl: The real libEGL.so.1 the shim forwards to; None: `real_libegl`.
        directory: Where to keep builds; None: `cache_dir`.

    Returns:
        A directory that holds the shim as ``libEGL.so.1``: put it first on
        ``LD_LIBRARY_PATH``.

    Raises:
        EGLShimError: No libEGL, no C compiler, or the compiler failed (its message included).
    """
    libegl = libegl or real_libegl()
    if not libegl:
        raise EGLShimError("no libEGL.so.1 on this machine (Debian/Ubuntu: apt-get install libegl1)")
    with open(SHIM_SOURCE, "rb") as f:
        source = f.read()
    st = os.stat(libegl)
    key = hashlib.sha256(source + f"\0{libegl}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = os.path.join(directory or cache_dir(), key)
    lib = os.path.join(out, "libEGL.so.1")
    if os.path.exists(lib):
        return out
    cc = shutil.which(os.environ["CC"]) if os.environ.get("CC") else (
        shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
    if not cc:
        raise EGLShimError(f"no C compiler ({'CC=' + repr(os.environ['CC']) + ' is not one' if os.environ.get('CC') else 'cc, gcc or clang'}) "
                           "to build the EGL device shim (Debian/Ubuntu: apt-get install gcc libegl-dev)")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"{key}-", dir=os.path.dirname(out))
    try:
        # An empty library whose SONAME is the real libEGL's absolute path: linking against it
        # makes the shim depend on that exact file, so every EGL function the shim does not
        # define resolves to the real one.
        stub_c = os.path.join(work, "stub.c")
        with open(stub_c, "w") as f:
            f.write("void blendtorch_egl_stub(void) {}\n")
        steps = [
            [cc, "-shared", "-fPIC", "-o", os.path.join(work, "libegl_real_stub.so"), stub_c, f"-Wl,-soname,{libegl}"],
            [cc, "-shared", "-fPIC", "-O2", "-o", os.path.join(work, "libEGL.so.1"), SHIM_SOURCE,
             f'-DBLENDTORCH_REAL_LIBEGL="{libegl}"', "-Wl,-soname,libEGL.so.1", f"-L{work}",
             "-Wl,--no-as-needed", "-l:libegl_real_stub.so", "-ldl"],
        ]
        for cmd in steps:
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.SubprocessError) as e:
                raise EGLShimError(f"building the EGL device shim failed ({cc}): {e}") from e
            if r.returncode:
                raise EGLShimError(f"building the EGL device shim failed ({' '.join(cmd[:2])} ...): "
                                   f"{r.stderr.strip()[-1500:]} (Debian/Ubuntu: apt-get install gcc libegl-dev)")
        os.remove(stub_c)
        try:
            os.rename(work, out)  # atomic: a concurrent build of the same key loses the race harmlessly
        except OSError:
            if not os.path.exists(lib):
                raise
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)
    return out


def gpu_pci_addresses() -> dict[str, str]:
    """``nvidia-smi``'s GPU index -> PCI bus id (``"00000000:3B:00.0"``); empty without it.

    Returns:
        One entry per GPU the NVIDIA driver lists, keyed by the index Ray's GPU ids use.
    """
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=index,pci.bus_id", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.split(",", 1) for line in out.splitlines() if "," in line)
    return {i.strip(): bus.strip() for i, bus in pairs}


def egl_device_for(gpu_ids: Sequence[str], pci: Optional[dict[str, str]] = None) -> Optional[str]:
    """The ``BLENDTORCH_EGL_DEVICE`` value that names the first of ``gpu_ids``.

    Args:
        gpu_ids: The GPU ids Ray gave the actor (``get_accelerator_ids()["GPU"]``).
        pci: GPU index -> PCI bus id; None: `gpu_pci_addresses`.

    Returns:
        ``"pci:<bus id>"`` when the driver lists that GPU; else ``"index:<id>"`` (EGL's own
        order, which follows the driver's on NVIDIA-only nodes); None without GPU ids.
    """
    if not gpu_ids:
        return None
    first = str(gpu_ids[0])
    pci = gpu_pci_addresses() if pci is None else pci
    return f"pci:{pci[first]}" if first in pci else f"index:{first}"


def egl_environment(gpu_ids: Sequence[str], env: dict) -> dict:
    """The variables that make a headless Blender with ``env`` draw on the first of ``gpu_ids``.

    Args:
        gpu_ids: The actor's GPU ids; empty: nothing to steer.
        env: The instance's environment so far (its ``BLENDTORCH_EGL_DEVICE`` wins;
            ``"off"`` turns the shim off).

    Returns:
        ``LD_LIBRARY_PATH`` with the shim first and ``BLENDTORCH_EGL_DEVICE``; empty when
        there is nothing to steer or the shim cannot be built here (one warning says why).
    """
    wanted = env.get(ENV_DEVICE, os.environ.get(ENV_DEVICE))
    if wanted == "off" or (not gpu_ids and not wanted):
        return {}
    device = wanted or egl_device_for(gpu_ids)
    try:
        shim = build_shim()
    except EGLShimError as e:
        log.warning("Eevee/Workbench will draw on EGL's default GPU, not necessarily this instance's: %s", e)
        return {}
    path = env.get("LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH", ""))
    return {"LD_LIBRARY_PATH": shim + (os.pathsep + path if path else ""), ENV_DEVICE: device}
