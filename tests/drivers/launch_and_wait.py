"""A driver process for orphan tests: launch N instances, print their pids, wait forever."""
import sys
import time

from blendtorch_ray import BlenderLauncher

script, n = sys.argv[1], int(sys.argv[2])
bl = BlenderLauncher(script=script, num_instances=n).start()
print("PIDS", " ".join(str(p) for p in bl.pids()), flush=True)
time.sleep(600)
