"""Train RLlib (new API stack) on Blender environments.

    from blendtorch_ray.rllib import register_rllib_env, ppo_config
    name = register_rllib_env("blendtorch/CartPole-v0")
    algo = ppo_config(name, num_env_runners=2).build_algo()
    algo.train()

Each env runner is a Ray actor; the envs it builds (``gym.make_vec`` with
``num_envs_per_env_runner``) each launch their own Blender on that runner's node, or, with
``ppo_config(..., vectorize_mode="vector_entry_point")``, share one Blender per runner (the
env's vector entry point, e.g. ``CartPoleVectorEnv``). RLlib hands
every sub-env the same ``EnvContext`` (``vector_index`` is always 0), so instance ids and
launch seeds are derived here from the runner's ``worker_index``, a per-process counter and
the pid: every Blender gets a distinct ``btid`` and seed.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

import blendtorch_ray.envs  # noqa: F401 - registers the bundled gymnasium envs
from blendtorch_ray.env import gym
from blendtorch_ray.extras import require

require("ray.rllib", "rl", "blendtorch_ray.rllib")

_counter = itertools.count()

BTID_PER_WORKER = 1_000_000
"""``btid`` range of one env runner: runner ``k`` numbers its envs from ``k * BTID_PER_WORKER``."""

PID_MODULUS = 10_000
"""Distinct process ids per env runner in a ``btid`` (the pid is taken modulo this)."""

ENVS_PER_PROCESS = 100
"""Distinct envs per process in a ``btid`` (the env counter is taken modulo this)."""


def instance_identity(worker_index: int, base_seed: int = 0) -> tuple[int, int]:
    """A fresh ``(btid, seed)`` for an env built in this process by env runner ``worker_index``.

    ``btid = worker_index * 1_000_000 + (pid % 10_000) * 100 + n % 100`` with ``n`` counting
    envs made in this process (vector envs made in subprocesses differ by pid). The seed mixes
    ``base_seed`` with all three through numpy's ``SeedSequence``.

    Args:
        worker_index: The env runner's index (``EnvContext.worker_index``; 0 on the driver).
        base_seed: Seed of the whole experiment.

    Returns:
        ``(btid, seed)``, distinct for every call in every process.
    """
    n = next(_counter)
    pid = os.getpid()
    btid = int(worker_index) * BTID_PER_WORKER + (pid % PID_MODULUS) * ENVS_PER_PROCESS + n % ENVS_PER_PROCESS
    seed = int(np.random.SeedSequence([base_seed, int(worker_index), pid, n]).generate_state(1)[0] % (2**31))
    return btid, seed


@dataclass
class EnvCreator:
    """Picklable env creator for ``ray.tune.register_env``: ``EnvContext`` -> gymnasium env.

    The env config (``AlgorithmConfig.environment(env_config=...)``) overrides ``kwargs``;
    its ``"seed"`` key is the base seed. Other keys go to ``gym.make(env_id, ...)``.
    Calling it with an env config returns a new env with its own ``btid`` and seed (see
    `instance_identity`). With ``"num_envs"`` in the config (what RLlib passes with
    ``gym_env_vectorize_mode="vector_entry_point"``) it returns the env's vector env
    instead: ``num_envs`` sub-envs in one Blender, seeded ``seed``, ``seed + 1``, ...
    """

    env_id: str
    """The registered gymnasium env id, e.g. ``"blendtorch/CartPole-v0"``."""
    kwargs: dict = field(default_factory=dict)
    """Default arguments of ``gym.make``; the env config overrides them."""

    def __call__(self, env_config: Optional[Mapping[str, Any]] = None) -> Any:
        config = dict(self.kwargs)
        config.update(dict(env_config or {}))
        num_envs = config.pop("num_envs", None)
        base_seed = int(config.pop("seed", 0))
        worker_index = int(getattr(env_config, "worker_index", 0) or 0)
        btid, seed = instance_identity(worker_index, base_seed)
        config.setdefault("btid", btid)
        config.setdefault("seed", seed)
        if num_envs is not None:
            # RLlib with gym_env_vectorize_mode="vector_entry_point" asks for all of an env
            # runner's envs at once: the env's vector entry point (one Blender for them all).
            return gym.make_vec(self.env_id, num_envs=int(num_envs), vectorization_mode="vector_entry_point", **config)
        return gym.make(self.env_id, **config)


def register_rllib_env(env_id: str = "blendtorch/CartPole-v0", name: Optional[str] = None, **kwargs: Any) -> str:
    """Register gymnasium env ``env_id`` with ``ray.tune.register_env``.

    Args:
        env_id: A registered gymnasium env id.
        name: Name to register under; default ``env_id`` with "/" replaced by "-".
        **kwargs: Default env arguments (e.g. ``max_episode_steps=200``); RLlib's env
            config overrides them.

    Returns:
        The name to pass to ``AlgorithmConfig.environment(env=...)``.

    Raises:
        ValueError: ``env_id`` is not a registered gymnasium env.
    """
    from ray.tune import register_env

    if env_id not in gym.registry:
        raise ValueError(f"{env_id!r} is not a registered gymnasium env; register it first or use one of "
                         f"{[k for k in gym.registry if k.startswith('blendtorch/')]}")
    name = name or env_id.replace("/", "-")
    register_env(name, EnvCreator(env_id, dict(kwargs)))
    return name


def ppo_config(
    env_name: str,
    *,
    num_env_runners: int = 2,
    num_envs_per_env_runner: int = 1,
    train_batch_size: int = 2000,
    minibatch_size: int = 250,
    num_epochs: int = 10,
    lr: float = 3e-4,
    vectorize_mode: str = "sync",
    env_config: Optional[dict] = None,
    seed: Optional[int] = None,
) -> Any:
    """A ``PPOConfig`` (new API stack, torch) for a registered Blender env, small-machine sized.

    Args:
        env_name: Name from `register_rllib_env`.
        num_env_runners: Env runner actors (each runs its own Blenders).
        num_envs_per_env_runner: Envs (Blenders) per env runner.
        train_batch_size: Env steps per training iteration.
        minibatch_size: SGD minibatch size.
        num_epochs: SGD epochs per iteration.
        lr: Learning rate.
        vectorize_mode: How an env runner steps its envs: "sync" or "async" (gymnasium's
            vectorisation modes: one Blender per env), or "vector_entry_point" (all of a
            runner's envs in one Blender; the env must have a vector entry point, as
            ``blendtorch/CartPole-v0`` has).
        env_config: Env arguments (override the registered defaults; ``"seed"`` is the base
            seed).
        seed: Seed of RLlib itself (``debugging(seed=...)``); None: unseeded.

    Returns:
        The ``PPOConfig``; call ``.build_algo()`` and ``.train()``.
    """
    from ray.rllib.algorithms.ppo import PPOConfig

    config = (
        PPOConfig()
        .framework("torch")
        .environment(env=env_name, env_config=dict(env_config or {}))
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            gym_env_vectorize_mode=vectorize_mode,
            num_cpus_per_env_runner=1,
        )
        .learners(num_learners=0)
        .training(
            train_batch_size_per_learner=train_batch_size,
            minibatch_size=minibatch_size,
            num_epochs=num_epochs,
            lr=lr,
        )
    )
    if seed is not None:
        config = config.debugging(seed=seed)
    return config


def episode_return_mean(result: Mapping[str, Any]) -> float:
    """Mean episode return of a ``train()`` result.

    Args:
        result: What ``Algorithm.train()`` returned.

    Returns:
        ``result["env_runners"]["episode_return_mean"]``; nan before the first episode ends.
    """
    return float(result.get("env_runners", {}).get("episode_return_mean", float("nan")))
