"""Headless rendering into numpy arrays.

Blender's ``Render Result`` holds no pixels in background mode, so each frame is written
with ``write_still`` to an uncompressed file on /dev/shm and read back with numpy:
uncompressed 8-bit TIFF (the faster writer on every Blender measured; Targa is the
alternative, ``Renderer.srgb8_format``) for display-referred 8-bit RGBA (view transform applied; the same image either way)
and uncompressed OpenEXR (read with the ``OpenEXR`` package) for scene-linear float RGBA.
Ground-truth passes (depth, instance and semantic ids, normals; see ``blender_worker.passes``)
come from one multilayer OpenEXR of the same render: ``render(passes=("rgba", "depth"))``.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import bpy
import numpy as np

from blender_worker.readers import read_exr, read_exr_layers, read_tga, read_tiff  # noqa: F401 - re-exported

SRGB8_FORMATS = ("tga", "tiff")
"""Files that ``Renderer.render(color="srgb8")`` can go through (the same image, view transform
applied by Blender): uncompressed Targa or uncompressed 8-bit TIFF."""


def default_srgb8_format() -> str:
    """The faster 8-bit file on every Blender measured: uncompressed TIFF. Blender 3.x writes
    Targa one byte at a time (``putc``; 640x480 Workbench frame on 3.4.1: ~86 ms render + TGA
    against ~50 ms with TIFF); 5.0 writes both in one go, and TIFF was as fast or faster in every
    run of ``benchmarks/render.py`` (render-only, 1 / 2 instances: 32.4 / 43.3 frames/s against
    31.6 / 38.1 with Targa).

    Returns:
        "tiff".
    """
    return "tiff"


ENGINES = {
    "workbench": "BLENDER_WORKBENCH",
    "eevee": "BLENDER_EEVEE",
    "cycles": "CYCLES",
}

_ENGINE_ALIASES = {"BLENDER_EEVEE": ("BLENDER_EEVEE_NEXT",), "BLENDER_EEVEE_NEXT": ("BLENDER_EEVEE",)}
"""Eevee is BLENDER_EEVEE up to 4.1 and from 5.0, BLENDER_EEVEE_NEXT in 4.2-4.4."""


def set_engine(render: "bpy.types.RenderSettings", engine: str) -> None:
    """Set ``render.engine`` from a short name or identifier, whatever this Blender calls it.

    Args:
        render: The scene's render settings (``scene.render``).
        engine: 'workbench', 'eevee', 'cycles' or a Blender engine identifier; Eevee's
            identifier of another Blender version works too.

    Raises:
        ValueError: This Blender has no such engine.
    """
    ident = ENGINES.get(engine.lower(), engine)
    for candidate in (ident, *_ENGINE_ALIASES.get(ident, ())):
        try:
            render.engine = candidate
            return
        except TypeError:  # not an engine of this Blender version
            continue
    raise ValueError(f"render engine {engine!r} is not available in Blender {bpy.app.version_string}; "
                     f"use one of {sorted(ENGINES)}")


def set_media_type(fmt: "bpy.types.ImageFormatSettings", media_type: str) -> None:
    """Set ``fmt.media_type`` (Blender >= 5.0 only; older versions infer it from file_format).

    Args:
        fmt: Image format settings (``scene.render.image_settings``).
        media_type: "IMAGE", "MULTI_LAYER_IMAGE" or "VIDEO".
    """
    if hasattr(fmt, "media_type"):
        fmt.media_type = media_type


@dataclass
class RenderSettings:
    """How the renderer configures the scene. ``None`` keeps what the .blend file says."""

    engine: Optional[str] = None
    """'workbench', 'eevee' or 'cycles' (or a Blender engine identifier)."""
    resolution: Optional[tuple[int, int]] = None
    """(width, height) in pixels."""
    samples: Optional[int] = None
    """Cycles / Eevee samples."""
    workbench_aa: Optional[str] = None
    """Workbench anti-aliasing: 'OFF', 'FXAA', '5', '8', '11', '16', '32'."""
    auto_instance_ids: bool = True
    """Before rendering 'instance'/'semantic', give objects whose ``pass_index`` is 0 a free id."""
    category_property: str = "category_id"
    """Custom property (on objects or their collections) that holds the 'semantic' class id."""
    device: str = "auto"
    """'auto': Cycles on the best GPU backend it finds, else the CPU with one warning; 'gpu':
    the same but no GPU is an error (`blender_worker.devices.GPUNotFoundError`); 'cpu': Cycles
    on the CPU. Eevee / Workbench draw wherever Blender's GL runs; their renderer is reported
    after the first frame (see `blender_worker.devices`)."""


class Renderer:
    """Render the active camera of a scene into numpy arrays.

    ``render()`` returns a dict: ``{"image": (H, W, 4) uint8}`` for the default
    ``color="srgb8"``; with ``color="linear"`` the image is scene-linear float32. Frames go
    through a scratch directory on /dev/shm that ``close()`` (or interpreter exit) removes.

    Args:
        settings: Engine, resolution, samples, ...; applied to the scene once, here. None:
            keep what the scene says.
        scene: The scene to render; None: the current scene.
        tmpdir: Where the scratch directory goes; default ``$BLENDTORCH_TMPDIR`` (set by
            the supervising actor) or /dev/shm.

    Raises:
        ValueError: ``settings.engine`` is not available in this Blender, or ``settings.device``
            is unknown.
        blender_worker.devices.GPUNotFoundError: ``device="gpu"`` and there is no GPU (for
            Eevee / Workbench: raised by the first ``render()``).

    Example:
        Colour, depth and instance ids of the same frame::

            renderer = Renderer(RenderSettings(engine="cycles", resolution=(640, 480), samples=16))
            out = renderer.render(passes=("rgba", "depth", "instance"))
            pub.publish(**out)
    """

    def __init__(
        self,
        settings: Optional[RenderSettings] = None,
        scene: Optional["bpy.types.Scene"] = None,
        tmpdir: Optional[str] = None,
    ):
        self.scene = scene or bpy.context.scene
        self.settings = settings or RenderSettings()
        # The supervising actor names a directory it removes (also after a SIGKILL of this
        # process); otherwise /dev/shm, removed at exit.
        base = tmpdir or os.environ.get("BLENDTORCH_TMPDIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        self._dir = tempfile.mkdtemp(prefix="btr-render-", dir=base)
        self.srgb8_format = default_srgb8_format()
        """File the display-referred image goes through: one of ``SRGB8_FORMATS``."""
        atexit.register(self.close)
        self._configure()

    def _configure(self) -> None:
        s, r = self.settings, self.scene.render
        if s.engine:
            set_engine(r, s.engine)
        if s.resolution:
            r.resolution_x, r.resolution_y = s.resolution
            r.resolution_percentage = 100
        if r.engine == "CYCLES" and self.scene.cycles.use_denoising and not self.scene.cycles.denoiser:
            # No denoiser in this build (e.g. Debian's Blender has no OpenImageDenoise): rendering
            # would fail with "Build without OpenImageDenoiser", so render without denoising.
            self.scene.cycles.use_denoising = False
        self.device = _devices().choose_device(self.scene, s.device)
        """The `blender_worker.devices.DeviceChoice` (also sent to the driver; see ``health()``)."""
        if s.samples is not None:  # samples only; the device is chosen above
            if r.engine == "CYCLES":
                self.scene.cycles.samples = s.samples
            elif r.engine.startswith("BLENDER_EEVEE"):
                self.scene.eevee.taa_render_samples = s.samples
        if s.workbench_aa is not None:
            self.scene.display.render_aa = s.workbench_aa
        r.use_compositing = False
        r.use_sequencer = False

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of rendered images."""
        r = self.scene.render
        scale = r.resolution_percentage / 100.0
        return int(r.resolution_y * scale), int(r.resolution_x * scale)

    def render(self, color: str = "srgb8", passes: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """Render one frame of the current scene state.

        Args:
            color: "srgb8": display colours as uint8 (the scene's view transform applied);
                "linear": scene-linear float32.
            passes: None, or pass names from `blender_worker.passes.PASSES` ("rgba",
                "depth", "instance", "semantic", "normal", "flow_forward", "flow_backward"; a
                single name works too).

        Returns:
            Without ``passes``: ``{"image": (H, W, 4) array}``. With ``passes``: one array
            per requested name, in that order, all of the same frame (``color`` sets the
            dtype of "rgba"); see `blender_worker.passes` for shapes and meaning.

        Raises:
            ValueError: ``color`` is unknown, or a pass is unknown or not supported by the
                scene's render engine, or flow is asked for with motion blur on.
        """
        if color not in ("srgb8", "linear"):
            raise ValueError(f"unknown color {color!r}: use 'srgb8' or 'linear'")
        if passes is not None:
            return self._render_passes(tuple(passes) if not isinstance(passes, str) else (passes,), color)
        fmt = self.scene.render.image_settings
        set_media_type(fmt, "IMAGE")
        if color == "srgb8" and self.srgb8_format == "tiff":
            path = os.path.join(self._dir, "frame.tif")
            fmt.file_format = "TIFF"
            fmt.color_mode = "RGBA"
            fmt.color_depth = "8"
            fmt.tiff_codec = "NONE"
            self._write(path)
            return {"image": read_tiff(path)}
        if color == "srgb8":
            path = os.path.join(self._dir, "frame.tga")
            fmt.file_format = "TARGA_RAW"
            fmt.color_mode = "RGBA"
            self._write(path)
            return {"image": read_tga(path)}
        path = os.path.join(self._dir, "frame.exr")
        fmt.file_format = "OPEN_EXR"
        fmt.color_mode = "RGBA"
        fmt.color_depth = "32"
        fmt.exr_codec = "NONE"
        self._write(path)
        return {"image": read_exr(path)["RGBA"]}

    @property
    def instance_ids(self) -> dict[int, str]:
        """``{instance id: object name}`` of the objects that the 'instance' pass can show."""
        return _passes().instance_ids(self.scene)

    def _render_passes(self, names: tuple[str, ...], color: str) -> dict[str, np.ndarray]:
        P = _passes()
        engine = self.scene.render.engine
        names = P.check_passes(names, engine)
        if set(P.FLOW_PASSES) & set(names):
            P.check_flow_settings(self.scene)
        want_ids = bool({"instance", "semantic"} & set(names))
        if want_ids and self.settings.auto_instance_ids:
            P.assign_instance_ids(self.scene)
        P.enable_view_layer_passes(bpy.context.view_layer, names, engine)
        fmt = self.scene.render.image_settings
        set_media_type(fmt, "MULTI_LAYER_IMAGE")
        fmt.file_format = "OPEN_EXR_MULTILAYER"
        fmt.color_depth = "32"
        fmt.exr_codec = "NONE"
        path = os.path.join(self._dir, "passes.exr")
        self._write(path)
        layers = read_exr_layers(path)
        out: dict[str, np.ndarray] = {}
        if "rgba" in names:
            out["rgba"] = layers["Combined"] if color == "linear" else self._display_srgb8(path)
        if "depth" in names:
            depth = layers["Depth"]
            clip_end = self.scene.camera.data.clip_end if self.scene.camera else np.inf
            out["depth"] = np.where(depth >= clip_end * (1.0 - 1e-5), np.inf, depth).astype(np.float32)
        if want_ids:
            if engine == "CYCLES":
                index = layers["Object Index"] if "Object Index" in layers else layers["IndexOB"]  # 3.x name
                ids = np.rint(index).astype(np.int32)
            else:
                from blender_worker.id_render import IdRender

                ids = IdRender(self.scene).render(os.path.join(self._dir, "ids.exr"))
            if "instance" in names:
                out["instance"] = ids
            if "semantic" in names:
                lut = P.semantic_lut(self.scene, self.settings.category_property)
                out["semantic"] = lut[np.clip(ids, 0, len(lut) - 1)]
        if "normal" in names:
            out["normal"] = layers["Normal"].astype(np.float32)
        if set(P.FLOW_PASSES) & set(names):
            out["flow_forward"], out["flow_backward"] = P.vector_to_flow(layers["Vector"])
        return {k: out[k] for k in names}

    def _display_srgb8(self, exr_path: str) -> np.ndarray:
        """The Combined pass with the scene's view transform applied, as (H, W, 4) uint8.

        Blender's own colour management does the conversion (``Image.save_render`` of the
        loaded EXR), so the result matches ``render()`` whatever the view transform is.
        """
        img = getattr(self, "_exr_image", None)
        if img is None or img.name not in bpy.data.images:
            img = self._exr_image = bpy.data.images.load(exr_path, check_existing=False)
        else:
            img.filepath = exr_path
            img.reload()
        fmt = self.scene.render.image_settings
        set_media_type(fmt, "IMAGE")
        fmt.file_format = "TARGA_RAW"
        fmt.color_mode = "RGBA"
        tga = os.path.join(self._dir, "passes.tga")
        img.save_render(tga, scene=self.scene)
        return read_tga(tga)

    def _write(self, path: str) -> None:
        self.scene.render.filepath = path
        bpy.ops.render.render(write_still=True, scene=self.scene.name)
        if self.device.gl_renderer is None and self.scene.render.engine in _devices().GL_ENGINES:
            # A GL engine has drawn: now its renderer can be asked (not before; see devices.py)
            self.device = _devices().note_gl_render() or self.device

    def close(self) -> None:
        """Remove the scratch directory."""
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)


def _passes():
    from blender_worker import passes

    return passes


def _devices():
    from blender_worker import devices

    return devices
