"""A ``gymnasium.Env`` whose simulation runs in its own Blender process.

``BlenderEnv`` launches Blender (bpy wheel or binary, see ``blendtorch_ray.blender``) with a
script that subclasses ``blender_worker.env.BaseEnv``, and talks to it over one message pipe
(``blender_worker.pipe``: length-prefixed pickles over a stream socket, one request and one
reply at a time): this side listens (a unix socket in a private 0700 directory, or tcp on
127.0.0.1), Blender connects.
Blender starts lazily on the first ``reset()`` (so that building an env to read its spaces,
as vector envs and RLlib do, costs no process) or on ``start()``.

Failure handling: every wait is bounded and checks that Blender still lives. A Blender that
dies raises ``BlenderCrashedError`` (with the log tail); a silent one ``EnvTimeout``. After
either, the next ``reset()`` starts a fresh Blender. Blender ends on ``close()``, on garbage
collection and at interpreter exit; if this process is killed, Blender's lifeline ends it.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from blender_worker.pipe import MessagePipe, PipeClosed, PipeListener
from blender_worker.protocol import EnvArgs, EnvCommand, LaunchArgs
from blendtorch_ray.blender import find_blender
from blendtorch_ray.config import BlenderSpec
from blendtorch_ray.extras import require
from blendtorch_ray.errors import BlenderCrashedError, BlenderEnvError, BlenderStartError, EnvTimeout  # noqa: F401 - re-exported
from blendtorch_ray.process import BlenderProcess
from blendtorch_ray.transport import PrivateDir, owned_prefix

gym = require("gymnasium", "rl", "blendtorch_ray.env (Blender scenes as gymnasium environments)")

log = logging.getLogger("blendtorch_ray")

ALIVE_CHECK_MS = 100
"""Milliseconds between two checks that Blender still lives while a request waits."""

EXIT_WAIT_S = 2.0
"""Seconds to wait for Blender's exit code once it closed the pipe (it closes when it exits),
so that the error names how it ended."""

CLOSE_REPLY_WAIT_MS = 2000
"""Milliseconds ``close`` waits for Blender to acknowledge the ``close`` command before it
terminates the process anyway."""


@dataclass
class EnvConfig(BlenderSpec):
    """How ``BlenderEnv`` launches and talks to its Blender.

    What to run (``script``, ``scene``, ``blender``, ``env``, ``log_dir``) is a
    `blendtorch_ray.config.BlenderSpec`, as for a streaming group; ``script`` subclasses
    ``blender_worker.env.BaseEnv`` and calls ``run()``.

    Raises:
        FileNotFoundError: ``script`` or ``scene`` does not exist.
        ValueError, TypeError: A value is out of range or of the wrong type.
    """

    script_args: Sequence[str] = ()
    """Extra command line arguments for the script."""
    real_time: bool = False
    """Free-running simulation (late actions apply to the current frame) instead of stepped."""
    real_time_fps: Optional[float] = None
    """Frame rate in real-time mode; None = the scene's."""
    btid: int = 0
    """Instance id passed to Blender (``--btid``); shows in logs and errors."""
    seed: int = 0
    """Launch seed (``--btseed``): seeds Blender's ``np_random`` until ``reset(seed=...)``."""
    transport: str = "ipc"
    """"ipc" (unix socket in a private 0700 dir) or "tcp" (127.0.0.1, random port)."""
    start_timeout: float = 120.0
    """Seconds for Blender to start and answer its readiness handshake."""
    step_timeout: float = 60.0
    """Seconds for any one request (reset, step, render) to be answered."""

    def __post_init__(self) -> None:
        super().__post_init__()
        from blendtorch_ray import validation

        own = "EnvConfig"
        validation.one_of("transport", self.transport, ("ipc", "tcp"), owner=own)
        validation.optional_positive("real_time_fps", self.real_time_fps, owner=own, unit="frames per second",
                                     example=30, hint="None: the scene's frame rate")
        validation.non_negative_int("btid", self.btid, owner=own, example=0)
        validation.non_negative_int("seed", self.seed, owner=own, example=0, hint="numpy's default_rng takes seeds >= 0")
        validation.positive("start_timeout", self.start_timeout, owner=own, unit="seconds", example=120)
        validation.positive("step_timeout", self.step_timeout, owner=own, unit="seconds", example=60)


class _Connection:
    """One Blender process and the message pipe that talks to it.

    The listener is bound before Blender starts; ``BlenderEnv._exchange`` accepts Blender's
    connection on the first request (``pipe`` is None until then) and closes the listener.
    ``in_flight``: a request was sent whose reply was not received yet (an interrupted
    exchange); the next exchange reads that reply first, so requests and replies stay paired.
    """

    def __init__(self, config: EnvConfig, epoch: int, num_envs: Optional[int] = None) -> None:
        self.config = config
        self.dir = PrivateDir(prefix=owned_prefix(f"env{config.btid}"))
        try:
            self.listener = PipeListener(config.transport, self.dir.path, "env")
        except BaseException:
            self.dir.cleanup()
            raise
        self.pipe: Optional[MessagePipe] = None
        self.in_flight = False
        self.address = self.listener.address
        log_dir = config.log_dir or self.dir.path
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"env-{config.btid}-{epoch}-{os.getpid()}.log")
        args = LaunchArgs(btid=config.btid, seed=config.seed, epoch=epoch, control_address=self.address,
                          parent_pid=os.getpid()).to_argv()
        args += EnvArgs(real_time=config.real_time, real_time_fps=config.real_time_fps, num_envs=num_envs).to_argv()
        try:
            self.proc = BlenderProcess(
                find_blender(config.blender, ui=config.ui), config.script, config.scene,
                [*args, *config.script_args], self.log_path, env=config.env or None,
            )
        except BaseException:
            self.listener.close()
            self.dir.cleanup()
            raise
        self.ready = False

    def close(self) -> None:
        """End Blender (asking nicely first if it is idle) and release the sockets and dir."""
        pipe = self.pipe
        if pipe is not None and self.ready and not self.in_flight and self.proc.alive():
            try:
                pipe.send({"cmd": EnvCommand.CLOSE})
                pipe.recv(CLOSE_REPLY_WAIT_MS / 1000)
            except (OSError, EOFError, ValueError) as exc:  # best effort: terminate() below ends Blender anyway
                log.debug("env btid=%d: close command not answered (%s: %s)", self.config.btid, type(exc).__name__, exc)
        self.proc.terminate()
        if pipe is not None:
            pipe.close()
        self.listener.close()
        self.dir.cleanup()


def _close_connection(holder: list) -> None:
    """Finalizer (GC or interpreter exit): close whatever connection the env still holds."""
    if holder and holder[0] is not None:
        conn, holder[0] = holder[0], None
        conn.close()


class BlenderEnv(gym.Env):
    """A gymnasium environment simulated by a Blender script (see the module docstring).

    Subclasses (or ``gymnasium.make`` kwargs) give the spaces; Blender computes everything
    else. ``render_mode="rgb_array"`` makes ``render()`` return Blender's frame as an
    (H, W, 3) uint8 array. ``epoch`` counts the Blender restarts.

    Args:
        config: How to launch and talk to Blender.
        observation_space: The env's observation space.
        action_space: The env's action space.
        render_mode: None or "rgb_array".

    Raises:
        ValueError: ``render_mode`` is not supported.

    Example:
        An env around your own Blender script::

            env = BlenderEnv(EnvConfig(script="my_env.py"),
                             gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2))
            obs, info = env.reset(seed=0)       # starts Blender
            obs, reward, terminated, truncated, info = env.step(0)
            env.close()
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        config: EnvConfig,
        observation_space: gym.Space,
        action_space: gym.Space,
        render_mode: Optional[str] = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: BlenderEnv supports {self.metadata['render_modes']} or None")
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.render_mode = render_mode
        self.epoch = 0
        self._holder: list = [None]
        self._broken = False
        weakref.finalize(self, _close_connection, self._holder)  # kept alive by weakref itself

    # ------------------------------------------------------------------ lifecycle
    @property
    def pid(self) -> Optional[int]:
        """Pid of the running Blender, or None before the first ``reset()``."""
        conn = self._holder[0]
        return conn.proc.pid if conn is not None else None

    @property
    def log_path(self) -> Optional[str]:
        """Log file of the running Blender, or None before the first ``reset()``."""
        conn = self._holder[0]
        return conn.log_path if conn is not None else None

    def start(self) -> None:
        """Launch Blender now (normally the first ``reset()`` does); does not wait for it."""
        if self._holder[0] is None:
            self._holder[0] = _Connection(self.config, self.epoch)
            self._broken = False

    def _restart(self) -> None:
        _close_connection(self._holder)
        self.epoch += 1
        self.start()

    def close(self) -> None:
        """End Blender. Safe to call more than once."""
        _close_connection(self._holder)

    # ------------------------------------------------------------------ requests
    def _request(self, message: dict, what: str) -> Any:
        conn = self._holder[0]
        if conn is None:
            raise RuntimeError(f"{what} before reset(): call reset() first (it starts Blender)")
        if self._broken:
            raise BlenderCrashedError(
                f"env btid={self.config.btid}: an earlier request failed; call reset() to start a fresh Blender",
                btid=self.config.btid,
            )
        if not conn.ready:
            self._exchange(conn, {"cmd": EnvCommand.HELLO}, "readiness handshake", self.config.start_timeout, BlenderStartError)
            conn.ready = True
        reply = self._exchange(conn, message, what, self.config.step_timeout, BlenderCrashedError)
        if isinstance(reply, dict) and "error" in reply:
            raise BlenderEnvError(
                f"env btid={self.config.btid}: the Blender-side env failed in {what}:\n{reply['error']}",
                btid=self.config.btid, log_path=conn.log_path,
            )
        return reply

    def _exchange(self, conn: _Connection, message: dict, what: str, timeout: float, died: type) -> Any:
        """Send one request and wait for its reply, checking every ``ALIVE_CHECK_MS`` that Blender lives.

        The first request waits for Blender to connect (accepted in ``ALIVE_CHECK_MS`` slices).
        Fast path (a step): one ``send`` and one blocking ``recv`` bounded by ``ALIVE_CHECK_MS``
        (the kernel's receive timeout), i.e. one system call each way. A pipe that Blender
        closed raises ``died`` at once (Blender closes it when it exits).
        """
        deadline = time.monotonic() + timeout
        pipe = conn.pipe
        if pipe is None or conn.in_flight:
            pipe = self._ready_pipe(conn, what, timeout, deadline, died)
        try:
            pipe.send(message)
        except PipeClosed:
            self._closed(conn, what, died)
        conn.in_flight = True
        reply = self._receive(conn, pipe, what, timeout, deadline, died)
        conn.in_flight = False
        return reply

    def _receive(self, conn: _Connection, pipe: MessagePipe, what: str, timeout: float, deadline: float,
                 died: type) -> Any:
        """The reply to the request in flight, in ``ALIVE_CHECK_MS`` slices between which
        ``_check`` runs."""
        slice_s = ALIVE_CHECK_MS / 1000
        while True:
            try:
                return pipe.recv(slice_s)
            except TimeoutError:  # is Blender still there?
                self._check(conn, what, timeout, deadline, died)
            except PipeClosed:
                self._closed(conn, what, died)

    def _ready_pipe(self, conn: _Connection, what: str, timeout: float, deadline: float, died: type) -> MessagePipe:
        """The connection's pipe, ready for a request: accepts Blender's connection on the
        first request, and reads the reply of an interrupted exchange (discarded)."""
        slice_s = ALIVE_CHECK_MS / 1000
        while conn.pipe is None:
            conn.pipe = conn.listener.accept(slice_s)
            if conn.pipe is None:
                self._check(conn, what, timeout, deadline, died)
            else:
                conn.listener.close()  # one peer per Blender: nobody else may connect
        if conn.in_flight:
            self._receive(conn, conn.pipe, what, timeout, deadline, died)
            conn.in_flight = False
        return conn.pipe

    def _closed(self, conn: _Connection, what: str, died: type) -> None:
        """Raise ``died`` (and mark the env broken): Blender closed the pipe, i.e. it exits."""
        self._broken = True
        limit = time.monotonic() + EXIT_WAIT_S
        while conn.proc.alive() and time.monotonic() < limit:  # its exit code follows the close
            time.sleep(0.005)
        how = "closed the env connection" if conn.proc.alive() else f"{conn.proc.describe_exit()} (it closed the env connection)"
        raise died(
            f"env btid={self.config.btid}: Blender {how} while waiting for {what}; the next reset() "
            "starts a fresh Blender",
            btid=self.config.btid, log_tail=conn.proc.log_tail(), log_path=conn.log_path,
        )

    def _check(self, conn: _Connection, what: str, timeout: float, deadline: float, died: type) -> None:
        """Raise (and mark the env broken) when Blender died or the deadline passed."""
        if not conn.proc.alive():
            self._broken = True
            raise died(
                f"env btid={self.config.btid}: Blender {conn.proc.describe_exit()} while waiting for "
                f"{what}; the next reset() starts a fresh Blender",
                btid=self.config.btid, log_tail=conn.proc.log_tail(), log_path=conn.log_path,
            )
        if time.monotonic() >= deadline:
            self._broken = True
            raise EnvTimeout(
                f"env btid={self.config.btid}: no answer to {what} within {timeout:.0f} s; raise "
                "EnvConfig.start_timeout/step_timeout if Blender is just slow. The next reset() "
                "starts a fresh Blender",
                btid=self.config.btid, log_tail=conn.proc.log_tail(), log_path=conn.log_path,
            )

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[Any, dict]:
        """Start an episode; starts (or, after a failure, restarts) Blender as needed.

        Args:
            seed: Reseeds the Blender-side ``np_random`` (and this env's).
            options: Passed to the Blender-side ``_reset``.

        Returns:
            ``(obs, info)``.

        Raises:
            BlenderStartError: Blender did not start or answer its handshake.
            BlenderCrashedError: Blender died while resetting.
            EnvTimeout: Blender did not answer within ``EnvConfig.step_timeout``.
            BlenderEnvError: The Blender-side env raised (its traceback is included).
        """
        super().reset(seed=seed)
        conn = self._holder[0]
        if conn is None:
            self.start()
        elif self._broken or not conn.proc.alive():
            self._restart()
        if seed is not None:
            seed = int(seed)
        obs, info = self._request({"cmd": EnvCommand.RESET, "seed": seed, "options": options}, "reset()")
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """Send ``action``; Blender advances (one frame when stepped) and answers.

        Args:
            action: An element of ``action_space`` (0-d arrays are sent as scalars).

        Returns:
            ``(obs, reward, terminated, truncated, info)``.

        Raises:
            RuntimeError: Called before ``reset()``.
            BlenderCrashedError: Blender died (or an earlier request failed: ``reset()``).
            EnvTimeout: Blender did not answer within ``EnvConfig.step_timeout``.
            BlenderEnvError: The Blender-side env raised.
        """
        if isinstance(action, np.ndarray) and action.ndim == 0:
            action = action.item()
        obs, reward, terminated, truncated, info = self._request({"cmd": EnvCommand.STEP, "action": action}, "step()")
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> Optional[np.ndarray]:
        """Blender's current frame.

        Returns:
            (H, W, 3) uint8 when ``render_mode="rgb_array"``; None (with a warning) without
            a render mode.
        """
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        return self._request({"cmd": EnvCommand.RENDER}, "render()")

