"""Time to first batch in local mode, beside its parts, each in a fresh interpreter.

    python benchmarks/startup.py [--repeat 3]

Rows: `import blendtorch_ray` -> `start()` returned -> first DataLoader batch of 8 in hand ->
the group up on Ray (every actor ready), with the default ``read_before_ray=True`` (the first
batch is read from the prestarted Blenders while Ray starts: blendtorch_ray/early_read.py) and
with ``read_before_ray=False`` (``start()`` waits for Ray and the actors); ``ray.init()``
alone, as the launcher calls it, in a fresh interpreter with nothing else running; one Blender
process (bpy wheel) from start to first frame.
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
with BlenderLauncher(script=CUBE, num_instances=2, read_before_ray=READ_EARLY) as bl:
    t_ready = time.perf_counter()
    batch = next(iter(make_loader(bl.dataset(max_items=8), batch_size=8)))
    t_batch = time.perf_counter()
    bl.pids()  # waits for the group to be up
    t_up = time.perf_counter()
print("BTR", t_import - t0, t_ready - t0, t_batch - t0, t_up - t0)
"""

RAY_ONLY = r"""
import time
t0 = time.perf_counter()
import ray
ray.init(address="local", include_dashboard=False)
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
    early, late, ray_only, blender = [], [], [], []
    for _ in range(args.repeat):  # interleaved, so that a noisy minute hits every row alike
        early.append(run("READ_EARLY = True\n" + FIRST_BATCH))
        late.append(run("READ_EARLY = False\n" + FIRST_BATCH))
        ray_only.append(run(RAY_ONLY)[0])
        blender.append(run(BLENDER_ONLY)[0])
    med = statistics.median
    ray_med = med(ray_only)
    rows = []
    for label, runs in (("read_before_ray=True (default)", early), ("read_before_ray=False", late)):
        for i, step in enumerate(["import blendtorch_ray", "start() returned", "first batch of 8 in hand",
                                  "group up on Ray (actors ready)"]):
            xs = [r[i] for r in runs]
            rows.append([f"{label}: {step}", med(xs), max(xs) - min(xs), med(xs) / ray_med])
    rows.append(["ray.init() alone", ray_med, max(ray_only) - min(ray_only), 1.0])
    rows.append(["one Blender: start to first frame", med(blender), max(blender) - min(blender), med(blender) / ray_med])
    load = os.getloadavg()[0]
    print(table(["step (local mode, fresh interpreter, 2 cube instances)", "seconds (median)", "spread", "vs ray.init()"],
                rows, title=f"Time to first batch, median of {args.repeat}, load average {load:.2f} at the end"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
