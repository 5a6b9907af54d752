"""The Blender side of a gymnasium environment, served to ``blendtorch_ray.env.BlenderEnv``.

A Blender script subclasses `BaseEnv`, overrides a few methods and calls ``run()``::

    class MyEnv(BaseEnv):
        def _reset(self, options):          # scene to its initial state (first frame)
            ...
        def _prepare_step(self, action):    # apply the action before the frame advances
            ...
        def _collect(self):                 # after the frame: the 5-tuple gymnasium wants
            return obs, reward, terminated, truncated, info

    launch, env_args, remainder = parse_env_args()
    MyEnv(launch, env_args, frame_range=(1, 10_000)).run()

The driver talks to ``run()`` over one message pipe (``blender_worker.pipe``: length-prefixed
pickles over a stream socket): the driver listens (a unix socket in a private 0700 directory,
or tcp on 127.0.0.1) and ``run()`` connects to ``--btcontrol``. Every request is answered by
exactly one reply, in order. Requests are dicts ``{"cmd": ...}``; replies are dicts,
``{"error": text}`` on failure. Commands: ``hello`` (readiness), ``reset``, ``step``,
``render``, ``close``. ``run()`` returns after ``close``, or when the driver closed the pipe.

Two modes:

* stepped (default, deterministic): the scene advances exactly one frame per ``step``;
  Blender waits for the next action, however long it takes.
* real-time (``--btrealtime``): the simulation free-runs at the scene's frame rate. An action
  that arrives applies to the frame being simulated; without one, frames advance with the
  last action. A ``step`` is answered after the frame its action went into. When an episode
  ends the simulation holds until the next ``reset``.

This module imports only the standard library, numpy and bpy (lazily).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Generic, Optional, TypeVar

import numpy as np

from blender_worker.pipe import MessagePipe, PipeClosed
from blender_worker.protocol import EnvArgs, EnvCommand, LaunchArgs, parse_env_args  # noqa: F401 - EnvArgs, parse_env_args re-exported

ObsType = TypeVar("ObsType")
ActType = TypeVar("ActType")

CONNECT_TIMEOUT_S = 30.0
"""Seconds ``run`` keeps trying to reach the driver's listening socket (it listens before
Blender starts, so the first try normally succeeds)."""

IDLE_POLL_S = 0.1
"""Seconds of one wait for a request in real-time mode while the episode is over."""

class BaseEnv(Generic[ObsType, ActType]):
    """Base class of a Blender-side environment; subclasses implement the episode logic.

    Override:

    * ``_reset(options)``: put the scene into the state of a new episode. Called with the
      scene at the first frame; afterwards the frame is re-evaluated (which also restarts
      rigid-body physics from the objects' current state). Draw randomness from
      ``self.np_random`` (reseeded when the driver passes ``reset(seed=...)``).
    * ``_prepare_step(action)``: apply ``action`` to the scene before the frame advances.
    * ``_collect()``: after the frame was evaluated, return
      ``(obs, reward, terminated, truncated, info)``. Also called after a reset, where only
      ``obs`` and ``info`` are used.
    * ``_render()`` (optional): an (H, W, 3) uint8 RGB frame; the default renders the active
      camera with ``blender_worker.render.Renderer`` and ``render_settings``.

    The base class counts steps and sets ``truncated`` once ``max_episode_steps`` steps were
    taken (when given). ``frameid`` is the current frame, ``steps`` the steps of the episode.

    Args:
        launch: From ``parse_env_args()``; ``control_address`` is where the driver waits.
        env_args: Stepped or real-time mode (from ``parse_env_args()``); None: stepped.
        frame_range: First frame of every episode and the last frame the scene may reach;
            the rigid-body cache is sized to it. An episode that reaches the last frame is
            truncated.
        max_episode_steps: Truncate episodes after this many steps; None: no limit.
        render_settings: A `blender_worker.render.RenderSettings` for the default
            ``_render()``; None: the scene's settings.

    Raises:
        ValueError: No control address (not launched by ``BlenderEnv``), or
            ``frame_range`` has fewer than two frames.
    """

    def __init__(
        self,
        launch: LaunchArgs,
        env_args: Optional[EnvArgs] = None,
        *,
        frame_range: tuple[int, int] = (1, 100_000),
        max_episode_steps: Optional[int] = None,
        render_settings: Any = None,
    ) -> None:
        import bpy

        if not launch.control_address:
            raise ValueError(
                "this Blender was launched without --btcontrol; start it through "
                "blendtorch_ray.env.BlenderEnv so that it has a driver to answer"
            )
        start, end = frame_range
        if end <= start:
            raise ValueError(f"frame_range {frame_range}: need at least two frames (end > start)")
        self.launch = launch
        self.env_args = env_args or EnvArgs()
        self.scene = bpy.context.scene
        self.frame_range = (int(start), int(end))
        self.max_episode_steps = max_episode_steps
        self.render_settings = render_settings
        self.np_random = np.random.default_rng(launch.seed)
        self.frameid = start
        self.steps = 0
        self._renderer = None
        self._episode_over = True
        self._last: Optional[tuple] = None
        self.scene.frame_start, self.scene.frame_end = self.frame_range
        rbw = self.scene.rigidbody_world
        if rbw is not None:
            rbw.point_cache.frame_start, rbw.point_cache.frame_end = self.frame_range

    # ----------------------------------------------------------------- to override
    def _reset(self, options: Optional[dict]) -> None:
        """Put the scene into the initial state of a new episode."""
        raise NotImplementedError

    def _prepare_step(self, action: ActType) -> None:
        """Apply ``action`` before the next frame is simulated."""
        raise NotImplementedError

    def _collect(self) -> tuple[ObsType, float, bool, bool, dict]:
        """Return ``(obs, reward, terminated, truncated, info)`` for the current frame."""
        raise NotImplementedError

    def _render(self) -> np.ndarray:
        """Render the active camera into an (H, W, 3) uint8 RGB array."""
        if self._renderer is None:
            from blender_worker.render import Renderer

            self._renderer = Renderer(self.render_settings)
        return np.ascontiguousarray(self._renderer.render()["image"][..., :3])

    # ----------------------------------------------------------------- episode logic
    def reset(self, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[ObsType, dict]:
        """Start a new episode at the first frame (``run`` calls this for the driver).

        Args:
            seed: Reseeds ``np_random``; None keeps its state.
            options: Passed to ``_reset``.

        Returns:
            ``(obs, info)`` from ``_collect``.
        """
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        start = self.frame_range[0]
        self.scene.frame_set(start)
        self._reset(options)
        self.frameid = start
        self.steps = 0
        # Re-evaluate the first frame: picks up _reset's changes and rewinds physics.
        self.scene.frame_set(start)
        obs, _, _, _, info = self._collect()
        self._episode_over = False
        return obs, info

    def step(self, action: Optional[ActType], apply: bool = True) -> tuple:
        """Apply ``action`` (unless ``apply`` is False), advance one frame, collect.

        Args:
            action: The driver's action, for ``_prepare_step``.
            apply: False advances without applying an action (real-time mode, no new action).

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``truncated`` is also set after
            ``max_episode_steps`` steps and at the end of ``frame_range``.
        """
        if apply:
            self._prepare_step(action)
        self.frameid += 1
        self.steps += 1
        self.scene.frame_set(self.frameid)
        obs, reward, terminated, truncated, info = self._collect()
        if self.max_episode_steps is not None and self.steps >= self.max_episode_steps:
            truncated = True
        if self.frameid >= self.frame_range[1]:
            truncated = True
        terminated, truncated = bool(terminated), bool(truncated)
        self._episode_over = terminated or truncated
        return obs, float(reward), terminated, truncated, info

    # ----------------------------------------------------------------- serving
    @staticmethod
    def recv_request(pipe: MessagePipe, timeout: Optional[float] = None) -> dict:
        """Receive one request of the env channel.

        Args:
            pipe: The env channel (from `connect_driver`).
            timeout: Longest wait in seconds (0: only what already arrived); None: for ever.

        Returns:
            The request dict (``{"cmd": ...}``).

        Raises:
            TimeoutError: No whole request within ``timeout`` (nothing is lost).
            blender_worker.pipe.PipeClosed: The driver closed the channel.
        """
        return pipe.recv(timeout)

    @staticmethod
    def send_reply(pipe: MessagePipe, obj: Any) -> None:
        """Send one reply on the env channel.

        Args:
            pipe: The env channel (from `connect_driver`).
            obj: The reply.

        Raises:
            blender_worker.pipe.PipeClosed: The driver closed the channel.
        """
        pipe.send(obj)

    def run(self) -> None:
        """Serve the driver until it sends ``close`` or closes the channel (if the driver
        process dies, the lifeline ends Blender)."""
        import bpy

        if not bpy.app.background:  # a UI instance (EnvConfig(ui=True)): Blender's event loop serves
            from blender_worker.interactive import serve_env

            return serve_env(self, connect_driver(self.launch))
        pipe = connect_driver(self.launch)
        try:
            if self.env_args.real_time:
                self._serve_real_time(pipe)
            else:
                self._serve_stepped(pipe)
        except PipeClosed:
            print("blender_worker.env: the env channel ended without a close command (the driver closed it)", flush=True)
        finally:
            pipe.close()
            if self._renderer is not None:
                self._renderer.close()

    def _serve_stepped(self, pipe: MessagePipe) -> None:
        step, handle, recv, send = EnvCommand.STEP, self._handle, pipe.recv, pipe.send
        while True:
            request = recv()
            if request.get("cmd") == step and not self._episode_over:  # the hot path, as _handle would
                try:
                    reply = self._last = self.step(request.get("action"))
                except Exception:  # noqa: BLE001 - reported to the driver, which raises it
                    reply = self._last = _error_reply()
                send(reply)
                continue
            reply, done = handle(request)
            send(reply)
            if done:
                return

    def _serve_real_time(self, pipe: MessagePipe) -> None:
        fps = self.env_args.real_time_fps or (self.scene.render.fps / self.scene.render.fps_base)
        period = 1.0 / fps
        pending: Optional[dict] = None  # a step request waiting for the next frame tick
        next_frame = time.monotonic() + period
        while True:
            running = not self._episode_over
            now = time.monotonic()
            if pending is None:
                wait = max(0.0, next_frame - now) if running else IDLE_POLL_S
                if pipe.poll(wait):
                    request = pipe.recv()
                    if request.get("cmd") == EnvCommand.STEP and running:
                        pending = request  # its action goes into the next frame
                        continue
                    if request.get("cmd") == EnvCommand.STEP and self._last is not None:
                        reply, done = self._last, False  # episode over: repeat its last result
                    else:
                        reply, done = self._handle(request)
                    pipe.send(reply)
                    if done:
                        return
                    if request.get("cmd") == EnvCommand.RESET:
                        next_frame = time.monotonic() + period
                    continue
            elif next_frame > now:
                time.sleep(next_frame - now)
            if self._episode_over or time.monotonic() < next_frame:
                continue
            if pending is not None:
                self._last = self._safe(lambda: self.step(pending.get("action")))
                pipe.send(self._last)
                pending = None
            else:  # nobody asked: the simulation goes on with the last action
                self._last = self._safe(lambda: self.step(None, apply=False))
            next_frame = max(next_frame + period, time.monotonic() - period)

    def _handle(self, request: dict) -> tuple[Any, bool]:
        """Answer one request; returns ``(reply, close_now)``."""
        cmd = request.get("cmd")
        if cmd == EnvCommand.HELLO:
            info = {"btid": self.launch.btid, "seed": self.launch.seed, "epoch": self.launch.epoch}
            info["real_time"] = self.env_args.real_time
            return info, False
        if cmd == EnvCommand.RESET:
            self._last = None
            return self._safe(lambda: self.reset(request.get("seed"), request.get("options"))), False
        if cmd == EnvCommand.STEP:
            if self._episode_over:
                return {"error": "step() before reset() or after the episode ended; call reset()"}, False
            self._last = self._safe(lambda: self.step(request.get("action")))
            return self._last, False
        if cmd == EnvCommand.RENDER:
            return self._safe(self._render), False
        if cmd == EnvCommand.CLOSE:
            print("blender_worker.env: the driver closed the env", flush=True)
            return {"closed": True}, True
        return {"error": f"unknown command {cmd!r}"}, False

    def _safe(self, fn) -> Any:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - reported to the driver, which raises it
            return _error_reply()


def connect_driver(launch: LaunchArgs) -> MessagePipe:
    """Connect to the driver's env channel (``--btcontrol``).

    Args:
        launch: The launch arguments; ``control_address`` is where the driver listens.

    Returns:
        The connected pipe.

    Raises:
        OSError: The driver did not listen within ``CONNECT_TIMEOUT_S``.
    """
    return MessagePipe.connect(launch.control_address, CONNECT_TIMEOUT_S)


def _error_reply() -> dict:
    """The reply for the exception being handled: its traceback, printed to the log too."""
    text = traceback.format_exc()
    print(text, flush=True)
    return {"error": text}

