"""Exceptions of blendtorch-ray. Each names the instance and carries the tail of its log."""

from __future__ import annotations

from typing import Optional


class BlendtorchError(RuntimeError):
    """Base class; ``btid`` and ``log_tail`` are set when one instance is at fault."""

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
    """No item arrived within the dataset's timeout."""


class BlenderVersionError(BlenderNotFoundError):
    """A Blender binary was found but cannot run blender_worker (too old, or its bundled
    Python differs from this interpreter's, so this environment's numpy/pyzmq cannot load)."""
