"""Publish small items forever, a few hundred per second."""
import time

import numpy as np

import blender_worker as bw

launch, _ = bw.parse_launch_args()
pub = bw.DataPublisher(launch)
while True:
    pub.publish(arr=np.full((8, 8), pub.seq, np.int64))
    time.sleep(0.005)
