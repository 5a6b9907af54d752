"""Vector envs in one Blender (blendtorch_ray.vector_env, blender_worker.vector_env): sub-envs
behave as single envs, autoreset, batched spaces, tiled rendering, bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import psutil
import pytest

import blendtorch_ray  # noqa: F401 - registers blendtorch/CartPole-v0
from blendtorch_ray.env import EnvConfig
from blendtorch_ray.envs import COUNTER_SCRIPT, CartPoleVectorEnv
from blendtorch_ray.errors import BlenderEnvError
from blendtorch_ray.vector_env import BlenderVectorEnv
from conftest import wait_until

pytestmark = [pytest.mark.blender, pytest.mark.slow, pytest.mark.timeout(240)]

STEPS = 300


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _blenders() -> list[int]:
    """Pids of the Blender processes this test process started (bpy bootstrap or binary)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "blender_worker.bootstrap" in cmd or "blender" in child.name():
            out.append(child.pid)
    return out


def _single_rollout(blender: str, seed: int, actions: np.ndarray) -> tuple:
    """A single env driven with next-step autoreset by hand, as a vector env does it."""
    env = gym.make("blendtorch/CartPole-v0", blender=blender)
    try:
        obs, _ = env.reset(seed=seed)
        trace, ended = [obs], False
        rewards, terms, truncs = [], [], []
        for a in actions:
            if ended:
                obs, _ = env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, _ = env.step(int(a))
            ended = terminated or truncated
            trace.append(obs)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
        return np.stack(trace), np.array(rewards), np.array(terms), np.array(truncs)
    finally:
        env.close()


@pytest.mark.parametrize("blender", ["bpy", "blender"])
def test_sub_envs_match_single_envs_with_the_same_seed_and_actions(blender):
    n, seed = 5, 10
    actions = np.random.default_rng(3).integers(0, 2, size=(STEPS, n))
    envs = gym.make_vec("blendtorch/CartPole-v0", num_envs=n, vectorization_mode="vector_entry_point", blender=blender)
    try:
        obs, _ = envs.reset(seed=seed)
        trace, rewards, terms, truncs = [obs], [], [], []
        for a in actions:
            obs, reward, terminated, truncated, _ = envs.step(a)
            trace.append(obs)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
    finally:
        envs.close()
    trace, rewards, terms, truncs = map(np.array, (trace, rewards, terms, truncs))
    assert trace.shape == (STEPS + 1, n, 4) and trace.dtype == np.float32
    for i in (0, 2, n - 1):
        s_trace, s_rewards, s_terms, s_truncs = _single_rollout(blender, seed + i, actions[:, i])
        assert terms[:, i].sum() >= 5  # random pushes: many episodes, so many mid-run resets
        np.testing.assert_array_equal(terms[:, i], s_terms)
        np.testing.assert_array_equal(truncs[:, i], s_truncs)
        np.testing.assert_array_equal(rewards[:, i], s_rewards)
        np.testing.assert_allclose(trace[:, i], s_trace, rtol=0, atol=1e-4)
    # Sub-envs differ from each other (their own seeds and actions), so the match is not trivial.
    assert not np.allclose(trace[:, 0], trace[:, 2])


def test_make_vec_starts_one_blender_with_batched_spaces_and_next_step_autoreset():
    n = 8
    before = set(_blenders())
    envs = gym.make_vec("blendtorch/CartPole-v0", num_envs=n)  # the vector entry point is this id's default
    try:
        assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
        assert envs.observation_space.shape == (n, 4) and envs.action_space == gym.spaces.MultiDiscrete([2] * n)
        assert envs.single_action_space == gym.spaces.Discrete(2)
        obs, _ = envs.reset(seed=0)
        pid = envs.unwrapped.pid
        assert set(_blenders()) - before == {pid}
        assert obs.shape == (n, 4) and obs in envs.observation_space
        # Sub-env 0 is pushed right until it ends; the others are balanced.
        for _ in range(200):
            act = (obs @ np.array([0.05, 0.1, 1.0, 0.3]) > 0).astype(np.int64)
            act[0] = 1
            obs, reward, terminated, truncated, _ = envs.step(act)
            if terminated[0]:
                break
        assert terminated[0] and not terminated[1:].any()
        assert reward.dtype == np.float64 and terminated.dtype == bool and truncated.dtype == bool
        prev = obs
        obs, reward, terminated, truncated, _ = envs.step(np.ones(n, dtype=np.int64))
        # The autoreset step: sub-env 0 starts over (at rest, centred), the others go on.
        assert (reward[0], terminated[0], truncated[0]) == (0.0, False, False)
        assert obs[0, 0] == 0.0 and obs[0, 1] == 0.0 and obs[0, 3] == 0.0 and abs(obs[0, 2]) <= 0.05
        assert (reward[1:] == 1.0).all() and (obs[1:] != prev[1:]).any(axis=1).all()
        obs, reward, *_ = envs.step(np.ones(n, dtype=np.int64))
        assert reward[0] == 1.0 and obs[0, 0] > 0.0  # sub-env 0 acts again
    finally:
        envs.close()
    assert envs.unwrapped.pid is None and wait_until(lambda: _gone(pid), 10)


def test_tiles_show_their_own_sub_env():
    n, w, h = 4, 160, 120
    envs = CartPoleVectorEnv(n, render_mode="rgb_array", continuous=True, width=w, height=h)
    try:
        obs, _ = envs.reset(seed=0, options={"angle": 0.0})  # every pole upright: nothing moves unpushed
        before = envs.render()
        assert len(before) == n and all(t.shape == (h, w, 3) and t.dtype == np.uint8 for t in before)
        assert all(t.std() > 0 for t in before)  # each tile shows a cartpole, not a blank
        np.testing.assert_array_equal(before[0], before[3])  # same state, same picture
        pushed = 2
        action = np.zeros((n, 1), dtype=np.float32)
        action[pushed] = 1.0
        for _ in range(5):  # not long enough for the pushed pole to fall (it would be reset)
            obs, _, terminated, _, _ = envs.step(action)
        assert not terminated.any()
        assert obs[pushed, 0] > 0.05 and (obs[np.arange(n) != pushed, 0] == 0.0).all()
        after = envs.render()
    finally:
        envs.close()
    for i in range(n):
        if i == pushed:
            assert not np.array_equal(before[i], after[i])
        else:
            np.testing.assert_array_equal(before[i], after[i])

    def cart_column(tile):  # the cart is the blue object: mean column of its pixels
        rgb = tile.astype(int)
        blue = (rgb[..., 2] > rgb[..., 0] + 40) & (rgb[..., 2] > rgb[..., 1] + 20)
        return np.flatnonzero(blue.any(axis=0)).mean()

    assert cart_column(after[pushed]) > cart_column(before[pushed]) + 0.5  # it moved right, in its own tile


def test_bad_input_is_named_before_anything_is_sent():
    for bad, exc in ((0, ValueError), (-3, ValueError), (2.5, ValueError), ("8", TypeError)):
        with pytest.raises(exc, match=rf"num_envs={bad!r}.*integer >= 1.*num_envs=64"):
            gym.make_vec("blendtorch/CartPole-v0", num_envs=bad, vectorization_mode="vector_entry_point")
    n = 3
    envs = gym.make_vec("blendtorch/CartPole-v0", num_envs=n)
    try:
        with pytest.raises(RuntimeError, match="reset"):
            envs.step(np.zeros(n, dtype=np.int64))
        envs.reset(seed=0)
        with pytest.raises(ValueError, match=r"actions of shape \(4,\).*shape \(3,\).*3 sub-envs"):
            envs.step(np.zeros(n + 1, dtype=np.int64))
        with pytest.raises(ValueError, match=r"actions of shape \(3, 1\).*shape \(3,\)"):
            envs.step(np.zeros((n, 1), dtype=np.int64))
        with pytest.raises(ValueError, match=r"actions of shape \(\)"):
            envs.step(1)
        with pytest.raises(TypeError, match=r"dtype float64.*integers for Discrete\(2\).*astype"):
            envs.step(np.zeros(n))
        with pytest.raises(ValueError, match=r"actions\[1\]=2.*\[0, 2\)"):
            envs.step(np.array([0, 2, 1]))
        with pytest.raises(ValueError, match="3 seeds|one seed per sub-env"):
            envs.reset(seed=[1, 2])
        # Nothing was sent: the request/reply channel is still in step and answers a good step.
        obs, reward, *_ = envs.step(np.array([0, 1, 1]))
        assert obs.shape == (n, 4) and (reward == 1.0).all()
    finally:
        envs.close()
    continuous = CartPoleVectorEnv(2, continuous=True)
    with pytest.raises(ValueError, match=r"shape \(2,\).*shape \(2, 1\)"):
        continuous._check_actions(np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match=r"height=.*65536"):
        CartPoleVectorEnv(1024, render_mode="rgb_array", height=240)


def test_a_single_env_script_is_refused_at_the_handshake():
    space = gym.spaces.Box(0.0, 1.1, shape=(1,), dtype=np.float32)
    before = set(_blenders())
    envs = BlenderVectorEnv(EnvConfig(script=COUNTER_SCRIPT), 4, space, gym.spaces.Discrete(2))
    try:
        with pytest.raises(BlenderEnvError, match=r"num_envs=4.*counter_env.py.*single env.*VectorEnv.*vectorization_mode='sync'"):
            envs.reset(seed=0)
        assert envs.pid is None  # the refused Blender was ended at once
    finally:
        envs.close()
    assert wait_until(lambda: not set(_blenders()) - before, 10)


def test_own_vector_script_autoresets_each_sub_env_and_restarts_at_the_end_of_the_frame_window(write_script):
    """A user script on blender_worker.vector_env.VectorEnv: sub-env i ends after 3 + i steps;
    the frame window (1, 8) ends every episode at frame 8 and the next step starts all over."""
    script = write_script(
        """
        import numpy as np
        from blender_worker.protocol import parse_env_args
        from blender_worker.vector_env import VectorEnv

        class Counting(VectorEnv):
            def _reset_all(self, options):
                self.count = np.zeros(self.num_envs)
            def _reset_one(self, i):
                self.count[i] = 0
            def _prepare_steps(self, actions, acting):
                self.count[acting] += 1
            def _collect(self, started):
                terminated = self.count >= 3 + np.arange(self.num_envs)
                return self.count[:, None].astype(np.float32), np.ones(self.num_envs), terminated, {}

        launch, env_args, _ = parse_env_args()
        Counting(launch, env_args, frame_range=(1, 8)).run()
        """
    )
    space = gym.spaces.Box(0.0, 10.0, shape=(1,), dtype=np.float32)
    envs = BlenderVectorEnv(EnvConfig(script=script), 2, space, gym.spaces.Discrete(2))
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.tolist() == [[0.0], [0.0]]
        got = [envs.step(np.ones(2, dtype=np.int64)) for _ in range(9)]
    finally:
        envs.close()
    counts = [o[:, 0].tolist() for o, *_ in got]
    assert counts == [[1, 1], [2, 2], [3, 3], [0, 4], [1, 0], [2, 1], [3, 2], [0, 0], [1, 1]]
    terminated = [t.tolist() for _, _, t, _, _ in got]
    truncated = [t.tolist() for _, _, _, t, _ in got]
    rewards = [r.tolist() for _, r, _, _, _ in got]
    assert terminated[2] == [True, False] and terminated[3] == [False, True]
    assert rewards[3] == [0.0, 1.0] and rewards[4] == [1.0, 0.0]  # the autoreset steps earn nothing
    assert terminated[6] == [True, False] and truncated[6] == [False, True]  # frame 8: the window ends
    assert rewards[7] == [0.0, 0.0] and not any(terminated[7] + truncated[7])  # one full reset
    assert not any(sum(truncated[:6], []))


def test_control_readme_vector_example_runs_unchanged(tmp_path):
    """The indented example under "Many cartpoles in one Blender" in examples/control/README.md."""
    import subprocess
    import sys
    import textwrap

    from conftest import REPO

    text = (REPO / "examples" / "control" / "README.md").read_text()
    section = text[text.index("## Many cartpoles in one Blender"):]
    lines = section.splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("    "))
    end = next(i for i in range(start, len(lines)) if lines[i] and not lines[i].startswith("    "))
    block = textwrap.dedent("\n".join(lines[start:end]))
    assert "make_vec" in block
    checks = "\nassert obs.shape == (64, 4) and rewards.shape == (64,), obs.shape\nprint('VECTOR-OK')"
    out = subprocess.run([sys.executable, "-c", block + checks], cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "VECTOR-OK" in out.stdout
