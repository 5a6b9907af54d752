"""Transport ceiling: frames/s through the whole path vs plain pyzmq and a naive relay.

    python benchmarks/transport.py [--items 1500] [--repeat 3]

Measured side by side in one run, medians over --repeat runs:
  * pyzmq      : a plain PUSH/PULL pair between two processes over ipc (copy=False),
  * full path  : Blender (bpy wheel) publishes a prepared 640x480x4 uint8 frame + small dict
                 -> ZeroMQ hop -> actor -> one ray.put per batch of 8 -> RemoteIterableDataset
                 -> DataLoader batches of 8,
  * ring       : the full path with the same-node shared-memory ring (the default locally);
                 "full path" rows without it use the object store as remote consumers do,
  * naive relay: the same path with one object-store put per frame (batch_size=1).
Compare the ratios, not the absolute numbers: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_rate, table  # noqa: E402

SCENE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenes", "publish_only.py")


def _zmq_sender(address: str, n: int, shape: tuple) -> None:
    import zmq

    frame = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 4)
    s.connect(address)
    for i in range(n):
        s.send_multipart([b"{}", frame], copy=False)
    s.close(linger=-1)
    ctx.term()


def zmq_pair(n: int, shape: tuple) -> int:
    import tempfile

    import zmq

    d = tempfile.mkdtemp(prefix="btr-bench-")
    address = f"ipc://{d}/s"
    ctx = zmq.Context()
    r = ctx.socket(zmq.PULL)
    r.setsockopt(zmq.RCVHWM, 4)
    r.bind(address)
    p = mp.get_context("spawn").Process(target=_zmq_sender, args=(address, n, shape))
    p.start()
    got = 0
    for _ in range(n):
        frames = r.recv_multipart(copy=False)
        got += 1
    p.join()
    r.close()
    ctx.term()
    return got


def through_pipeline(n: int, batch_size: int, shape: tuple, loader_batch: int = 8, ring: bool = True) -> int:
    from blendtorch_ray import BlenderLauncher, make_loader

    h, w, _ = shape
    with BlenderLauncher(
        script=SCENE, batch_size=batch_size, instance_args=[["--width", str(w), "--height", str(h)]],
        shared_memory_ring=ring,
    ) as bl:
        list(bl.dataset(max_items=16))  # warm up
        t0 = time.perf_counter()
        got = 0
        for batch in make_loader(bl.dataset(max_items=n), batch_size=loader_batch):
            got += len(batch["image"])
        rate = got / (time.perf_counter() - t0)
    return got, rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()
    shape = (args.height, args.width, 4)

    from blendtorch_ray.runtime import ensure_ray

    ensure_ray()
    zmq_rate, zr = median_rate(lambda: zmq_pair(args.items, shape), args.repeat)
    full = [through_pipeline(args.items, 8, shape, ring=False)[1] for _ in range(args.repeat)]
    ringed = [through_pipeline(args.items, 8, shape, ring=True)[1] for _ in range(args.repeat)]
    naive_n = max(200, args.items // 4)
    naive = [through_pipeline(naive_n, 1, shape, ring=False)[1] for _ in range(args.repeat)]
    full_rate, naive_rate, ring_rate = float(np.median(full)), float(np.median(naive)), float(np.median(ringed))
    mb = np.prod(shape) / 2**20
    print(table(
        ["path", "frames/s (median)", "MiB/s", "runs", "vs pyzmq", "vs naive"],
        [
            ["plain pyzmq PUSH/PULL, ipc", zmq_rate, zmq_rate * mb, len(zr), 1.0, zmq_rate / naive_rate],
            ["full path, object store (batch 8)", full_rate, full_rate * mb, len(full), full_rate / zmq_rate, full_rate / naive_rate],
            ["full path, same-node ring (default)", ring_rate, ring_rate * mb, len(ringed), ring_rate / zmq_rate, ring_rate / naive_rate],
            ["naive relay (1 put per frame)", naive_rate, naive_rate * mb, len(naive), naive_rate / zmq_rate, 1.0],
        ],
        title=f"Transport ceiling, {args.width}x{args.height}x4 uint8, {args.items} frames, DataLoader batch 8",
    ))
    print(f"\ntargets: full/pyzmq >= 0.50 -> ring {ring_rate / zmq_rate:.2f} (object store {full_rate / zmq_rate:.2f}); "
          f"full/naive >= 10 -> ring {ring_rate / naive_rate:.1f} (object store {full_rate / naive_rate:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
