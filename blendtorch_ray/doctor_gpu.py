"""The GPU part of ``blendtorch-ray doctor``: what a Blender draws and renders with, what to fix.

A probe run inside each Blender lists Cycles' compute devices per backend
(``blender_worker.devices.cycles_devices``) and the GL renderer that Eevee / Workbench draw
with (read after a Workbench frame: Blender 3.4 crashes when asked before). `gpu_notes` turns
what it found into what to fix: no GPU driver, no GPU backend in this build of Blender, software
GL although there is a GPU (the vendor's EGL library is missing), or no way to build the EGL
device shim that gives each instance its own GPU (`blendtorch_ray.egl`).
"""

from __future__ import annotations

import os
import shutil
import textwrap
from typing import Any, Optional, Sequence

_DEVICE_PROBE_TEMPLATE = textwrap.dedent(
    """
    import json, os, sys
    import bpy
    path = sys.argv[sys.argv.index("--") + 1:][0]
    out = {"cycles": None, "gl": None}
    try:
        from blender_worker import devices
        out["cycles"] = devices.cycles_devices()[0]
    except BaseException as exc:
        out["cycles"] = f"{type(exc).__name__}: {exc}"
    print(%r + json.dumps(out), flush=True)  # kept if the GL part below crashes Blender
    try:
        scene, r = bpy.context.scene, bpy.context.scene.render
        r.engine = "BLENDER_WORKBENCH"
        r.resolution_x, r.resolution_y, r.resolution_percentage = 32, 24, 100
        if hasattr(r.image_settings, "media_type"):
            r.image_settings.media_type = "IMAGE"
        r.image_settings.file_format = "TARGA_RAW"
        r.filepath = path
        bpy.ops.render.render(write_still=True)
        renderer, vendor, kind = devices.gl_info()
        out["gl"] = {"renderer": renderer, "vendor": vendor, "device_type": kind,
                     "software": devices.is_software_gl(renderer, kind)}
    except BaseException as exc:
        out["gl"] = f"{type(exc).__name__}: {exc}"
    print(%r + json.dumps(out), flush=True)
    """
)


def device_probe(mark: str) -> str:
    """The source of the device probe, printing its results on lines that start with ``mark``.

    Args:
        mark: The prefix the doctor looks for in the probe's output.

    Returns:
        Python source to run inside Blender (the image path is its first argument after ``--``).
    """
    return _DEVICE_PROBE_TEMPLATE % (mark, mark)


EGL_VENDOR_DIRS = ("/usr/share/glvnd/egl_vendor.d", "/etc/glvnd/egl_vendor.d")
"""Where libglvnd looks for EGL vendor libraries (an NVIDIA driver installs 10_nvidia.json)."""


def gpu_driver() -> Optional[str]:
    """A sign of a GPU driver on this machine, or None.

    Returns:
        "nvidia-smi", "/dev/nvidia0", "/dev/kfd" (AMD) or None.
    """
    if shutil.which("nvidia-smi"):
        return "nvidia-smi"
    for dev in ("/dev/nvidia0", "/dev/kfd"):
        if os.path.exists(dev):
            return dev
    return None


def egl_vendors() -> list[str]:
    """The EGL vendor files libglvnd would load (e.g. ``50_mesa.json``, ``10_nvidia.json``).

    Returns:
        File names, sorted.
    """
    names: list[str] = []
    for d in EGL_VENDOR_DIRS:
        if os.path.isdir(d):
            names += [n for n in os.listdir(d) if n.endswith(".json")]
    return sorted(set(names))



def gpu_notes(cycles_devices: dict, gl: Optional[dict], where: str, driver: Optional[str]) -> list[str]:
    """What stops one Blender from using the GPU, one sentence each.

    Args:
        cycles_devices: Cycles backend -> device names (or "not in this build").
        gl: The GL renderer the probe read (``{"renderer", "vendor", "device_type", "software"}``) or None.
        where: The Blender, as the sentences name it.
        driver: `gpu_driver` (None: no GPU driver on this machine).

    Returns:
        Notes; empty when nothing stands in the way.
    """
    notes: list[str] = []
    gpus = [n for v in cycles_devices.values() if isinstance(v, list) for n in v]
    nvidia_in_build = [b for b in ("OPTIX", "CUDA") if isinstance(cycles_devices.get(b), list)]
    if cycles_devices and not gpus:
        if driver is None:
            notes.append(f"no GPU driver on this machine (no nvidia-smi, /dev/nvidia0 or /dev/kfd): {where} "
                         "renders Cycles on the CPU; on GPU nodes install the GPU driver")
        elif not nvidia_in_build:
            notes.append(f"no GPU in this build of Blender: {where} has neither OptiX nor CUDA compiled in; "
                         "use the bpy wheel or a blender.org build (blender=...)")
        else:
            notes.append(f"a GPU driver is there ({driver}) but Cycles in {where} lists no device "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); check that the "
                         "driver's libcuda.so.1 loads and matches the kernel module (nvidia-smi)")
    if gl and gl.get("software"):
        if driver is None:
            notes.append(f"Eevee / Workbench in {where} draw with software GL ({gl.get('renderer')}): "
                         "no GPU here")
        else:
            vendors = egl_vendors()
            notes.append(f"Eevee / Workbench in {where} draw with software GL ({gl.get('renderer')}) "
                         f"although a GPU driver is there ({driver}): the GPU vendor's EGL library is missing "
                         f"(EGL vendors found: {', '.join(vendors) or 'none'}; NVIDIA: install libnvidia-gl-<version> "
                         "for libEGL_nvidia.so.0 and 10_nvidia.json)")
    if driver is not None:
        from blendtorch_ray.egl import EGLShimError, build_shim

        try:
            build_shim()
        except EGLShimError as exc:
            notes.append(f"instances given GPUs cannot get their own GPU for Eevee / Workbench: {exc}")
    return notes


def format_devices(reports: Sequence[Any]) -> list[str]:
    """The "Render devices" lines of the doctor's output: per Blender, Cycles' compute devices
    per backend and the GL renderer.

    Args:
        reports: Examined reports.

    Returns:
        Lines of text.
    """
    lines = ["\nRender devices:"]
    for r in reports:
        if r.blender is None or not (r.cycles_devices or r.gl or r.gpu_notes):
            continue
        name = f"{', '.join(r.sources)} (Blender {r.version})"
        backends = "; ".join(f"{b}: {v if isinstance(v, str) else (', '.join(v) or 'no device')}"
                             for b, v in r.cycles_devices.items()) or "-"
        lines.append(f"  {name}: Cycles compute devices: {backends}")
        if r.gl:
            kind = "software, CPU" if r.gl.get("software") else (r.gl.get("device_type") or "?")
            lines.append(f"  {name}: GL renderer: {r.gl.get('renderer')} ({r.gl.get('vendor')}, {kind})")
        else:
            lines.append(f"  {name}: GL renderer: unknown")
    notes = [n for r in reports for n in r.gpu_notes if n not in r.problems]
    if notes:
        lines.append("\nGPU:")
        lines += [f"  - {n}" for n in notes]
    return lines
