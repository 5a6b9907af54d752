"""Bundled demo scene: a randomly rotated, randomly coloured cube, rendered with Workbench.

Publishes ``image`` (H, W, 4 uint8), ``xy`` (projected cube corners in pixels) and
``frameid``. Instance arguments: ``--width``, ``--height``, ``--frames`` (0 = forever),
``--engine``.
"""

import argparse

import bpy
import numpy as np

import blender_worker as bw


def main() -> None:
    launch, remainder = bw.parse_launch_args()
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=0, help="items to publish; 0 = forever")
    parser.add_argument("--engine", default="workbench")
    parser.add_argument("--baseline", action="store_true", help="render --frames frames without publishing; print the time")
    args = parser.parse_args(remainder)

    rng = np.random.default_rng(launch.seed)
    cube = bpy.data.objects["Cube"]
    cube.location = (0.0, 0.0, 0.0)
    scene = bpy.context.scene
    scene.display.shading.color_type = "OBJECT"
    renderer = bw.Renderer(bw.RenderSettings(engine=args.engine, resolution=(args.width, args.height), workbench_aa="OFF"))
    cam = bw.Camera()
    cam.look_at(look_at=(0, 0, 0), look_from=(6.0, -6.0, 4.5))
    if args.baseline:
        return _baseline(renderer, cam, cube, rng, args.frames or 100)
    pub = bw.DataPublisher(launch)
    anim = bw.AnimationController()

    def pre_frame() -> None:
        rng = pub.rng()  # this item's randomness, from its (seed, seq) alone: restarts and resumes included
        cube.rotation_euler = rng.uniform(0, np.pi, size=3)
        cube.color = (*rng.uniform(0.2, 1.0, size=3), 1.0)

    def post_frame() -> None:
        out = renderer.render()
        corners = cam.bbox_object_to_pixel(cube)
        pub.publish(image=out["image"], xy=corners.astype(np.float32), frameid=anim.frameid)
        if args.frames and pub.seq >= args.frames:
            anim.stop()

    anim.pre_frame.add(pre_frame)
    anim.post_frame.add(post_frame)
    anim.post_play.add(pub.close)  # after the last frame (in a UI instance play() returns at once)
    anim.play(frame_range=(1, 100), num_episodes=-1, use_physics=False)


def _baseline(renderer, cam, cube, rng, frames: int) -> None:
    """Same per-frame work as the stream (randomise, render, project), nothing published."""
    import time

    t0 = None
    for i in range(frames + 1):
        if i == 1:
            t0 = time.perf_counter()  # exclude the first (warm-up) frame
        cube.rotation_euler = rng.uniform(0, np.pi, size=3)
        cube.color = (*rng.uniform(0.2, 1.0, size=3), 1.0)
        bpy.context.scene.frame_set(1 + i % 100)
        renderer.render()
        cam.bbox_object_to_pixel(cube)
    print(f"BTR_BASELINE {frames} {time.perf_counter() - t0:.6f}", flush=True)


main()
