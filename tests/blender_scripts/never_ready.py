"""A script that never creates a DataPublisher."""
import time

import blender_worker as bw

launch, _ = bw.parse_launch_args()
time.sleep(600)
