"""Memory in steady state and with a consumer that stops reading.

    python benchmarks/memory.py [--pause 30] [--instances 2]

Streams the cube scene (640x480), then stops reading for --pause seconds while sampling the
RSS of the driver, the actors and the Blender processes once a second, then resumes. With
bounded queues memory stays flat during the pause and the stream resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import psutil
import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table  # noqa: E402

MiB = 2**20


def sample(bl) -> tuple[float, float, float, int]:
    eps = ray.get([a.endpoints.remote() for a in bl.actors])
    rss = lambda pid: psutil.Process(pid).memory_info().rss if psutil.pid_exists(pid) else 0  # noqa: E731
    items = sum(h.items for h in bl.health())
    return (psutil.Process().memory_info().rss / MiB, sum(rss(e["actor_pid"]) for e in eps) / MiB,
            sum(rss(e["blender_pid"]) for e in eps) / MiB, items)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pause", type=float, default=30.0)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--items", type=int, default=200)
    args = ap.parse_args()
    from blender_worker.scenes import CUBE
    from blendtorch_ray import BlenderLauncher

    with BlenderLauncher(script=CUBE, num_instances=args.instances) as bl:
        it = iter(bl.dataset(timeout=120))
        for _ in range(args.items):
            next(it)
        steady = sample(bl)
        samples = []
        t_end = time.monotonic() + args.pause
        while time.monotonic() < t_end:
            time.sleep(1.0)
            samples.append(sample(bl))
        for _ in range(args.items):
            next(it)
        after = sample(bl)
    peak = [max(s[i] for s in samples) for i in range(3)]
    rows = [
        ["steady state (after %d items)" % args.items, *steady[:3], steady[3]],
        ["consumer paused: first second", *samples[0][:3], samples[0][3]],
        [f"consumer paused: after {args.pause:.0f}s", *samples[-1][:3], samples[-1][3]],
        ["consumer paused: peak", *peak, samples[-1][3]],
        ["resumed (+%d items)" % args.items, *after[:3], after[3]],
    ]
    print(table(["phase", "driver MiB", f"actors MiB ({args.instances})", f"Blenders MiB ({args.instances})",
                 "items received by actors"], rows, title="Memory (RSS) with a paused consumer, cube 640x480"))
    grew = samples[-1][3] - samples[0][3]
    print(f"\nitems the actors received during the {args.pause:.0f}s pause after its first second: {grew} "
          "(bounded by the high-water marks and max_batches_in_flight)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
