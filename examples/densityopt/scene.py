"""Blender side of densityopt: render silhouettes of randomly shaped ellipsoids.

Every frame draws shape parameters ``theta = (width, height)`` from a normal distribution
``N(mu, sigma)`` (clipped to [0.2, 1.9]), scales a UV sphere by them and renders its silhouette
(alpha channel, Workbench, orthographic camera). The trainer changes ``mu`` / ``sigma`` at
any time through the duplex channel; items carry the generation of the parameters they were
drawn from (``generation``) next to ``image`` (H, W uint8) and ``theta`` (2, float32).
A message may also carry ``count``: render that many images, then wait for the next
message (no rendering wasted on parameters that are about to change); without it the
instance renders continuously.

Instance arguments: ``--width``, ``--height`` (pixels).
"""

import argparse
import math

import bpy
import numpy as np

import blender_worker as bw
from blender_worker.duplex import DuplexChannel

LOW, HIGH = 0.2, 1.9

IDLE_WAIT_S = 0.1
"""Seconds of one wait for the next message once the requested ``count`` is rendered."""


def build_scene(width: int, height: int):
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj, do_unlink=True)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=24, ring_count=12, radius=1.0, location=(0, 0, 0))
    shape = bpy.context.active_object
    cam = bpy.context.scene.camera
    cam.data.type = "ORTHO"
    cam.data.ortho_scale = 4.2
    cam.location = (0.0, -10.0, 0.0)
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene = bpy.context.scene
    scene.render.film_transparent = True  # alpha = silhouette
    scene.display.shading.light = "FLAT"
    scene.display.shading.color_type = "SINGLE"
    renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(width, height), workbench_aa="OFF"))
    return shape, renderer


def main() -> None:
    launch, remainder = bw.parse_launch_args()
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    args = parser.parse_args(remainder)

    rng = np.random.default_rng(launch.seed)
    shape, renderer = build_scene(args.width, args.height)
    pub = bw.DataPublisher(launch)
    chan = DuplexChannel(launch, publisher=pub)
    params = {"mu": np.array([1.0, 1.0]), "sigma": np.array([0.1, 0.1])}
    theta = np.zeros(2)
    remaining = None  # images left to render under the current parameters (None: no limit)

    def pre_frame() -> None:
        nonlocal theta, remaining
        while True:
            idle = remaining is not None and remaining <= 0
            msg = chan.recv(timeout=IDLE_WAIT_S if idle else 0.0)  # idle: wait for the next request
            if msg is not None:
                params["mu"] = np.asarray(msg.payload["mu"], dtype=np.float64)
                params["sigma"] = np.asarray(msg.payload["sigma"], dtype=np.float64)
                remaining = msg.payload.get("count")
                chan.reply(msg, ok=True)
            elif not idle:
                break
        if remaining is not None:
            remaining -= 1
        theta = np.clip(rng.normal(params["mu"], params["sigma"]), LOW, HIGH)
        shape.scale = (theta[0], 1.0, theta[1])

    def post_frame() -> None:
        rgba = renderer.render()["image"]
        pub.publish(image=np.ascontiguousarray(rgba[..., 3]), theta=theta.astype(np.float32))

    anim = bw.AnimationController()
    anim.pre_frame.add(pre_frame)
    anim.post_frame.add(post_frame)
    anim.play(frame_range=(1, 1000), num_episodes=-1, use_physics=False)


main()
