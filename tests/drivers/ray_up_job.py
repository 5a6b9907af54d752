"""The job tests/test_ray_up.py submits (`ray job submit`) to the cluster it brought up with `ray up`.

    python ~/blendtorch-ray/tests/drivers/ray_up_job.py [ITEMS]

Runs on the head, from the copy `ray up` synced there. Streams the bundled cube scene until
each instance has sent ITEMS (default 4) items (or 1000 x ITEMS items in all: an instance starts streaming when its Blender is up, which
can be well after the other's), from 2 instances that ask for one `blender` slot each, so Ray places them only
on nodes that advertise the resource; prints one ``RESULT <json>`` line: the cluster's
`blender` total, items per btid, the node address each instance's actor ran on, and which
interpreter and blendtorch_ray copy this driver ran with. The group stays up ``HOLD_S``
seconds after the last item, so that the test sees both Blenders running.
"""
import json
import sys
import time
from collections import Counter

import ray

import blendtorch_ray
from blender_worker.scenes import CUBE
from blendtorch_ray import BlenderLauncher

items = int(sys.argv[1]) if len(sys.argv) > 1 else 4
HOLD_S = 3.0
ray.init()  # inside `ray job submit`: the cluster the job was submitted to
addresses = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
counts: Counter = Counter()
with BlenderLauncher(
    script=CUBE,
    num_instances=2,
    resources={"blender": 1},
    instance_args=[["--width", "64", "--height", "48"]] * 2,
) as launcher:
    for item in launcher.dataset(timeout=120):
        counts[int(item["btid"])] += 1
        if min(counts[0], counts[1]) >= items or sum(counts.values()) >= 1000 * items:
            break
    health = launcher.health()
    # Both Blenders stay up a little longer: the test notes every process on each node by
    # sampling every 0.5 s, and an instance whose Blender came up late may have sent its
    # items within one sample (a CI run saw only one of the two Blenders).
    time.sleep(HOLD_S)
print("RESULT " + json.dumps({
    "blender_total": ray.cluster_resources().get("blender", 0),
    "node_addresses": sorted(set(addresses.values())),
    "counts": {str(b): n for b, n in sorted(counts.items())},
    "instance_nodes": {str(h.btid): addresses.get(h.node_id, h.node_id) for h in health},
    "health": {str(h.btid): {"alive": h.alive, "items": h.items, "restarts": h.restarts,
                             "queue": h.queue_depth, "last_error": h.last_error, "log": h.log_path} for h in health},
    "python": sys.executable,
    "blendtorch_ray": blendtorch_ray.__file__,
}), flush=True)
