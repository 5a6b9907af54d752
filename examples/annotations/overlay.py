"""Stream annotated frames from Blender and draw them for a person to check.

    python examples/annotations/overlay.py --items 4 --out overlay.png [--coco coco_out/]

Each row of the PNG: the picture with instance masks tinted, mask boxes and the 3D-box corner
keypoints (filled dot = visible, ring = hidden by another object), then the depth map.
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
SCENE = os.path.join(HERE, "scene.py")


def palette(n: int, seed: int = 3) -> np.ndarray:
    """n distinct bright RGB colours (uint8), index 0 unused (background)."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.25, 1.0, size=(max(n, 1) + 1, 3)) * 255).astype(np.uint8)


def draw_overlay(item: Mapping[str, np.ndarray], alpha: float = 0.45) -> Image.Image:
    """Picture with tinted masks, boxes and keypoints, next to the depth map."""
    rgb = np.asarray(item["rgba"])[..., :3].astype(np.float32)
    inst = np.asarray(item["instance"])
    objects = np.where(np.asarray(item["semantic"]) > 0, inst, 0)
    colors = palette(int(inst.max()))
    tinted = np.where(objects[..., None] > 0, (1 - alpha) * rgb + alpha * colors[objects], rgb)
    img = Image.fromarray(tinted.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for box, i in zip(item["boxes"], item["box_ids"]):
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=tuple(int(c) for c in colors[i]), width=1)
    for kps, i in zip(item["keypoints"], item["keypoint_ids"]):
        for x, y, v in kps:
            if v == 0:
                continue
            r = 2
            shape = [x - r, y - r, x + r, y + r]
            if v == 2:
                draw.ellipse(shape, fill=tuple(int(c) for c in colors[i]), outline=(0, 0, 0))
            else:
                draw.ellipse(shape, outline=tuple(int(c) for c in colors[i]))
    depth = np.asarray(item["depth"], dtype=np.float64)
    finite = np.isfinite(depth)
    d = np.zeros_like(depth)
    if finite.any():
        lo, hi = depth[finite].min(), depth[finite].max()
        d[finite] = 1.0 - (depth[finite] - lo) / max(hi - lo, 1e-9)
    depth_img = Image.fromarray((d * 255).astype(np.uint8)).convert("RGB")
    row = Image.new("RGB", (img.width * 2, img.height), "white")
    row.paste(img, (0, 0))
    row.paste(depth_img, (img.width, 0))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--engine", default="workbench", help="workbench, cycles or eevee")
    parser.add_argument("--out", default="overlay.png")
    parser.add_argument("--coco", default=None, help="also export the items as COCO to this directory")
    args = parser.parse_args()

    from blendtorch_ray import BlenderLauncher

    size = ["--width", str(args.width), "--height", str(args.height), "--engine", args.engine]
    with BlenderLauncher(script=SCENE, num_instances=args.instances, instance_args=[size] * args.instances) as launcher:
        items = list(launcher.dataset(max_items=args.items, timeout=600))
    rows = [draw_overlay(item) for item in items]
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(items)} frames)")
    if args.coco:
        from blendtorch_ray.coco import CocoOptions, export_coco

        categories = {1: "cube", 2: "sphere", 3: "cylinder", 4: "cone", 5: "torus"}
        names = tuple(f"corner{i}" for i in range(8))
        path = export_coco(items, args.coco, CocoOptions(categories=categories, keypoint_names=names))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
