"""Publish items forever, a few hundred per second.

``--size N`` publishes an N x N float32 array (default 8); ``--progress FILE`` writes (before each
publish) the number of items published so far, counting the one being published, to FILE-<epoch> after every publish (for loss accounting).
"""
import argparse
import os
import time

import numpy as np

import blender_worker as bw

launch, rest = bw.parse_launch_args()
parser = argparse.ArgumentParser()
parser.add_argument("--size", type=int, default=8)
parser.add_argument("--progress", default=None)
parser.add_argument("--env", nargs="*", default=[])
args = parser.parse_args(rest)
pub = bw.DataPublisher(launch)
env = {k: os.environ.get(k) for k in args.env}
while True:
    if args.progress:  # written before publishing: an upper bound on what was published
        path = f"{args.progress}-{launch.epoch}"
        with open(path + ".tmp", "w") as f:
            f.write(str(pub.seq + 1))
        os.replace(path + ".tmp", path)
    pub.publish(arr=np.full((args.size, args.size), pub.seq, np.float32), env=env, pid=os.getpid())
    time.sleep(0.005)
