"""The bundled gymnasium env ids, registered by name so that no env code loads until
``gymnasium.make`` needs it (``blendtorch_ray.envs`` holds the classes)."""

from __future__ import annotations

GYM_ENVS = {
    "blendtorch/CartPole-v0": {"entry_point": "blendtorch_ray.envs:CartPoleEnv", "max_episode_steps": None,
                               "vector_entry_point": "blendtorch_ray.envs:CartPoleVectorEnv"},
    "blendtorch/Counter-v0": {"entry_point": "blendtorch_ray.envs:CounterEnv"},
}
"""Env id -> ``gymnasium.register`` keyword arguments."""


def register_gym_envs() -> None:
    """Register the bundled envs with gymnasium (idempotent).

    Raises:
        ImportError: gymnasium is not installed; the message names the ``pip install`` fix.
    """
    from blendtorch_ray.extras import require

    gym = require("gymnasium", "rl", "the bundled gymnasium envs")
    for env_id, kwargs in GYM_ENVS.items():
        if env_id not in gym.registry:
            gym.register(env_id, **kwargs)
