"""Which instance's stream a consumer reads next: round-robin over the ready ones, with a
fair start.

A consumer (``RemoteIterableDataset``) holds one Ray streaming generator per instance.
Instances with a batch ready are read round-robin, so a training batch mixes instances
instead of draining one instance's backlog first. ``ray.wait(num_returns=1)`` alone would not
do that: it picks among ready streams in no particular order.

The fair start: until every stream has delivered its first batch (a ring header, which a
shared-memory stream sends first, does not count) or ``FAIR_START_S`` has passed, a stream
that has not is waited for first. Without it, the stream that happened to open first would
have its whole backlog read before the others start.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional

import ray

FAIR_START_S = 1.0
"""Longest wait, when a read starts, for every instance's stream to deliver its first batch
(about the actor's ``max_batch_delay``, after which it sends a partial batch)."""


class ReadOrder:
    """The streams a consumer reads, in the order it reads them.

    Args:
        streams: Stream (a Ray ``ObjectRefGenerator``) -> the instance's ``btid``; the
            order given is the first round's order.
        fair_start_s: How long the fair start lasts at most (``FAIR_START_S``).
    """

    def __init__(self, streams: dict, fair_start_s: float = FAIR_START_S) -> None:
        self._btids = dict(streams)
        self._unstarted = set(streams)
        self._fair_until = time.monotonic() + fair_start_s

    def __bool__(self) -> bool:
        return bool(self._btids)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._btids)

    def btids(self) -> list[int]:
        """The instances still read, in order."""
        return list(self._btids.values())

    def next_ready(self, timeout: float) -> Optional[Any]:
        """The stream to read now, sent to the back of the order.

        Args:
            timeout: Seconds to wait for any stream to have a batch ready.

        Returns:
            The first stream in order with a batch ready (during the fair start: the first
            one that has not delivered a batch yet, if one gets ready in time), or None if none
            is ready within ``timeout``.
        """
        gen = self._pick(timeout)
        if gen is not None:
            self._btids[gen] = self._btids.pop(gen)
        return gen

    def _pick(self, timeout: float) -> Optional[Any]:
        first = [g for g in self._btids if g in self._unstarted]
        left = self._fair_until - time.monotonic()
        if first and left > 0:
            gen = _first_ready(first, min(left, timeout))
            if gen is not None:
                return gen
        return _first_ready(list(self._btids), timeout)

    def delivered(self, gen: Any) -> None:
        """Note that ``gen`` delivered a batch (it no longer holds up the fair start)."""
        self._unstarted.discard(gen)

    def remove(self, gen: Any) -> int:
        """Stop reading ``gen`` (it ended, or its actor was lost).

        Returns:
            Its instance's ``btid``.
        """
        self._unstarted.discard(gen)
        return self._btids.pop(gen)

    def add(self, gen: Any, btid: int) -> None:
        """Read ``gen`` too, last in order (a stream reopened on a recreated actor)."""
        self._btids[gen] = btid


def _first_ready(order: list, timeout: float) -> Optional[Any]:
    """The first stream in ``order`` with an object ready, waiting up to ``timeout`` for one
    if none is (None then)."""
    ready, _ = ray.wait(order, num_returns=len(order), timeout=0)
    if not ready:
        ready, _ = ray.wait(order, num_returns=1, timeout=timeout)
        if not ready:
            return None
    ready_set = set(ready)
    return next(g for g in order if g in ready_set)
