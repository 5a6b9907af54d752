"""Blender side of the annotations example: several objects, randomised every frame.

Publishes per frame: ``rgba`` (H, W, 4 uint8), ``depth`` (H, W float32 z-depth, inf = sky),
``instance`` and ``semantic`` (H, W int32), ``boxes`` (N, 4 float32 x0, y0, x1, y1 from the
masks, exclusive x1/y1) with ``box_ids`` (N,), ``keypoints`` (N, 8, 3: the object's 3D box
corners as COCO (x, y, v)) with ``keypoint_ids``, ``K`` (3, 3 OpenCV intrinsics) and
``frameid``. Instance arguments: ``--width``, ``--height``, ``--engine``, ``--frames`` (0 = forever).
"""

import argparse

import bpy
import numpy as np

import blender_worker as bw
from blender_worker import randomize as R
from blender_worker.passes import mask_boxes

CATEGORIES = {1: "cube", 2: "sphere", 3: "cylinder", 4: "cone", 5: "torus"}


def build_scene() -> list:
    for ob in list(bpy.data.objects):
        if ob.type == "MESH":
            bpy.data.objects.remove(ob)
    bpy.ops.mesh.primitive_plane_add(size=30, location=(0, 0, 0))
    ground = bpy.context.object
    ground.name, ground["category_id"] = "ground", 0  # class 0: background, not an object
    adders = {
        "cube": lambda: bpy.ops.mesh.primitive_cube_add(size=1.0),
        "sphere": lambda: bpy.ops.mesh.primitive_uv_sphere_add(radius=0.6, segments=24, ring_count=12),
        "cylinder": lambda: bpy.ops.mesh.primitive_cylinder_add(radius=0.45, depth=1.2, vertices=24),
        "cone": lambda: bpy.ops.mesh.primitive_cone_add(radius1=0.6, depth=1.2, vertices=24),
        "torus": lambda: bpy.ops.mesh.primitive_torus_add(major_radius=0.55, minor_radius=0.18),
    }
    objs = []
    for cat, name in CATEGORIES.items():
        for k in range(2 if name in ("cube", "sphere") else 1):
            adders[name]()
            ob = bpy.context.object
            ob.name, ob["category_id"] = f"{name}.{k}", cat
            objs.append(ob)
    for i, ob in enumerate(objs, start=1):
        ob.pass_index = i
    ground.pass_index = len(objs) + 1
    return objs


def main() -> None:
    launch, remainder = bw.parse_launch_args()
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--engine", default="workbench")
    parser.add_argument("--frames", type=int, default=0, help="items to publish; 0 = forever")
    args = parser.parse_args(remainder)

    objs = build_scene()
    scene = bpy.context.scene
    scene.display.shading.color_type = "MATERIAL"
    renderer = bw.Renderer(
        bw.RenderSettings(engine=args.engine, resolution=(args.width, args.height), samples=16, workbench_aa="8")
    )
    cam = bw.Camera()
    rng = R.make_rng(launch.seed)
    light = bpy.data.objects.get("Light")
    pub = bw.DataPublisher(launch)
    anim = bw.AnimationController()

    def pre_frame() -> None:
        nonlocal light
        R.random_materials(objs, rng)
        light = R.random_light(rng, light)
        for ob in objs:  # primitives are centred on their origin: stand them on the ground
            ob.location.z = ob.dimensions.z / 2
        R.place_without_overlap(objs, rng, area=(-3.5, 3.5, -3.5, 3.5))
        R.camera_on_sphere(cam, rng, target=(0, 0, 0.3), radius=(8.5, 10.5), elevation=(30.0, 60.0))

    def post_frame() -> None:
        out = renderer.render(passes=("rgba", "depth", "instance", "semantic"))
        boxes = mask_boxes(np.where(out["semantic"] > 0, out["instance"], 0))
        ids = np.array(sorted(boxes), dtype=np.int32)
        by_id = {ob.pass_index: ob for ob in objs}
        kps = np.stack([cam.keypoints(cam.bbox3d(by_id[i]), ignore=[by_id[i]]) for i in ids]) if len(ids) else np.zeros((0, 8, 3))
        pub.publish(
            **out,
            boxes=np.array([boxes[i] for i in ids], dtype=np.float32).reshape(-1, 4),
            box_ids=ids,
            keypoints=kps.astype(np.float32),
            keypoint_ids=ids,
            K=cam.K.astype(np.float32),
            frameid=anim.frameid,
        )
        if args.frames and pub.seq >= args.frames:
            anim.stop()

    anim.pre_frame.add(pre_frame)
    anim.post_frame.add(post_frame)
    anim.play(frame_range=(1, 100), num_episodes=-1, use_physics=False)
    pub.close()


main()
