"""A tiny signal (observer) class used by AnimationController."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable


class Signal:
    """Hold callbacks and invoke them in the order they were added.

    ``add(fn, *args, **kwargs)`` binds extra arguments; it returns a handle for ``remove``.

    Example:
        Bind an argument, invoke, remove::

            sig = Signal()
            handle = sig.add(print, "frame")
            sig.invoke(1)          # prints "frame 1"
            sig.remove(handle)
    """

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def add(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        """Add a callback; it runs after the ones added before it.

        Args:
            fn: The callback.
            *args: Positional arguments bound before those of ``invoke``.
            **kwargs: Keyword arguments bound to it.

        Returns:
            A handle (a ``functools.partial``) to pass to ``remove``.
        """
        handle = partial(fn, *args, **kwargs)
        self._slots.append(handle)
        return handle

    def remove(self, handle: Callable[..., Any]) -> None:
        """Remove a callback.

        Args:
            handle: What ``add`` returned.

        Raises:
            ValueError: ``handle`` is not (or no longer) added.
        """
        self._slots.remove(handle)

    def invoke(self, *args: Any, **kwargs: Any) -> None:
        """Call every callback in order (callbacks added or removed meanwhile: next time).

        Args:
            *args: Passed to every callback, after its bound arguments.
            **kwargs: Passed to every callback.
        """
        for slot in list(self._slots):
            slot(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._slots)
