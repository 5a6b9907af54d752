"""A gymnasium ``VectorEnv`` whose ``num_envs`` sub-envs all run in ONE Blender process.

``BlenderVectorEnv`` launches Blender with ``--btnumenvs N`` and a script built on
``blender_worker.vector_env.VectorEnv``, which simulates N copies of the env in one scene and
advances them all by one frame per ``step``. Each request and reply is one small message with
one numpy array per quantity (observations, rewards, terminations, truncations), whatever N.

    envs = gymnasium.make_vec("blendtorch/CartPole-v0", num_envs=64,
                              vectorization_mode="vector_entry_point")   # one Blender
    obs, info = envs.reset(seed=0)          # sub-env i seeded 0 + i
    obs, rewards, terminations, truncations, info = envs.step(envs.action_space.sample())

Autoreset: gymnasium's next-step mode (``metadata["autoreset_mode"]``), as gymnasium's own
vector envs do by default: after sub-env ``i`` ended, the next ``step`` resets it (its action
is ignored) and returns its first observation, reward 0, both flags False. Launching, the
readiness handshake, timeouts, crash detection and clean-up are ``blendtorch_ray.env``'s
(one `BlenderEnv` channel underneath).

Bad input fails here, before anything is sent: ``num_envs`` < 1, actions whose shape or dtype
do not fit the batch; a script that serves a single env fails at the handshake.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from blender_worker.protocol import EnvCommand
from blendtorch_ray import validation
from blendtorch_ray.env import BlenderEnv, EnvConfig, _Connection, gym
from blendtorch_ray.errors import BlenderEnvError

AutoresetMode = gym.vector.AutoresetMode


class _VectorChannel(BlenderEnv):
    """The `BlenderEnv` machinery (launch, restart, timeouts, clean-up) for one vector Blender."""

    def __init__(self, config: EnvConfig, num_envs: int, observation_space: gym.Space, action_space: gym.Space) -> None:
        super().__init__(config, observation_space, action_space)
        self.num_envs = num_envs

    def start(self) -> None:
        """Launch the vector Blender now (``--btnumenvs``); does not wait for it."""
        if self._holder[0] is None:
            self._holder[0] = _Connection(self.config, self.epoch, num_envs=self.num_envs)
            self._broken = False


class BlenderVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of a Blender env stepped together in one Blender (see the module docstring).

    Spaces: ``single_observation_space`` / ``single_action_space`` are one sub-env's;
    ``observation_space`` / ``action_space`` the batches (``gymnasium.vector.utils.batch_space``).
    ``render_mode="rgb_array"`` makes ``render()`` return one (H, W, 3) uint8 image per
    sub-env, cut from one render of a tiled view.

    Args:
        config: How to launch and talk to Blender (``script`` must build on
            ``blender_worker.vector_env.VectorEnv``).
        num_envs: Number of sub-envs (>= 1).
        single_observation_space: Observation space of one sub-env.
        single_action_space: Action space of one sub-env.
        render_mode: None or "rgb_array".

    Raises:
        ValueError: ``num_envs`` < 1 or ``render_mode`` is not supported.
        TypeError: ``num_envs`` is not an integer.

    Example:
        Sixty-four cartpoles in one Blender::

            envs = gymnasium.make_vec("blendtorch/CartPole-v0", num_envs=64)
            obs, info = envs.reset(seed=0)                  # obs.shape == (64, 4)
            obs, rewards, terminations, truncations, info = envs.step(np.ones(64, dtype=np.int64))
            envs.close()
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        config: EnvConfig,
        num_envs: int,
        single_observation_space: gym.Space,
        single_action_space: gym.Space,
        render_mode: Optional[str] = None,
    ) -> None:
        own = type(self).__name__
        validation.positive_int("num_envs", num_envs, owner=own, example=64,
                                hint="the number of sub-envs simulated in the one Blender")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{own}(render_mode={render_mode!r}): must be one of {self.metadata['render_modes']} or None")
        if config.real_time:
            raise ValueError(f"{own}: EnvConfig(real_time=True) is not supported by vector envs; "
                             "use stepped mode (real_time=False) or one BlenderEnv per sub-env")
        self.config = config
        self.num_envs = int(num_envs)
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = gym.vector.utils.batch_space(single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(single_action_space, self.num_envs)
        self.render_mode = render_mode
        self._channel = _VectorChannel(config, self.num_envs, single_observation_space, single_action_space)
        self._checked_epoch: Optional[int] = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def pid(self) -> Optional[int]:
        """Pid of the one Blender, or None before the first ``reset()``."""
        return self._channel.pid

    @property
    def log_path(self) -> Optional[str]:
        """Log file of the one Blender, or None before the first ``reset()``."""
        return self._channel.log_path

    def close_extras(self, **kwargs: Any) -> None:
        """End Blender (``close()`` calls this). Safe to call more than once."""
        channel = getattr(self, "_channel", None)  # None: the constructor raised
        if channel is not None:
            channel.close()

    def _handshake(self) -> None:
        """Check once per Blender that its script serves ``num_envs`` sub-envs."""
        channel = self._channel
        if self._checked_epoch == channel.epoch:
            return
        hello = channel._request({"cmd": EnvCommand.HELLO}, "readiness handshake")
        served = hello.get("num_envs") if isinstance(hello, dict) else None
        if served != self.num_envs:
            log_path = channel.log_path or ""
            channel.close()
            if served is None:
                raise BlenderEnvError(
                    f"{type(self).__name__}(num_envs={self.num_envs}): the script {self.config.script!r} serves a "
                    "single env (its handshake names no num_envs: it builds on blender_worker.env.BaseEnv); "
                    "expected a script built on blender_worker.vector_env.VectorEnv. Fix: subclass VectorEnv "
                    "in the script and run it when parse_env_args() gives env_args.num_envs, or vectorise "
                    "with one Blender per sub-env: gymnasium.make_vec(..., vectorization_mode='sync')",
                    btid=self.config.btid, log_path=log_path,
                )
            raise BlenderEnvError(
                f"{type(self).__name__}(num_envs={self.num_envs}): the script {self.config.script!r} serves "
                f"num_envs={served}, expected {self.num_envs}: it must build the number of sub-envs that "
                "parse_env_args() gives in env_args.num_envs",
                btid=self.config.btid, log_path=log_path,
            )
        self._checked_epoch = channel.epoch

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self,
        *,
        seed: Optional[Union[int, Sequence[Optional[int]]]] = None,
        options: Optional[dict] = None,
    ) -> tuple[Any, dict]:
        """Start an episode of every sub-env; starts (or, after a failure, restarts) Blender.

        Args:
            seed: An int ``s`` seeds sub-env ``i`` with ``s + i`` (as gymnasium's vector envs
                do); a list gives one seed (or None) per sub-env; None keeps the generators.
            options: Passed to the Blender-side ``_reset_all``.

        Returns:
            ``(obs, info)``: ``obs`` holds ``num_envs`` rows.

        Raises:
            ValueError: A list of seeds whose length is not ``num_envs``.
            BlenderEnvError: The script serves no vector env, or the Blender side raised.
            BlenderStartError: Blender did not start or answer its handshake.
            BlenderCrashedError: Blender died while resetting.
            EnvTimeout: Blender did not answer within ``EnvConfig.step_timeout``.
        """
        seeds = self._seeds(seed)
        super().reset(seed=seed if isinstance(seed, int) else None)
        channel = self._channel
        conn = channel._holder[0]
        if conn is None:
            channel.start()
        elif channel._broken or not conn.proc.alive():
            channel._restart()
        self._handshake()
        obs, info = channel._request({"cmd": EnvCommand.VECTOR_RESET, "seed": seeds, "options": options}, "reset()")
        return obs, info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-env by one frame with its row of ``actions``.

        Args:
            actions: An element of ``action_space``: one action per sub-env along axis 0.

        Returns:
            ``(obs, rewards, terminations, truncations, info)``, ``num_envs`` rows each
            (``info`` a dict of arrays); a sub-env that ended in the previous step is reset by
            this one (next-step autoreset, see the module docstring).

        Raises:
            ValueError: ``actions`` has the wrong shape, or values outside a discrete space.
            TypeError: ``actions`` has the wrong dtype for the action space.
            RuntimeError: Called before ``reset()``.
            BlenderCrashedError: Blender died (or an earlier request failed: ``reset()``).
            EnvTimeout: Blender did not answer within ``EnvConfig.step_timeout``.
            BlenderEnvError: The Blender side raised.
        """
        actions = self._check_actions(actions)
        obs, rewards, terminations, truncations, info = self._channel._request(
            {"cmd": EnvCommand.VECTOR_STEP, "actions": actions}, "step()")
        return obs, rewards, terminations, truncations, info

    def render(self) -> Optional[tuple[np.ndarray, ...]]:
        """One image per sub-env, cut from one render of Blender's tiled view.

        Returns:
            A tuple of ``num_envs`` (H, W, 3) uint8 arrays when ``render_mode="rgb_array"``;
            None (with a warning) without a render mode.
        """
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        tiles = self._channel._request({"cmd": EnvCommand.RENDER}, "render()")
        return tuple(tiles)

    # ------------------------------------------------------------------ checks
    def _seeds(self, seed: Any) -> Optional[list]:
        if seed is None:
            return None
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            validation.non_negative_int("seed", int(seed), owner=f"{type(self).__name__}.reset", example=0)
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(
                f"{type(self).__name__}.reset(seed=<{len(seeds)} seeds>): expected one seed per sub-env "
                f"({self.num_envs}), or one int s (sub-env i gets s + i); pass e.g. seed=0")
        return [None if s is None else int(s) for s in seeds]

    def _check_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as an array that fits ``action_space``, or a clear error (nothing sent)."""
        space, single, own = self.action_space, self.single_action_space, f"{type(self).__name__}.step"
        arr = np.asarray(actions)
        if arr.shape != space.shape:
            fix = (f"stack one action per sub-env, e.g. np.zeros({space.shape}, dtype=np.{space.dtype})"
                   if arr.ndim == 0 or arr.shape[0] != self.num_envs else
                   f"each sub-env's action must have shape {single.shape}")
            raise ValueError(
                f"{own}(actions of shape {arr.shape}): must have shape {space.shape} ({self.num_envs} sub-envs x "
                f"{single.shape} for {single}); {fix}")
        if isinstance(single, gym.spaces.Discrete):
            if arr.dtype.kind not in "iu":
                raise TypeError(
                    f"{own}(actions of dtype {arr.dtype}): must be integers for {single} (batch {space}); "
                    f"pass e.g. actions.astype(np.int64)")
            low, high = int(single.start), int(single.start + single.n)
            bad = (arr < low) | (arr >= high)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{own}(actions[{i}]={arr[i]!r}): must be in [{low}, {high}) for {single}; "
                    f"{int(bad.sum())} of {self.num_envs} actions are outside")
        elif isinstance(single, gym.spaces.Box):
            if arr.dtype.kind not in "fiu":
                raise TypeError(
                    f"{own}(actions of dtype {arr.dtype}): must be numbers for {single}; "
                    f"pass e.g. actions.astype(np.{single.dtype})")
            arr = arr.astype(single.dtype, copy=False)
        return np.ascontiguousarray(arr)
