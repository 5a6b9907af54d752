"""A fresh driver (no Ray running) with prestart=False: the launcher starts Ray first and each
actor starts its own Blender. Prints ``RESULT <json>`` with the pids and parents seen."""
import json
import os
import sys

import psutil
import ray

from blendtorch_ray import BlenderLauncher

with BlenderLauncher(script=sys.argv[1], num_instances=2, prestart=False) as bl:
    eps = [ray.get(a.endpoints.remote()) for a in bl.actors]
    it = iter(bl.dataset(timeout=120))
    items = [next(it) for _ in range(20)]
    while len({i["btid"] for i in items}) < 2:  # both instances stream (bounded by the timeout)
        items.append(next(it))
    out = {
        "driver": os.getpid(),
        "prestarted": len(bl._prestarted),
        "pids": bl.pids(),
        "parents": [psutil.Process(p).ppid() for p in bl.pids()],
        "actor_pids": [e["actor_pid"] for e in eps],
        "items": sorted({(i["btid"], i["seq"]) for i in items}),
    }
print("RESULT", json.dumps(out), flush=True)
