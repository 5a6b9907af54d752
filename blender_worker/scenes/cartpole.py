"""Cartpole in Blender rigid-body physics (the Blender side of ``blendtorch/CartPole-v0``).

The scene (built with bpy by ``blender_worker.scenes.cartpole_scene``) is a cart on a rail
(slider constraint driven by a velocity motor) with a pole on a hinge. An action pushes the cart: ``0`` left / ``1`` right with
``--force`` newtons (or, with ``--continuous``, a float in [-1, 1] scaling the force).

Observation (float32, shape (4,)): cart position [m], cart velocity [m/s], pole angle
[rad, 0 = upright], pole angular velocity [rad/s]. Reward 1 per step; the episode
terminates when the pole tilts past ``--max-angle`` or the cart leaves ``--max-x``,
and is truncated after ``--max-steps`` steps.

Launched with ``--btnumenvs N`` (``gymnasium.make_vec("blendtorch/CartPole-v0", num_envs=N)``)
the script serves ``blender_worker.scenes.cartpole_vector.CartPoleVectorEnv``: N cartpoles in
one rigid-body world, stepped by one frame, each reset on its own (see that class for how a
reset leaves the others alone). The scene itself is built by ``cartpole_scene``.
"""

import argparse
import math

import bpy
import numpy as np

from blender_worker.env import BaseEnv, parse_env_args
from blender_worker.render import RenderSettings
from blender_worker.scenes.cartpole_scene import CART_Z, PIVOT_Z, POLE_HALF_LEN, build_scene


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
    if env_args.num_envs is not None:
        from blender_worker.scenes.cartpole_vector import CartPoleVectorEnv

        CartPoleVectorEnv(launch, env_args, args).run()
    else:
        CartPoleEnv(launch, env_args, args).run()


if __name__ == "__main__":  # run by Blender
    main()
