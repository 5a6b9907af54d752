"""Bundled Blender environments, registered with gymnasium on import.

    import gymnasium, blendtorch_ray.envs
    env = gymnasium.make("blendtorch/CartPole-v0", render_mode="rgb_array")
    envs = gymnasium.make_vec("blendtorch/CartPole-v0", num_envs=64)   # one Blender, 64 cartpoles

Importing ``blendtorch_ray`` registers them too.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

import blender_worker.scenes as _scenes
from blendtorch_ray.env import BlenderEnv, EnvConfig, gym
from blendtorch_ray.registry import register_gym_envs
from blendtorch_ray.vector_env import BlenderVectorEnv

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
        cfg, obs_space, act_space = _cartpole(max_episode_steps, continuous, force, width, height, script_args, config)
        super().__init__(cfg, obs_space, act_space, render_mode=render_mode)


def _cartpole(max_episode_steps, continuous, force, width, height, script_args, config) -> tuple:
    """The `EnvConfig` and the single observation and action spaces of the cartpole."""
    args = ["--max-steps", str(max_episode_steps), "--force", str(force), "--width", str(width), "--height", str(height)]
    if continuous:
        args.append("--continuous")
    cfg = EnvConfig(script=CARTPOLE_SCRIPT, script_args=[*args, *script_args], **config)
    high = np.array([4.8, np.finfo(np.float32).max, 0.42, np.finfo(np.float32).max], dtype=np.float32)
    obs_space = gym.spaces.Box(-high, high, dtype=np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32) if continuous else gym.spaces.Discrete(2)
    return cfg, obs_space, act_space


class CartPoleVectorEnv(BlenderVectorEnv):
    """``num_envs`` cartpoles in ONE Blender, stepped together: the vector entry point of
    ``blendtorch/CartPole-v0`` (``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``,
    the default mode for this id).

    Sub-env ``i`` behaves as `CartPoleEnv` seeded ``seed + i`` given the same actions
    (``examples/control/README.md`` reports the measured agreement). Batched spaces:
    observations ``(num_envs, 4)`` float32, actions ``(num_envs,)`` integers (``continuous``:
    ``(num_envs, 1)`` float32). ``render()`` returns ``num_envs`` (height, width, 3) tiles of
    one orthographic render (the camera looks at every cartpole from 45 degrees above).

    Args:
        num_envs: Number of cartpoles (>= 1).
        render_mode: None or "rgb_array".
        max_episode_steps: Episodes are truncated after this many steps.
        continuous: Continuous action (``Box(-1, 1, (1,))``) instead of ``Discrete(2)``.
        force: Push force in N (scaled by the action when continuous).
        width: Width of each sub-env's rendered tile in pixels.
        height: Height of each sub-env's rendered tile in pixels (``num_envs * height``
            must not exceed 65536, Blender's largest image).
        script_args: Extra arguments for the Blender-side script.
        **config: Further `EnvConfig` fields.

    Raises:
        ValueError: ``num_envs`` < 1, ``render_mode`` unsupported, or the tiles would not fit
            into one Blender image.
        TypeError: ``num_envs`` is not an integer.
    """

    def __init__(
        self,
        num_envs: int,
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
        from blendtorch_ray import validation

        validation.positive_int("num_envs", num_envs, owner="CartPoleVectorEnv", example=64,
                                hint="the number of cartpoles simulated in the one Blender")
        if render_mode == "rgb_array" and num_envs * height > MAX_IMAGE_SIDE:
            raise ValueError(
                f"CartPoleVectorEnv(num_envs={num_envs}, height={height}, render_mode='rgb_array'): the tiles "
                f"are stacked in one image {num_envs * height} px tall, Blender renders at most {MAX_IMAGE_SIDE}; "
                f"pass e.g. height={MAX_IMAGE_SIDE // num_envs} or fewer sub-envs")
        cfg, obs_space, act_space = _cartpole(max_episode_steps, continuous, force, width, height, script_args, config)
        super().__init__(cfg, num_envs, obs_space, act_space, render_mode=render_mode)


MAX_IMAGE_SIDE = 65536
"""Blender's largest image side in pixels."""


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
