"""Blender side of the datagen example: a randomised cube with projected keypoints.

Like the original blendtorch `cube.blend.py`: every frame gets a random rotation and
colour; the image and the cube's 8 corners projected to pixels are published.
Run through `generate.py` (the driver), never directly.
"""
import bpy
import numpy as np

import blender_worker as bw


def main() -> None:
    launch, remainder = bw.parse_launch_args()
    rng = np.random.default_rng(launch.seed)
    cube = bpy.data.objects["Cube"]
    bpy.context.scene.display.shading.color_type = "OBJECT"
    renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(320, 240), workbench_aa="FXAA"))
    cam = bw.Camera()
    cam.look_at(look_at=(0, 0, 0), look_from=(5.0, -5.0, 4.0))
    pub = bw.DataPublisher(launch)
    anim = bw.AnimationController()

    def pre_frame() -> None:
        cube.rotation_euler = rng.uniform(0, np.pi, size=3)
        cube.color = (*rng.uniform(0.1, 1.0, size=3), 1.0)

    def post_frame() -> None:
        pub.publish(
            image=renderer.render()["image"],
            xy=cam.bbox_object_to_pixel(cube).astype(np.float32),
            frameid=anim.frameid,
        )

    anim.pre_frame.add(pre_frame)
    anim.post_frame.add(post_frame)
    anim.play(frame_range=(1, 100), num_episodes=-1, use_physics=False)


main()
