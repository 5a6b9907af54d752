"""A trivial Blender env (no physics, no objects touched): measures the env channel itself.

Observation: float32 (1,) = steps taken / ``--length``. Action: 0 or 1, the reward.
The episode terminates after ``--length`` steps.
"""

import argparse

import numpy as np

from blender_worker.env import BaseEnv, parse_env_args


class CounterEnv(BaseEnv):
    def __init__(self, launch, env_args, length: int) -> None:
        super().__init__(launch, env_args, frame_range=(1, length + 2))
        self.length = length
        self.offset = 0.0

    def _reset(self, options) -> None:
        self.offset = float(self.np_random.uniform(0.0, 0.01))

    def _prepare_step(self, action) -> None:
        self.reward = float(int(action))

    def _collect(self):
        obs = np.array([self.steps / self.length + self.offset], dtype=np.float32)
        done = self.steps >= self.length
        return obs, getattr(self, "reward", 0.0), done, False, {"frame": self.frameid}


def main() -> None:
    launch, env_args, remainder = parse_env_args()
    parser = argparse.ArgumentParser(prog="counter_env")
    parser.add_argument("--length", type=int, default=100)
    args = parser.parse_args(remainder)
    CounterEnv(launch, env_args, args.length).run()


main()
