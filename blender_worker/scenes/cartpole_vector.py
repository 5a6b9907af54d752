"""``num_envs`` cartpoles in one rigid-body world: the Blender side of
``gymnasium.make_vec("blendtorch/CartPole-v0", num_envs=N)`` (``blender_worker.scenes.cartpole``
serves it when launched with ``--btnumenvs``). See `CartPoleVectorEnv`.
"""

import math

import bpy
import numpy as np

from blender_worker.render import RenderSettings
from blender_worker.scenes.cartpole_scene import CART_Z, PIVOT_Z, POLE_HALF_LEN, build_cartpole, copy_cartpole, prepare_world
from blender_worker.vector_env import VectorEnv

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
