"""Step rate of Blender gymnasium envs (no rendering) beside plain gymnasium CartPole-v1.

    python benchmarks/env_steps.py            # best of 3 windows of 3000 steps per row
    python benchmarks/env_steps.py --tiny     # smoke test: one window of 50 steps per row

Rows: blendtorch/CartPole-v0 (Blender rigid-body physics), blendtorch/Counter-v0 (a trivial
Blender env: the cost of the channel itself) and gymnasium's CartPole-v1, each as a single env
and as a vector env (sync and async); last, a bare ZeroMQ REQ/REP round trip to a plain Python
process (the floor of any out-of-process step, compared with the single CartPole-v1). Start-up is excluded: every env is reset once before the
clock starts. Steps/s counts env steps (a vector step of N envs counts N). Random actions;
episodes that end are reset (autoreset in vector envs).
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np

import blendtorch_ray.envs  # noqa: F401 - registers the Blender envs


def run_single(env_id: str, steps: int, repeat: int, **kwargs) -> float:
    env = gym.make(env_id, **kwargs)
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        best = 0.0
        for _ in range(repeat):
            actions = [env.action_space.sample() for _ in range(steps)]
            t0 = time.perf_counter()
            for a in actions:
                _, _, terminated, truncated, _ = env.step(a)
                if terminated or truncated:
                    env.reset()
            best = max(best, steps / (time.perf_counter() - t0))
        return best
    finally:
        env.close()


def run_vector(env_id: str, steps: int, repeat: int, num_envs: int, mode: str, **kwargs) -> float:
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        n = max(1, steps // num_envs)
        best = 0.0
        for _ in range(repeat):
            actions = [env.action_space.sample() for _ in range(n)]
            t0 = time.perf_counter()
            for a in actions:
                env.step(a)
            best = max(best, n * num_envs / (time.perf_counter() - t0))
        return best
    finally:
        env.close()


_ECHO = """
import sys, zmq
s = zmq.Context.instance().socket(zmq.REP)
s.connect(sys.argv[1])
while True:
    m = s.recv_multipart()
    s.send_multipart(m)
    if m[0] == b"stop":
        break
"""


def run_pingpong(steps: int, repeat: int) -> float:
    """Round trips/s of a bare ZeroMQ REQ/REP over ipc to a plain Python echo process:
    the floor under any out-of-process env step on this machine."""
    import subprocess
    import sys
    import tempfile

    import zmq

    with tempfile.TemporaryDirectory() as tmp:
        sock = zmq.Context.instance().socket(zmq.REQ)
        address = f"ipc://{tmp}/echo.sock"
        sock.bind(address)
        proc = subprocess.Popen([sys.executable, "-c", _ECHO, address])
        try:
            sock.send_multipart([b"ping"])
            sock.recv_multipart()
            rate = 0.0
            for _ in range(repeat):
                t0 = time.perf_counter()
                for _ in range(steps):
                    sock.send_multipart([b"ping"])
                    sock.recv_multipart()
                rate = max(rate, steps / (time.perf_counter() - t0))
            sock.send_multipart([b"stop"])
            sock.recv_multipart()
        finally:
            proc.wait(10)
            sock.close(0)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="env steps per row")
    parser.add_argument("--num-envs", type=int, default=2, help="sub-envs of the vector rows")
    parser.add_argument("--repeat", type=int, default=3, help="timed windows per row; the best counts")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 50 steps, 1 window per row")
    args = parser.parse_args()
    steps = 50 if args.tiny else args.steps
    repeat = 1 if args.tiny else args.repeat

    envs = [
        ("gymnasium CartPole-v1", "CartPole-v1", {}),
        ("blendtorch/CartPole-v0", "blendtorch/CartPole-v0", {}),
        ("blendtorch/Counter-v0", "blendtorch/Counter-v0", {"length": 1000}),
    ]
    rows = []
    for label, env_id, kwargs in envs:
        rows.append((label, "single", run_single(env_id, steps, repeat, **kwargs)))
        for mode in ("sync", "async"):
            rate = run_vector(env_id, steps, repeat, args.num_envs, mode, **kwargs)
            rows.append((label, f"{mode} x{args.num_envs}", rate))

    reference = {mode: rate for label, mode, rate in rows if label.startswith("gymnasium")}
    reference["round trip"] = reference["single"]
    rows.append(("zmq REQ/REP echo (floor)", "round trip", run_pingpong(steps, repeat)))
    print(f"\nenv steps/s, best of {repeat} x {steps} steps per row, no rendering "
          f"({time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"{'env':26s} {'mode':10s} {'steps/s':>10s} {'vs CartPole-v1':>15s}")
    for label, mode, rate in rows:
        ratio = rate / reference[mode]
        print(f"{label:26s} {mode:10s} {rate:10.0f} {ratio:14.4f}x")
    single = {label: rate for label, mode, rate in rows if mode == "single"}
    print(f"\nBlender cartpole / trivial Blender env (single): "
          f"{single['blendtorch/CartPole-v0'] / single['blendtorch/Counter-v0']:.2f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
