"""Train PPO (RLlib new API stack) on cartpole simulated in Blender.

    python examples/control/train_ppo.py --iterations 10 --env-runners 2
    python examples/control/train_ppo.py --env-runners 1 --envs-per-runner 8 \
        --vectorize vector_entry_point --target-return 400     # 8 cartpoles in ONE Blender

Prints the mean episode return per iteration; each env runner owns its envs' Blenders. With
``--vectorize sync`` (or ``async``) every env has its own Blender; with ``vector_entry_point``
an env runner's ``--envs-per-runner`` envs are the sub-envs of one
``blendtorch_ray.envs.CartPoleVectorEnv`` (the env creator of ``register_rllib_env`` makes it
when RLlib asks for ``num_envs`` at once), each runner with its own btid and seed.
"""

import argparse
import time

import ray

from blendtorch_ray.rllib import episode_return_mean, ppo_config, register_rllib_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--env-runners", type=int, default=2)
    parser.add_argument("--envs-per-runner", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2000, help="train batch size (env steps per iteration)")
    parser.add_argument("--minibatch", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-episode-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vectorize", default="sync", choices=("sync", "async", "vector_entry_point"),
                        help="how an env runner steps its envs (vector_entry_point: all in one Blender)")
    parser.add_argument("--target-return", type=float, default=None, help="stop once the mean episode return reaches it")
    args = parser.parse_args()

    # address="local": a private Ray for this run even if another one is running on the machine.
    ray.init(address="local", num_cpus=max(2, args.env_runners + 1), include_dashboard=False, log_to_driver=False)
    # One name for every mode: the creator gives each env (or each runner's vector env) its
    # own btid and seed.
    name = register_rllib_env("blendtorch/CartPole-v0", max_episode_steps=args.max_episode_steps)
    config = ppo_config(
        name,
        vectorize_mode=args.vectorize,
        num_env_runners=args.env_runners,
        num_envs_per_env_runner=args.envs_per_runner,
        train_batch_size=args.batch,
        minibatch_size=args.minibatch,
        num_epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
    )
    algo = config.build_algo()
    t0 = time.monotonic()
    returns = []
    try:
        for it in range(1, args.iterations + 1):
            result = algo.train()
            ret = episode_return_mean(result)
            returns.append(ret)
            steps = result["env_runners"].get("num_env_steps_sampled_lifetime", float("nan"))
            print(f"iter {it:3d}  env steps {steps:8.0f}  mean return {ret:7.1f}  "
                  f"elapsed {time.monotonic() - t0:6.1f} s", flush=True)
            if args.target_return is not None and ret >= args.target_return:
                print(f"target return {args.target_return:g} reached after {time.monotonic() - t0:.1f} s "
                      f"and {steps:.0f} env steps", flush=True)
                break
    finally:
        algo.stop()
        ray.shutdown()
    print(f"mean episode return: first iteration {returns[0]:.1f}, last {returns[-1]:.1f}, "
          f"best {max(returns):.1f}")


if __name__ == "__main__":
    main()
