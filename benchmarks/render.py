"""Render efficiency: delivered frames/s of the bundled cube scene vs the same Blender
instances rendering the same frames with no publishing and no Ray.

    python benchmarks/render.py [--frames 160] [--repeat 3] [--width 640 --height 480]

Prints the original blendtorch table layout (instances, s/batch of 8, s/image) beside the
baseline measured in the same run; target: delivered >= 0.9x baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table  # noqa: E402


def baseline(instances: int, frames: int, w: int, h: int) -> float:
    """Aggregate frames/s of ``instances`` plain Blender processes rendering in parallel."""
    from blender_worker.scenes import CUBE
    from blendtorch_ray.blender import find_blender

    exe = find_blender()
    procs = []
    for b in range(instances):
        args = ["--btid", str(b), "--btseed", str(b), "--baseline", "--frames", str(frames), "--width", str(w), "--height", str(h)]
        procs.append(subprocess.Popen(exe.command(CUBE, None, args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, env=exe.environment()))
    secs = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        line = next(l for l in out.splitlines() if l.startswith("BTR_BASELINE"))
        secs.append(float(line.split()[2]))
    return instances * frames / max(secs)


def streamed(instances: int, frames: int, w: int, h: int) -> float:
    from blender_worker.scenes import CUBE
    from blendtorch_ray import BlenderLauncher, make_loader

    with BlenderLauncher(script=CUBE, num_instances=instances,
                         instance_args=[["--width", str(w), "--height", str(h)]] * instances) as bl:
        list(bl.dataset(max_items=8 * instances))  # warm up every instance
        t0 = time.perf_counter()
        n = sum(len(b["image"]) for b in make_loader(bl.dataset(max_items=frames * instances), batch_size=8))
        return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=160, help="frames per instance")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="interleaved baseline/stream runs per row (medians)")
    args = ap.parse_args()
    from blendtorch_ray.runtime import ensure_ray

    ensure_ray()
    rows = []
    for n in args.instances:
        bases, lives = [], []
        for _ in range(args.repeat):  # interleaved, so that drifts in machine load hit both
            bases.append(baseline(n, args.frames, args.width, args.height))
            lives.append(streamed(n, args.frames, args.width, args.height))
        base, live = statistics.median(bases), statistics.median(lives)
        rows.append([n, 8 / live, 1 / live, 1 / base, live, base, live / base,
                     f"{min(l / b for l, b in zip(lives, bases)):.2f}-{max(l / b for l, b in zip(lives, bases)):.2f}"])
    print(table(["instances", "s/batch (8)", "s/image", "baseline s/image", "delivered img/s", "baseline img/s",
                 "ratio (medians)", "ratio per run"],
                rows, title=f"Cube scene, Workbench AA off, {args.width}x{args.height}, {args.frames} frames per "
                            f"instance, median of {args.repeat} interleaved runs"))
    print("\ntarget: ratio >= 0.9 for every row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
