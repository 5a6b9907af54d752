"""Which device renders: Cycles compute devices, the GL renderer of Eevee / Workbench.

``RenderSettings(device=...)`` chooses, `blender_worker.render.Renderer` calls
`choose_device` once when it configures the scene:

* **Cycles**: ``"gpu"`` and ``"auto"`` try the compute backends in ``BACKENDS`` order (OptiX,
  CUDA, HIP, oneAPI, Metal) through the Cycles add-on's preferences
  (``bpy.context.preferences.addons["cycles"].preferences``): a backend this build lacks
  refuses ``compute_device_type`` with ``TypeError``; ``refresh_devices()`` (3.x and 5.x; older
  ``get_devices()`` does the same) fills ``devices`` and ``get_devices_for_type(backend)`` lists
  that backend's. The first backend with a device wins: exactly its non-CPU devices are enabled
  (every other entry, the CPU included, is disabled) and ``scene.cycles.device = "GPU"``. Ray
  sets ``CUDA_VISIBLE_DEVICES`` for an actor with ``num_gpus`` and Blender inherits it, so the
  devices Cycles lists are the ones this instance may use. ``"auto"`` without any falls back to
  the CPU with one warning; ``"gpu"`` raises `GPUNotFoundError` naming what Blender saw;
  ``"cpu"`` sets ``scene.cycles.device = "CPU"``.
* **Eevee / Workbench** draw through OpenGL (EGL when headless); ``CUDA_VISIBLE_DEVICES`` does
  not steer them. Their GL renderer string (``gpu.platform.renderer_get()``) can only be read
  once a GL engine has drawn: before that Blender 5.0 raises ``SystemError`` ("not available in
  background mode") and Blender 3.4 crashes, so `note_gl_render` reads it after the first
  frame. Software GL (Mesa llvmpipe) counts as the CPU: ``"gpu"`` then raises, and ``"auto"``
  warns only when this instance was given a GPU (``BLENDTORCH_GPU_IDS`` set by the actor).

The latest choice and the warnings stay in this module (`current`); `DataPublisher` sends them
to the actor as a ``KIND_INFO`` message whenever they change, and the driver sees them in
``health()`` (``render_device``, ``render_backend``, ``gl_renderer``, ``warnings``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
"""Cycles compute backends, best first."""
DEVICE_CHOICES = ("auto", "cpu", "gpu")
"""Values of ``RenderSettings.device``."""
GL_ENGINES = ("BLENDER_WORKBENCH", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT")
"""Engines that draw through OpenGL/EGL (or Vulkan) instead of Cycles' devices."""
_SOFTWARE_GL = ("llvmpipe", "softpipe", "swiftshader", "software rasterizer")


class GPUNotFoundError(RuntimeError):
    """``device="gpu"`` was asked for but Blender found no GPU to render on; the message lists
    what it saw (backends tried, devices found, ``CUDA_VISIBLE_DEVICES``, the GL renderer)."""


@dataclass(frozen=True)
class DeviceChoice:
    """Where one Blender process renders."""

    engine: str
    """Blender's engine identifier ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH", ...)."""
    requested: str
    """``RenderSettings.device``: "auto", "cpu" or "gpu"."""
    device: Optional[str]
    """"CPU" or "GPU"; None for a GL engine that has not drawn yet (its renderer is unknown)."""
    backend: Optional[str] = None
    """Cycles compute backend in use ("OPTIX", "CUDA", ...); None on the CPU and for GL engines."""
    devices: tuple = ()
    """Names of the Cycles devices enabled (the CPU's name on the CPU)."""
    seen: dict = field(default_factory=dict)
    """Cycles backend -> the device names it listed, or "not in this build"."""
    gl_renderer: Optional[str] = None
    """``gpu.platform.renderer_get()`` once a GL engine has drawn (e.g. "llvmpipe (LLVM 15...)")."""
    gl_vendor: Optional[str] = None
    """``gpu.platform.vendor_get()`` likewise."""
    cuda_visible_devices: Optional[str] = None
    """``$CUDA_VISIBLE_DEVICES`` of this process (None: unset, every GPU visible)."""

    def to_dict(self) -> dict:
        """JSON-able form (the body of a ``KIND_INFO`` message).

        Returns:
            The fields as a dict (tuples as lists).
        """
        d = asdict(self)
        d["devices"] = list(self.devices)
        return d


_state: dict = {"version": 0, "choice": None, "warnings": []}
"""The latest choice of this process and every device warning, with a version that counts
changes (the publisher compares it before each publish)."""


def current() -> tuple[int, Optional[DeviceChoice], list[str]]:
    """The latest device choice of this process.

    Returns:
        ``(version, choice or None, warnings)``; ``version`` grows with every change.
    """
    return _state["version"], _state["choice"], list(_state["warnings"])


def _record(choice: DeviceChoice, warning: Optional[str] = None) -> DeviceChoice:
    _state["choice"] = choice
    if warning:
        _state["warnings"].append(warning)
    _state["version"] += 1
    return choice


def _cycles_prefs():
    import bpy

    addon = bpy.context.preferences.addons.get("cycles")
    if addon is None:
        import addon_utils

        addon_utils.enable("cycles", default_set=True)
        addon = bpy.context.preferences.addons["cycles"]
    return addon.preferences


def cycles_devices() -> tuple[dict, dict]:
    """Ask Cycles which compute devices each backend has (leaves ``compute_device_type`` set
    to the last backend tried; `choose_device` sets it again).

    Returns:
        ``(seen, entries)``: ``seen`` maps each of ``BACKENDS`` to the list of its device
        names, or to "not in this build"; ``entries`` maps each backend with devices to its
        preference entries (``prefs.devices`` items).
    """
    prefs = _cycles_prefs()
    seen: dict = {}
    entries: dict = {}
    for backend in BACKENDS:
        try:
            prefs.compute_device_type = backend
        except (TypeError, ValueError):  # enum item missing: not compiled into this build
            seen[backend] = "not in this build"
            continue
        refresh = getattr(prefs, "refresh_devices", None) or prefs.get_devices
        refresh()
        found = [d for d in prefs.get_devices_for_type(backend) if d.type == backend]
        seen[backend] = [d.name for d in found]
        if found:
            entries[backend] = found
    return seen, entries


def _cpu_name(prefs) -> str:
    names = [d.name for d in prefs.devices if d.type == "CPU"]
    return names[0] if names else "CPU"


def _describe(seen: dict) -> str:
    parts = [f"{b}: {v if isinstance(v, str) else (', '.join(v) or 'no device')}" for b, v in seen.items()]
    return "; ".join(parts)


def _visible() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "unset (every GPU visible)" if value is None else repr(value)


def choose_device(scene, requested: str = "auto") -> DeviceChoice:
    """Set the scene's render device as ``requested`` and record the choice (`current`).

    Args:
        scene: The scene whose engine is already set.
        requested: "auto", "cpu" or "gpu" (see the module docstring).

    Returns:
        The `DeviceChoice`; for a GL engine ``device`` is None until `note_gl_render`.

    Raises:
        ValueError: ``requested`` is not one of ``DEVICE_CHOICES``.
        GPUNotFoundError: ``requested="gpu"`` and Cycles lists no GPU device.
    """
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"device={requested!r}: use one of {list(DEVICE_CHOICES)}")
    engine = scene.render.engine
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if engine != "CYCLES":
        return _record(DeviceChoice(engine, requested, None, cuda_visible_devices=visible))
    prefs = _cycles_prefs()
    if requested == "cpu":
        scene.cycles.device = "CPU"
        return _record(DeviceChoice(engine, requested, "CPU", None, (_cpu_name(prefs),), {}, cuda_visible_devices=visible))
    seen, entries = cycles_devices()
    backend = next((b for b in BACKENDS if b in entries), None)
    if backend is None:
        prefs.compute_device_type = "NONE"
        scene.cycles.device = "CPU"
        saw = f"Cycles compute backends tried: {_describe(seen)}; CUDA_VISIBLE_DEVICES {_visible()}"
        if requested == "gpu":
            raise GPUNotFoundError(
                f"device='gpu' but Blender {_version()} found no GPU for Cycles ({saw}). Give the "
                "instance a GPU (num_gpus=1 on a node with a GPU driver), check `blendtorch-ray doctor`, "
                "or use device='auto' / 'cpu'")
        choice = DeviceChoice(engine, requested, "CPU", None, (_cpu_name(prefs),), seen, cuda_visible_devices=visible)
        return _record(choice, f"device='auto': no Cycles GPU device found ({saw}); rendering on the CPU "
                               f"({_cpu_name(prefs)}). Pass device='cpu' to say that is what you want")
    prefs.compute_device_type = backend
    use = {d.as_pointer() for d in entries[backend]}
    for d in prefs.devices:  # exactly this backend's GPUs: no CPU, no device of another backend
        d.use = d.as_pointer() in use
    scene.cycles.device = "GPU"
    return _record(DeviceChoice(engine, requested, "GPU", backend, tuple(d.name for d in entries[backend]), seen,
                                cuda_visible_devices=visible))


def gl_info() -> tuple[Optional[str], Optional[str], Optional[str]]:
    """The GL renderer, vendor and device type (``gpu.platform``); call it only after a GL
    engine has drawn in this process (Blender 3.4 crashes before, 5.0 raises ``SystemError``).

    Returns:
        ``(renderer, vendor, device_type)``, each None if Blender would not say.
    """
    import gpu

    out = []
    for name in ("renderer_get", "vendor_get", "device_type_get"):
        fn = getattr(gpu.platform, name, None)
        try:
            out.append(str(fn()) if fn else None)
        except Exception:  # noqa: BLE001 - SystemError without a GPU context, anything else: unknown
            out.append(None)
    return out[0], out[1], out[2]


def is_software_gl(renderer: Optional[str], device_type: Optional[str]) -> bool:
    """Whether a GL renderer draws on the CPU (Mesa llvmpipe and friends).

    Args:
        renderer: ``gpu.platform.renderer_get()``.
        device_type: ``gpu.platform.device_type_get()`` ("SOFTWARE" for llvmpipe).

    Returns:
        True for software rasterisers.
    """
    if device_type == "SOFTWARE":
        return True
    return any(s in (renderer or "").lower() for s in _SOFTWARE_GL)


def note_gl_render() -> Optional[DeviceChoice]:
    """After a GL engine's first frame: read the GL renderer and complete the pending choice.

    Returns:
        The updated choice, or None when there is nothing pending.

    Raises:
        GPUNotFoundError: ``device="gpu"`` and the GL renderer is a software rasteriser.
    """
    choice = _state["choice"]
    if choice is None or choice.engine not in GL_ENGINES or choice.gl_renderer is not None:
        return None
    renderer, vendor, device_type = gl_info()
    software = is_software_gl(renderer, device_type)
    device = None if renderer is None else ("CPU" if software else "GPU")
    done = replace(choice, device=device, gl_renderer=renderer or "unknown", gl_vendor=vendor)
    warning = None
    if device != "GPU" and choice.requested != "cpu":
        what = (f"{choice.engine} draws with {'software GL' if software else 'an unknown GL renderer'} "
                f"({renderer or 'gpu.platform says nothing'}, vendor {vendor or '?'}); CUDA_VISIBLE_DEVICES {_visible()}")
        if choice.requested == "gpu":
            _record(done)
            raise GPUNotFoundError(f"device='gpu' but {what}. Install the GPU vendor's EGL library "
                                   "(NVIDIA: libnvidia-gl / libEGL_nvidia.so.0), check `blendtorch-ray doctor`, "
                                   "or use device='auto' / 'cpu'")
        if os.environ.get("BLENDTORCH_GPU_IDS"):  # the actor was given a GPU and GL does not use it
            warning = f"device='auto': this instance has GPU(s) {os.environ['BLENDTORCH_GPU_IDS']} but {what}"
    return _record(done, warning)


def _version() -> str:
    import bpy

    return bpy.app.version_string
