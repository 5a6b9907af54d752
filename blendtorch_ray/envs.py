"""Bundled Blender environments, registered with gymnasium on import.

    import gymnasium, blendtorch_ray.envs
    env = gymnasium.make("blendtorch/CartPole-v0", render_mode="rgb_array")

Importing ``blendtorch_ray`` registers them too.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

import blender_worker.scenes as _scenes
from blendtorch_ray.env import BlenderEnv, EnvConfig, gym
from blendtorch_ray.registry import register_gym_envs

CARTPOLE_SCRIPT = os.path.join(os.path.dirname(_scenes.__file__), "cartpole.py")
COUNTER_SCRIPT = os.path.join(os.path.dirname(_scenes.__file__), "counter_env.py")


class CartPoleEnv(BlenderEnv):
    """Cartpole simulated by Blender's rigid-body physics (Bullet), 50 steps per second.

    Observation ``Box((4,), float32)``: cart position, cart velocity, pole angle, pole angular
    velocity. Action ``Discrete(2)`` (push left / right with ``force`` N), or with
    ``continuous=True`` ``Box(-1, 1, (1,))`` scaling the force. Reward 1 per step; terminates
    when |angle| > 0.2095 rad or |x| > 2.4 m; truncated after ``max_episode_steps``.
    Remaining keyword arguments go to `EnvConfig` (``btid``, ``seed``, ``real_time``...).

    Args:
        render_mode: None or "rgb_array" (``render()`` returns Blender's frame).
        max_episode_steps: Episodes are truncated after this many steps.
        continuous: Continuous action (``Box(-1, 1, (1,))``) instead of ``Discrete(2)``.
        force: Push force in N (scaled by the action when continuous).
        width: Width of rendered frames in pixels.
        height: Height of rendered frames in pixels.
        script_args: Extra arguments for the Blender-side script.
        **config: Further `EnvConfig` fields.

    Example:
        Through gymnasium's registry (importing ``blendtorch_ray`` registers it)::

            env = gymnasium.make("blendtorch/CartPole-v0", render_mode="rgb_array")
            obs, info = env.reset(seed=0)
            obs, reward, terminated, truncated, info = env.step(1)
            env.close()
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        render_mode: Optional[str] = None,
        *,
        max_episode_steps: int = 500,
        continuous: bool = False,
        force: float = 10.0,
        width: int = 320,
        height: int = 240,
        script_args: Sequence[str] = (),
        **config: object,
    ) -> None:
        args = ["--max-steps", str(max_episode_steps), "--force", str(force), "--width", str(width), "--height", str(height)]
        if continuous:
            args.append("--continuous")
        cfg = EnvConfig(script=CARTPOLE_SCRIPT, script_args=[*args, *script_args], **config)
        high = np.array([4.8, np.finfo(np.float32).max, 0.42, np.finfo(np.float32).max], dtype=np.float32)
        obs_space = gym.spaces.Box(-high, high, dtype=np.float32)
        act_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32) if continuous else gym.spaces.Discrete(2)
        super().__init__(cfg, obs_space, act_space, render_mode=render_mode)


class CounterEnv(BlenderEnv):
    """A trivial Blender env (no physics): measures the env channel. Terminates after ``length``.

    Args:
        render_mode: None or "rgb_array".
        length: Steps per episode.
        **config: Further `EnvConfig` fields.
    """

    def __init__(self, render_mode: Optional[str] = None, *, length: int = 100, **config: object) -> None:
        cfg = EnvConfig(script=COUNTER_SCRIPT, script_args=["--length", str(length)], **config)
        obs_space = gym.spaces.Box(0.0, 1.1, shape=(1,), dtype=np.float32)
        super().__init__(cfg, obs_space, gym.spaces.Discrete(2), render_mode=render_mode)


def register() -> None:
    """Register the bundled envs with gymnasium (idempotent; see ``blendtorch_ray.registry``)."""
    register_gym_envs()


register()
