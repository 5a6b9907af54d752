"""Convert streamed or recorded items to a BOP scene (6D object pose ground truth).

Writes the scene layout of the BOP datasets (https://bop.felk.cvut.cz, format description in
the BOP toolkit's ``docs/bop_datasets_format.md``)::

    <directory>/<scene_id:06d>/scene_camera.json   per image: cam_K, depth_scale, cam_R_w2c, cam_t_w2c
    <directory>/<scene_id:06d>/scene_gt.json       per image: [{obj_id, cam_R_m2c, cam_t_m2c}, ...]
    <directory>/<scene_id:06d>/scene_gt_info.json  per image: [{bbox_obj, bbox_visib, px_count_all,
                                                   px_count_valid, px_count_visib, visib_fract}, ...]
    <directory>/<scene_id:06d>/rgb/<im_id:06d>.png
    <directory>/<scene_id:06d>/depth/<im_id:06d>.png        uint16, depth in mm = value * depth_scale
    <directory>/<scene_id:06d>/mask/<im_id:06d>_<gt:06d>.png        full silhouette (255 = object)
    <directory>/<scene_id:06d>/mask_visib/<im_id:06d>_<gt:06d>.png  visible part

Units: BOP uses millimetres for translations and depth; ``scene_unit_mm`` (1000: scene units
are metres) converts. Rotations are row-major 3x3 lists, boxes ``[x, y, width, height]`` in
pixels (``[-1, -1, -1, -1]`` when empty).

Item keys (publish them from Blender; see ``Camera.object_poses`` and ``id_render.amodal_masks``):

=============  ===============  ==========================================================
key            shape            meaning
=============  ===============  ==========================================================
rgba / image   (H, W, 3|4)      uint8 picture (``color="srgb8"``)
depth          (H, W) float     z-depth in scene units (the 'depth' pass; inf = nothing)
instance       (H, W) int       the 'instance' pass (visible masks)
K              (3, 3)           ``Camera.K`` (OpenCV, pixel centres at integer coordinates)
extrinsics     (4, 4)           optional ``Camera.extrinsics_opencv()`` (world to camera)
pose_ids       (N,) int         instance id of each object (``Camera.object_poses``)
pose_obj_ids   (N,) int         BOP obj_id of each object
cam_R_m2c      (N, 3, 3)        model-to-camera rotations, OpenCV axes
cam_t_m2c      (N, 3)           model-to-camera translations, scene units
amodal_masks   (N, H, W) bool   full silhouettes (``id_render.amodal_masks``)
=============  ===============  ==========================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np

POSE_KEYS = ("pose_ids", "pose_obj_ids", "cam_R_m2c", "cam_t_m2c")
REQUIRED = ("depth", "instance", "K", *POSE_KEYS, "amodal_masks")
UINT16_MAX = 65535


@dataclass
class BopOptions:
    """How items become a BOP scene."""

    scene_id: int = 0
    """Name of the scene folder (``<scene_id:06d>``)."""
    scene_unit_mm: float = 1000.0
    """Millimetres per scene unit (1000: the Blender scene is in metres)."""
    depth_scale: float = 0.1
    """mm per depth-image unit: 0.1 stores depth to 0.1 mm, up to 6.5 m; depth beyond that
    (and ``inf``) is written as 0 (invalid, as in BOP)."""
    image_key: Optional[str] = None
    """Item key of the picture; default: 'rgba', else 'image'."""


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [-1, -1, -1, -1]
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _check(item: Mapping[str, Any], index: int) -> None:
    missing = [k for k in REQUIRED if k not in item]
    if missing:
        raise KeyError(
            f"item {index} lacks {missing} for BOP export (keys: {sorted(item)}); publish "
            "cam.object_poses(objs), amodal_masks=id_render.amodal_masks(objs, path), K=cam.K with "
            "Renderer.render(passes=('rgba', 'depth', 'instance'))"
        )
    n = len(np.asarray(item["pose_ids"]))
    R, t = np.asarray(item["cam_R_m2c"]), np.asarray(item["cam_t_m2c"])
    masks, inst = np.asarray(item["amodal_masks"]), np.asarray(item["instance"])
    if R.shape != (n, 3, 3) or t.shape != (n, 3) or len(np.asarray(item["pose_obj_ids"])) != n:
        raise ValueError(f"item {index}: poses must be (N,) ids, (N, 3, 3) R and (N, 3) t; got {R.shape}, {t.shape}")
    if masks.shape != (n, *inst.shape):
        raise ValueError(f"item {index}: amodal_masks must be (N, H, W) = {(n, *inst.shape)}, got {masks.shape}")


def export_bop(items: Iterable[Mapping[str, Any]], directory: str, options: Optional[BopOptions] = None) -> str:
    """Write a BOP scene (layout in the module docstring); items are consumed once.

    Args:
        items: Item dicts with the keys of the table above (a live dataset, a list, a
            ``ReplayDataset``).
        directory: The split folder (e.g. ``out/train_pbr``); created if missing.
        options: Scene id, units, depth scale; None: defaults.

    Returns:
        The scene folder ``directory/<scene_id:06d>``.

    Raises:
        KeyError: An item has no poses (or no depth, instance mask, K, amodal masks,
            picture): the message says what to publish.
        ValueError: Arrays of the wrong shape, or a picture that is not uint8.

    Example:
        In Blender::

            out = renderer.render(passes=("rgba", "depth", "instance"))
            pub.publish(**out, **cam.object_poses(objs), K=cam.K, extrinsics=cam.extrinsics_opencv(),
                        amodal_masks=id_render.amodal_masks(objs, "/dev/shm/ids.exr"))

        and on the driver ``export_bop(bl.dataset(max_items=100), "bop/train_pbr")``.
    """
    from PIL import Image

    opts = options or BopOptions()
    root = os.path.join(directory, f"{opts.scene_id:06d}")
    for sub in ("rgb", "depth", "mask", "mask_visib"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    cams: dict[str, dict] = {}
    gts: dict[str, list] = {}
    infos: dict[str, list] = {}
    mm = opts.scene_unit_mm
    for im_id, item in enumerate(items):
        _check(item, im_id)
        img = None
        for k in ([opts.image_key] if opts.image_key else ["rgba", "image"]):
            if k in item:
                img = np.asarray(item[k])
                break
        if img is None:
            raise KeyError(f"item {im_id} has no picture under 'rgba' or 'image' (keys: {sorted(item)})")
        if img.dtype != np.uint8:
            raise ValueError(f"item {im_id}: the picture is {img.dtype}; render with color='srgb8'")
        name = f"{im_id:06d}"
        Image.fromarray(np.ascontiguousarray(img[..., :3])).save(os.path.join(root, "rgb", name + ".png"))
        depth_mm = np.asarray(item["depth"], dtype=np.float64) * mm
        d = np.rint(depth_mm / opts.depth_scale)
        d = np.where(np.isfinite(d) & (d > 0) & (d <= UINT16_MAX), d, 0).astype(np.uint16)
        Image.fromarray(d).save(os.path.join(root, "depth", name + ".png"))
        cam = {"cam_K": np.asarray(item["K"], dtype=float).reshape(-1).tolist(), "depth_scale": opts.depth_scale}
        if "extrinsics" in item:
            ext = np.asarray(item["extrinsics"], dtype=float)
            cam["cam_R_w2c"] = ext[:3, :3].reshape(-1).tolist()
            cam["cam_t_w2c"] = (ext[:3, 3] * mm).tolist()
        cams[str(im_id)] = cam
        inst = np.asarray(item["instance"])
        gt, info = [], []
        for g, (pid, oid, R, t, full) in enumerate(zip(item["pose_ids"], item["pose_obj_ids"], item["cam_R_m2c"],
                                                        item["cam_t_m2c"], item["amodal_masks"])):
            full = np.asarray(full, dtype=bool)
            visib = (inst == int(pid)) & full
            gt.append({"cam_R_m2c": np.asarray(R, dtype=float).reshape(-1).tolist(),
                       "cam_t_m2c": (np.asarray(t, dtype=float) * mm).tolist(), "obj_id": int(oid)})
            n_all, n_visib = int(full.sum()), int(visib.sum())
            info.append({"bbox_obj": _bbox(full), "bbox_visib": _bbox(visib), "px_count_all": n_all,
                         "px_count_valid": int((full & (d > 0)).sum()), "px_count_visib": n_visib,
                         "visib_fract": n_visib / n_all if n_all else 0.0})
            mask_name = f"{name}_{g:06d}.png"
            Image.fromarray(full.astype(np.uint8) * 255).save(os.path.join(root, "mask", mask_name))
            Image.fromarray(visib.astype(np.uint8) * 255).save(os.path.join(root, "mask_visib", mask_name))
        gts[str(im_id)], infos[str(im_id)] = gt, info
    for fname, data in (("scene_camera.json", cams), ("scene_gt.json", gts), ("scene_gt_info.json", infos)):
        with open(os.path.join(root, fname), "w") as f:
            json.dump(data, f, indent=1)
    return root
