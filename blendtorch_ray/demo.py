"""``blendtorch-ray demo``: stream the bundled cube scene and show what arrived."""

from __future__ import annotations

import time
from collections import Counter
from typing import Optional

import numpy as np


def contact_sheet(images: list[np.ndarray], path: str, columns: int = 4, thumb_width: int = 240) -> None:
    """Write a grid of RGB(A) uint8 images as a PNG (`blendtorch_ray.preview.show`)."""
    from blendtorch_ray.preview import show

    show(images, columns=columns, max_items=max(1, len(images)), thumb_width=thumb_width).save(path)


def run_demo(
    instances: int = 2,
    items: int = 64,
    batch_size: int = 8,
    resolution: tuple[int, int] = (640, 480),
    blender: Optional[str] = None,
    out: str = "demo_contact_sheet.png",
) -> int:
    from tqdm.auto import tqdm

    from blender_worker.scenes import CUBE
    from blendtorch_ray import BlenderLauncher, make_loader
    from blendtorch_ray.health import health_table

    t0 = time.perf_counter()
    width, height = resolution
    print(f"starting Ray (local mode) and {instances} Blender instance(s) ...", flush=True)
    with BlenderLauncher(
        script=CUBE,
        num_instances=instances,
        instance_args=[["--width", str(width), "--height", str(height)]] * instances,
        blender=blender,
    ) as launcher:
        t_ready = time.perf_counter()
        up = "" if launcher._early is None else "; Ray comes up in the background, the first batches are read meanwhile"
        print(f"Blender ready after {t_ready - t0:.1f}s (group {launcher.name!r}{up})")
        loader = make_loader(launcher.dataset(max_items=items), batch_size=batch_size)
        per_instance: Counter = Counter()
        samples: list[np.ndarray] = []
        t_first, first = None, 0
        with tqdm(total=items, unit="img", desc="receiving") as bar:
            for batch in loader:
                if t_first is None:
                    t_first, first = time.perf_counter(), len(batch["btid"])
                per_instance.update(batch["btid"].tolist())
                if len(samples) < 8:
                    samples.extend(batch["image"][: 8 - len(samples)].numpy())
                bar.update(len(batch["btid"]))
        t_end = time.perf_counter()
        received = sum(per_instance.values())
        print(f"\nreceived {received} items: image {tuple(batch['image'].shape[1:])} {batch['image'].dtype}, "
              f"keys {sorted(batch.keys())}")
        rate = (received - first) / max(t_end - t_first, 1e-9)
        print(f"time to first batch {t_first - t0:.1f}s; rate after it {rate:.1f} frames/s")
        for btid in sorted(per_instance):
            print(f"  instance {btid}: {per_instance[btid]} items")
        print(health_table(launcher.health()))
    contact_sheet(samples, out)
    print(f"contact sheet of {len(samples)} frames: {out}")
    return 0
