"""Ground-truth passes: which engine gives what, instance ids, and the id render.

Pass names (``Renderer.render(passes=...)`` returns one array per name, same frame):

=============  =====================  ==========================================================
name           array                  meaning
=============  =====================  ==========================================================
rgba           (H, W, 4) uint8/float  colour; display sRGB uint8 (``color="srgb8"``, the scene's
                                      view transform applied) or scene-linear float32
                                      (``color="linear"``)
depth          (H, W) float32         z-depth: distance from the camera plane along the viewing
                                      axis (camera-space ``-z``), in scene units; ``inf`` where
                                      nothing was hit. Not the ray length: use
                                      ``depth_to_distance`` for that.
instance       (H, W) int32           the ``pass_index`` of the object seen in each pixel, exact
                                      integers, 0 = background
semantic       (H, W) int32           the class of that object: its ``category_id`` custom
                                      property, else that of one of its collections, else 0
normal         (H, W, 3) float32      world-space unit surface normals (0 on background)
flow_forward   (H, W, 2) float32      optical flow to the next frame: ``(dx, dy)`` in pixels,
                                      image axes (x right, y down, as ``Camera``): the surface
                                      seen at pixel centre ``p`` is at ``p + flow`` one frame
                                      later; 0 on background and for objects that do not move
flow_backward  (H, W, 2) float32      the same towards the previous frame
=============  =====================  ==========================================================

Flow comes from Blender's Vector pass, which Blender computes from the scene's animation at
``frame_current - 1`` and ``+ 1`` (keyframes, drivers, constraints, simulations): an object
moved by Python between two renders without a keyframe shows no flow. Blender's Vector pass
holds ``(x, y)`` = position in the previous frame minus the current one and ``(z, w)`` = the
current minus the next one, in pixels with y up; `vector_to_flow` turns that into the two
passes (measured with Cycles and Eevee on bpy 5.0.1 and Cycles on Blender 3.4.1, see
tests/test_flow.py). These are BlenderProc's ``forward_flow`` / ``backward_flow`` (x, y
order); Kubric stores ``(delta_row, delta_col)``. Motion blur must be off (Blender writes no
Vector pass with it). Engines: Cycles; Eevee from Blender 4.2 (Eevee Next; legacy Eevee
and Workbench have no Vector pass).

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

FLOW_PASSES = ("flow_forward", "flow_backward")
PASSES = ("rgba", "depth", "instance", "semantic", "normal", *FLOW_PASSES)

_NO_FLOW = frozenset(p for p in PASSES if p not in FLOW_PASSES)
SUPPORT: dict[str, frozenset[str]] = {
    "CYCLES": frozenset(PASSES),
    "BLENDER_EEVEE": frozenset(PASSES),  # flow from 4.2 on: see supported_passes
    "BLENDER_EEVEE_NEXT": frozenset(PASSES),
    "BLENDER_WORKBENCH": frozenset(("rgba", "depth", "instance", "semantic")),
}
"""Passes each render engine can produce (in Blender >= 4.2; `supported_passes` for others)."""

EEVEE_FLOW_VERSION = (4, 2)
"""First Blender whose Eevee (Eevee Next) writes a Vector pass; legacy Eevee has none."""


def _blender_version() -> Optional[tuple[int, ...]]:
    try:
        import bpy
    except ImportError:
        return None
    return tuple(bpy.app.version)


def supported_passes(engine: str, version: Optional[Sequence[int]] = None) -> frozenset[str]:
    """Passes an engine can produce in a Blender version.

    Args:
        engine: Blender engine identifier (``scene.render.engine``).
        version: Blender version; None: the running Blender's (the newest outside Blender).

    Returns:
        The pass names (empty for an engine without pass support).
    """
    out = SUPPORT.get(engine, frozenset())
    version = tuple(version) if version is not None else _blender_version()
    if engine == "BLENDER_EEVEE" and version is not None and version[:2] < EEVEE_FLOW_VERSION:
        out = out & _NO_FLOW
    return out

RENDERABLE = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME"}
CATEGORY_PROP = "category_id"


def check_passes(passes: Sequence[str], engine: str, version: Optional[Sequence[int]] = None) -> tuple[str, ...]:
    """Validate pass names for a render engine.

    Args:
        passes: Pass names (a single name works too).
        engine: Blender engine identifier (``scene.render.engine``).
        version: Blender version (see `supported_passes`).

    Returns:
        The names as a tuple, in order, without duplicates.

    Raises:
        ValueError: A name is unknown (the message lists the valid ones), the engine has no
            pass support, or it cannot render one of the passes (e.g. normals with Workbench,
            flow with Workbench or legacy Eevee; the message names the engines that can).
    """
    if isinstance(passes, str):
        passes = (passes,)
    out = tuple(dict.fromkeys(passes))
    unknown = [p for p in out if p not in PASSES]
    if unknown:
        raise ValueError(f"unknown pass(es) {unknown}: choose from {list(PASSES)}")
    if engine not in SUPPORT:
        raise ValueError(f"render engine {engine!r} has no pass support: use 'cycles', 'eevee' or 'workbench'")
    supported = supported_passes(engine, version)
    missing = [p for p in out if p not in supported]
    if missing:
        able = {p: _engines_for(p) for p in missing}
        raise ValueError(
            f"{engine} cannot render pass(es) {missing}; it supports {sorted(supported)}. Engines that can: "
            + "; ".join(f"{p}: {e}" for p, e in able.items())
        )
    return out


def _engines_for(name: str) -> str:
    if name in FLOW_PASSES:
        return "Cycles, or Eevee from Blender 4.2 (not Workbench, not legacy Eevee)"
    return ", ".join(sorted({"CYCLES": "Cycles", "BLENDER_EEVEE": "Eevee", "BLENDER_EEVEE_NEXT": "Eevee",
                             "BLENDER_WORKBENCH": "Workbench"}[e] for e, s in SUPPORT.items() if name in s))


def check_flow_settings(scene: "bpy.types.Scene") -> None:
    """Raise if the scene cannot give flow: Blender writes no Vector pass with motion blur.

    Args:
        scene: The scene about to be rendered with a flow pass.

    Raises:
        ValueError: ``scene.render.use_motion_blur`` is on.
    """
    if scene.render.use_motion_blur:
        raise ValueError(
            "flow passes need motion blur off (Blender writes no Vector pass with it): "
            "set scene.render.use_motion_blur = False"
        )


def vector_to_flow(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blender's Vector pass as forward and backward optical flow in image axes.

    Args:
        vector: (H, W, 4) Vector pass, top-left origin (as the readers return it):
            ``(x, y)`` = previous position minus current, ``(z, w)`` = current minus next,
            in pixels with y up.

    Returns:
        ``(flow_forward, flow_backward)``, each (H, W, 2) float32 ``(dx, dy)`` with y down:
        ``p + flow_forward[p]`` is where pixel centre ``p`` moves in the next frame,
        ``p + flow_backward[p]`` where it was in the previous one.
    """
    v = np.asarray(vector, dtype=np.float32)
    forward = np.stack((-v[..., 2], v[..., 3]), axis=-1)
    backward = np.stack((v[..., 0], -v[..., 1]), axis=-1)
    return forward, backward


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
    if passes & set(FLOW_PASSES):
        view_layer.use_pass_vector = True


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
