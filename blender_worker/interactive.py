"""UI instances: run a script's frames from Blender's event loop, so that its window stays live.

A UI instance (``LaunchConfig(ui=True)`` / ``EnvConfig(ui=True)``) is a Blender binary started
without ``--background``: Blender opens its window, runs the script at start-up
(``--python``) and then runs its event loop until the window is closed. A script cannot loop
over frames itself there (the window would freeze), so `AnimationController.play` hands its
frame loop to `drive`, which runs one frame per ``bpy.app.timers`` tick. Between two ticks
Blender redraws the viewport and handles the user's input: objects the user moves, selects or
edits are in the scene the next frame renders and publishes.

Backpressure: a background instance blocks in ``DataPublisher.publish`` while the consumer is
behind. In a UI instance that would freeze the window for as long as the consumer does not
read, so `drive` asks every open publisher first (`blender_worker.publisher.can_publish`) and
skips the tick while one of them is full: the animation waits, the window stays live, nothing
is dropped. (A frame that publishes several items may still wait inside ``publish`` for the
second one, for as long as the consumer takes to free one place.)

Errors: an exception in a frame (a signal handler, a render) prints its traceback and ends
Blender with exit code 1, as ``--python-exit-code 1`` does for the start-up script, so the
supervisor reports a crash and restarts it (instead of a window that silently stops
publishing). Closing the window ends Blender with code 0: the publisher flushes at exit and
the instance's stream ends; the supervisor does not restart it.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, Iterator, Optional

import bpy

BACKPRESSURE_RETRY_S = 0.01
"""Seconds until the next look when a publisher is full (the window stays live meanwhile)."""

PAUSED_RETRY_S = 0.05
"""Seconds between two looks while the animation is paused."""


def is_ui() -> bool:
    """True in a Blender with its window (not ``--background``, not the bpy wheel)."""
    return not bpy.app.background


REDRAW_AREAS = ("VIEW_3D", "DOPESHEET_EDITOR", "TIMELINE")
"""Areas redrawn after each frame: the 3D viewports and the timeline (redrawing every area,
e.g. the properties editor, costs much more with software GL and shows nothing new)."""


def redraw_all() -> None:
    """Ask the 3D viewports and timelines of every window to redraw (they show the new frame)."""
    wm = bpy.context.window_manager
    for window in wm.windows if wm is not None else ():
        for area in window.screen.areas:
            if area.type in REDRAW_AREAS:
                area.tag_redraw()


MIN_TICK_S = 0.002
"""Shortest timer interval used: Blender 3.4 runs a timer that returns 0 about once a second
(measured: 1.4 ticks/s under Xvfb), one that returns 0.01 about 50 times a second."""

REDRAW_INTERVAL_S = 1 / 30
"""Shortest time between two redraws of the viewports."""


class Redrawer:
    """Redraw the viewports after frames, but give the frames at least as much time as the
    redraws take: with software GL (Mesa's llvmpipe under Xvfb) one redraw of a full-window
    viewport can take hundreds of milliseconds, and redrawing after every frame would slow the
    animation to the redraw rate. On a GPU redraws are cheap and happen every frame up to
    ``REDRAW_INTERVAL_S``."""

    def __init__(self) -> None:
        import time

        self._clock = time.monotonic
        self._pending = False  # a redraw was asked for by the previous tick
        self._last_tick = self._clock()
        self._next = 0.0
        self.cost = 0.0
        """Estimated seconds of the last redraw (the gap between the tick that asked for it and
        the next one)."""

    def tick(self, changed: bool) -> None:
        """Call once per timer tick; ``changed``: the scene changed in this tick."""
        now = self._clock()
        if self._pending:
            self.cost = max(0.0, now - self._last_tick)
            self._pending = False
        if changed and now >= self._next:
            redraw_all()
            self._pending = True
            self._next = now + max(REDRAW_INTERVAL_S, self.cost)
        self._last_tick = self._clock()


def crash(where: str) -> None:
    """Print the current exception's traceback and end Blender with exit code 1."""
    print(f"blender_worker.interactive: error in {where}:", file=sys.stderr)
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # noqa: SLF001 - a clean quit would exit 0 and hide the crash from the supervisor


def run_in_event_loop(step: Callable[[], Optional[float]], first_interval: float = 0.0,
                      where: str = "a timer") -> Callable[[], Optional[float]]:
    """Register ``step`` as a ``bpy.app.timers`` function that ends Blender (code 1) if it raises.

    Args:
        step: Called once per tick; returns the seconds until the next tick, or None to stop.
        first_interval: Seconds until the first tick.
        where: Names ``step`` in the error message.

    Returns:
        The registered timer function (pass it to ``bpy.app.timers.unregister`` to stop early).
    """

    def tick() -> Optional[float]:
        try:
            return step()
        except Exception:  # noqa: BLE001 - any error in the frame ends the instance visibly
            crash(where)
            return None

    bpy.app.timers.register(tick, first_interval=first_interval, persistent=True)
    return tick


def playback_started() -> bool:
    """If Blender's own playback runs in any window (the user pressed Space, Shift+Ctrl+Space or
    the timeline's play button), stop it where it started and return True.

    The animation's frames come from `drive`, not from Blender's playback: both at once would
    advance two frames per step. So Blender's play control becomes the animation's pause
    button (see `drive`)."""
    wm = bpy.context.window_manager
    started = False
    for window in wm.windows if wm is not None else ():
        if window.screen is not None and window.screen.is_animation_playing:
            with bpy.context.temp_override(window=window, screen=window.screen):
                bpy.ops.screen.animation_cancel(restore_frame=True)
            started = True
    return started


def drive(anim: Any, frames: Iterator[int]) -> None:
    """Run an `AnimationController`'s frame loop from Blender's event loop, one frame per tick.

    Ticks wait while ``anim.paused`` or while a publisher is full; otherwise they come
    ``anim.ui_interval`` seconds apart (0: as fast as the window allows). The loop ends when
    the generator does (``num_episodes`` played or ``anim.stop()``); the window stays open.

    Blender's own play control pauses and resumes the animation: pressing Space (or the
    timeline's play button) starts Blender's playback, which the next tick stops again
    (`playback_started`) and turns into `AnimationController.pause` / ``resume``.

    Args:
        anim: The controller (``paused``, ``ui_interval``, ``pause()``, ``resume()``).
        frames: Its frame generator (`AnimationController._frames`).
    """
    from blender_worker.publisher import can_publish

    redraw = Redrawer()

    def step() -> Optional[float]:
        if playback_started():
            anim.resume() if anim.paused else anim.pause()
            print(f"blender_worker.interactive: {'paused' if anim.paused else 'resumed'} by Blender's play control "
                  f"at frame {anim.frameid}", flush=True)
        if anim.paused:
            redraw.tick(False)
            return PAUSED_RETRY_S
        if not can_publish():
            redraw.tick(False)
            return BACKPRESSURE_RETRY_S
        try:
            next(frames)
        except StopIteration:
            redraw_all()
            return None
        redraw.tick(True)
        return max(MIN_TICK_S, anim.ui_interval)

    run_in_event_loop(step, where="AnimationController.play (a frame of the UI instance)")


ENV_POLL_S = MIN_TICK_S
"""Seconds between two looks for a driver request of an env served from the event loop."""


def serve_env(env: Any, pipe: Any) -> None:
    """Serve a `blender_worker.env.BaseEnv` from Blender's event loop (a UI instance).

    What ``BaseEnv.run`` does in the background, as a timer: requests are answered between two
    redraws, so the window shows the env while an agent acts on it. In real-time mode
    (``EnvConfig(real_time=True)``) the simulation advances at the scene's frame rate (or
    ``real_time_fps``), with the last action when no step request came in time; stepped mode
    advances one frame per ``step``. ``close`` from the driver (or a driver that closed the
    channel) quits Blender. A tick never waits for the driver: it answers what has arrived
    whole (``recv_request`` with timeout 0) and leaves a request still arriving to the next.

    Args:
        env: The env (its ``run()`` calls this when ``bpy.app.background`` is False).
        pipe: The env channel, connected (a `blender_worker.pipe.MessagePipe`); closed when
            the driver closes the env.
    """
    from blender_worker.pipe import PipeClosed
    from blender_worker.protocol import EnvCommand

    real_time = env.env_args.real_time
    fps = env.env_args.real_time_fps or (env.scene.render.fps / env.scene.render.fps_base)
    period = 1.0 / fps
    import time

    state: dict = {"pending": None, "next": time.monotonic() + period}
    redraw = Redrawer()

    def finish() -> None:
        pipe.close()
        if env._renderer is not None:  # noqa: SLF001 - as BaseEnv.run's cleanup
            env._renderer.close()  # noqa: SLF001
        bpy.app.timers.register(lambda: bpy.ops.wm.quit_blender() and None, first_interval=0.1)

    def answer() -> bool:
        """Answer what the driver sent; False once it closed the env."""
        while state["pending"] is None:
            try:
                request = env.recv_request(pipe, 0)
            except TimeoutError:  # nothing (whole) yet
                return True
            except PipeClosed:
                print("blender_worker.interactive: the env channel ended without a close command (the driver closed it)", flush=True)
                finish()
                return False
            is_step = request.get("cmd") == EnvCommand.STEP
            if is_step and real_time and not env._episode_over:  # noqa: SLF001
                state["pending"] = request  # its action goes into the next frame
                return True
            if is_step and real_time and env._last is not None:  # noqa: SLF001 - episode over: repeat
                reply, done = env._last, False  # noqa: SLF001
            else:
                reply, done = env._handle(request)  # noqa: SLF001 - stepped: the step runs here
            env.send_reply(pipe, reply)
            if done:
                finish()
                return False
            if request.get("cmd") == EnvCommand.RESET:
                state["next"] = time.monotonic() + period
            state["changed"] = state.get("changed") or is_step or request.get("cmd") == EnvCommand.RESET
        return True

    def step() -> Optional[float]:
        if not answer():
            return None
        now = time.monotonic()
        if not real_time or env._episode_over or now < state["next"]:  # noqa: SLF001
            redraw.tick(state.pop("changed", False))
            return ENV_POLL_S if not real_time else max(MIN_TICK_S, min(ENV_POLL_S, state["next"] - now))
        pending, state["pending"] = state["pending"], None
        if pending is not None:
            env._last = env._safe(lambda: env.step(pending.get("action")))  # noqa: SLF001
            env.send_reply(pipe, env._last)  # noqa: SLF001
        else:  # nobody asked: the simulation goes on with the last action
            env._last = env._safe(lambda: env.step(None, apply=False))  # noqa: SLF001
        state["next"] = max(state["next"] + period, now - period)
        redraw.tick(True)
        state.pop("changed", None)
        return MIN_TICK_S

    run_in_event_loop(step, where="the env served in Blender's window")
