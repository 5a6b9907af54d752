"""Convert streamed or recorded items to COCO (boxes, RLE instance masks, keypoints).

Works on any iterable of item dicts (a live ``launcher.dataset()``, a list, a recording
reader). An item needs an instance mask and may carry more:

==============  ==================  =======================================================
key             shape               meaning
==============  ==================  =======================================================
instance        (H, W) int          object ids per pixel, 0 = background (required)
rgba / image    (H, W, 3|4) uint8   the picture (needed only to write PNG files)
semantic        (H, W) int          class per pixel; an object's category is its most
                                    common class, class 0 = background: such objects are
                                    left out (default: category 1 for every object)
keypoints       (N, K, 3)           COCO keypoints (x, y, v) of N objects, in the
                                    continuous pixel coordinates of ``Camera.keypoints``
keypoint_ids    (N,) int            the instance id of each row of ``keypoints``
btid, seq       int                 name the image file ``<btid>_<seq>.png`` if present
==============  ==================  =======================================================

Masks are stored as compressed RLE from ``pycocotools`` (the ``coco`` extra), so
``pycocotools.coco.COCO`` and torchvision's ``CocoDetection`` read the result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import numpy as np


def _mask_api():
    try:
        from pycocotools import mask
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "COCO export needs pycocotools: pip install 'blendtorch-ray[coco]'"
        ) from exc
    return mask


@dataclass
class CocoOptions:
    """How items become COCO records."""

    categories: Mapping[int, str] = field(default_factory=dict)
    """Category id -> name; ids without a name become ``class_<id>``."""
    keypoint_names: tuple[str, ...] = ()
    """Names of the K keypoints (default ``kp0 .. kp<K-1>``)."""
    min_area: int = 1
    """Objects with fewer visible pixels are left out."""
    image_key: Optional[str] = None
    """Item key of the picture; default: 'rgba', else 'image'."""


def _image_of(item: Mapping[str, Any], key: Optional[str]) -> Optional[np.ndarray]:
    for k in ([key] if key else ["rgba", "image"]):
        if k in item:
            return np.asarray(item[k])
    return None


def _file_name(item: Mapping[str, Any], index: int) -> str:
    if "btid" in item and "seq" in item:
        return f"{int(item['btid']):03d}_{int(item['seq']):06d}.png"
    return f"{index:06d}.png"


def to_coco(items: Iterable[Mapping[str, Any]], options: Optional[CocoOptions] = None) -> dict:
    """Build a COCO dataset dict (``images``, ``annotations``, ``categories``) from items.

    Args:
        items: Item dicts with the keys of the table above (``instance`` required).
        options: Categories, keypoint names, minimum area; None: defaults.

    Returns:
        The COCO dict (``info``, ``images``, ``annotations``, ``categories``), ready for
        ``json.dump``; one annotation per visible object with RLE mask, box and area.

    Raises:
        KeyError: An item has no ``instance`` mask.
        ValueError: A mask or the keypoints have the wrong shape.
        ImportError: pycocotools is not installed (the ``coco`` extra).
    """
    mask_api = _mask_api()
    opts = options or CocoOptions()
    images: list[dict] = []
    annotations: list[dict] = []
    used_categories: set[int] = set()
    num_kp = 0
    for index, item in enumerate(items):
        if "instance" not in item:
            raise KeyError(
                f"item {index} has no 'instance' mask (keys: {sorted(item)}); "
                "render it with Renderer.render(passes=[..., 'instance']) and publish it"
            )
        inst = np.asarray(item["instance"])
        if inst.ndim != 2:
            raise ValueError(f"item {index}: 'instance' must be (H, W), got shape {inst.shape}")
        h, w = inst.shape
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": _file_name(item, index), "height": int(h), "width": int(w)})
        semantic = np.asarray(item["semantic"]) if "semantic" in item else None
        kps: dict[int, np.ndarray] = {}
        if "keypoints" in item:
            kp = np.asarray(item["keypoints"], dtype=np.float64)
            ids = np.asarray(item.get("keypoint_ids", np.arange(1, len(kp) + 1)))
            if kp.ndim != 3 or kp.shape[-1] != 3 or len(ids) != len(kp):
                raise ValueError(
                    f"item {index}: 'keypoints' must be (N, K, 3) with N matching 'keypoint_ids', "
                    f"got {kp.shape} and {ids.shape}"
                )
            kps = {int(i): k for i, k in zip(ids, kp)}
            num_kp = max(num_kp, kp.shape[1])
        for obj_id in np.unique(inst):
            if obj_id == 0:
                continue
            mask = inst == obj_id
            area = int(mask.sum())
            if area < opts.min_area:
                continue
            rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
            bbox = [float(v) for v in mask_api.toBbox(rle)]
            rle["counts"] = rle["counts"].decode("ascii")
            cat = 1
            if semantic is not None:
                classes, counts = np.unique(semantic[mask], return_counts=True)
                cat = int(classes[np.argmax(counts)])
                if cat == 0:
                    continue
            used_categories.add(cat)
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat,
                "instance_id": int(obj_id),
                "segmentation": rle,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
            }
            if int(obj_id) in kps:
                k = kps[int(obj_id)]
                k = np.where(k[:, 2:3] > 0, k, 0.0)
                ann["keypoints"] = [float(v) if j % 3 != 2 else int(v) for j, v in enumerate(k.reshape(-1))]
                ann["num_keypoints"] = int((k[:, 2] > 0).sum())
            annotations.append(ann)
    names = tuple(opts.keypoint_names) or tuple(f"kp{i}" for i in range(num_kp))
    categories = []
    for cat in sorted(used_categories | set(opts.categories)):
        entry = {"id": cat, "name": opts.categories.get(cat, f"class_{cat}"), "supercategory": "object"}
        if num_kp:
            entry["keypoints"], entry["skeleton"] = list(names), []
        categories.append(entry)
    return {
        "info": {"description": "blendtorch-ray synthetic data"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def export_coco(
    items: Iterable[Mapping[str, Any]], directory: str, options: Optional[CocoOptions] = None
) -> str:
    """Write ``directory/images/*.png`` and ``directory/annotations.json``.

    Items are consumed once (a live stream works); each picture is written as it passes.

    Args:
        items: Item dicts with a picture (``rgba``/``image`` uint8) and an instance mask.
        directory: Created if missing.
        options: As for `to_coco`.

    Returns:
        The path of ``annotations.json``.

    Raises:
        KeyError: An item has no picture or no instance mask.
        ValueError: A picture is not uint8 (render with ``color="srgb8"``).

    Example:
        Export 100 streamed frames and read them back with pycocotools::

            path = export_coco(bl.dataset(max_items=100), "coco-out",
                               CocoOptions(categories={1: "cube"}))
            coco = pycocotools.coco.COCO(path)
    """
    from PIL import Image

    img_dir = os.path.join(directory, "images")
    os.makedirs(img_dir, exist_ok=True)
    opts = options or CocoOptions()

    def write_images():
        for index, item in enumerate(items):
            img = _image_of(item, opts.image_key)
            if img is None:
                raise KeyError(f"item {index} has no picture under 'rgba' or 'image' (keys: {sorted(item)})")
            if img.dtype != np.uint8:
                raise ValueError(
                    f"item {index}: the picture is {img.dtype}; export display images "
                    "(render with color='srgb8') as PNG"
                )
            Image.fromarray(np.ascontiguousarray(img)).save(os.path.join(img_dir, _file_name(item, index)))
            yield item

    data = to_coco(write_images(), opts)
    path = os.path.join(directory, "annotations.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path
