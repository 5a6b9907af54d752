"""Interactive mode (ui=True): Blender with its window, under a virtual X server (Xvfb).

Needs Debian's `blender` (3.4) and `xvfb` (scripts/test.sh installs both with apt). The UI
tests are skipped, saying why, only where no X server can be started; the bad-input tests
always run. ``BLENDTORCH_UPDATE_SCREENSHOT=1`` also writes the screenshot to
docs/interactive.png (the README's image).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from blendtorch_ray import BlenderLauncher
from blendtorch_ray.config import LaunchConfig
from conftest import REPO, TEST_SCRIPTS, blender_pids, wait_until

BLENDER = shutil.which("blender")
UI_SCENE = str(TEST_SCRIPTS / "ui_scene.py")


@pytest.fixture(scope="module")
def xvfb():
    """A virtual X server on a free display (Xvfb picks it: ``-displayfd``); yields ``":N"``;
    killed and reaped at the end."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("no X server can be started: Xvfb is not installed (Debian: apt-get install xvfb)")
    if BLENDER is None:
        pytest.skip("no `blender` binary on PATH (the bpy wheel has no UI; scripts/test.sh installs Debian's)")
    read, write = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        with os.fdopen(read) as f:
            number = f.readline().strip()  # written once the server accepts connections
        if not number:
            pytest.skip(f"no X server can be started: Xvfb exited with code {proc.wait(10)}")
        yield f":{number}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def display(xvfb, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb)
    return xvfb


def _launch(*args: str, **options) -> BlenderLauncher:
    options.setdefault("max_restarts", 0)
    return BlenderLauncher(script=UI_SCENE, blender="blender", ui=True, instance_args=[list(args)],
                           ready_timeout=180, **options)


@pytest.mark.blender
@pytest.mark.ray
def test_ui_instance_streams_from_its_window_and_follows_an_edit(ray_session, display, tmp_path):
    from PIL import ImageGrab

    with _launch("--move-after", "10") as bl:
        pid = bl.pids()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
        assert b"--background" not in cmd and b"-b" not in cmd  # Blender with its window
        items = list(bl.dataset(max_items=30, timeout=180))
        shot = ImageGrab.grab(xdisplay=display)  # while the window is up
    assert wait_until(lambda: pid not in blender_pids())
    assert [i["seq"] for i in items] == list(range(30))
    assert all(i["ui"] for i in items)  # bpy.app.background was False
    at = items[-1]["moved_at"]
    assert at is not None and 10 <= at < 30
    before = np.array([i["location"] for i in items if i["seq"] < at])
    after = np.array([i["location"] for i in items if i["seq"] >= at])
    assert len(before) and len(after)
    np.testing.assert_allclose(before, 0.0)
    np.testing.assert_allclose(after, [[2.0, 0.0, 0.0]] * len(after))  # the edit shows in later frames
    # ...and in their pixels: the cube (brighter than the grey background) moved right.
    def cube_x(img):
        grey = img[..., :3].astype(float).mean(axis=2)
        cols = np.nonzero((np.abs(grey - np.median(grey)) > 20).any(axis=0))[0]
        return cols.mean()

    first, last = items[0]["image"], items[-1]["image"]
    assert first.shape == (48, 64, 4) and first.dtype == np.uint8
    assert cube_x(last) > cube_x(first) + 5
    # The screenshot of the X display shows Blender's window: many colours, not a blank screen.
    pixels = np.asarray(shot.convert("RGB"))
    assert pixels.shape[:2] == (800, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    shot.save(tmp_path / "interactive.png")
    if os.environ.get("BLENDTORCH_UPDATE_SCREENSHOT") == "1":
        shot.save(REPO / "docs" / "interactive.png")


@pytest.mark.blender
@pytest.mark.ray
def test_closing_the_window_ends_the_stream_without_restart(ray_session, display):
    with _launch("--quit-after", "5", "--renderer", "render", max_restarts=2) as bl:
        items = list(bl.dataset(timeout=180))  # ends: the instance exited cleanly
        health = bl.health()
    assert len(items) >= 5 and [i["seq"] for i in items] == list(range(len(items)))
    assert all(h.restarts == 0 for h in health)


@pytest.mark.blender
def test_viewport_renderer_refuses_background_mode():
    code = "from blender_worker.viewport import ViewportRenderer\nViewportRenderer()\n"
    out = subprocess.run([sys.executable, "-c", "import bpy\n" + code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode != 0
    assert "RuntimeError" in out.stderr and "ui=True" in out.stderr and "background" in out.stderr


def test_ui_with_the_bpy_wheel_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("BLENDTORCH_BLENDER", raising=False)
    before = blender_pids()
    for blender in ("bpy", None):
        with pytest.raises(ValueError, match="ui=True needs a Blender binary.*blender="):
            BlenderLauncher(script=UI_SCENE, blender=blender, ui=True)
    from blendtorch_ray.env import EnvConfig

    with pytest.raises(ValueError, match="bpy wheel"):
        EnvConfig(script=UI_SCENE, blender="bpy", ui=True)
    assert blender_pids() == before  # raised before any instance started


def test_ui_without_a_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(ValueError, match=r"\$DISPLAY is not set.*ssh -X.*Xvfb"):
        LaunchConfig(script=UI_SCENE, blender="blender", ui=True)
    with pytest.raises(ValueError, match="DISPLAY"):
        BlenderLauncher(script=UI_SCENE, blender="blender", ui=True)
    cfg = LaunchConfig(script=UI_SCENE, blender="blender", ui=True, env={"DISPLAY": ":99"})  # given explicitly
    assert cfg.env["DISPLAY"] == ":99"


def test_ui_must_be_a_bool():
    with pytest.raises(TypeError, match="ui='yes'"):
        LaunchConfig(script=UI_SCENE, ui="yes")


def test_the_driver_display_travels_with_the_config(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":42")
    assert LaunchConfig(script=UI_SCENE, blender="blender", ui=True).env["DISPLAY"] == ":42"
    assert "DISPLAY" not in LaunchConfig(script=UI_SCENE).env  # background instances: untouched


@pytest.mark.blender
def test_real_time_cartpole_runs_in_the_window(display):
    from PIL import ImageGrab

    from blendtorch_ray.envs import CartPoleEnv

    env = CartPoleEnv(blender="blender", ui=True, real_time=True, width=64, height=48, start_timeout=180)
    pid = None
    try:
        obs, _ = env.reset(seed=0)
        pid = env._holder[0].proc.pid
        assert obs.shape == (4,) and np.isfinite(obs).all()
        observations = [obs]
        for _ in range(15):
            obs, reward, terminated, truncated, _ = env.step(1)  # push right, at the scene's frame rate
            observations.append(obs)
            if terminated or truncated:
                break
        assert np.isfinite(observations).all()
        assert observations[-1][1] > observations[0][1]  # the cart sped up to the right
        shot = np.asarray(ImageGrab.grab(xdisplay=display).convert("RGB"))
        assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # the window is up
    finally:
        env.close()
    if pid is not None:
        assert wait_until(lambda: pid not in blender_pids())


@pytest.mark.blender
@pytest.mark.ray
def test_blenders_play_control_pauses_and_resumes_the_stream(ray_session, display):
    """Space (Blender's screen.animation_play, pressed from a timer in the UI instance as a
    user would) pauses the animation: no item is published while paused, Blender's own
    playback never runs beside the animation; pressing it again resumes the stream."""
    with _launch("--press-play-after", "5", "--renderer", "render") as bl:
        items = []
        for item in bl.dataset(timeout=180):
            items.append(item)
            if item["pause_log"] is not None and len(items) >= 40:
                break
    assert [i["seq"] for i in items] == list(range(len(items)))
    assert not any(i["blender_playing"] for i in items)  # frames came from the animation only
    log = items[-1]["pause_log"]
    first = next((k for k, (_, p, _) in enumerate(log) if p), None)
    assert first is not None and first < 19, log  # the first press paused it
    held = log[first:20]  # the ticks up to the second press
    assert all(p for _, p, _ in held), log  # it stays paused until the second press...
    assert len({seq for seq, _, _ in held}) == 1, log  # ...and nothing is published meanwhile
    assert not log[-1][1], log  # the second press resumed it
    assert items[-1]["seq"] > held[0][0] + 1  # and the stream went on


@pytest.mark.blender
@pytest.mark.ray
def test_duplex_channel_and_recording_work_with_a_ui_instance(ray_session, display, tmp_path):
    """The trainer moves the cube of a UI instance through the duplex channel while the
    stream is recorded; later items show the move, and the recording replays what arrived."""
    from blendtorch_ray.recording import ReplayDataset

    with _launch("--duplex", "--renderer", "render") as bl:
        chan = bl.channel()
        it = iter(bl.dataset(max_items=40, timeout=180, record_to=str(tmp_path / "rec")))
        items = [next(it) for _ in range(5)]
        msg_id = chan.send(btid=0, z=1.5)
        reply = chan.wait([msg_id], timeout=120)[msg_id]
        items += list(it)
    assert reply.payload["z"] == pytest.approx(1.5)
    assert [i["seq"] for i in items] == list(range(40))
    fresh = [i for i in items if chan.is_fresh(i)]
    assert fresh and all(i["location"][2] == pytest.approx(1.5) for i in fresh)
    assert all(i["location"][2] == 0.0 for i in items[:5])
    replay = list(ReplayDataset(str(tmp_path / "rec")))
    assert [r["seq"] for r in replay] == [i["seq"] for i in items]
    np.testing.assert_array_equal(replay[-1]["image"], items[-1]["image"])
    np.testing.assert_allclose(replay[-1]["location"], items[-1]["location"])
