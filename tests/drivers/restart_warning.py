"""A driver in local mode (the launcher starts Ray with log_to_driver on, its default): one
instance, whose Blender is SIGKILLed once; its actor restarts it. Prints ``RESTARTED <json>``
(the killed pid, the actor pid, health().warnings and last_error), then waits for a line on
stdin (or 120 s) before it closes the group and exits."""
import json
import os
import select
import signal
import sys

import ray

from blendtorch_ray import BlenderLauncher

with BlenderLauncher(script=sys.argv[1], restart_backoff=0.2) as bl:
    it = iter(bl.dataset(timeout=60))
    [next(it) for _ in range(10)]
    pid = bl.pids()[0]
    os.kill(pid, signal.SIGKILL)
    while next(it)["epoch"] == 0:
        pass
    health = bl.health()[0]
    print("RESTARTED", json.dumps({"killed": pid, "actor_pid": ray.get(bl.actors[0].endpoints.remote())["actor_pid"],
                                   "warnings": health.warnings, "last_error": health.last_error,
                                   "restarts": health.restarts}), flush=True)
    select.select([sys.stdin], [], [], 120)
print("CLOSED", flush=True)
