"""Record the order of AnimationController signals over 2 episodes and publish it."""
import blender_worker as bw

launch, _ = bw.parse_launch_args()
pub = bw.DataPublisher(launch)
anim = bw.AnimationController()
calls = []
for name in ("pre_play", "pre_animation", "pre_frame", "post_frame", "post_animation", "post_play"):
    getattr(anim, name).add(lambda n=name: calls.append((n, anim.episode, anim.frameid, anim.scene.frame_current)))
anim.play(frame_range=(3, 5), num_episodes=2, use_physics=False)
pub.publish(calls=calls)
pub.close()
