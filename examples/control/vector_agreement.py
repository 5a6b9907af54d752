"""How closely the sub-envs of the vector cartpole follow single cartpoles given the same seeds
and actions.

    python examples/control/vector_agreement.py --blender bpy --num-envs 8 --steps 500

Runs ``gymnasium.make_vec("blendtorch/CartPole-v0", num_envs=N)`` (one Blender) for ``--steps``
steps, once with random actions (short episodes, many autoresets) and once with a balancing
controller (long episodes), then replays every sub-env's actions into a single
``gymnasium.make("blendtorch/CartPole-v0")`` seeded ``seed + i`` (resetting it where the vector
env autoreset the sub-env) and prints the largest observation difference per component, the
step of the first difference, and how many termination/truncation flags differ.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import blendtorch_ray.envs  # noqa: F401 - registers blendtorch/CartPole-v0

GAIN = np.array([0.05, 0.1, 1.0, 0.3])


def vector_run(blender: str, n: int, steps: int, seed: int, policy: str) -> tuple:
    """Observations (steps + 1, n, 4), actions, terminations and truncations (steps, n)."""
    rng = np.random.default_rng(1)
    envs = gym.make_vec("blendtorch/CartPole-v0", num_envs=n, vectorization_mode="vector_entry_point", blender=blender)
    try:
        obs, _ = envs.reset(seed=seed)
        trace, actions, terms, truncs = [obs], [], [], []
        for _ in range(steps):
            act = rng.integers(0, 2, size=n) if policy == "random" else (obs @ GAIN > 0).astype(np.int64)
            obs, _, terminated, truncated, _ = envs.step(act)
            trace.append(obs)
            actions.append(act)
            terms.append(terminated)
            truncs.append(truncated)
    finally:
        envs.close()
    return tuple(map(np.array, (trace, actions, terms, truncs)))


def single_replay(blender: str, seed: int, actions: np.ndarray, trace: np.ndarray, terms, truncs) -> tuple:
    """Replay one sub-env's actions; returns (max |diff| per component, first step with a
    difference or -1, flag mismatches, episodes that ended)."""
    env = gym.make("blendtorch/CartPole-v0", blender=blender)
    try:
        obs, _ = env.reset(seed=seed)
        diffs, ended, mismatches = [np.abs(obs - trace[0])], False, 0
        for k, act in enumerate(actions):
            if ended:
                obs, _ = env.reset()
                terminated = truncated = ended = False
            else:
                obs, _, terminated, truncated, _ = env.step(int(act))
                ended = terminated or truncated
            diffs.append(np.abs(obs - trace[k + 1]))
            mismatches += int(terminated != terms[k]) + int(truncated != truncs[k])
    finally:
        env.close()
    diffs = np.array(diffs)
    first = np.flatnonzero(diffs.max(axis=1) > 0)
    return diffs.max(axis=0), int(first[0]) if len(first) else -1, mismatches, int(terms.sum() + truncs.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blender", default="bpy", help="bpy, blender or a path")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    for policy in ("random", "balancing"):
        trace, actions, terms, truncs = vector_run(args.blender, args.num_envs, args.steps, args.seed, policy)
        rows = [single_replay(args.blender, args.seed + i, actions[:, i], trace[:, i], terms[:, i], truncs[:, i])
                for i in range(args.num_envs)]
        worst = np.max([r[0] for r in rows], axis=0)
        firsts = [r[1] for r in rows if r[1] >= 0]
        print(f"{args.blender}, {policy} actions: {args.num_envs} sub-envs x {args.steps} steps, "
              f"{sum(r[3] for r in rows)} episodes ended, {sum(r[2] for r in rows)} flags differ; "
              f"max |obs - single| (x, v, angle, omega) = {np.array2string(worst, precision=2)}; "
              f"first difference at step {min(firsts) if firsts else 'never'}")


if __name__ == "__main__":
    main()
