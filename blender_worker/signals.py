"""A tiny signal (observer) class used by AnimationController."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable


class Signal:
    """Hold callbacks and invoke them in the order they were added.

    ``add(fn, *args, **kwargs)`` binds extra arguments; it returns a handle for ``remove``.
    """

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def add(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        handle = partial(fn, *args, **kwargs)
        self._slots.append(handle)
        return handle

    def remove(self, handle: Callable[..., Any]) -> None:
        self._slots.remove(handle)

    def invoke(self, *args: Any, **kwargs: Any) -> None:
        for slot in list(self._slots):
            slot(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._slots)
