"""Cartpole in Blender rigid-body physics (the Blender side of ``blendtorch/CartPole-v0``).

The scene is built here with bpy: a cart on a rail (slider constraint driven by a velocity
motor) with a pole on a hinge. An action pushes the cart: ``0`` left / ``1`` right with
``--force`` newtons (or, with ``--continuous``, a float in [-1, 1] scaling the force).

Observation (float32, shape (4,)): cart position [m], cart velocity [m/s], pole angle
[rad, 0 = upright], pole angular velocity [rad/s]. Reward 1 per step; the episode
terminates when the pole tilts past ``--max-angle`` or the cart leaves ``--max-x``,
and is truncated after ``--max-steps`` steps.
"""

import argparse
import math

import bpy
import numpy as np

from blender_worker.env import BaseEnv, parse_env_args
from blender_worker.render import RenderSettings

CART_Z = 1.0
CART_HALF = (0.4, 0.25, 0.15)
POLE_HALF_LEN = 0.5
PIVOT_Z = CART_Z + CART_HALF[2]


def _box(name: str, location, half, color) -> "bpy.types.Object":
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=location)
    obj = bpy.context.active_object
    obj.name = name
    obj.scale = half
    bpy.ops.object.transform_apply(location=False, rotation=False, scale=True)
    obj.color = color
    return obj


def _constraint(name: str, kind: str, location, a, b, rotation=(0.0, 0.0, 0.0)) -> "bpy.types.RigidBodyConstraint":
    bpy.ops.object.empty_add(location=location, rotation=rotation)
    empty = bpy.context.active_object
    empty.name = name
    bpy.ops.rigidbody.constraint_add(type=kind)
    con = empty.rigid_body_constraint
    con.object1, con.object2 = a, b
    con.disable_collisions = True
    return con


def build_scene(fps: int) -> dict:
    """Build the cartpole scene; returns its objects and the motor constraint."""
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj, do_unlink=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = fps, 1.0
    if scene.rigidbody_world is None:
        bpy.ops.rigidbody.world_add()
    scene.rigidbody_world.substeps_per_frame = 10
    scene.rigidbody_world.solver_iterations = 10

    rail = _box("Rail", (0.0, 0.0, CART_Z - 0.3), (5.0, 0.05, 0.05), (0.3, 0.3, 0.3, 1.0))
    bpy.ops.rigidbody.object_add(type="PASSIVE")
    cart = _box("Cart", (0.0, 0.0, CART_Z), CART_HALF, (0.2, 0.4, 0.9, 1.0))
    bpy.ops.rigidbody.object_add(type="ACTIVE")
    cart.rigid_body.mass = 1.0
    pole = _box("Pole", (0.0, 0.0, PIVOT_Z + POLE_HALF_LEN), (0.04, 0.04, POLE_HALF_LEN), (0.9, 0.5, 0.1, 1.0))
    bpy.ops.rigidbody.object_add(type="ACTIVE")
    pole.rigid_body.mass = 0.1
    for body in (cart, pole):
        body.rigid_body.linear_damping = 0.0
        body.rigid_body.angular_damping = 0.0
        body.rigid_body.use_deactivation = False

    _constraint("Slider", "SLIDER", (0.0, 0.0, CART_Z), rail, cart)
    motor = _constraint("Motor", "MOTOR", (0.0, 0.0, CART_Z), cart, rail)
    motor.use_motor_lin = True
    motor.motor_lin_max_impulse = 1000.0
    motor.motor_lin_target_velocity = 0.0
    # Hinge axis is the empty's local Z; rotate it onto the world Y axis.
    _constraint("Hinge", "HINGE", (0.0, 0.0, PIVOT_Z), cart, pole, rotation=(math.pi / 2, 0.0, 0.0))

    cam = scene.camera
    cam.location = (0.0, -7.0, 1.8)
    cam.rotation_euler = (math.radians(88), 0.0, 0.0)
    scene.display.shading.color_type = "OBJECT"
    return {"cart": cart, "pole": pole, "motor": motor}


class CartPoleEnv(BaseEnv):
    """Balance the pole by pushing the cart (see the module docstring)."""

    def __init__(self, launch, env_args, args) -> None:
        objs = build_scene(args.fps)
        self.cart, self.pole, self.motor = objs["cart"], objs["pole"], objs["motor"]
        self.args = args
        self.fps = float(args.fps)
        self.total_mass = self.cart.rigid_body.mass + self.pole.rigid_body.mass
        super().__init__(
            launch,
            env_args,
            frame_range=(1, args.max_steps + 2),
            max_episode_steps=args.max_steps,
            render_settings=RenderSettings(engine="workbench", resolution=(args.width, args.height), workbench_aa="OFF"),
        )
        self._prev = np.zeros(2)

    def _state(self) -> tuple[float, float]:
        x = self.cart.matrix_world.translation[0]
        angle = self.pole.matrix_world.to_euler("XYZ")[1]
        return float(x), float(angle)

    def _reset(self, options) -> None:
        low, high = -self.args.init_angle, self.args.init_angle
        if options and "angle" in options:
            low = high = float(options["angle"])
        theta = float(self.np_random.uniform(low, high))
        self.motor.motor_lin_target_velocity = 0.0
        self.cart.location = (0.0, 0.0, CART_Z)
        self.cart.rotation_euler = (0.0, 0.0, 0.0)
        # Rotate the pole about the hinge pivot.
        self.pole.rotation_euler = (0.0, theta, 0.0)
        self.pole.location = (POLE_HALF_LEN * math.sin(theta), 0.0, PIVOT_Z + POLE_HALF_LEN * math.cos(theta))
        # Any rigid-body setting touched through RNA marks the physics cache outdated, so the
        # simulation restarts from the objects' new state instead of replaying the cache.
        world = bpy.context.scene.rigidbody_world
        world.time_scale = world.time_scale
        self._prev = None

    def _prepare_step(self, action) -> None:
        if self.args.continuous:
            force = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0)) * self.args.force
        else:
            force = self.args.force if int(action) == 1 else -self.args.force
        # Constant acceleration over one frame: v <- v + (f / m) * dt.
        self.motor.motor_lin_target_velocity += force / self.total_mass / self.fps

    def _collect(self):
        x, angle = self._state()
        prev = self._prev if self._prev is not None else (x, angle)
        obs = np.array([x, (x - prev[0]) * self.fps, angle, (angle - prev[1]) * self.fps], dtype=np.float32)
        self._prev = (x, angle)
        terminated = abs(angle) > self.args.max_angle or abs(x) > self.args.max_x
        return obs, 1.0, terminated, False, {}


def main() -> None:
    launch, env_args, remainder = parse_env_args()
    parser = argparse.ArgumentParser(prog="cartpole")
    parser.add_argument("--fps", type=int, default=50, help="simulation steps per second")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--force", type=float, default=10.0, help="push in newtons")
    parser.add_argument("--continuous", action="store_true", help="action is a float in [-1, 1]")
    parser.add_argument("--init-angle", type=float, default=0.05, help="initial pole angle range [rad]")
    parser.add_argument("--max-angle", type=float, default=0.2095)
    parser.add_argument("--max-x", type=float, default=2.4)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args(remainder)
    CartPoleEnv(launch, env_args, args).run()


if __name__ == "__main__":  # run by Blender; benchmarks/env_steps.py imports build_scene
    main()
