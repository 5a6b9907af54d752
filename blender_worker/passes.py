"""Ground-truth passes: which engine gives what, instance ids, and the id render.

Pass names (``Renderer.render(passes=...)`` returns one array per name, same frame):

==========  =====================  ==========================================================
name        array                  meaning
==========  =====================  ==========================================================
rgba        (H, W, 4) uint8/float  colour; display sRGB uint8 (``color="srgb8"``, the scene's
                                   view transform applied) or scene-linear float32
                                   (``color="linear"``)
depth       (H, W) float32         z-depth: distance from the camera plane along the viewing
                                   axis (camera-space ``-z``), in scene units; ``inf`` where
                                   nothing was hit. Not the ray length: use
                                   ``depth_to_distance`` for that.
instance    (H, W) int32           the ``pass_index`` of the object seen in each pixel, exact
                                   integers, 0 = background
semantic    (H, W) int32           the class of that object: its ``category_id`` custom
                                   property, else that of one of its collections, else 0
normal      (H, W, 3) float32      world-space unit surface normals (0 on background)
==========  =====================  ==========================================================

Engine support (measured with bpy 5.0.1): Cycles writes every pass itself (``instance`` from
its Object Index pass). Eevee writes depth and normals; Workbench only depth. For
Workbench and Eevee, ``instance`` comes from a second, cheap Workbench render in which every
object is drawn flat, unlit and without anti-aliasing in a colour that encodes its id (an AOV
fed by Object Info > Object Index works in Eevee too, but it is filtered like colour, so edge
pixels blend two ids once there is more than one sample). Workbench has no normal pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    import bpy

# bpy is imported inside the functions that need it, so that the numpy helpers
# (mask_boxes, depth_to_distance, decode_ids) also work outside Blender.

PASSES = ("rgba", "depth", "instance", "semantic", "normal")

SUPPORT: dict[str, frozenset[str]] = {
    "CYCLES": frozenset(PASSES),
    "BLENDER_EEVEE": frozenset(PASSES),
    "BLENDER_EEVEE_NEXT": frozenset(PASSES),
    "BLENDER_WORKBENCH": frozenset(("rgba", "depth", "instance", "semantic")),
}
"""Passes each render engine can produce."""

RENDERABLE = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME"}
CATEGORY_PROP = "category_id"


def check_passes(passes: Sequence[str], engine: str) -> tuple[str, ...]:
    """Validate pass names for a render engine.

    Args:
        passes: Pass names (a single name works too).
        engine: Blender engine identifier (``scene.render.engine``).

    Returns:
        The names as a tuple, in order, without duplicates.

    Raises:
        ValueError: A name is unknown, the engine has no pass support, or it cannot render
            one of the passes (e.g. normals with Workbench).
    """
    if isinstance(passes, str):
        passes = (passes,)
    out = tuple(dict.fromkeys(passes))
    unknown = [p for p in out if p not in PASSES]
    if unknown:
        raise ValueError(f"unknown pass(es) {unknown}: choose from {list(PASSES)}")
    supported = SUPPORT.get(engine)
    if supported is None:
        raise ValueError(f"render engine {engine!r} has no pass support: use 'cycles', 'eevee' or 'workbench'")
    missing = [p for p in out if p not in supported]
    if missing:
        raise ValueError(
            f"{engine} cannot render pass(es) {missing}; it supports {sorted(supported)}. "
            "Use Cycles (every pass) or Eevee for normals."
        )
    return out


def renderable_objects(scene: Optional["bpy.types.Scene"] = None) -> list["bpy.types.Object"]:
    """Objects that show up in renders (geometry, not hidden).

    Args:
        scene: The scene; None: the current scene.

    Returns:
        The objects, sorted by name.
    """
    import bpy

    scene = scene or bpy.context.scene
    return sorted(
        (o for o in scene.objects if o.type in RENDERABLE and not o.hide_render), key=lambda o: o.name
    )


def assign_instance_ids(scene: Optional["bpy.types.Scene"] = None) -> dict[int, str]:
    """Give every renderable object with ``pass_index == 0`` the next free id (in name order).

    Ids you set yourself (``obj.pass_index = 5``) are kept.

    Args:
        scene: The scene; None: the current scene.

    Returns:
        ``{id: object name}`` of every renderable object (see `instance_ids`).
    """
    objs = renderable_objects(scene)
    used = {o.pass_index for o in objs if o.pass_index}
    nxt = 1
    for o in objs:
        if o.pass_index == 0:
            while nxt in used:
                nxt += 1
            o.pass_index = nxt
            used.add(nxt)
    return instance_ids(scene)


def instance_ids(scene: Optional["bpy.types.Scene"] = None) -> dict[int, str]:
    """The instance ids of the renderable objects.

    Args:
        scene: The scene; None: the current scene.

    Returns:
        ``{pass_index: object name}`` (an id shared by several objects maps to the first
        name); objects with ``pass_index`` 0 are left out.
    """
    out: dict[int, str] = {}
    for o in renderable_objects(scene):
        if o.pass_index:
            out.setdefault(o.pass_index, o.name)
    return out


def category_of(obj: "bpy.types.Object", prop: str = CATEGORY_PROP) -> int:
    """Class id of an object, for the 'semantic' pass.

    Args:
        obj: The object.
        prop: Name of the custom property that holds the class id.

    Returns:
        The object's property ``prop``, else that of a collection it is in, else 0.
    """
    if prop in obj:
        return int(obj[prop])
    for coll in obj.users_collection:
        if prop in coll:
            return int(coll[prop])
    return 0


def semantic_lut(scene: Optional["bpy.types.Scene"] = None, prop: str = CATEGORY_PROP) -> np.ndarray:
    """Lookup table from instance id to class id, for the renderable objects.

    Args:
        scene: The scene; None: the current scene.
        prop: Custom property that holds the class id (see `category_of`).

    Returns:
        int32 array ``lut`` with ``lut[instance id] == class id`` (0 for unused ids).
    """
    objs = renderable_objects(scene)
    lut = np.zeros(max([o.pass_index for o in objs], default=0) + 1, dtype=np.int32)
    for o in objs:
        if o.pass_index:
            lut[o.pass_index] = category_of(o, prop)
    return lut


def enable_view_layer_passes(view_layer: "bpy.types.ViewLayer", passes: Iterable[str], engine: str) -> None:
    """Switch on the Blender render passes needed for ``passes`` (never switches any off).

    Args:
        view_layer: The view layer that renders.
        passes: Our pass names.
        engine: Blender engine identifier.
    """
    passes = set(passes)
    if "depth" in passes:
        view_layer.use_pass_z = True
    if "normal" in passes:
        view_layer.use_pass_normal = True
    if engine == "CYCLES" and passes & {"instance", "semantic"}:
        view_layer.use_pass_object_index = True


def depth_to_distance(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Convert z-depth to the Euclidean distance from the camera centre (ray length).

    Args:
        depth: (H, W) z-depth, as the 'depth' pass gives it.
        K: OpenCV intrinsics (pixel centres at integer coordinates; ``Camera.K``).

    Returns:
        (H, W) float32 distances (``inf`` stays ``inf``).
    """
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return (depth * np.sqrt(1.0 + x * x + y * y)).astype(np.float32)


def mask_boxes(instance: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Tight pixel boxes of every non-zero id in an instance mask.

    Args:
        instance: (H, W) integer mask (the 'instance' pass).

    Returns:
        ``{id: (x0, y0, x1, y1)}``; x1/y1 are exclusive, so the box covers pixels
        ``[x0, x1) x [y0, y1)``.
    """
    out = {}
    for i in np.unique(instance):
        if i == 0:
            continue
        ys, xs = np.nonzero(instance == i)
        out[int(i)] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return out


def encode_id(i: int) -> tuple[float, float, float, float]:
    """Object colour that the id render draws for an id (base 256 in R, G, B).

    Args:
        i: Instance id.

    Returns:
        RGBA with each channel in [0, 1].

    Raises:
        ValueError: ``i`` is outside ``[0, 2**24)``.
    """
    if not 0 <= i < 1 << 24:
        raise ValueError(f"instance id {i} out of range [0, 2**24)")
    return ((i & 255) / 255.0, ((i >> 8) & 255) / 255.0, ((i >> 16) & 255) / 255.0, 1.0)


def decode_ids(rgba: np.ndarray) -> np.ndarray:
    """Inverse of `encode_id` on an image.

    Args:
        rgba: (H, W, 4) float image.

    Returns:
        (H, W) int32 ids; transparent pixels are 0.
    """
    b = np.rint(np.clip(rgba[..., :3], 0.0, 1.0) * 255.0).astype(np.int32)
    ids = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    ids[rgba[..., 3] < 0.5] = 0
    return ids


class IdRender:
    """Render exact instance ids with Workbench: flat, unlit, no anti-aliasing, colour = id.

    Every setting it touches (engine, shading, film, object colours) is restored afterwards,
    so it can run between two normal renders of any engine.

    Args:
        scene: The scene to render.
    """

    _SHADING = {
        "light": "FLAT",
        "color_type": "OBJECT",
        "show_cavity": False,
        "show_object_outline": False,
        "show_shadows": False,
        "show_specular_highlight": False,
        "show_xray": False,
        "use_dof": False,
        "show_backface_culling": False,
    }

    def __init__(self, scene: "bpy.types.Scene"):
        self.scene = scene

    def render(self, path: str) -> np.ndarray:
        """Render the id image.

        Args:
            path: OpenEXR file to write (overwritten).

        Returns:
            (H, W) int32 instance ids, 0 = background.
        """
        import bpy

        from blender_worker.readers import read_exr

        sc = self.scene
        shading, r = sc.display.shading, sc.render
        fmt = r.image_settings
        saved_scene = {
            "engine": r.engine,
            "film_transparent": r.film_transparent,
            "filepath": r.filepath,
            "render_aa": sc.display.render_aa,
            **({"media_type": fmt.media_type} if hasattr(fmt, "media_type") else {}),  # Blender >= 5.0
            "file_format": fmt.file_format,
            "color_mode": fmt.color_mode,
            "color_depth": fmt.color_depth,
            "exr_codec": fmt.exr_codec,
        }
        saved_shading = {k: getattr(shading, k) for k in self._SHADING}
        objs = renderable_objects(sc)
        saved_colors = [tuple(o.color) for o in objs]
        try:
            r.engine = "BLENDER_WORKBENCH"
            r.film_transparent = True
            sc.display.render_aa = "OFF"
            for k, v in self._SHADING.items():
                setattr(shading, k, v)
            for o in objs:
                o.color = encode_id(o.pass_index)
            if hasattr(fmt, "media_type"):
                fmt.media_type = "IMAGE"
            fmt.file_format = "OPEN_EXR"
            fmt.color_mode = "RGBA"
            fmt.color_depth = "32"
            fmt.exr_codec = "NONE"
            r.filepath = path
            bpy.ops.render.render(write_still=True, scene=sc.name)
        finally:
            for o, c in zip(objs, saved_colors):
                o.color = c
            for k, v in saved_shading.items():
                setattr(shading, k, v)
            sc.display.render_aa = saved_scene.pop("render_aa")
            for k in ("engine", "film_transparent", "filepath"):
                setattr(r, k, saved_scene.pop(k))
            for k, v in saved_scene.items():
                setattr(fmt, k, v)
        return decode_ids(read_exr(path)["RGBA"])
