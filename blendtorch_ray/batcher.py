"""The batch loop of one stream: items from the supervisor, grouped into batches, handed
over by the relay.

A batch is sent when it is full (``batch_size``) or old (``max_batch_delay``), or when
Blender ends; a crash restarts Blender and the loop goes on, a clean exit ends it. The loop
is a generator: Ray's generator backpressure stops it, which stops reading the socket, whose
high-water mark then blocks ``publish()`` in Blender.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from blendtorch_ray.relay import Relay
from blendtorch_ray.supervisor import Supervisor


def batches(sup: Supervisor, relay: Relay, closed: Callable[[], bool]) -> Iterator[Any]:
    """Yield what to hand over for each batch until the instance finishes.

    Args:
        sup: The instance's supervisor.
        relay: The stream's relay (slots and ring).
        closed: Returns True once the actor is closing.

    Yields:
        A batch (list of item dicts) or its ring descriptor.

    Raises:
        BlenderCrashedError: Blender crashed once more than ``max_restarts`` allows.
    """
    stream = sup.config.stream
    batch: list[dict] = []
    started = 0.0
    while not closed():
        got = sup.next_item()
        if got is not None:
            header, item = got
            if not batch:
                started = time.monotonic()
            batch.append(item)
            relay.hold(header)
            sup.partial = len(batch)
            if len(batch) >= stream.batch_size:
                yield from _emit(sup, relay, batch)
                batch = []
            if sup.should_recycle():
                batch += sup.recycle(relay.held)
            continue
        if batch and time.monotonic() - started > stream.max_batch_delay:
            yield from _emit(sup, relay, batch)
            batch = []
        if not sup.process.alive():
            batch += sup.drain(relay.held)
            if batch:
                yield from _emit(sup, relay, batch)
                batch = []
            if sup.process.poll() == 0:
                sup.finished = True
                return
            sup.restart()
    if batch:
        yield from _emit(sup, relay, batch)


def _emit(sup: Supervisor, relay: Relay, batch: list[dict]) -> Iterator[Any]:
    """Yield ``batch`` (or its ring descriptor), then give back the slots it held: Ray has
    serialised a yielded object before the generator resumes."""
    sup.batches += 1
    sup.partial = 0
    yield relay.hand_over(batch)
    sup.unlink_retired(relay.pending())
    relay.release()
