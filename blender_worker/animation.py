"""Drive Blender's frame loop headless and call user code around every frame.

Signals, in the order they fire::

    pre_play
      pre_animation            (once per episode; the scene is at the first frame)
        pre_frame  post_frame  (once per frame; the new frame is current in both, and
                                evaluated, physics advanced, between them)
      post_animation
    post_play

Each episode rewinds to the first frame of ``frame_range``, which also resets rigid-body
physics; frames then advance one by one so that physics steps exactly as in Blender.

In a UI instance (``ui=True``: Blender with its window) ``play`` returns at once and
Blender's event loop runs the same frames, one per timer tick (`blender_worker.interactive`):
the viewport redraws and the user can edit the scene between two frames.
"""

from __future__ import annotations

from typing import Optional

import bpy

from blender_worker.signals import Signal


class AnimationController:
    """Play the scene's animation (and physics) for a number of episodes, invoking signals.

    The signals (`blender_worker.signals.Signal`) are ``pre_play``, ``pre_animation``,
    ``pre_frame``, ``post_frame``, ``post_animation`` and ``post_play``, fired in the order
    the module docstring shows. ``episode`` counts finished episodes, ``frameid`` is the
    frame being processed.

    Args:
        scene: The scene to play; None: the current scene.

    Example:
        Randomize before and publish after every frame, forever::

            anim = AnimationController()
            anim.pre_frame.add(randomize_scene)
            anim.post_frame.add(lambda: pub.publish(**renderer.render()))
            anim.play(frame_range=(1, 10), num_episodes=-1)
    """

    def __init__(self, scene: Optional["bpy.types.Scene"] = None) -> None:
        self.scene = scene or bpy.context.scene
        self.pre_play = Signal()
        self.pre_animation = Signal()
        self.pre_frame = Signal()
        self.post_frame = Signal()
        self.post_animation = Signal()
        self.post_play = Signal()
        self.episode = 0
        self.frameid = self.scene.frame_current
        self._stop = False
        self.paused = False
        """UI instances: True while `pause` holds the animation."""
        self.ui_interval = 0.0
        """UI instances: seconds between two frames' timer ticks (0: as fast as the window
        allows; ``1 / scene.render.fps`` plays at the scene's frame rate)."""

    @property
    def frame_range(self) -> tuple[int, int]:
        """The scene's ``(frame_start, frame_end)``; ``play`` sets it to its ``frame_range``."""
        return self.scene.frame_start, self.scene.frame_end

    def stop(self) -> None:
        """Finish the current frame, then end ``play`` (post_animation and post_play fire)."""
        self._stop = True

    def play(
        self,
        frame_range: Optional[tuple[int, int]] = None,
        num_episodes: int = -1,
        use_physics: bool = True,
    ) -> None:
        """Play ``num_episodes`` episodes over ``frame_range`` (inclusive); -1 plays forever.

        ``frameid`` is the frame being processed. In ``pre_frame`` it is already the scene's
        current frame (``scene.frame_current == frameid``) but not yet evaluated: objects
        still show the previous frame's physics, and changes made there show up in this
        frame. The scene is then evaluated once at ``frameid`` (physics stepped exactly
        once) before ``post_frame``.

        Args:
            frame_range: First and last frame (inclusive); None: the scene's own range.
            num_episodes: Episodes to play; -1 plays until ``stop()``.
            use_physics: Also set the rigid-body cache to ``frame_range``.

        Raises:
            ValueError: ``frame_range`` ends before it starts.
        """
        start, end = frame_range or self.frame_range
        if end < start:
            raise ValueError(f"frame_range {start, end}: end before start")
        self.scene.frame_start, self.scene.frame_end = start, end
        if use_physics and self.scene.rigidbody_world is not None:
            cache = self.scene.rigidbody_world.point_cache
            cache.frame_start, cache.frame_end = start, end
        self._stop = False
        self.episode = 0
        frames = self._frames(start, end, num_episodes)
        if not bpy.app.background:
            # A UI instance: Blender's event loop runs the frames (one per timer tick), so the
            # window stays live; play() returns at once (see blender_worker.interactive).
            from blender_worker.interactive import drive

            drive(self, frames)
            return
        for _ in frames:
            pass

    def pause(self) -> None:
        """UI instances: stop advancing frames after the current one until `resume` (the
        window stays live). Background instances ignore it."""
        self.paused = True

    def resume(self) -> None:
        """UI instances: advance frames again after `pause`."""
        self.paused = False

    def _frames(self, start: int, end: int, num_episodes: int):
        """The frame loop; yields after every frame (``post_frame``) so that a UI instance's
        timer can run one frame per tick."""
        self.pre_play.invoke()
        while not self._stop and (num_episodes < 0 or self.episode < num_episodes):
            self.frameid = start
            self.scene.frame_set(start)
            self.pre_animation.invoke()
            for frame in range(start, end + 1):
                self.frameid = frame
                # The new frame is current in pre_frame (as in the original blendtorch), but
                # not evaluated yet: setting frame_current does not step physics or run frame
                # handlers; frame_set below evaluates it once, with pre_frame's changes.
                self.scene.frame_current = frame
                self.pre_frame.invoke()
                # Re-evaluate after pre_frame so its scene changes show up in this frame.
                self.scene.frame_set(frame)
                self.post_frame.invoke()
                yield frame
                if self._stop:
                    break
            self.post_animation.invoke()
            self.episode += 1
        self.post_play.invoke()
