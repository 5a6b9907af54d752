"""Publish --items items that echo this instance's launch contract."""
import argparse
import time

import numpy as np

import blender_worker as bw

launch, rest = bw.parse_launch_args()
parser = argparse.ArgumentParser()
parser.add_argument("--items", type=int, default=1)
parser.add_argument("--tag", default="")
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args(rest)
pub = bw.DataPublisher(launch)
for i in range(args.items):
    pub.publish(tag=args.tag, remainder=rest, arr=np.full((4, 4), launch.btid, np.int32), i=i)
    if args.sleep:
        time.sleep(args.sleep)
pub.close()
