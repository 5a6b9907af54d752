"""A driver that joins the running Ray at $RAY_ADDRESS as a job whose workers, and only they,
get BLENDTORCH_SHM_MIN_FREE above any /dev/shm's size: the actor itself must find too little
room, warn, and keep the shared-memory paths off (slots and ring), also for the Blender it
restarts. This process does not have the variable. Prints ``RESULT <json>``."""
import json
import os
import signal
import sys

import numpy as np
import psutil
import ray

from blendtorch_ray import BlenderLauncher
from blendtorch_ray.runtime import ensure_ray

assert "BLENDTORCH_SHM_MIN_FREE" not in os.environ
ensure_ray(address=os.environ["RAY_ADDRESS"], namespace="blendtorch-tests", log_to_driver=False,
           runtime_env={"env_vars": {"BLENDTORCH_SHM_MIN_FREE": str(2**60)}})


def shm_files(memory_dir: str) -> list:
    return sorted(n for n in os.listdir(memory_dir) if n.startswith(("slots-", "ring-")))


out = {}
with BlenderLauncher(script=sys.argv[1], restart_backoff=0.2, instance_args=[["--size", "128"]]) as bl:
    ep = ray.get(bl.actors[0].endpoints.remote())
    it = iter(bl.dataset(timeout=60))
    items = [next(it) for _ in range(30)]
    out["cmdlines"] = [psutil.Process(ep["blender_pid"]).cmdline()]
    out["shm_files"] = shm_files(ep["memory_dir"])
    os.kill(ep["blender_pid"], signal.SIGKILL)  # the actor starts the next Blender: same decision
    while not any(i["epoch"] == 1 for i in items[30:]):
        items.append(next(it))
    items += [next(it) for _ in range(10)]
    out["cmdlines"].append(psutil.Process(bl.pids()[0]).cmdline())
    out["shm_files"] += shm_files(ep["memory_dir"])
    health = bl.health()[0]
    out["warnings"] = health.warnings
    out["restarts"] = health.restarts
    out["items"] = len(items)
    out["arrays_ok"] = all(i["arr"].shape == (128, 128) and np.all(i["arr"] == i["seq"]) for i in items)
    keys = [(i["epoch"], i["seq"]) for i in items]
    out["unique"] = len(keys) == len(set(keys))
print("RESULT", json.dumps(out), flush=True)
