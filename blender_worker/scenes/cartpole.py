"""Cartpole in Blender rigid-body physics (the Blender side of ``blendtorch/CartPole-v0``).

The scene is built here with bpy: a cart on a rail (slider constraint driven by a velocity
motor) with a pole on a hinge. An action pushes the cart: ``0`` left / ``1`` right with
``--force`` newtons (or, with ``--continuous``, a float in [-1, 1] scaling the force).

Observation (float32, shape (4,)): cart position [m], cart velocity [m/s], pole angle
[rad, 0 = upright], pole angular velocity [rad/s]. Reward 1 per step; the episode
terminates when the pole tilts past ``--max-angle`` or the cart leaves ``--max-x``,
and is truncated after ``--max-steps`` steps.

Launched with ``--btnumenvs N`` (``gymnasium.make_vec("blendtorch/CartPole-v0", num_envs=N)``)
the script serves `CartPoleVectorEnv`: N cartpoles in one rigid-body world, stepped by one
frame, each reset on its own (see that class for how a reset leaves the others alone).
"""

import argparse
import math

import bpy
import numpy as np

from blender_worker.env import BaseEnv, parse_env_args
from blender_worker.render import RenderSettings
from blender_worker.vector_env import VectorEnv

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


def prepare_world(fps: int) -> "bpy.types.Scene":
    """Empty the scene of meshes and set up its rigid-body world (``fps`` frames per second,
    10 substeps, 10 solver iterations) and its camera; returns the scene."""
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            bpy.data.objects.remove(obj, do_unlink=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = fps, 1.0
    if scene.rigidbody_world is None:
        bpy.ops.rigidbody.world_add()
    scene.rigidbody_world.substeps_per_frame = 10
    scene.rigidbody_world.solver_iterations = 10
    cam = scene.camera
    cam.location = (0.0, -7.0, 1.8)
    cam.rotation_euler = (math.radians(88), 0.0, 0.0)
    scene.display.shading.color_type = "OBJECT"
    return scene


def build_cartpole(y: float = 0.0, tag: str = "") -> dict:
    """Build one cartpole (rail, cart, pole and their constraints) centred on (0, ``y``, 0).

    Returns:
        ``{"rail", "cart", "pole", "slider", "motor", "hinge"}``: the objects (the motor
        entry is the motor's ``rigid_body_constraint``).
    """
    rail = _box("Rail" + tag, (0.0, y, CART_Z - 0.3), (5.0, 0.05, 0.05), (0.3, 0.3, 0.3, 1.0))
    bpy.ops.rigidbody.object_add(type="PASSIVE")
    cart = _box("Cart" + tag, (0.0, y, CART_Z), CART_HALF, (0.2, 0.4, 0.9, 1.0))
    bpy.ops.rigidbody.object_add(type="ACTIVE")
    cart.rigid_body.mass = 1.0
    pole = _box("Pole" + tag, (0.0, y, PIVOT_Z + POLE_HALF_LEN), (0.04, 0.04, POLE_HALF_LEN), (0.9, 0.5, 0.1, 1.0))
    bpy.ops.rigidbody.object_add(type="ACTIVE")
    pole.rigid_body.mass = 0.1
    for body in (cart, pole):
        body.rigid_body.linear_damping = 0.0
        body.rigid_body.angular_damping = 0.0
        body.rigid_body.use_deactivation = False

    slider = _constraint("Slider" + tag, "SLIDER", (0.0, y, CART_Z), rail, cart)
    motor = _constraint("Motor" + tag, "MOTOR", (0.0, y, CART_Z), cart, rail)
    motor.use_motor_lin = True
    motor.motor_lin_max_impulse = 1000.0
    motor.motor_lin_target_velocity = 0.0
    # Hinge axis is the empty's local Z; rotate it onto the world Y axis.
    hinge = _constraint("Hinge" + tag, "HINGE", (0.0, y, PIVOT_Z), cart, pole, rotation=(math.pi / 2, 0.0, 0.0))
    return {"rail": rail, "cart": cart, "pole": pole, "slider": slider.id_data, "motor": motor, "hinge": hinge.id_data}


def build_scene(fps: int) -> dict:
    """Build the cartpole scene (one cartpole); returns its objects and the motor constraint."""
    prepare_world(fps)
    return build_cartpole()


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


SETTLE_FRAMES = 3
"""Frames a parked cartpole stays kinematic (animated) after it was moved before it may take
over: the move itself, then two frames at rest so that Bullet's kinematic velocity is exactly 0.
Then it waits with "Dynamic" off (``rigid_body.enabled = False``): still immovable for Bullet,
but Blender no longer drives it every substep, which made parked cartpoles cost ~60% of an
active one (64 sub-envs, CPU per frame)."""

TILE_VIEW_WIDTH = 8.0
"""Width in metres that one rendered tile of the vector env shows (the cart's range +-2.4 m
and the pole)."""

_MAX_RESOLUTION = 65536
"""Blender's largest image side in pixels (the vector env's tiles are stacked vertically)."""


def copy_cartpole(template: dict, y: float, tag: str, rail=None, layer: int = 0) -> dict:
    """Copy the cartpole ``template`` (from `build_cartpole` at y = 0) to (0, ``y``, 0).

    Args:
        template: The objects `build_cartpole` returned.
        y: Where the copy goes along the world Y axis.
        tag: Suffix of the copies' names.
        rail: An existing rail to mount the copy on (None: copy the rail too).
        layer: Collision collection of the copy's cart and pole (bodies in different
            collections never collide).

    Returns:
        The same keys as `build_cartpole`.
    """
    collection = bpy.context.scene.collection
    out = {}
    for key in ("rail", "cart", "pole", "slider", "motor", "hinge"):
        if key == "rail" and rail is not None:
            out[key] = rail
            continue
        src = template[key].id_data if key == "motor" else template[key]
        obj = src.copy()
        obj.name = src.name + tag
        obj.location = (src.location[0], src.location[1] + y, src.location[2])
        collection.objects.link(obj)
        out[key] = obj
    for key in ("slider", "motor", "hinge"):
        con = out[key].rigid_body_constraint
        src = (template[key].id_data if key == "motor" else template[key]).rigid_body_constraint
        con.object1 = out[_key_of(template, src.object1)]
        con.object2 = out[_key_of(template, src.object2)]
    out["motor"] = out["motor"].rigid_body_constraint
    for key in ("cart", "pole"):
        out[key].rigid_body.collision_collections = [k == layer for k in range(20)]
    return out


def _key_of(template: dict, obj) -> str:
    return next(k for k in ("rail", "cart", "pole") if template[k] == obj)


class CartPoleVectorEnv(VectorEnv):
    """``num_envs`` cartpoles in one rigid-body world, stepped by one frame (see the module docstring).

    Layout: sub-env ``i`` sits at y = ``i * spacing`` (x = z = 0, so that every cartpole's
    physics runs on the same float coordinates in its plane of motion as the single env's:
    Bullet computes in single precision; measured over 100 random steps, 16 copies 12 m apart
    along X differed from the first by up to 2e-4 rad, 1 m apart along Y by 2.4e-7 rad).
    ``spacing`` is at least 2 m: the slider and the hinge keep every body in the x-z plane of
    its own sub-env (a cart is 0.5 m deep, a pole 0.08 m), so cartpoles of different sub-envs
    stay more than 1.4 m apart and can never touch, whatever their state.

    Reset of one sub-env without disturbing the others: Blender offers no way to set a rigid
    body's velocity. A body switched to "animated" (kinematic) follows its object's transform
    and Bullet derives its velocity from that motion; once it has rested for a frame its
    velocity is exactly 0. So every sub-env has two cartpoles on one rail, in different
    collision collections: the active one is simulated, the parked one waits, kinematic, in
    the pose of the sub-env's next episode (its angle drawn from the sub-env's generator in the
    order a single env draws it). A reset swaps them: the parked cartpole becomes dynamic one
    frame later, at rest, and the old one is parked and moved to the pose after that. Rendering
    hides parked cartpoles.
    """

    def __init__(self, launch, env_args, args) -> None:
        n = int(env_args.num_envs)
        self.args = args
        self.fps = float(args.fps)
        tile_h = TILE_VIEW_WIDTH * args.height / args.width
        self.spacing = max(2.0, math.ceil(tile_h / math.sin(math.radians(45.0)) * 2.0) / 2.0)
        prepare_world(args.fps)
        template = build_cartpole()
        self.sets = []
        for i in range(n):
            first = template if i == 0 else copy_cartpole(template, i * self.spacing, f".{i}a")
            second = copy_cartpole(template, i * self.spacing, f".{i}b", rail=first["rail"], layer=1)
            first["rail"].rigid_body.collision_collections = [k in (0, 1) for k in range(20)]
            self.sets.append((first, second))
        self.total_mass = template["cart"].rigid_body.mass + template["pole"].rigid_body.mass
        self.active = np.zeros(n, dtype=np.int64)
        self._pending: list = [None] * n  # (generator, angle) of each sub-env's next episode
        self._placed = np.zeros((n, 2), dtype=np.int64)  # frame each cartpole was last moved
        self._activate = np.zeros(n, dtype=bool)  # the active cartpole turns dynamic next step
        self._kinematic = np.zeros((n, 2), dtype=bool)  # parked and still settling (animated)
        self._prev = np.zeros((2, n))
        self._renderer = None
        self._tile_camera = None
        super().__init__(launch, env_args, max_episode_steps=args.max_steps)

    # ------------------------------------------------------------------ placement
    def _draw(self, i: int, low: float, high: float) -> float:
        return float(self.np_randoms[i].uniform(low, high))

    def _place(self, i: int, which: int, theta: float, kinematic: bool) -> None:
        objs, y = self.sets[i][which], i * self.spacing
        for key in ("cart", "pole"):
            body = objs[key].rigid_body
            if not body.enabled:
                body.enabled = True
            if body.kinematic != kinematic:
                body.kinematic = kinematic
        self._kinematic[i, which] = kinematic
        objs["motor"].motor_lin_target_velocity = 0.0
        objs["cart"].location = (0.0, y, CART_Z)
        objs["cart"].rotation_euler = (0.0, 0.0, 0.0)
        objs["pole"].rotation_euler = (0.0, theta, 0.0)
        objs["pole"].location = (POLE_HALF_LEN * math.sin(theta), y, PIVOT_Z + POLE_HALF_LEN * math.cos(theta))
        self._placed[i, which] = self.frameid

    def _reset_all(self, options) -> None:
        init = self.args.init_angle
        low, high = -init, init
        if options and "angle" in options:
            low = high = float(options["angle"])
        for i in range(self.num_envs):
            pending = self._pending[i]
            if pending is not None and pending[0] is self.np_randoms[i]:
                theta = low if low == high else pending[1]  # that draw was this episode's
            else:
                theta = self._draw(i, low, high)
            self._place(i, 0, theta, kinematic=False)
            self._pending[i] = (self.np_randoms[i], self._draw(i, -init, init))
            self._place(i, 1, self._pending[i][1], kinematic=True)
            self._placed[i] = self.frameid - SETTLE_FRAMES  # the rebuilt world starts them at rest
        self.active[:] = 0
        self._activate[:] = False
        # Any rigid-body setting touched through RNA marks the physics cache outdated, so the
        # simulation restarts from the objects' new state instead of replaying the cache.
        world = bpy.context.scene.rigidbody_world
        world.time_scale = world.time_scale

    def _reset_one(self, i: int) -> None:
        old = int(self.active[i])
        new = 1 - old
        if self.frameid - self._placed[i, new] < SETTLE_FRAMES - 1:
            print(f"cartpole: sub-env {i} reset {self.frameid - self._placed[i, new]} frames after its "
                  "cartpole was parked; its first velocities may not be exactly 0", flush=True)
        self.active[i] = new
        self._activate[i] = True
        theta = self._draw(i, -self.args.init_angle, self.args.init_angle)
        self._pending[i] = (self.np_randoms[i], theta)
        self._place(i, old, theta, kinematic=True)

    # ------------------------------------------------------------------ stepping
    def _prepare_steps(self, actions, acting) -> None:
        if self.args.continuous:
            push = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.num_envs, -1)[:, 0], -1.0, 1.0) * self.args.force
        else:
            push = np.where(np.asarray(actions).reshape(self.num_envs) == 1, self.args.force, -self.args.force)
        dv = (push / self.total_mass / self.fps).tolist()
        if self._kinematic.any():
            settled = self._kinematic & (self.frameid - self._placed >= SETTLE_FRAMES)
            for i, which in zip(*np.nonzero(settled)):
                if which != self.active[i] or self._activate[i]:  # parked: from animated to "Dynamic" off
                    for key in ("cart", "pole"):
                        self.sets[i][which][key].rigid_body.kinematic = False
                        self.sets[i][which][key].rigid_body.enabled = False
                    self._kinematic[i, which] = False
        activate = self._activate
        for i, (pair, which, act) in enumerate(zip(self.sets, self.active.tolist(), acting.tolist())):
            if not act:
                continue
            objs = pair[which]
            if activate[i]:
                for key in ("cart", "pole"):
                    objs[key].rigid_body.kinematic = False
                    objs[key].rigid_body.enabled = True
                self._kinematic[i, which] = False
                activate[i] = False
            objs["motor"].motor_lin_target_velocity += dv[i]

    def _collect(self, started):
        active = [pair[which] for pair, which in zip(self.sets, self.active.tolist())]
        x = np.array([objs["cart"].matrix_world.translation[0] for objs in active])
        angle = np.array([objs["pole"].matrix_world.to_euler("XYZ")[1] for objs in active])
        prev = np.where(started, np.stack([x, angle]), self._prev)
        obs = np.stack([x, (x - prev[0]) * self.fps, angle, (angle - prev[1]) * self.fps], axis=1).astype(np.float32)
        self._prev = np.stack([x, angle])
        terminated = (np.abs(angle) > self.args.max_angle) | (np.abs(x) > self.args.max_x)
        return obs, np.ones(self.num_envs), terminated, {}

    # ------------------------------------------------------------------ rendering
    def _render_tiles(self) -> np.ndarray:
        n, w, h = self.num_envs, self.args.width, self.args.height
        if self._renderer is None:
            if n * h > _MAX_RESOLUTION:
                raise ValueError(f"rendering {n} sub-envs of height {h} needs an image {n * h} px tall; "
                                 f"Blender renders at most {_MAX_RESOLUTION}: lower height or num_envs")
            from blender_worker.render import Renderer

            self._tile_camera = _tile_camera(n, self.spacing, w, h)
            self.scene.camera = self._tile_camera
            self._renderer = Renderer(RenderSettings(engine="workbench", resolution=(w, n * h), workbench_aa="OFF"))
            self.scene.render.dither_intensity = 0.0  # no per-pixel noise: equal states give equal tiles
        for i, pair in enumerate(self.sets):
            for which, objs in enumerate(pair):
                hide = which != self.active[i]
                for key in ("cart", "pole"):
                    if objs[key].hide_render != hide:
                        objs[key].hide_render = hide
        image = self._renderer.render()["image"][..., :3]
        # Sub-env 0 is nearest to the camera, at the bottom of the image.
        return np.ascontiguousarray(image.reshape(n, h, w, 3)[::-1])


def _tile_camera(n: int, spacing: float, width: int, height: int) -> "bpy.types.Object":
    """An orthographic camera that sees sub-env ``i`` in the ``i``-th tile from the bottom of a
    (``n * height``, ``width``) image: it looks along +Y and down at the angle where the
    cartpoles ``spacing`` apart are one tile height apart in the image."""
    tile_h = TILE_VIEW_WIDTH * height / width
    alpha = math.asin(tile_h / spacing)
    data = bpy.data.cameras.new("TileCamera")
    data.type = "ORTHO"
    data.sensor_fit = "HORIZONTAL"
    data.ortho_scale = TILE_VIEW_WIDTH
    distance = n * spacing + 20.0
    data.clip_start, data.clip_end = 0.1, 2.0 * distance + 20.0
    cam = bpy.data.objects.new("TileCamera", data)
    bpy.context.scene.collection.objects.link(cam)
    centre = np.array([0.0, (n - 1) / 2.0 * spacing, (CART_Z - 0.3 + PIVOT_Z + 2 * POLE_HALF_LEN) / 2.0])
    direction = np.array([0.0, math.cos(alpha), -math.sin(alpha)])
    cam.location = tuple(centre - distance * direction)
    cam.rotation_euler = (math.pi / 2 - alpha, 0.0, 0.0)
    return cam


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
        CartPoleVectorEnv(launch, env_args, args).run()
    else:
        CartPoleEnv(launch, env_args, args).run()


if __name__ == "__main__":  # run by Blender; benchmarks/env_steps.py imports build_scene
    main()
