"""Blender side of the falling-cubes example: rigid-body physics, one episode per drop.

Each episode scatters N cubes above a ground plane at random poses (seeded by the instance
seed), lets Blender's rigid-body physics run for `--frames` frames and publishes the last
frame's image plus every cube's world position and projected centre. Physics is stepped by the
AnimationController (rewinding to the first frame resets the simulation).
"""
import argparse

import bpy
import numpy as np

import blender_worker as bw


def build_scene(num_cubes: int) -> list:
    scene = bpy.context.scene
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj, do_unlink=True)
    bpy.ops.mesh.primitive_plane_add(size=12, location=(0, 0, 0))
    ground = bpy.context.active_object
    bpy.ops.rigidbody.object_add()
    ground.rigid_body.type = "PASSIVE"
    cubes = []
    for i in range(num_cubes):
        bpy.ops.mesh.primitive_cube_add(size=0.6, location=(0, 0, 2 + i))
        cube = bpy.context.active_object
        bpy.ops.rigidbody.object_add()
        cube.rigid_body.mass = 1.0
        cubes.append(cube)
    scene.display.shading.color_type = "OBJECT"
    return cubes


def main() -> None:
    launch, remainder = bw.parse_launch_args()
    parser = argparse.ArgumentParser()
    parser.add_argument("--cubes", type=int, default=6)
    parser.add_argument("--frames", type=int, default=40, help="simulated frames per episode")
    args = parser.parse_args(remainder)
    rng = np.random.default_rng(launch.seed)
    cubes = build_scene(args.cubes)
    renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(320, 240), workbench_aa="FXAA"))
    cam = bw.Camera()
    cam.look_at(look_at=(0, 0, 0.5), look_from=(7.0, -7.0, 6.0))
    pub = bw.DataPublisher(launch)
    anim = bw.AnimationController()

    def pre_animation() -> None:  # scene is at the first frame: place the cubes
        for cube in cubes:
            cube.location = (*rng.uniform(-1.5, 1.5, size=2), rng.uniform(1.5, 5.0))
            cube.rotation_euler = rng.uniform(0, np.pi, size=3)
            cube.color = (*rng.uniform(0.2, 1.0, size=3), 1.0)
        bpy.context.scene.rigidbody_world.point_cache.frame_end = args.frames
        bpy.ops.ptcache.free_bake_all()

    def post_frame() -> None:
        if anim.frameid != args.frames:
            return
        positions = np.array([list(c.matrix_world.translation) for c in cubes], dtype=np.float32)
        pub.publish(
            image=renderer.render()["image"],
            positions=positions,
            xy=cam.world_to_pixel(positions).astype(np.float32),
            episode=anim.episode,
        )

    anim.pre_animation.add(pre_animation)
    anim.post_frame.add(post_frame)
    anim.play(frame_range=(1, args.frames), num_episodes=-1, use_physics=True)


main()
