"""Benchmark scene: publish a prepared 640x480x4 uint8 frame plus a small dict, no rendering.

Instance args: --items N (0 = forever), --width, --height.
"""
import argparse

import numpy as np

import blender_worker as bw

launch, rest = bw.parse_launch_args()
parser = argparse.ArgumentParser()
parser.add_argument("--items", type=int, default=0)
parser.add_argument("--width", type=int, default=640)
parser.add_argument("--height", type=int, default=480)
args = parser.parse_args(rest)
frame = np.random.default_rng(launch.seed).integers(0, 255, (args.height, args.width, 4), dtype=np.uint8)
pub = bw.DataPublisher(launch)
n = 0
while args.items == 0 or n < args.items:
    pub.publish(image=frame, meta={"frame": n, "label": "cube"})
    n += 1
pub.close()
