"""The scripts of ``benchmarks/env_steps.py``'s references, written to files and run there: the
bare Blender floors (ZeroMQ REQ/REP, and the env's message pipe: one ``frame_set`` per request on
the cartpole scene) and the plain-Python echo processes of the bare round trips."""

FLOOR = """
import sys
import bpy
import zmq
from blender_worker.scenes.cartpole_scene import build_scene

argv = sys.argv[sys.argv.index("--") + 1:]
address, push, last = argv[0], argv[1] == "push", 502
objs = build_scene(50)
motor, dv = objs["motor"], 10.0 / (objs["cart"].rigid_body.mass + objs["pole"].rigid_body.mass) / 50
scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, last
rbw = scene.rigidbody_world
rbw.point_cache.frame_start, rbw.point_cache.frame_end = 1, last
sock = zmq.Context.instance().socket(zmq.REP)
sock.connect(address)
frame = 1
scene.frame_set(frame)
while True:
    msg = sock.recv()
    if msg == b"stop":
        sock.send(b"bye")
        break
    frame += 1
    if frame >= last:  # like an env reset: rewind the physics
        frame = 1
        motor.motor_lin_target_velocity = 0.0
        rbw.time_scale = rbw.time_scale
    if push:  # the cartpole's action: +-10 N for one frame through the motor (the env's _prepare_step)
        motor.motor_lin_target_velocity += dv if msg == b"1" else -dv
    scene.frame_set(frame)
    sock.send(b"%d" % frame)
"""

FLOOR_PIPE = """
import sys
import bpy
from blender_worker.pipe import MessagePipe
from blender_worker.scenes.cartpole_scene import build_scene

argv = sys.argv[sys.argv.index("--") + 1:]
address, last = argv[0], 502
objs = build_scene(50)
scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, last
rbw = scene.rigidbody_world
rbw.point_cache.frame_start, rbw.point_cache.frame_end = 1, last
pipe = MessagePipe.connect(address)
recv, send = pipe.recv, pipe.send
frame = 1
scene.frame_set(frame)
while True:
    msg = recv()
    if msg == b"stop":
        send(b"bye")
        break
    frame += 1
    if frame >= last:  # like an env reset: rewind the physics
        frame = 1
        objs["motor"].motor_lin_target_velocity = 0.0
        rbw.time_scale = rbw.time_scale
    scene.frame_set(frame)
    send(b"%d" % frame)
"""

ECHO_PIPE = """
import sys
from blender_worker.pipe import MessagePipe
p = MessagePipe.connect(sys.argv[1])
while True:
    m = p.recv()
    p.send(m)
    if m == b"stop":
        break
"""

ECHO = """
import sys, zmq
s = zmq.Context.instance().socket(zmq.REP)
s.connect(sys.argv[1])
while True:
    m = s.recv()
    s.send(m)
    if m == b"stop":
        break
"""
