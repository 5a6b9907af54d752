"""Domain randomisation helpers, all driven by one seeded ``numpy.random.Generator``.

Take each item's generator from the publisher (``rng = pub.rng()`` in ``pre_frame``): it is
seeded from the item's ``(seed, seq)`` alone (``blender_worker.protocol.item_seed``), so an
item renders the same whatever happened before it, restarts and resumes included, and
``blendtorch_ray.rerender.render_again`` can render it again. Call the helpers in a fixed order:

    def pre_frame():
        rng = pub.rng()
        random_materials(objs, rng)
        random_light(rng, light)
        place_without_overlap(objs, rng, area=(-3, 3, -3, 3))
        camera_on_sphere(cam, rng, target=(0, 0, 0), radius=(6, 9), elevation=(15, 60))

``make_rng(launch.seed)`` gives one generator for the whole process instead: the same seed
gives the same stream frame by frame, but an item then depends on how far the process got.
"""

from __future__ import annotations

from typing import Optional, Sequence

import bpy
import numpy as np
from mathutils import Vector


def make_rng(seed: Optional[int], stream: int = 0) -> np.random.Generator:
    """A seeded random generator for one purpose.

    Args:
        seed: The instance seed (``launch.seed``); None counts as 0.
        stream: Independent sub-stream (e.g. one for materials, one for poses).

    Returns:
        ``numpy.random.default_rng([seed, stream])``.
    """
    return np.random.default_rng([int(seed or 0), int(stream)])


def random_color(rng: np.random.Generator, low: float = 0.05, high: float = 1.0) -> tuple[float, float, float, float]:
    """A random colour.

    Args:
        rng: The generator.
        low: Smallest channel value.
        high: Largest channel value.

    Returns:
        Linear RGBA with each of R, G, B uniform in [low, high] and alpha 1.
    """
    return (*(float(c) for c in rng.uniform(low, high, size=3)), 1.0)


def random_materials(
    objects: Sequence["bpy.types.Object"],
    rng: np.random.Generator,
    roughness: tuple[float, float] = (0.2, 0.9),
    metallic: tuple[float, float] = (0.0, 0.5),
) -> None:
    """Give each object its own Principled material with random base colour, roughness and
    metallic. Also sets ``obj.color`` to the same colour so Workbench (colour type 'OBJECT')
    shows it.

    Args:
        objects: Objects to colour; each gets (and keeps reusing) a material of its own.
        rng: The generator.
        roughness: Range of the roughness.
        metallic: Range of the metallic value.
    """
    for obj in objects:
        color = random_color(rng)
        name = f"btr-random-{obj.name}"
        mat = bpy.data.materials.get(name) or bpy.data.materials.new(name)
        mat.diffuse_color = color
        if mat.node_tree is None:  # Blender < 5 creates materials without nodes
            mat.use_nodes = True
        bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = color
            bsdf.inputs["Roughness"].default_value = float(rng.uniform(*roughness))
            bsdf.inputs["Metallic"].default_value = float(rng.uniform(*metallic))
        if obj.data is not None and hasattr(obj.data, "materials"):
            obj.data.materials.clear()
            obj.data.materials.append(mat)
        obj.color = color


def sphere_point(
    rng: np.random.Generator,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    radius: tuple[float, float] = (5.0, 8.0),
    elevation: tuple[float, float] = (10.0, 60.0),
    azimuth: tuple[float, float] = (0.0, 360.0),
) -> np.ndarray:
    """A random point on a spherical shell around ``center``.

    Args:
        rng: The generator.
        center: Centre of the sphere.
        radius: Range of the distance from ``center``.
        elevation: Range of the angle above the xy plane, in degrees.
        azimuth: Range of the angle around the z axis, in degrees.

    Returns:
        The (3,) point; each of radius, elevation and azimuth drawn uniformly.
    """
    r = rng.uniform(*radius)
    el = np.radians(rng.uniform(*elevation))
    az = np.radians(rng.uniform(*azimuth))
    return np.asarray(center, dtype=np.float64) + r * np.array(
        [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]
    )


def camera_on_sphere(
    camera,
    rng: np.random.Generator,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    radius: tuple[float, float] = (5.0, 8.0),
    elevation: tuple[float, float] = (10.0, 60.0),
    azimuth: tuple[float, float] = (0.0, 360.0),
) -> np.ndarray:
    """Put a camera at a random point of a sphere around ``target``, looking at it.

    Args:
        camera: A `blender_worker.camera.Camera`.
        rng: The generator.
        target: The point to look at.
        radius: Range of the distance (see `sphere_point`).
        elevation: Range of the elevation in degrees.
        azimuth: Range of the azimuth in degrees.

    Returns:
        The (3,) camera location.
    """
    loc = sphere_point(rng, target, radius, elevation, azimuth)
    camera.look_at(look_at=tuple(target), look_from=tuple(loc))
    return loc


def random_light(
    rng: np.random.Generator,
    light: Optional["bpy.types.Object"] = None,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    radius: tuple[float, float] = (4.0, 8.0),
    elevation: tuple[float, float] = (30.0, 80.0),
    energy: tuple[float, float] = (300.0, 1500.0),
    color_low: float = 0.7,
) -> "bpy.types.Object":
    """Move a light to a random point above ``target`` with random energy and colour.

    Args:
        rng: The generator.
        light: The light object; None: a new point light (pass the returned one on
            later calls).
        target: Centre of the sphere the light is placed on.
        radius: Range of the distance from ``target``.
        elevation: Range of the elevation in degrees.
        energy: Range of the power in W.
        color_low: Smallest channel value of the (mostly white) colour.

    Returns:
        The light object.
    """
    if light is None:
        data = bpy.data.lights.new("btr-random-light", type="POINT")
        light = bpy.data.objects.new("btr-random-light", data)
        bpy.context.scene.collection.objects.link(light)
    light.location = Vector(sphere_point(rng, target, radius, elevation))
    light.data.energy = float(rng.uniform(*energy))
    light.data.color = random_color(rng, color_low, 1.0)[:3]
    return light


def footprint_radius(obj: "bpy.types.Object") -> float:
    """Radius of the circle that holds an object's bounding box seen from above.

    Args:
        obj: The object.

    Returns:
        The radius in world units, around the object's origin.
    """
    corners = np.array([list(obj.matrix_world @ Vector(c)) for c in obj.bound_box])
    center = np.asarray(obj.matrix_world.translation)[:2]
    return float(np.max(np.linalg.norm(corners[:, :2] - center, axis=1)))


def place_without_overlap(
    objects: Sequence["bpy.types.Object"],
    rng: np.random.Generator,
    area: tuple[float, float, float, float] = (-3.0, 3.0, -3.0, 3.0),
    z: Optional[float] = None,
    margin: float = 0.05,
    random_yaw: bool = True,
    max_tries: int = 100,
    max_layouts: int = 50,
) -> None:
    """Scatter ``objects`` over ``area`` = (xmin, xmax, ymin, ymax) so that their footprints
    (circles around their bounding boxes, plus ``margin``) do not overlap. ``z`` sets the
    height of every object (default: keep it). Each object gets ``max_tries`` random spots;
    if one finds none, the whole layout starts again (``max_layouts`` times).

    Args:
        objects: Objects to place.
        rng: The generator.
        area: ``(xmin, xmax, ymin, ymax)`` in world units.
        z: Height of every object; None: keep each one's.
        margin: Extra distance between footprints.
        random_yaw: Also turn each object by a random angle about z.
        max_tries: Random spots tried per object and layout.
        max_layouts: Layouts tried.

    Raises:
        ValueError: The area is empty, an object does not fit in it, or no layout was found.
    """
    xmin, xmax, ymin, ymax = area
    if xmax <= xmin or ymax <= ymin:
        raise ValueError(f"area {area} is empty: give (xmin, xmax, ymin, ymax) with min < max")
    radii = []
    for obj in objects:
        if random_yaw:
            obj.rotation_mode = "XYZ"
            obj.rotation_euler[2] = float(rng.uniform(0.0, 2.0 * np.pi))
        if z is not None:
            obj.location.z = z
    bpy.context.view_layer.update()
    for obj in objects:
        rad = footprint_radius(obj)
        if xmax - xmin <= 2 * rad or ymax - ymin <= 2 * rad:
            raise ValueError(f"{obj.name} (footprint radius {rad:.2f}) does not fit in area {area}")
        radii.append(rad)
    for _ in range(max_layouts):
        placed: list[tuple[np.ndarray, float]] = []
        for rad in radii:
            for _ in range(max_tries):
                xy = np.array([rng.uniform(xmin + rad, xmax - rad), rng.uniform(ymin + rad, ymax - rad)])
                if all(np.linalg.norm(xy - c) >= rad + r + margin for c, r in placed):
                    placed.append((xy, rad))
                    break
            else:
                break
        if len(placed) == len(radii):
            break
    else:
        raise ValueError(
            f"could not place {len(objects)} objects without overlap in area {area} "
            f"({max_layouts} layouts tried): enlarge the area, place fewer objects or make them smaller"
        )
    for obj, (xy, _) in zip(objects, placed):
        obj.location.x, obj.location.y = float(xy[0]), float(xy[1])
    bpy.context.view_layer.update()
