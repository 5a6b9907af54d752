"""Scaling: per-item cost and bytes between nodes as simulated nodes and instances grow.

    python benchmarks/scaling.py [--full] [--seconds 6] [--repeat 2] [--inline]
    blendtorch-ray bench scaling -- [same options]

A ``ray.cluster_utils.Cluster`` per node count: a head node (the driver, no instances) and N
simulated nodes, each with its own raylet and object store and a ``node<i>`` resource that
places instances and consumers. Every instance is a publish-only Blender (bpy wheel; a
prepared 640x480x4 uint8 frame + small dict per item, no rendering), streaming for
``--seconds`` after a warm-up. Two consumer layouts:
  * one consumer : the driver on the head node reads every instance (a trainer node with no
                   instance of its own: every item crosses between nodes, by the direct tcp
                   link, the default, or with ``--cross-node object_store`` through Ray's
                   object stores);
  * per node     : one consumer actor per node reads only the instances of its node (the
                   same-node shared-memory ring: nothing should cross).
Columns: aggregate items/s (all consumers together); CPU seconds per item (user + system,
psutil, over the measured window) of the instances' actors, of all raylets (object stores
and object transfer included), of the consumers (driver or consumer actors), of the
Blender processes and of the GCS (head node); and bytes between nodes per item: Ray's own
object-transfer counter (``ray_object_manager_bytes{Type="Received"}`` summed over every node's metrics endpoint)
and the payload bytes consumers received from instances on other nodes; "idle cores" (one
consumer rows): CPU cores that actors, raylets and Blenders use while every stream is held
by backpressure (a cost per process that the per-item columns include). Medians over
--repeat runs, spread of items/s shown. This machine has 2 cores shared by everything: the
absolute rate cannot grow with the node count; the per-item costs and bytes are the point.
Default grid: 1, 2, 4, 8 nodes x 1 instance and 2 nodes x 2, 4 instances (a few minutes);
``--full``: 1, 2, 4, 8 nodes x 1-4 instances per node.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table  # noqa: E402

SCENE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenes", "publish_only.py")
STORE_BYTES = 256 << 20
"""Object store per simulated node: enough for the batches in flight, small enough that 9
stores fit this machine's memory."""
IDLE_S = 3.0
"""Seconds of the idle measurement (one-consumer rows): streams open and held by
backpressure, nobody reading; what actors, raylets and Blenders then use is a cost per
process, not per item."""
METRICS_INTERVAL_MS = 1000
"""How often Ray exports metrics here (default 10 s), so that counters are read fresh."""
INLINE_ENV = {"RAY_max_direct_call_object_size": str(16 << 20), "RAY_task_rpc_inlined_bytes_limit": str(64 << 20)}
"""``--inline``: batches travel inside the RPC that reports them (see benchmarks/cross_node.py)."""


def raylet_pids(cluster) -> list[int]:
    from ray._private import ray_constants

    pids = []
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []):
            pids.append(info.process.pid)
    return pids


def gcs_pids(cluster) -> list[int]:
    from ray._private import ray_constants

    return [info.process.pid for info in cluster.head_node.all_processes.get(ray_constants.PROCESS_TYPE_GCS_SERVER, [])]


def received_bytes() -> float:
    """``ray_object_manager_bytes{Type="Received"}`` summed over every node (0 if absent)."""
    import ray

    total = 0.0
    for node in ray.nodes():
        if not (node.get("Alive") and node.get("MetricsExportPort")):
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("ray_object_manager_bytes{") and re.search(r'Type="Received"', line):
                total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def read_for(items, seconds: float, node_of: dict, my_node: str) -> tuple[int, int, float]:
    """Read the iterator ``items`` for ``seconds``: (items, payload bytes from other nodes, elapsed)."""
    import numpy as np

    got, remote, t0 = 0, 0, time.perf_counter()
    for item in items:
        got += 1
        if node_of[item["btid"]] != my_node:
            remote += sum(v.nbytes for v in item.values() if isinstance(v, np.ndarray))
        if time.perf_counter() - t0 >= seconds:
            break
    return got, remote, time.perf_counter() - t0


class Consumer:
    """A consumer on one node (a Ray actor): reads the given instances of a group."""

    def read(self, group: str, namespace: str, num_instances: int, btids: list, node_of: dict, seconds: float,
             start_at: float) -> dict:
        import os

        import ray

        from blendtorch_ray.dataset import RemoteIterableDataset

        items = iter(RemoteIterableDataset(group, namespace, num_instances, btids=btids, timeout=120,
                                           shared_memory_ring=True))  # as BlenderLauncher.dataset() sets it
        for _ in range(16):  # warm up: streams open, rings mapped
            next(items)
        while time.time() < start_at:
            time.sleep(0.01)
        got, remote, elapsed = read_for(items, seconds, node_of, ray.get_runtime_context().get_node_id())
        return {"items": got, "remote_bytes": remote, "elapsed": elapsed, "pid": os.getpid()}

    def pid(self) -> int:
        import os

        return os.getpid()


def run_config(cluster, nodes: int, per_node: int, layout: str, seconds: float, cross_node: str = "tcp") -> dict:
    import ray

    from blendtorch_ray import BlenderLauncher

    n = nodes * per_node
    # One launcher per node places its instances by that node's resource; btids are per launcher.
    launchers = [BlenderLauncher(script=SCENE, num_instances=per_node, resources={f"node{i}": 1}, num_cpus=0.01,
                                 max_batch_delay=0.05) for i in range(nodes)]
    try:
        for bl in launchers:
            bl.start()
        ends = [bl.actors for bl in launchers]
        info = [ray.get([a.endpoints.remote() for a in actors]) for actors in ends]
        actor_pids = [e["actor_pid"] for node in info for e in node]
        blender_pids = [e["blender_pid"] for node in info for e in node]
        node_of = [{b: e["node_id"] for b, e in enumerate(node)} for node in info]
        raylets = raylet_pids(cluster)
        gcs = gcs_pids(cluster)
        if layout == "one":
            import numpy as np

            from blendtorch_ray.dataset import RemoteIterableDataset

            me = ray.get_runtime_context().get_node_id()
            datasets = [iter(RemoteIterableDataset(bl.name, bl.namespace, per_node, timeout=120, shared_memory_ring=True,
                                                   cross_node=cross_node)) for bl in launchers]
            for it in datasets:
                for _ in range(16):  # warm up: streams open
                    next(it)
            consumer_pids = [os.getpid()]
            # Idle: every stream open and held by backpressure, nobody reading.
            time.sleep(1.0)
            idle0, t_idle = cpu_seconds(actor_pids + raylets + blender_pids), time.perf_counter()
            time.sleep(IDLE_S)
            idle = (cpu_seconds(actor_pids + raylets + blender_pids) - idle0) / (time.perf_counter() - t_idle)
            before = (cpu_seconds(actor_pids), cpu_seconds(raylets), cpu_seconds(consumer_pids),
                      cpu_seconds(blender_pids), cpu_seconds(gcs), received_bytes())
            got, remote, t0 = 0, 0, time.perf_counter()
            # Round-robin over the groups (one group per node), one item at a time.
            while time.perf_counter() - t0 < seconds:
                for i, it in enumerate(datasets):
                    item = next(it)
                    got += 1
                    if node_of[i][item["btid"]] != me:
                        remote += sum(v.nbytes for v in item.values() if isinstance(v, np.ndarray))
            elapsed = time.perf_counter() - t0
        else:
            idle = None
            cls = ray.remote(Consumer)
            consumers = [cls.options(num_cpus=0.01, resources={f"node{i}": 0.001}).remote() for i in range(nodes)]
            consumer_pids = ray.get([c.pid.remote() for c in consumers])
            start_at = time.time() + 8.0 + nodes  # every consumer warmed up by then
            refs = [c.read.remote(bl.name, bl.namespace, per_node, list(range(per_node)), node_of[i], seconds, start_at)
                    for i, (c, bl) in enumerate(zip(consumers, launchers))]
            time.sleep(max(0.0, start_at - time.time()))
            before = (cpu_seconds(actor_pids), cpu_seconds(raylets), cpu_seconds(consumer_pids),
                      cpu_seconds(blender_pids), cpu_seconds(gcs), received_bytes())
            results = ray.get(refs)
            got = sum(r["items"] for r in results)
            remote = sum(r["remote_bytes"] for r in results)
            elapsed = max(r["elapsed"] for r in results)
            for c in consumers:
                ray.kill(c)
        after_cpu = (cpu_seconds(actor_pids), cpu_seconds(raylets), cpu_seconds(consumer_pids), cpu_seconds(blender_pids),
                     cpu_seconds(gcs))
        time.sleep(2.5 * METRICS_INTERVAL_MS / 1000)  # the counters are exported on an interval
        moved = received_bytes() - before[5]
        per = [(a - b) / got for a, b in zip(after_cpu, before[:5])]
        return {"instances": n, "rate": got / elapsed, "actor": per[0], "raylet": per[1], "consumer": per[2],
                "blender": per[3], "gcs": per[4], "om_bytes": moved / got, "payload_bytes": remote / got,
                "idle": idle}
    finally:
        for bl in launchers:
            bl.close()


def make_cluster(nodes: int, env: dict):
    import ray
    from ray.cluster_utils import Cluster

    os.environ.update(env)
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": STORE_BYTES,
        "_system_config": {"worker_niceness": 0, "metrics_report_interval_ms": METRICS_INTERVAL_MS}})
    for i in range(nodes):
        c.add_node(num_cpus=4, resources={f"node{i}": 8}, object_store_memory=STORE_BYTES)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="btr-bench-scaling", log_to_driver=False)
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="1, 2, 4, 8 nodes x 1-4 instances per node")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per run")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--inline", action="store_true", help="start Ray with batches inlined in RPCs (INLINE_ENV)")
    ap.add_argument("--cross-node", default="tcp", choices=("tcp", "object_store"),
                    help="how the one-consumer layout reads other nodes' instances (StreamConfig.cross_node)")
    ap.add_argument("--grid", default="", help="explicit grid, e.g. '1x1,2x2' (nodes x instances per node)")
    args = ap.parse_args()
    if args.grid:
        grid = [tuple(int(x) for x in g.split("x")) for g in args.grid.split(",")]
    elif args.full:
        grid = [(n, k) for n in (1, 2, 4, 8) for k in (1, 2, 3, 4)]
    else:
        grid = [(1, 1), (2, 1), (4, 1), (8, 1), (2, 2), (2, 4)]
    env = dict(INLINE_ENV) if args.inline else {}
    env["RAY_metrics_report_interval_ms"] = str(METRICS_INTERVAL_MS)
    import ray

    load_before = os.getloadavg()
    rows = []
    for nodes in sorted({n for n, _ in grid}):
        cluster = make_cluster(nodes, env)
        try:
            for n, k in [g for g in grid if g[0] == nodes]:
                for layout in ("one", "per-node"):
                    runs = [run_config(cluster, n, k, layout, args.seconds, args.cross_node) for _ in range(args.repeat)]
                    med = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "idle"}
                    idle = [r["idle"] for r in runs if r["idle"] is not None]
                    rates = [r["rate"] for r in runs]
                    rows.append([n, k, n * k, "1 on the head node" if layout == "one" else "1 per node",
                                 med["rate"], f"{min(rates):,.0f}-{max(rates):,.0f}",
                                 f"{1e3 * med['actor']:.2f}", f"{1e3 * med['raylet']:.2f}", f"{1e3 * med['consumer']:.2f}",
                                 f"{1e3 * med['blender']:.2f}", f"{1e3 * med['gcs']:.3f}", f"{med['om_bytes'] / 2**20:.2f}",
                                 f"{med['payload_bytes'] / 2**20:.2f}",
                                 f"{statistics.median(idle):.2f}" if idle else "-"])
                    print("  " + " | ".join(str(c) for c in rows[-1]), flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()
    print(table(["nodes", "inst/node", "instances", "consumers", "items/s (median)", "spread", "actor CPU ms/item",
                 "raylet CPU ms/item", "consumer CPU ms/item", "Blender CPU ms/item", "GCS CPU ms/item", "Ray transfer MiB/item",
                 "payload from other nodes MiB/item", "idle cores"], rows,
                title=f"Scaling, publish-only 640x480x4 uint8 items, {args.seconds:g} s per run, "
                      f"{'inlined batches' if args.inline else 'Ray defaults'}; one consumer reads other nodes "
                      f"by {'the direct tcp link' if args.cross_node == 'tcp' else 'the object store'}"))
    print(f"\nload average before the run {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (2 cores); "
          f"median of {args.repeat} runs per row; CPU per item = (user+system s over the window) / items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
