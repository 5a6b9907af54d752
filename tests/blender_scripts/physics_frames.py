"""pre_frame semantics: the new frame is current in pre_frame, physics steps exactly once.

Plays a falling rigid-body cube with AnimationController and records, in pre_frame, the
current frame and, in post_frame, the cube's height; then replays the same frames with a
plain ``frame_set`` loop (the reference) and publishes both.
"""
import bpy

import blender_worker as bw

launch, _ = bw.parse_launch_args()
pub = bw.DataPublisher(launch)
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
bpy.ops.mesh.primitive_cube_add(location=(0, 0, 10))
cube = bpy.context.active_object
bpy.ops.rigidbody.world_add()
bpy.ops.rigidbody.object_add()
start, end = 1, 30
scene.rigidbody_world.point_cache.frame_start, scene.rigidbody_world.point_cache.frame_end = start, end


def height():
    return cube.evaluated_get(bpy.context.evaluated_depsgraph_get()).matrix_world.translation.z


anim = bw.AnimationController()
pre, post = [], []
anim.pre_frame.add(lambda: pre.append((anim.frameid, scene.frame_current)))
anim.post_frame.add(lambda: post.append((anim.frameid, scene.frame_current, height())))
anim.play(frame_range=(start, end), num_episodes=1)

reference = []
scene.frame_set(start)
for frame in range(start, end + 1):
    scene.frame_set(frame)
    reference.append(height())
pub.publish(pre=pre, post=post, reference=reference)
pub.close()
