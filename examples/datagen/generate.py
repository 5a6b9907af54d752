"""Driver side of the datagen example: stream a scene from N Blender instances.

    python examples/datagen/generate.py --scene cube --instances 2 --items 64
    python examples/datagen/generate.py --scene falling_cubes --items 8

Prints per-instance counts and writes a contact sheet PNG with the published keypoints drawn.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

from blendtorch_ray import BlenderLauncher, make_loader

HERE = os.path.dirname(os.path.abspath(__file__))


def draw_points(image: np.ndarray, xy: np.ndarray) -> Image.Image:
    im = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    d = ImageDraw.Draw(im)
    for x, y in xy:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], outline=(255, 40, 40), width=2)
    return im


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", choices=["cube", "falling_cubes"], default="cube")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--out", default="datagen.png")
    args = ap.parse_args()
    script = os.path.join(HERE, f"{args.scene}.blend.py")
    t0 = time.perf_counter()
    with BlenderLauncher(script=script, num_instances=args.instances, seed=7) as bl:
        counts: Counter = Counter()
        tiles = []
        for batch in make_loader(bl.dataset(max_items=args.items, timeout=300), batch_size=4):
            counts.update(batch["btid"].tolist())
            for img, xy in zip(batch["image"].numpy(), batch["xy"].numpy()):
                if len(tiles) < 8:
                    tiles.append(draw_points(img, xy))
    dt = time.perf_counter() - t0
    print(f"{sum(counts.values())} items in {dt:.1f}s from instances {dict(sorted(counts.items()))}")
    w, h = tiles[0].size
    sheet = Image.new("RGB", (4 * w, ((len(tiles) + 3) // 4) * h), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % 4) * w, (i // 4) * h))
    sheet.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
