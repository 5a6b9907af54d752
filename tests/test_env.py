"""BlenderEnv against real Blender: gymnasium API, seeding, failures, vector envs."""

from __future__ import annotations

import gc
import os
import signal
import time

import gymnasium as gym
import numpy as np
import psutil
import pytest
from gymnasium.utils.env_checker import check_env

import blendtorch_ray  # noqa: F401 - registers blendtorch/CartPole-v0
from blendtorch_ray.env import BlenderEnv, EnvConfig
from blendtorch_ray.errors import BlenderEnvError, EnvTimeout
from blendtorch_ray.envs import CartPoleEnv, CounterEnv
from blendtorch_ray.errors import BlenderCrashedError, BlenderStartError
from conftest import wait_until

pytestmark = [pytest.mark.blender, pytest.mark.timeout(240)]

SMALL = dict(width=64, height=48)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cartpole_passes_env_checker_and_renders():
    env = gym.make("blendtorch/CartPole-v0", render_mode="rgb_array", **SMALL)
    try:
        check_env(env.unwrapped)
        assert env.observation_space.shape == (4,)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,) and obs.dtype == np.float32
        frame = env.render()
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        assert frame.std() > 0  # the cart and pole are visible, not a blank image
        pid = env.unwrapped.pid
    finally:
        env.close()
    assert wait_until(lambda: _gone(pid), 10)


def test_termination_after_limit_and_rereset():
    env = CounterEnv(length=3)
    try:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(0)
        obs, info = env.reset(seed=1)
        results = [env.step(1) for _ in range(3)]
        assert [r[2] for r in results] == [False, False, True]
        assert all(r[1] == 1.0 for r in results)
        with pytest.raises(BlenderEnvError, match="after the episode ended"):
            env.step(1)
        obs2, _ = env.reset(seed=1)
        np.testing.assert_array_equal(obs, obs2)
        _, reward, terminated, truncated, _ = env.step(0)
        assert (reward, terminated, truncated) == (0.0, False, False)
    finally:
        env.close()


def test_same_seed_same_trajectory():
    env = CartPoleEnv(max_episode_steps=40, **SMALL)
    actions = np.random.default_rng(0).integers(0, 2, size=40)

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        traj = [obs]
        for a in actions:
            obs, _, terminated, truncated, _ = env.step(int(a))
            traj.append(obs)
            if terminated or truncated:
                break
        return np.stack(traj)

    try:
        first, second, other = rollout(7), rollout(7), rollout(8)
        np.testing.assert_array_equal(first, second)
        assert len(first) > 5
        assert not np.array_equal(first[0], other[0])
        # Physics restarts from the new state (a stale rigid-body cache would replay seed 7).
        assert not np.array_equal(first[3], other[3])
        # Pushing always right moves the cart right and tips the pole left.
        env.reset(seed=7)
        for _ in range(5):
            obs, *_ = env.step(1)
        assert obs[0] > 0 and obs[1] > 0 and obs[2] < 0
        # A balancing controller reaches the step limit: truncated, not terminated, at 40.
        obs, _ = env.reset(seed=7)
        for n in range(1, 100):
            obs, _, terminated, truncated, _ = env.step(int(np.array([0.1, 0.5, 10.0, 2.0]) @ obs > 0))
            if terminated or truncated:
                break
        assert (n, terminated, truncated) == (40, False, True)
    finally:
        env.close()


def test_killed_blender_raises_and_reset_recovers():
    env = CounterEnv(length=1000)
    try:
        env.reset(seed=0)
        env.step(1)
        old = env.pid
        os.kill(old, signal.SIGKILL)
        with pytest.raises(BlenderCrashedError, match="SIGKILL.*reset") as info:
            for _ in range(100):
                env.step(1)
        assert info.value.btid == env.config.btid
        with pytest.raises(BlenderCrashedError, match="reset"):
            env.step(1)
        obs, _ = env.reset(seed=0)
        assert env.pid != old and env.epoch == 1
        _, reward, *_ = env.step(1)
        assert reward == 1.0
    finally:
        env.close()


def test_timeout_names_the_problem_and_reset_recovers(write_script):
    script = write_script(
        """
        import time
        import numpy as np
        from blender_worker.env import BaseEnv, parse_env_args

        class SlowEnv(BaseEnv):
            def _reset(self, options):
                pass
            def _prepare_step(self, action):
                if action == 1:
                    print("sleeping on purpose", flush=True)
                    time.sleep(60)
            def _collect(self):
                return np.zeros(1, np.float32), 0.0, False, False, {}

        launch, env_args, _ = parse_env_args()
        SlowEnv(launch, env_args).run()
        """
    )
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    env = BlenderEnv(EnvConfig(script=script, step_timeout=2.0, btid=42), space, gym.spaces.Discrete(2))
    try:
        env.reset()
        env.step(0)
        with pytest.raises(EnvTimeout, match="btid=42.*step_timeout") as info:
            env.step(1)
        assert "sleeping on purpose" in info.value.log_tail
        old = env.pid
        env.reset()
        assert env.pid != old
        assert wait_until(lambda: _gone(old), 10)
        env.step(0)
    finally:
        env.close()


def test_start_failure_and_env_exception_carry_blender_output(write_script):
    broken = write_script("raise RuntimeError('scene cannot be built')\n", name="broken.py")
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    env = BlenderEnv(EnvConfig(script=broken), space, gym.spaces.Discrete(2))
    try:
        with pytest.raises(BlenderStartError, match="scene cannot be built"):
            env.reset()
    finally:
        env.close()
    failing = write_script(
        """
        import numpy as np
        from blender_worker.env import BaseEnv, parse_env_args

        class Failing(BaseEnv):
            def _reset(self, options):
                pass
            def _prepare_step(self, action):
                raise ValueError(f"action {action} is not allowed")
            def _collect(self):
                return np.zeros(1, np.float32), 0.0, False, False, {}

        launch, env_args, _ = parse_env_args()
        Failing(launch, env_args).run()
        """,
        name="failing.py",
    )
    env = BlenderEnv(EnvConfig(script=failing), space, gym.spaces.Discrete(2))
    try:
        env.reset()
        with pytest.raises(BlenderEnvError, match="action 1 is not allowed"):
            env.step(1)
    finally:
        env.close()
    with pytest.raises(FileNotFoundError, match="not found"):
        EnvConfig(script="/nonexistent/env.py")
    with pytest.raises(ValueError, match="render_mode"):
        BlenderEnv(EnvConfig(script=failing), space, space, render_mode="human")


def test_vector_envs_get_their_own_blender():
    sync = gym.make_vec("blendtorch/Counter-v0", num_envs=2, vectorization_mode="sync")
    try:
        sync.reset(seed=0)
        pids = [e.unwrapped.pid for e in sync.envs]
        assert len(set(pids)) == 2 and None not in pids
        obs, reward, *_ = sync.step(np.array([1, 0]))
        np.testing.assert_array_equal(reward, [1.0, 0.0])
    finally:
        sync.close()
    assert wait_until(lambda: all(_gone(p) for p in pids), 10)

    asyn = gym.make_vec("blendtorch/Counter-v0", num_envs=2, vectorization_mode="async")
    try:
        asyn.reset(seed=0)
        pids = list(asyn.get_attr("pid"))
        assert len(set(pids)) == 2 and None not in pids
        asyn.step(np.array([0, 1]))
    finally:
        asyn.close()
    assert wait_until(lambda: all(_gone(p) for p in pids), 10)


def test_garbage_collection_ends_blender():
    env = CounterEnv()
    env.reset()
    pid = env.pid
    del env
    gc.collect()
    assert wait_until(lambda: _gone(pid), 10)


def test_real_time_mode_free_runs():
    env = CounterEnv(length=100_000, real_time=True, real_time_fps=100)
    try:
        env.reset(seed=0)
        obs0, *_ = env.step(1)
        # Frames advance without actions: wait until more frames passed than steps taken.
        deadline = time.monotonic() + 30
        steps, frames = 1, 1
        while frames <= steps and time.monotonic() < deadline:
            time.sleep(0.05)
            obs, _, _, _, info = env.step(1)
            steps, frames = steps + 1, info["frame"] - 1  # frames simulated since reset
        assert frames > steps, "the real-time simulation did not advance between actions"
        assert obs[0] > obs0[0]
    finally:
        env.close()


def test_interpreter_exit_ends_blender(tmp_path):
    """RLlib may never call close(): leaving the interpreter must still end Blender."""
    import subprocess
    import sys

    driver = tmp_path / "driver.py"
    driver.write_text(
        "import blendtorch_ray.envs as e\n"
        f"env = e.CounterEnv(log_dir={str(tmp_path)!r})\n"
        "env.reset()\n"
        "print(env.pid, flush=True)\n"
        "_keep = [env]  # still referenced at exit: only the exit hook can end Blender\n"
    )
    out = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[-1])
    assert wait_until(lambda: _gone(pid), 10)
    logs = list(tmp_path.glob("env-*.log"))
    assert len(logs) == 1 and "the driver closed the env" in logs[0].read_text()

