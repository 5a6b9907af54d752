"""Cross-node path: frames/s from a Blender on one node to a consumer on another.

    python benchmarks/cross_node.py [--items 1500] [--repeat 3] [--variants default,...]

Measured side by side in one run; each round measures every row once, in this order, and
the table shows medians and the spread over --repeat rounds:
  * pyzmq tcp  : a plain PUSH/PULL pair between two processes over tcp loopback
                 (copy=False, the same 640x480x4 uint8 frame and HWM 4), warmed up, measured
                 while no Ray runs (its best conditions: Ray's processes take CPU from it);
  * same node  : ``ray.cluster_utils.Cluster`` with the publish-only Blender on the head node
                 next to the consumer: the same-node path (shared-memory ring);
  * cross node : the same cluster, the Blender's actor placed on a second node (its own
                 raylet and object store) by a custom resource, the consumer on the head node:
                 every batch crosses between the nodes over loopback tcp, by the direct tcp
                 link (the default, blendtorch_ray/tcp_link.py) or between the two object
                 stores; one row per variant (--variants), see VARIANTS.
Every Ray row: Blender (bpy wheel) publishes a prepared frame + small dict -> shared-memory
slot -> actor -> one object per batch -> RemoteIterableDataset -> DataLoader batches of 8
(collate copies the frames into one tensor), clock from the first batch after a warm-up.
Compare the ratios, not the absolute numbers: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table, zmq_sender  # noqa: E402

SCENE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenes", "publish_only.py")
STORE_BYTES = 1 << 30
"""Object store per simulated node (the default, 30% of RAM per node, is far more than a
stream of batches needs, and every simulated node would claim it)."""

INLINE = {"RAY_max_direct_call_object_size": str(16 << 20), "RAY_task_rpc_inlined_bytes_limit": str(64 << 20)}
"""Ray settings under which a batch travels inside the RPC that reports it to the consumer
(up to 16 MiB per object) instead of through both nodes' object stores and raylets."""
OBJECT_STORE = {"cross_node": "object_store"}
"""Launcher options of the rows through Ray's object stores."""
VARIANTS: dict = {
    # name: (what the row is, launcher options, environment of the cluster's processes).
    # Tried and dropped (see docs/scaling.md): packing each batch's arrays into one block per
    # key before the object store (0.70x of the plain batch with Ray defaults, +8% inlined).
    "tcp": ("direct tcp link, actor -> consumer (the default: StreamConfig.cross_node='tcp')", {}, {}),
    "tcp16": ("direct tcp link, batch_size=16", {"batch_size": 16}, {}),
    "default": ("object store, Ray defaults (object stores and raylets)", OBJECT_STORE, {}),
    "inline": ("object store, batches inlined in the RPC (INLINE)", OBJECT_STORE, INLINE),
    "inline4": ("object store, inlined, batch_size=4", {**OBJECT_STORE, "batch_size": 4}, INLINE),
    "inline16": ("object store, inlined, batch_size=16", {**OBJECT_STORE, "batch_size": 16},
                 {**INLINE, "RAY_max_direct_call_object_size": str(32 << 20)}),
    "batch32": ("object store, batch_size=32, Ray defaults", {**OBJECT_STORE, "batch_size": 32}, {}),
    "prealloc": ("object store, RAY_preallocate_plasma_memory=1", OBJECT_STORE, {"RAY_preallocate_plasma_memory": "1"}),
    "chunk1": ("object store, 1 MiB transfer chunks", OBJECT_STORE, {"RAY_object_manager_default_chunk_size": str(1 << 20)}),
    "chunk64": ("object store, 64 MiB transfer chunks", OBJECT_STORE, {"RAY_object_manager_default_chunk_size": str(64 << 20)}),
    "local-store": ("SAME node, ring off: object store, Ray defaults", {"shared_memory_ring": False,
                                                                       "_resources": {"head": 1}}, {}),
}
DEFAULT_VARIANTS = "tcp,default,inline"


def zmq_tcp_pair(n: int, shape: tuple) -> float:
    """Frames/s of a plain pyzmq PUSH/PULL pair over tcp loopback, two processes."""
    import zmq

    ctx = zmq.Context()
    r = ctx.socket(zmq.PULL)
    r.setsockopt(zmq.RCVHWM, 4)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    p = mp.get_context("spawn").Process(target=zmq_sender, args=(f"tcp://127.0.0.1:{port}", n, shape))
    p.start()
    r.recv_multipart(copy=False)  # the clock starts with the first frame, as in the Ray rows
    t0 = time.perf_counter()
    for _ in range(n - 1):
        r.recv_multipart(copy=False)
    rate = (n - 1) / (time.perf_counter() - t0)
    p.join()
    r.close()
    ctx.term()
    return rate


@contextlib.contextmanager
def cluster(env: dict, worker_nodes: int = 1):
    """A head node (consumer, and a ``head`` resource) and ``worker_nodes`` nodes with one
    ``blender`` slot each; ``env``: RAY_* variables its processes start with."""
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    c = None
    try:
        head = {"num_cpus": 2, "resources": {"head": 1}, "include_dashboard": False,
                "object_store_memory": STORE_BYTES, "_system_config": {"worker_niceness": 0}}
        try:
            c = Cluster(initialize_head=True, head_node_args=head)
        except Exception as exc:  # "timed out during startup" on a loaded machine: once more
            print(f"cluster start failed ({exc}); retrying once", file=sys.stderr)
            c = Cluster(initialize_head=True, head_node_args=head)
        for _ in range(worker_nodes):
            c.add_node(num_cpus=2, resources={"blender": 1}, object_store_memory=STORE_BYTES)
        c.wait_for_nodes()
        ray.init(address=c.address, namespace="btr-bench-cross-node", log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stream_rate(n: int, shape: tuple, resources: dict, **options) -> float:
    """Frames/s through the whole path, instance placed by ``resources``."""
    from blendtorch_ray import BlenderLauncher, make_loader

    h, w, _ = shape
    with BlenderLauncher(script=SCENE, instance_args=[["--width", str(w), "--height", str(h)]],
                         resources=resources, num_cpus=1, **options) as bl:
        list(bl.dataset(max_items=64))  # warm up
        got, t0 = 0, None
        for batch in make_loader(bl.dataset(max_items=n + 8), batch_size=8):
            if t0 is None:
                t0 = time.perf_counter()
                continue
            got += len(batch["image"])
        return got / (time.perf_counter() - t0)


def spread(runs: list) -> str:
    return f"{min(runs):,.0f}-{max(runs):,.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"cross-node rows, of {', '.join(VARIANTS)}")
    ap.add_argument("--no-same-node", action="store_true", help="skip the same-node row")
    args = ap.parse_args()
    shape = (480, 640, 4)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")

    load_before = os.getloadavg()
    zmq_tcp_pair(200, shape)  # warm up
    ref: list = []
    same: list = []
    cross: dict = {v: [] for v in variants}
    for _ in range(args.repeat):
        ref.append(zmq_tcp_pair(args.items, shape))  # no Ray running now
        default_env = VARIANTS["default"][2]
        if not args.no_same_node:
            with cluster(default_env):
                same.append(stream_rate(args.items, shape, {"head": 1}))
        for v in variants:
            _, options, env = VARIANTS[v]
            options = dict(options)
            resources = options.pop("_resources", {"blender": 1})
            with cluster(env):
                cross[v].append(stream_rate(args.items, shape, resources, **options))
    zr = statistics.median(ref)
    mb = np.prod(shape) / 2**20

    def row(name, runs):
        m = statistics.median(runs)
        ratios = [r / z for r, z in zip(runs, ref)]  # each run against the reference of its round
        return [name, m, m * mb, spread(runs), m / zr, f"{min(ratios):.2f}-{max(ratios):.2f}"]

    rows = [row("plain pyzmq PUSH/PULL, tcp loopback, no Ray running, warmed up", ref)]
    if same:
        rows.append(row("same node: consumer beside the actor (shared-memory ring)", same))
    for v in variants:
        name = VARIANTS[v][0]
        rows.append(row(name[5:] if name.startswith("SAME ") else f"cross node, {name}", cross[v]))
    print(table(["path", "frames/s (median)", "MiB/s", "spread of runs", "vs pyzmq tcp (medians)", "per-round ratios"], rows,
                title=f"Cross-node path, 640x480x4 uint8, {args.items} frames per run, DataLoader batch 8"))
    print(f"\nload average before the run {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (2 cores); "
          f"{args.repeat} rounds, each measures every row once (pyzmq first, with Ray down)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
