"""Publish two items, then hang (prints a marker for the log tail)."""
import time

import blender_worker as bw

launch, _ = bw.parse_launch_args()
pub = bw.DataPublisher(launch)
pub.publish(x=1)
pub.publish(x=2)
print("stalls.py: now hanging on purpose", flush=True)
time.sleep(600)
