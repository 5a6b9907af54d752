"""Replay items/s beside live-stream items/s, in one run, printed as a table.

    python benchmarks/replay.py [--items 256] [--instances 2] [--width 320 --height 240]

Streams the bundled cube scene live (once plain, once while recording with ``record_to=``),
then reads the recording back with ``ReplayDataset`` (sequential and through a DataLoader
with 2 workers) and with ``ray.data.read_webdataset``. Numbers depend on the machine and on
what else runs on it: compare the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Callable, Iterable


def timed(items: Iterable, count: Callable[[object], int] = lambda _: 1) -> tuple[int, float, float, int]:
    """Consume ``items``; return (items, seconds in all, seconds to the first batch, items in it).

    Rates are taken after the first batch, so worker / task start-up is shown apart.
    """
    n, n_first, first, t0 = 0, 0, None, time.perf_counter()
    for x in items:
        n += count(x)
        if first is None:
            first, n_first = time.perf_counter() - t0, n
    return n, time.perf_counter() - t0, first or 0.0, n_first


def as_list(batch: list) -> list:
    """DataLoader collate that keeps items as they are (module level: workers unpickle it)."""
    return batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--dir", default=None, help="where to record (default: a temp dir, removed after)")
    args = parser.parse_args()

    import ray
    from torch.utils.data import DataLoader

    from blender_worker.scenes import CUBE
    from blendtorch_ray import BlenderLauncher
    from blendtorch_ray.recording import ReplayDataset

    rec_dir = args.dir or tempfile.mkdtemp(prefix="btr-replay-bench-")
    rows: list[tuple[str, int, float, float, int]] = []
    inst_args = ["--width", str(args.width), "--height", str(args.height)]
    try:
        with BlenderLauncher(script=CUBE, num_instances=args.instances, instance_args=[inst_args] * args.instances) as bl:
            timed(bl.dataset(max_items=2 * args.instances))  # warm up: first renders, generators
            rows.append(("live stream", *timed(bl.dataset(max_items=args.items))))
            rows.append(("live stream + record_to=", *timed(bl.dataset(max_items=args.items, record_to=rec_dir))))

        replay = ReplayDataset(rec_dir)
        print(replay.summary)
        rows.append(("replay ReplayDataset (sequential)", *timed(replay[i] for i in range(len(replay)))))
        loader = DataLoader(replay, batch_size=16, num_workers=2, multiprocessing_context="forkserver",
                            collate_fn=as_list)
        rows.append(("replay DataLoader, 2 workers", *timed(loader, count=len)))
        ds = ray.data.read_webdataset(rec_dir)
        rows.append(("replay ray.data.read_webdataset", *timed(ds.iter_batches(batch_size=16, batch_format="numpy"),
                                                              count=lambda b: len(b["__key__"]))))
    finally:
        if args.dir is None:
            shutil.rmtree(rec_dir, ignore_errors=True)

    def rate(n: int, sec: float, first: float, n_first: int) -> float:
        if n > n_first and sec > first:
            return (n - n_first) / (sec - first)
        return n / sec

    live_rate = rate(*rows[0][1:])
    print(f"\n{args.items} items of {args.width}x{args.height} RGBA uint8 (+ corners, ids), "
          f"{args.instances} Blender instance(s), {os.cpu_count()} CPU cores")
    head = f"{'source':<36} {'items':>6} {'seconds':>8} {'first s':>8} {'items/s':>9} {'x live':>7}"
    print(head)
    print("-" * len(head))
    for name, n, sec, first, n_first in rows:
        r = rate(n, sec, first, n_first)
        print(f"{name:<36} {n:>6} {sec:>8.2f} {first:>8.2f} {r:>9.1f} {r / live_rate:>7.1f}")
    print("items/s: after the first batch arrived ('first s': start-up, e.g. DataLoader workers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
