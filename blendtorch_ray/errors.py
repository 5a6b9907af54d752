"""Exceptions of blendtorch-ray. Each names the instance and carries the tail of its log."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator, Optional


class BlendtorchError(RuntimeError):
    """Base class of the project's errors; ``btid`` and ``log_tail`` are set when one
    instance is at fault.

    The message shown is ``message``, then the log file and the last lines of the Blender
    log. The fields survive Ray's serialisation, and `own_errors` re-raises an error that
    crossed Ray as its own class.

    Args:
        message: What went wrong and how to fix it.
        btid: The instance at fault, or None (several or none).
        log_tail: The last lines of that instance's Blender log.
        log_path: Where its whole log is.

    Example:
        The failing instance and its log::

            try:
                bl.start()
            except BlenderStartError as err:
                print(err.btid, err.log_path)
    """

    def __init__(self, message: str, btid: Optional[int] = None, log_tail: str = "", log_path: str = ""):
        self.btid = btid
        self.log_tail = log_tail
        self.log_path = log_path
        text = message
        if log_path:
            text += f"\n  log file: {log_path}"
        if log_tail:
            indented = "\n".join("    " + line for line in log_tail.rstrip().splitlines())
            text += f"\n  last lines of the Blender log:\n{indented}"
        super().__init__(text)

    def __reduce__(self):  # keep the fields across Ray's (de)serialisation
        return (_rebuild, (type(self), self.args[0], self.btid, self.log_tail, self.log_path))


def _rebuild(cls, text, btid, log_tail, log_path):
    err = cls.__new__(cls)
    RuntimeError.__init__(err, text)
    err.btid, err.log_tail, err.log_path = btid, log_tail, log_path
    return err


class BlenderNotFoundError(BlendtorchError):
    """No usable Blender: the bpy wheel is missing or the given binary does not exist."""


class BlenderStartError(BlendtorchError):
    """A Blender instance exited or stayed silent before its readiness handshake."""


class BlenderCrashedError(BlendtorchError):
    """A Blender instance died and could not be restarted within its retry budget."""


class StreamTimeout(BlendtorchError, TimeoutError):
    """No item arrived within the dataset's timeout (also a ``TimeoutError``)."""


class BlenderVersionError(BlenderNotFoundError):
    """A Blender binary was found but cannot run blender_worker (too old, or its bundled
    Python differs from this interpreter's, so this environment's numpy/pyzmq cannot load)."""



class EnvTimeout(BlendtorchError, TimeoutError):
    """Blender did not answer an env request within the configured timeout."""


class BlenderEnvError(BlendtorchError):
    """The Blender-side env raised while handling a request (its traceback is included)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def unwrap_remote(exc: BaseException) -> BaseException:
    """The project's own error inside an error that crossed Ray, ready to raise.

    Ray wraps an exception raised in an actor in a ``RayTaskError`` whose first line is its
    task header (with ANSI colour codes). A user should see our class and its own first
    line ("Blender instance 1: ..."), with the Blender log tail; the actor-side traceback is
    kept below it as a note, without colour codes.

    Args:
        exc: An exception caught around ``ray.get`` (or ``next`` on a streaming generator).

    Returns:
        A fresh exception of the original ``BlendtorchError`` subclass, or ``exc`` itself if
        it does not wrap one.
    """
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, BlendtorchError) or cause is exc:
        return exc
    err = _rebuild(type(cause), cause.args[0] if cause.args else "", cause.btid, cause.log_tail, cause.log_path)
    # Ray's text: its task header, the actor-side traceback, then our message again.
    ours = f"{type(cause).__module__}.{type(cause).__qualname__}:"
    lines = _ANSI.sub("", str(exc)).splitlines()
    trace = "\n".join(lines[: next((i for i, ln in enumerate(lines) if ln.startswith(ours)), len(lines))]).strip()
    if trace and hasattr(err, "add_note"):  # Python 3.11+
        err.add_note("Ray traceback (raised in the actor):\n" + trace)
    return err


@contextmanager
def own_errors() -> Iterator[None]:
    """Re-raise errors of ours that crossed Ray as themselves (see ``unwrap_remote``).

    Example::

        with own_errors():
            info = ray.get(actor.wait_ready.remote())
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unchanged unless it wraps ours
        err = unwrap_remote(exc)
        if err is exc:
            raise
        raise err from None
