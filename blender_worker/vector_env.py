"""The Blender side of a vector env: N copies of an env in one scene, stepped by one frame.

A Blender script subclasses `VectorEnv`, builds ``num_envs`` copies of its objects (spaced
apart so that they cannot touch), overrides a few batch methods and calls ``run()``::

    class MyVectorEnv(VectorEnv):
        def _reset_all(self, options):         # every copy to a new episode (first frame)
            ...
        def _reset_one(self, i):               # copy i only, mid-simulation (autoreset)
            ...
        def _prepare_steps(self, actions, acting):   # apply actions[i] where acting[i]
            ...
        def _collect(self, started):           # after the frame, one array per quantity
            return obs, rewards, terminated, info

    launch, env_args, remainder = parse_env_args()
    MyVectorEnv(launch, env_args, frame_range=(1, 20_000)).run()

The driver (``blendtorch_ray.vector_env.BlenderVectorEnv``) launches Blender with
``--btnumenvs N`` and talks to ``run()`` over the same message pipe as a single env
(``blender_worker.env``, ``blender_worker.pipe``), with the vector commands of ``blender_worker.protocol.EnvCommand``:
``hello`` (answered with ``num_envs``), ``vreset``, ``vstep``, ``render``, ``close``. Every
reply carries one numpy array per quantity with the sub-envs along axis 0, so a step of 256
sub-envs is one small message (``blender_worker.pipe.MessagePipe.send``), not 256.

Autoreset follows gymnasium's next-step mode: a sub-env whose episode ended (terminated or
truncated) in one step is reset by the next step, which ignores its action and returns its
first observation with reward 0 and both flags False. Only that sub-env is reset
(``_reset_one``); the others go on. Sub-env ``i`` has its own generator
``np_randoms[i]``, seeded ``seed + i`` by ``reset(seed=seed)`` (as gymnasium's vector envs seed
their sub-envs), so sub-env ``i`` draws what a single env reset with ``seed + i`` draws.

The scene's frame only moves forward between full resets. Blender's rigid-body cache keeps
every frame since the last full reset in memory (about 30 bytes per body and frame), and
each frame costs more than the one before (Blender walks the cached frames: measured +15 us
per 1,000 frames), so ``frame_range`` bounds both: when its last frame is reached every
sub-env is truncated and the next step starts them all from the first frame again (one full
reset). By default the window is ``MAX_WINDOW`` frames, shortened so that the cache stays
within ``CACHE_BUDGET_BYTES``.

This module imports only the standard library, numpy and bpy (lazily).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from blender_worker.env import _error_reply, connect_driver
from blender_worker.pipe import PipeClosed
from blender_worker.protocol import EnvArgs, EnvCommand, LaunchArgs

MAX_WINDOW = 20_000
"""Most frames between two full resets (see the module docstring)."""

MIN_WINDOW = 1_000
"""Fewest frames between two full resets, whatever the cache budget."""

CACHE_BUDGET_BYTES = 256 * 2**20
"""Memory the rigid-body cache may take before a full reset (shortens the window for
scenes with many bodies)."""

CACHE_BYTES_PER_BODY_FRAME = 32
"""What Blender's rigid-body cache holds per body and frame (location and rotation, and its
bookkeeping; measured ~29 bytes)."""


def default_frame_range(num_bodies: int) -> tuple[int, int]:
    """The frame window of a vector env whose rigid-body world holds ``num_bodies`` bodies.

    Args:
        num_bodies: Rigid bodies in the scene.

    Returns:
        ``(1, 1 + window)``: ``MAX_WINDOW`` frames, fewer if the cache would exceed
        ``CACHE_BUDGET_BYTES``, at least ``MIN_WINDOW``.
    """
    window = CACHE_BUDGET_BYTES // max(1, num_bodies * CACHE_BYTES_PER_BODY_FRAME)
    return 1, 1 + int(min(MAX_WINDOW, max(MIN_WINDOW, window)))


class VectorEnv:
    """Base class of a Blender-side vector env; subclasses implement the batch logic.

    Override:

    * ``_reset_all(options)``: put every sub-env into the state of a new episode. Called with
      the scene at the first frame; afterwards the frame is re-evaluated (which restarts
      rigid-body physics from the objects' current state, as ``BaseEnv.reset`` does).
    * ``_reset_one(i)``: start a new episode of sub-env ``i`` in the middle of the
      simulation, without touching the others. Draw from ``self.np_randoms[i]``.
    * ``_prepare_steps(actions, acting)``: apply ``actions[i]`` to sub-env ``i`` for every
      ``i`` with ``acting[i]`` (the others are being reset) before the frame advances.
    * ``_collect(started)``: after the frame, ``(obs, rewards, terminated, info)``: ``obs``
      an array with ``num_envs`` rows, ``rewards`` and ``terminated`` arrays of
      ``num_envs``, ``info`` a dict of such arrays. ``started[i]`` is True where sub-env
      ``i`` just began an episode: its row is the first observation of that episode.
    * ``_render_tiles()`` (optional): an ``(num_envs, H, W, 3)`` uint8 array, one image per
      sub-env; the default raises ``NotImplementedError``.

    The base class counts steps per sub-env and truncates after ``max_episode_steps``, and
    implements the autoreset of the module docstring.

    Args:
        launch: From ``parse_env_args()``; ``control_address`` is where the driver waits.
        env_args: From ``parse_env_args()``; ``num_envs`` is the number of sub-envs.
        frame_range: First frame and the last frame before a full reset (see the module
            docstring); the rigid-body cache is sized to it. None: `default_frame_range`
            for the bodies the scene holds.
        max_episode_steps: Truncate episodes after this many steps; None: no limit.

    Raises:
        ValueError: No control address, no ``num_envs`` (the driver did not ask for a
            vector env), ``num_envs < 1``, or ``frame_range`` with fewer than two frames.
    """

    def __init__(
        self,
        launch: LaunchArgs,
        env_args: EnvArgs,
        *,
        frame_range: Optional[tuple[int, int]] = None,
        max_episode_steps: Optional[int] = None,
    ) -> None:
        import bpy

        if not launch.control_address:
            raise ValueError(
                "this Blender was launched without --btcontrol; start it through "
                "blendtorch_ray.vector_env.BlenderVectorEnv so that it has a driver to answer"
            )
        if env_args.num_envs is None or env_args.num_envs < 1:
            raise ValueError(
                f"--btnumenvs {env_args.num_envs}: a vector env needs num_envs >= 1; start it through "
                "blendtorch_ray.vector_env.BlenderVectorEnv(num_envs=...)"
            )
        scene = bpy.context.scene
        if frame_range is None:
            rbw = scene.rigidbody_world
            frame_range = default_frame_range(len(rbw.collection.objects) if rbw and rbw.collection else 0)
        start, end = frame_range
        if end <= start:
            raise ValueError(f"frame_range {frame_range}: need at least two frames (end > start)")
        self.launch = launch
        self.env_args = env_args
        self.num_envs = int(env_args.num_envs)
        self.scene = bpy.context.scene
        self.frame_range = (int(start), int(end))
        self.max_episode_steps = max_episode_steps
        self.np_randoms = [np.random.default_rng(launch.seed + i) for i in range(self.num_envs)]
        self.frameid = start
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self._ended = np.ones(self.num_envs, dtype=bool)
        self._started = False
        self.scene.frame_start, self.scene.frame_end = self.frame_range
        rbw = self.scene.rigidbody_world
        if rbw is not None:
            rbw.point_cache.frame_start, rbw.point_cache.frame_end = self.frame_range

    # ----------------------------------------------------------------- to override
    def _reset_all(self, options: Optional[dict]) -> None:
        """Put every sub-env into the initial state of a new episode (scene at the first frame)."""
        raise NotImplementedError

    def _reset_one(self, i: int) -> None:
        """Start a new episode of sub-env ``i`` without disturbing the others."""
        raise NotImplementedError

    def _prepare_steps(self, actions: np.ndarray, acting: np.ndarray) -> None:
        """Apply ``actions[i]`` where ``acting[i]`` before the next frame is simulated."""
        raise NotImplementedError

    def _collect(self, started: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Return ``(obs, rewards, terminated, info)`` of all sub-envs for the current frame."""
        raise NotImplementedError

    def _render_tiles(self) -> np.ndarray:
        """One (H, W, 3) uint8 image per sub-env, stacked along axis 0."""
        raise NotImplementedError(f"{type(self).__name__} does not render; override _render_tiles()")

    # ----------------------------------------------------------------- episode logic
    def reset(self, seed: Optional[Sequence[Optional[int]]] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        """Start a new episode of every sub-env at the first frame (``run`` calls this).

        Args:
            seed: One seed (or None: keep the generator) per sub-env; None: keep them all.
            options: Passed to ``_reset_all``.

        Returns:
            ``(obs, info)`` from ``_collect``.

        Raises:
            ValueError: ``seed`` does not hold ``num_envs`` entries.
        """
        if seed is not None:
            if len(seed) != self.num_envs:
                raise ValueError(f"reset(seed=...): {len(seed)} seeds for {self.num_envs} sub-envs")
            for i, s in enumerate(seed):
                if s is not None:
                    self.np_randoms[i] = np.random.default_rng(int(s))
        start = self.frame_range[0]
        self.scene.frame_set(start)
        self._reset_all(options)
        self.frameid = start
        self.steps[:] = 0
        # Re-evaluate the first frame: picks up _reset_all's changes and rewinds physics.
        self.scene.frame_set(start)
        obs, _, _, info = self._collect(np.ones(self.num_envs, dtype=bool))
        self._ended[:] = False
        self._started = True
        return obs, info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Reset the sub-envs that ended, apply the others' actions, advance one frame, collect.

        Args:
            actions: One action per sub-env along axis 0 (ignored for sub-envs being reset).

        Returns:
            ``(obs, rewards, terminated, truncated, info)``, one array each (``info`` a dict
            of arrays), ``num_envs`` rows; see the module docstring for autoreset.

        Raises:
            ValueError: ``actions`` does not have ``num_envs`` rows.
        """
        actions = np.asarray(actions)
        if actions.ndim == 0 or actions.shape[0] != self.num_envs:
            raise ValueError(f"step(): actions of shape {actions.shape}, expected {self.num_envs} rows")
        if self.frameid >= self.frame_range[1] or bool(self._ended.all()):
            return self._full_restart()
        started = self._ended.copy()
        for i in np.flatnonzero(started):
            self._reset_one(int(i))
        self.steps[started] = 0
        self._prepare_steps(actions, ~started)
        self.frameid += 1
        self.scene.frame_set(self.frameid)
        obs, rewards, terminated, info = self._collect(started)
        self.steps[~started] += 1
        rewards = np.asarray(rewards, dtype=np.float64)
        terminated = np.asarray(terminated, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = self.steps >= self.max_episode_steps
        else:
            truncated = np.zeros(self.num_envs, dtype=bool)
        if self.frameid >= self.frame_range[1]:  # the cache is full: every episode ends here
            truncated = np.ones(self.num_envs, dtype=bool)
        rewards[started] = 0.0
        terminated[started] = False
        truncated[started] = False
        truncated &= ~terminated
        self._ended = terminated | truncated
        return obs, rewards, terminated, truncated, info

    def _full_restart(self) -> tuple:
        """The autoreset step when every sub-env ended (or the last frame was reached): one
        full reset, without new seeds or options."""
        obs, info = self.reset()
        zeros = np.zeros(self.num_envs, dtype=bool)
        return obs, np.zeros(self.num_envs, dtype=np.float64), zeros, zeros.copy(), info

    # ----------------------------------------------------------------- serving
    def run(self) -> None:
        """Serve the driver until it sends ``close`` or closes the channel (if the driver
        process dies, the lifeline ends Blender)."""
        pipe = connect_driver(self.launch)
        recv, send, handle = pipe.recv, pipe.send, self._handle
        try:
            while True:
                reply, done = handle(recv())
                send(reply)
                if done:
                    return
        except PipeClosed:
            print("blender_worker.vector_env: the env channel ended without a close command (the driver closed it)", flush=True)
        finally:
            pipe.close()

    def _handle(self, request: dict) -> tuple[Any, bool]:
        """Answer one request; returns ``(reply, close_now)``."""
        cmd = request.get("cmd")
        try:
            if cmd == EnvCommand.VECTOR_STEP:
                if not self._started:
                    return {"error": "step() before reset(); call reset()"}, False
                return self.step(request["actions"]), False
            if cmd == EnvCommand.VECTOR_RESET:
                return self.reset(request.get("seed"), request.get("options")), False
            if cmd == EnvCommand.HELLO:
                return {"btid": self.launch.btid, "seed": self.launch.seed, "epoch": self.launch.epoch,
                        "real_time": False, "num_envs": self.num_envs}, False
            if cmd == EnvCommand.RENDER:
                return np.ascontiguousarray(self._render_tiles()), False
            if cmd == EnvCommand.CLOSE:
                print("blender_worker.vector_env: the driver closed the env", flush=True)
                return {"closed": True}, True
        except Exception:  # noqa: BLE001 - reported to the driver, which raises it
            return _error_reply(), False
        return {"error": f"unknown command {cmd!r} (a vector env answers {EnvCommand.VECTOR_RESET!r}, "
                         f"{EnvCommand.VECTOR_STEP!r}, {EnvCommand.RENDER!r})"}, False
