"""A driver process for orphan tests: launch N instances, print their pids, wait forever.

    launch_and_wait.py SCRIPT N [prestart|ray-first]

``prestart`` (default): the launcher starts Ray itself (local mode, Blender prestarted by
this driver). ``ray-first``: this driver calls ``ray.init()`` first, so every Blender is the
child of its actor. Prints ``PIDS <blender pids>`` and ``PROCS <json>``: this driver's pid,
each Blender's parent, and every process below this driver (Ray's and Blender's) as
``[pid, create_time, name]``.
"""
import json
import os
import sys
import time

import psutil

from blendtorch_ray import BlenderLauncher

script, n = sys.argv[1], int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "prestart"
if mode == "ray-first":
    from blendtorch_ray.runtime import ensure_ray

    ensure_ray(num_cpus=4, log_to_driver=False)  # as local mode starts it, before any launcher
elif mode != "prestart":
    raise SystemExit(f"unknown mode {mode!r}")
bl = BlenderLauncher(script=script, num_instances=n).start()
pids = bl.pids()
procs = []
for p in psutil.Process().children(recursive=True):
    try:
        procs.append([p.pid, p.create_time(), p.name()])
    except psutil.NoSuchProcess:
        pass
print("PIDS", " ".join(str(p) for p in pids), flush=True)
print("PROCS", json.dumps({"driver": os.getpid(), "parents": [psutil.Process(p).ppid() for p in pids],
                           "procs": procs}), flush=True)
time.sleep(600)
