"""A fresh driver (no Ray running): the launcher prestarts Blender while Ray starts; the
actors adopt those processes. Kills one adopted Blender and reports what happened as JSON."""
import json
import os
import signal
import sys

import numpy as np
import psutil
import ray

from blendtorch_ray import BlenderLauncher

out = {"driver": os.getpid()}
with BlenderLauncher(script=sys.argv[1], num_instances=2, restart_backoff=0.2,
                     instance_args=[["--size", "128"]] * 2) as bl:
    out["prestarted"] = [p.pid for p in bl._prestarted]
    out["pids"] = bl.pids()
    out["parents"] = [psutil.Process(p).ppid() for p in out["pids"]]
    eps = [ray.get(a.endpoints.remote()) for a in bl.actors]
    out["memory_dirs"] = [e["memory_dir"] for e in eps]
    it = iter(bl.dataset(timeout=60))
    items = [next(it) for _ in range(40)]
    os.kill(out["pids"][0], signal.SIGKILL)  # an adopted Blender dies: its actor restarts it
    while not any(i["btid"] == 0 and i["epoch"] == 1 for i in items[40:]):
        items.append(next(it))
    items += [next(it) for _ in range(20)]
    health = bl.health()
    out["restarts"] = [h.restarts for h in health]
    out["last_error"] = health[0].last_error
    out["new_pids"] = bl.pids()
    out["new_parent"] = psutil.Process(out["new_pids"][0]).ppid()
    out["actor_pid"] = eps[0]["actor_pid"]
    keys = [(i["btid"], i["epoch"], i["seq"]) for i in items]
    out["unique"] = len(keys) == len(set(keys))
    out["arrays_ok"] = all(np.all(i["arr"] == i["seq"]) for i in items)
print("RESULT", json.dumps(out), flush=True)
