"""Step rate of ``blendtorch/CartPole-v0`` against its floor, per Blender, in one run.

    python benchmarks/env_steps.py                        # bpy wheel and Debian's binary
    python benchmarks/env_steps.py --blender bpy --tiny   # smoke test

For every Blender (``--blender bpy,blender``) two processes run side by side on the same
cartpole scene (``blender_worker/scenes/cartpole_scene.py``'s ``build_scene``, rigid-body physics,
no rendering):

* the floor: a bare Blender that answers ZeroMQ REQ/REP (one-frame messages, blocking
  sockets, no codec, no env logic) and calls ``scene.frame_set`` once per request: what any
  out-of-process Blender step costs on this machine;
* the pipe floor: the same bare Blender over the env's own channel, the message pipe of
  ``blender_worker.pipe`` (length-prefixed pickles over a unix stream socket; ``MessagePipe``
  as the env uses it, so its ~1 us of pickling per message is in), one ``frame_set`` per
  request;
* floor + push: the same, plus the env's action (``motor_lin_target_velocity`` += a +-10 N
  push, alternating): a moving cart costs the physics more than a resting one;
* the env: ``gymnasium.make("blendtorch/CartPole-v0", blender=...)``, driven by a balancing
  controller so that episodes are long (truncated at 500 steps); only ``step()`` is timed,
  ``reset()`` separately;
* the vector env, N cartpoles in ONE Blender (``gymnasium.make_vec("blendtorch/CartPole-v0",
  num_envs=N, vectorization_mode="vector_entry_point")``, ``--num-envs 1,8,64,256``), under
  the same controller; steps/s count sub-env steps (one vector step of N = N steps), a window
  has ``max(--steps // N, 50)`` vector steps.

Windows of the floor and the env alternate (``--repeat`` of each, ``--steps`` steps per
window) so that both see the same machine load; the table shows medians. Start-up is excluded.
CPU rows: what each side spent per step (Blender: all its threads, from ``/proc``; driver: the
calling thread), less sensitive to other load on the machine than steps/s. Last, the two
transports alone, to a plain Python echo process (no Blender): a bare ZeroMQ REQ/REP round trip
and a bare message-pipe round trip.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np
import zmq

import blendtorch_ray.envs  # noqa: F401 - registers the Blender envs
from blender_worker.pipe import MessagePipe, PipeListener
from blendtorch_ray.blender import find_blender
from blendtorch_ray.process import BlenderProcess

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from env_floor_scripts import ECHO, ECHO_PIPE, FLOOR, FLOOR_PIPE  # noqa: E402

def process_cpu_ns(pid: int) -> int:
    """CPU time (ns) of every thread of ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def timed(runner, pid: int, steps: int) -> tuple[float, float, float]:
    """One window: ``(steps/s, Blender CPU us/step (all threads), driver thread CPU us/step)``;
    a vector env's steps are its sub-env steps."""
    if isinstance(runner, VectorEnv):
        steps = runner.vector_steps(steps) * runner.num_envs
    blender0, driver0 = process_cpu_ns(pid), time.thread_time()
    rate = runner.window(steps)
    return rate, (process_cpu_ns(pid) - blender0) / steps / 1e3, (time.thread_time() - driver0) / steps * 1e6


def controller(obs) -> int:
    """Push towards the side the pole falls to (keeps episodes to their 500-step limit)."""
    x, v, angle, omega = obs.tolist()
    return 1 if angle + 0.3 * omega + 0.05 * x + 0.1 * v > 0 else 0


class Floor:
    """A bare Blender answering REQ/REP with one ``frame_set`` per request; with ``push``
    it also applies the request's action (alternating pushes) like the env does."""

    def __init__(self, blender: str, tmp: str, push: bool = False) -> None:
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        tag = "".join(c if c.isalnum() else "_" for c in blender) + ("-push" if push else "")
        address = f"ipc://{tmp}/floor-{tag}.sock"
        self.sock.bind(address)
        script = os.path.join(tmp, f"floor-{tag}.py")
        with open(script, "w") as f:
            f.write(FLOOR)
        self.proc = BlenderProcess(find_blender(blender), script, None, [address, "push" if push else "bare"], os.path.join(tmp, f"floor-{tag}.log"))
        self.sock.setsockopt(zmq.RCVTIMEO, 120_000)
        self.sock.send(b"go")
        self.sock.recv()
        self.sock.setsockopt(zmq.RCVTIMEO, 10_000)

    def window(self, steps: int) -> float:
        sock = self.sock
        t0 = time.perf_counter()
        for i in range(steps):
            sock.send(b"1" if i & 1 else b"0")
            sock.recv()
        return steps / (time.perf_counter() - t0)

    def close(self) -> None:
        try:
            self.sock.send(b"stop")
            self.sock.recv()
        except zmq.ZMQError:
            pass
        self.proc.terminate()
        self.sock.close(0)


class PipeFloor:
    """A bare Blender answering over the env's message pipe with one ``frame_set`` per request."""

    def __init__(self, blender: str, tmp: str) -> None:
        tag = "".join(c if c.isalnum() else "_" for c in blender)
        self.listener = PipeListener("ipc", tmp, name=f"floorpipe-{tag}")
        script = os.path.join(tmp, f"floorpipe-{tag}.py")
        with open(script, "w") as f:
            f.write(FLOOR_PIPE)
        log = os.path.join(tmp, f"floorpipe-{tag}.log")
        self.proc = BlenderProcess(find_blender(blender), script, None, [self.listener.address], log)
        pipe = self.listener.accept(120)
        if pipe is None:
            self.proc.terminate()
            raise RuntimeError(f"the pipe floor's Blender did not connect in 120 s:\n{self.proc.log_tail()}")
        self.pipe = pipe
        pipe.send(b"go")
        pipe.recv(120)

    def window(self, steps: int) -> float:
        send, recv = self.pipe.send, self.pipe.recv
        t0 = time.perf_counter()
        for i in range(steps):
            send(b"1" if i & 1 else b"0")
            recv(10.0)
        return steps / (time.perf_counter() - t0)

    def close(self) -> None:
        try:
            self.pipe.send(b"stop")
            self.pipe.recv(10.0)
        except (OSError, EOFError):
            pass
        self.proc.terminate()
        self.pipe.close()
        self.listener.close()


class VectorEnv:
    """``num_envs`` cartpoles in one Blender under the balancing controller; times ``step()``
    (autoresets included, as RL sees them) and counts sub-env steps."""

    def __init__(self, blender: str, num_envs: int) -> None:
        self.num_envs = num_envs
        self.env = gym.make_vec("blendtorch/CartPole-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", blender=blender)
        self.obs, _ = self.env.reset(seed=0)
        self.gain = np.array([0.05, 0.1, 1.0, 0.3])

    def vector_steps(self, steps: int) -> int:
        """Vector steps in a window of ``steps`` (sub-env) steps."""
        return max(steps // self.num_envs, 50)

    def window(self, steps: int) -> float:
        env, obs, clock, spent, gain = self.env, self.obs, time.perf_counter, 0.0, self.gain
        n = self.vector_steps(steps)
        for _ in range(n):
            actions = (obs @ gain > 0).astype(np.int64)
            t0 = clock()
            obs, *_ = env.step(actions)
            spent += clock() - t0
        self.obs = obs
        return n * self.num_envs / spent

    def close(self) -> None:
        self.env.close()


class Env:
    """``blendtorch/CartPole-v0`` under a balancing controller; times ``step()`` and ``reset()``."""

    def __init__(self, blender: str) -> None:
        self.env = gym.make("blendtorch/CartPole-v0", blender=blender)
        self.obs, _ = self.env.reset(seed=0)
        self.resets: list[float] = []

    def window(self, steps: int) -> float:
        env, obs, clock, spent = self.env, self.obs, time.perf_counter, 0.0
        for _ in range(steps):
            action = controller(obs)
            t0 = clock()
            obs, _, terminated, truncated, _ = env.step(action)
            spent += clock() - t0
            if terminated or truncated:
                t0 = clock()
                obs, _ = env.reset()
                self.resets.append(clock() - t0)
        self.obs = obs
        return steps / spent

    def close(self) -> None:
        self.env.close()


def run_blender(blender: str, steps: int, repeat: int, tmp: str, num_envs: list) -> dict:
    floor = Floor(blender, tmp)
    pipefloor, pushed, env, vectors = None, None, None, {}
    try:
        pipefloor = PipeFloor(blender, tmp)
        pushed = Floor(blender, tmp, push=True)
        env = Env(blender)
        for n in num_envs:
            vectors[f"vec{n}"] = VectorEnv(blender, n)
        runners = {"floor": floor, "pipefloor": pipefloor, "pushed": pushed, "env": env, **vectors}
        for runner in runners.values():
            runner.window(min(steps, 500))  # warm-up
        env.resets.clear()
        pids = {"floor": floor.proc.pid, "pipefloor": pipefloor.proc.pid, "pushed": pushed.proc.pid,
                "env": env.env.unwrapped.pid, **{k: v.env.unwrapped.pid for k, v in vectors.items()}}
        runs: dict = {name: [] for name in pids}
        for _ in range(repeat):
            for name, runner in runners.items():
                runs[name].append(timed(runner, pids[name], steps))
        floors, pipefloors, pusheds, envs = ([r[0] for r in runs[k]] for k in ("floor", "pipefloor", "pushed", "env"))
        cpu = {f"{k}_{part}": statistics.median(r[i] for r in runs[k]) for k in runs for i, part in ((1, "blender_cpu"), (2, "driver_cpu"))}
        vec = {}
        for k in vectors:
            rates = [r[0] for r in runs[k]]
            vec[k] = statistics.median(rates)
            vec[f"{k}_ratio"] = statistics.median([v / e for v, e in zip(rates, envs)])
        return {**cpu, **vec, "floor": statistics.median(floors), "pipefloor": statistics.median(pipefloors),
                "pushed": statistics.median(pusheds), "env": statistics.median(envs),
                "ratio": statistics.median([e / f for e, f in zip(envs, floors)]),
                "ratio_pipe": statistics.median([e / f for e, f in zip(envs, pipefloors)]),
                "ratio_pushed": statistics.median([e / f for e, f in zip(envs, pusheds)]),
                "reset_ms": 1000 * statistics.median(env.resets) if env.resets else float("nan"),
                "resets": len(env.resets)}
    finally:
        for runner in (floor, pipefloor, pushed, env, *vectors.values()):
            if runner is not None:
                runner.close()


def run_echo(steps: int, repeat: int, tmp: str) -> float:
    """Round trips/s of a bare ZeroMQ REQ/REP over ipc to a plain Python echo process."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    address = f"ipc://{tmp}/echo.sock"
    sock.bind(address)
    proc = subprocess.Popen([sys.executable, "-c", ECHO, address])
    try:
        sock.send(b"ping")
        sock.recv()
        rates = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(steps):
                sock.send(b"ping")
                sock.recv()
            rates.append(steps / (time.perf_counter() - t0))
        sock.send(b"stop")
        sock.recv()
    finally:
        proc.wait(10)
        sock.close(0)
    return statistics.median(rates)


def run_echo_pipe(steps: int, repeat: int, tmp: str) -> float:
    """Round trips/s of a bare message pipe (``blender_worker.pipe``) over a unix stream socket
    to a plain Python echo process."""
    listener = PipeListener("ipc", tmp, name="echo-pipe")
    proc = subprocess.Popen([sys.executable, "-c", ECHO_PIPE, listener.address])
    pipe = None
    try:
        pipe = listener.accept(30)
        if pipe is None:
            raise RuntimeError("the pipe echo process did not connect in 30 s")
        send, recv = pipe.send, pipe.recv
        send(b"ping")
        recv(10.0)
        rates = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(steps):
                send(b"ping")
                recv(10.0)
            rates.append(steps / (time.perf_counter() - t0))
        send(b"stop")
        recv(10.0)
    finally:
        proc.wait(10)
        if pipe is not None:
            pipe.close()
        listener.close()
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blender", default="bpy,blender", help="comma-separated Blenders (bpy, blender, a path)")
    parser.add_argument("--steps", type=int, default=2000, help="steps per timed window")
    parser.add_argument("--repeat", type=int, default=5, help="timed windows of the floor and of the env each")
    parser.add_argument("--num-envs", default="1,8,64,256", help="comma-separated vector env sizes ('' for none)")
    parser.add_argument("--tiny", action="store_true", help="smoke test: 100 steps, 1 window")
    args = parser.parse_args()
    steps, repeat = (100, 1) if args.tiny else (args.steps, args.repeat)
    blenders = [b.strip() for b in args.blender.split(",") if b.strip()]
    num_envs = [int(n) for n in args.num_envs.split(",") if n.strip()]

    with tempfile.TemporaryDirectory() as tmp:
        results = {b: run_blender(b, steps, repeat, tmp, num_envs) for b in blenders}
        echo = run_echo(steps, repeat, tmp)
        echo_pipe = run_echo_pipe(steps, repeat, tmp)

    print(f"\nblendtorch/CartPole-v0, medians of {repeat} alternating windows of {steps} steps, no rendering "
          f"({time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    names = {"bpy": "bpy wheel", "blender": "blender binary"}
    cols = [names.get(b, b) for b in blenders]
    print(f"| {'figure':58s} | " + " | ".join(f"{c:>14s}" for c in cols) + " |")
    print(f"|{'-' * 60}|" + "|".join("-" * 15 + ":" for _ in cols) + "|")
    rows = [
        ("floor: bare Blender REQ/REP + frame_set (steps/s)", "floor", "{:,.0f}"),
        ("floor: bare Blender message pipe + frame_set (steps/s)", "pipefloor", "{:,.0f}"),
        ("floor + push: also sets the motor velocity (steps/s)", "pushed", "{:,.0f}"),
        ("env: gym.make('blendtorch/CartPole-v0').step() (steps/s)", "env", "{:,.0f}"),
        ("env / floor", "ratio", "{:.2f}"),
        ("env / floor (message pipe)", "ratio_pipe", "{:.2f}"),
        ("env / (floor + push)", "ratio_pushed", "{:.2f}"),
        ("reset() (ms, median)", "reset_ms", "{:.2f}"),
        ("Blender CPU per step, all threads (us): floor", "floor_blender_cpu", "{:.0f}"),
        ("Blender CPU per step, all threads (us): pipe floor", "pipefloor_blender_cpu", "{:.0f}"),
        ("Blender CPU per step, all threads (us): floor + push", "pushed_blender_cpu", "{:.0f}"),
        ("Blender CPU per step, all threads (us): env", "env_blender_cpu", "{:.0f}"),
        ("driver thread CPU per step (us): floor", "floor_driver_cpu", "{:.0f}"),
        ("driver thread CPU per step (us): pipe floor", "pipefloor_driver_cpu", "{:.0f}"),
        ("driver thread CPU per step (us): env", "env_driver_cpu", "{:.0f}"),
    ]
    for n in num_envs:
        rows += [
            (f"vector env, {n} in one Blender (sub-env steps/s)", f"vec{n}", "{:,.0f}"),
            (f"vector env, {n} / env", f"vec{n}_ratio", "{:.2f}"),
            (f"Blender CPU per sub-env step (us): vector env, {n}", f"vec{n}_blender_cpu", "{:.0f}"),
        ]
    for label, key, fmt in rows:
        print(f"| {label:58s} | " + " | ".join(f"{fmt.format(results[b][key]):>14s}" for b in blenders) + " |")
    print(f"| {'bare ZeroMQ REQ/REP round trip, plain Python, no Blender':58s} | {echo:>14,.0f} |")
    print(f"| {'bare message pipe round trip, plain Python, no Blender':58s} | {echo_pipe:>14,.0f} |")
    print(f"\nresets timed: " + ", ".join(f"{names.get(b, b)} {results[b]['resets']}" for b in blenders))


if __name__ == "__main__":
    main()
