"""UI-mode test scene: the default cube, animated from Blender's event loop (ui=True).

Every frame publishes the cube's location, the frame id, whether Blender runs with its window,
and a 64 x 48 ``image`` drawn by the ViewportRenderer (or the Renderer with ``--renderer
render``). ``--move-after N``: once N items are published, a separate timer (standing in for a
user dragging the cube in the viewport) moves the cube by +2 in x; the animation itself never
touches the location. ``--quit-after N``: once N items are published, quit Blender as closing
its window does (exit code 0). ``--press-play-after N``: once N items are published, a timer
(standing in for the user pressing Space) starts Blender's playback, looks at the animation for
20 ticks, starts playback again (Space once more) and records what it saw (``pause_log``: one
``(seq, paused, blender_playing)`` per tick). ``--duplex``: a DuplexChannel polled in
``pre_frame``; a message ``{"z": value}`` moves the cube to that height and is answered.
"""
import argparse

import bpy
import numpy as np

import blender_worker as bw
from blender_worker.interactive import run_in_event_loop

launch, rest = bw.parse_launch_args()
parser = argparse.ArgumentParser()
parser.add_argument("--move-after", type=int, default=0)
parser.add_argument("--quit-after", type=int, default=0)
parser.add_argument("--renderer", default="viewport", choices=("viewport", "render"))
parser.add_argument("--press-play-after", type=int, default=0)
parser.add_argument("--duplex", action="store_true")
args = parser.parse_args(rest)

scene = bpy.context.scene
cube = bpy.data.objects["Cube"]
cube.location = (0.0, 0.0, 0.0)
cam = bw.Camera()
cam.look_at(look_at=(0, 0, 0), look_from=(0.0, -9.0, 0.0))
scene.render.resolution_x, scene.render.resolution_y = 64, 48
if args.renderer == "viewport":
    from blender_worker.viewport import ViewportRenderer

    renderer = ViewportRenderer(shading="SOLID")
else:
    renderer = bw.Renderer(bw.RenderSettings(engine="workbench", resolution=(64, 48)))
pub = bw.DataPublisher(launch)
anim = bw.AnimationController()
moved = {"at": None}
chan = bw.DuplexChannel(launch, publisher=pub) if args.duplex else None
play = {"log": [], "presses": 0, "done": False}


def playing() -> bool:
    return any(w.screen.is_animation_playing for w in bpy.context.window_manager.windows)


def pre_frame() -> None:
    msg = chan.recv(timeout=0.0)
    if msg is not None:
        cube.location.z = float(msg.payload["z"])
        chan.reply(msg, z=cube.location.z)


def post_frame() -> None:
    pub.publish(**renderer.render(), location=np.array(cube.location, np.float32), frameid=anim.frameid,
                ui=not bpy.app.background, moved_at=moved["at"],
                pause_log=play["log"] if play["done"] else None, blender_playing=playing())


def press_play():  # Space, as the user presses it: Blender's screen.animation_play
    window = bpy.context.window_manager.windows[0]
    with bpy.context.temp_override(window=window, screen=window.screen):
        bpy.ops.screen.animation_play()
    play["presses"] += 1


def user_presses_play():
    if pub.seq < args.press_play_after:
        return 0.01
    if play["presses"] == 0:
        press_play()
        return 0.01
    play["log"].append((pub.seq, anim.paused, playing()))
    if len(play["log"]) == 20:
        press_play()
        return 0.01
    if len(play["log"]) > 25:
        play["done"] = True
        return None
    return 0.01


def user_edit():  # a timer of its own: runs between frames, like the user's input
    if pub.seq >= args.move_after:
        cube.location.x += 2.0
        moved["at"] = pub.seq
        return None
    return 0.01


def quit_blender():
    if pub.seq >= args.quit_after:
        bpy.ops.wm.quit_blender()  # what closing the window does (without the save prompt)
        return None
    return 0.01


anim.post_frame.add(post_frame)
if chan is not None:
    anim.pre_frame.add(pre_frame)
if args.press_play_after:
    run_in_event_loop(user_presses_play, where="user_presses_play")
if args.move_after:
    run_in_event_loop(user_edit, where="user_edit")
if args.quit_after:
    run_in_event_loop(quit_blender, where="quit_blender")
anim.play(frame_range=(1, 50), num_episodes=-1, use_physics=False)
print("ui_scene: play() returned; Blender's event loop runs the frames", flush=True)
