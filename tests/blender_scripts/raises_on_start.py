"""A broken user script: raises before it publishes anything."""
import blender_worker as bw

launch, _ = bw.parse_launch_args()
raise RuntimeError("boom from the test script")
