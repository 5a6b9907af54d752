"""Time to first batch in local mode, beside its parts, each in a fresh interpreter.

    python benchmarks/startup.py [--repeat 3]

Rows: `import blendtorch_ray` -> Ray start -> 2 cube instances ready -> first DataLoader batch
of 8 in hand; `ray.init()` alone; one Blender process (bpy wheel) from start to first frame.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table  # noqa: E402

FIRST_BATCH = r"""
import time
t0 = time.perf_counter()
from blendtorch_ray import BlenderLauncher, make_loader
from blender_worker.scenes import CUBE
t_import = time.perf_counter()
with BlenderLauncher(script=CUBE, num_instances=2) as bl:
    t_ready = time.perf_counter()
    batch = next(iter(make_loader(bl.dataset(max_items=8), batch_size=8)))
    t_batch = time.perf_counter()
print("BTR", t_import - t0, t_ready - t0, t_batch - t0)
"""

RAY_ONLY = r"""
import time
t0 = time.perf_counter()
import ray
ray.init(include_dashboard=False)
print("BTR", time.perf_counter() - t0)
"""

BLENDER_ONLY = r"""
import subprocess, sys, time
from blender_worker.scenes import CUBE
from blendtorch_ray.blender import find_blender
exe = find_blender()
t0 = time.perf_counter()
out = subprocess.run(exe.command(CUBE, None, ["--btid", "0", "--btseed", "0", "--baseline", "--frames", "1"]),
                     capture_output=True, text=True, env=exe.environment()).stdout
print("BTR", time.perf_counter() - t0)
"""


def run(code: str) -> list[float]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    line = [l for l in out.stdout.splitlines() if l.startswith("BTR")]
    if not line:
        raise RuntimeError(out.stderr[-2000:])
    return [float(x) for x in line[0].split()[1:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    fb = [run(FIRST_BATCH) for _ in range(args.repeat)]
    ray_only = [run(RAY_ONLY)[0] for _ in range(args.repeat)]
    blender = [run(BLENDER_ONLY)[0] for _ in range(args.repeat)]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    total = med([f[2] for f in fb])
    rows = [
        ["import blendtorch_ray", med([f[0] for f in fb]), med([f[0] for f in fb]) / total],
        ["... + Ray start + 2 instances ready", med([f[1] for f in fb]), med([f[1] for f in fb]) / total],
        ["... + first batch of 8 (time to first batch)", total, 1.0],
        ["ray.init() alone", med(ray_only), med(ray_only) / total],
        ["one Blender: start to first frame", med(blender), med(blender) / total],
    ]
    print(table(["step (local mode, fresh interpreter)", "seconds (median)", "share of total"], rows,
                title=f"Time to first batch, median of {args.repeat}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
