"""Make sure a Blender process never outlives the process that supervises it."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time

log = logging.getLogger("blender_worker")

_armed = False

EXIT_ON_PARENT_GONE = 3
"""Exit code of a Blender process whose supervisor went away."""


def watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Exit this process when ``parent_pid`` is gone.

    Two layers: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux, immediate; tied to the thread
    that forked us) and a daemon thread that polls the parent pid (portable fallback).
    Idempotent.
    """
    global _armed
    if _armed or parent_pid <= 0:
        return
    _armed = True
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError as exc:  # no glibc (not Linux): the polling thread below is the lifeline
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable (%s); polling the parent only", exc)
    if os.getppid() != parent_pid and not _alive(parent_pid):
        os._exit(EXIT_ON_PARENT_GONE)

    def _poll() -> None:
        while True:
            time.sleep(interval)
            if not _alive(parent_pid):
                os._exit(EXIT_ON_PARENT_GONE)

    threading.Thread(target=_poll, name="blendtorch-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as dead: read its state when /proc is there.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except OSError:
        return True


EXIT_ON_SIGTERM = 143


def exit_gracefully_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` in the main thread.

    Python then unwinds the user's script and runs ``atexit`` hooks, so ``DataPublisher``
    flushes its queue and sends its end marker: the supervisor can recycle a Blender
    process without losing an item. Call from the main thread.
    """

    def _handler(signum, frame):  # noqa: ARG001
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second TERM ends it at once
        raise SystemExit(EXIT_ON_SIGTERM)

    try:
        signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not the main thread: SIGTERM keeps its default (immediate exit)
        log.warning("exit_gracefully_on_sigterm() called outside the main thread; SIGTERM "
                    "ends this Blender without flushing its publisher")
