"""Read the prestarted Blenders directly while Ray starts, so that the first batch comes
before Ray is up (local mode).

``ray.init()`` takes seconds; a prestarted Blender (``blendtorch_ray.prestart``) has its
first frames well before that. An `EarlyReader` binds the data socket the instance's actor
will bind later, and a dataset iterated in the launching process takes items from it
(`EarlyStreams`): each item is copied out of Blender's shared-memory slot, which goes back to
Blender at once. Once the actor is up, the reader hands the socket over between two messages
(``blendtorch_ray.handover``) and the dataset goes on with the actor's stream at the next
item: no gap, no repeat, no Blender restart.

Only the launching process reads early (DataLoader workers wait for the group, whose actors
yield what the driver read and nobody took first).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Optional, Sequence

import zmq

from blender_worker import codec
from blender_worker.protocol import KIND_END, KIND_INFO, KIND_ITEM, KIND_PAUSED, KIND_READY
from blendtorch_ray import handover
from blendtorch_ray.config import LaunchConfig
from blendtorch_ray.errors import BlenderStartError, StreamTimeout
from blendtorch_ray.instance import start_position
from blendtorch_ray.process import tail_file
from blendtorch_ray.transport import ItemReceiver, PrivateDir

log = logging.getLogger("blendtorch_ray")

POLL_MS = 20
"""One wait on a reader's socket when no reader has an item."""
PAUSE_TIMEOUT_S = 60.0
"""Longest wait for Blender's ``KIND_PAUSED`` (it comes after the frame it renders now)."""


class EarlyReader:
    """The data socket of one prestarted Blender, until its actor takes it over.

    Args:
        prestarted: The process (``blendtorch_ray.prestart.Prestarted``, started with a
            hand-over flag file).
        config: The group's configuration.
    """

    def __init__(self, prestarted: Any, config: LaunchConfig) -> None:
        self.prestarted = prestarted
        self.btid = prestarted.btid
        # An own context: terminating it closes the listening socket (and removes its file)
        # before the actor binds the same address.
        self._ctx = zmq.Context()
        self.receiver = ItemReceiver(PrivateDir.existing(prestarted.dir), "ipc",
                                     max_message_bytes=int(config.stream.max_message_mb * 2**20), context=self._ctx)
        self.receiver.slots = prestarted.open_slots()
        self._reserved = self._reserve(config.stream.batch_size + 2)
        seed, seq = start_position(config, self.btid, 0)
        self.state = handover.HandoverState(stream_seed=seed, next_seq=seq)
        self.handed_over = False
        self._paused = False
        self._lock = threading.Lock()

    def _reserve(self, keep: int) -> set:
        """Mark all but ``keep`` free slots as taken, so that Blender renders at most that far
        ahead while nobody but the driver reads it: while Ray starts, the CPU goes to Ray
        and to the consumer's imports rather than to frames rendered ahead. Given back at
        the hand-over."""
        slots = self.receiver.slots
        if slots is None:
            return set()
        reserved = {k for k in range(keep, slots.slots) if slots.is_free(k)}
        for k in reserved:
            slots.mark_full(k)
        return reserved

    def _unreserve(self) -> None:
        """Give the held-back slots to Blender and unmap the file here (every item taken from
        it was copied out)."""
        slots = self.receiver.slots
        if slots is None:
            return
        for k in self._reserved:
            slots.release(k)
        self._reserved = set()
        slots.close()

    def alive(self) -> bool:
        """Whether the prestarted Blender still runs."""
        return self.prestarted.usable()

    def log_tail(self) -> str:
        return tail_file(self.prestarted.log_path)

    def _read(self, timeout_ms: int) -> Optional[dict]:
        """One message: an item (copied out of its slot) is returned; any other kind is noted."""
        try:
            msg = self.receiver.recv(timeout_ms)
        except codec.CodecError as exc:
            self.state.dropped += 1
            self.state.warnings.append(f"dropped a message: {exc}")
            return None
        if msg is None:
            return None
        header, obj = msg
        kind = header.get("kind")
        if "slot_file" in header:  # Blender took it just before it was reserved: it is not reserved
            self._reserved.discard(header["slot"][0])
        try:
            if kind == KIND_ITEM and isinstance(obj, dict):
                item = copy.deepcopy(obj)  # its arrays leave the slot, which goes back to Blender now
                self.state.items += 1
                self.state.t_last = time.monotonic()
                self.state.t_first = self.state.t_first or self.state.t_last
                if item.get("seed") == self.state.stream_seed and isinstance(item.get("seq"), int):
                    self.state.next_seq = max(self.state.next_seq, item["seq"] + 1)
                return item
        finally:
            self.receiver.release(header)
        if kind == KIND_READY:
            self.state.ready = True
        elif kind == KIND_PAUSED:
            self._paused = True
        elif kind == KIND_END:
            self.state.end = obj if isinstance(obj, dict) else {}
        elif kind == KIND_INFO and isinstance(obj, dict):
            if isinstance(obj.get("device"), dict):
                self.state.device = obj["device"]
            self.state.warnings.extend(str(w) for w in obj.get("warnings") or ())
        elif kind == KIND_ITEM:
            self.state.dropped += 1
            self.state.warnings.append(f"dropped an item of type {type(obj).__name__}; publish(**items) sends dicts")
        return None

    def wait_ready(self, deadline: float) -> None:
        """Read until Blender says hello.

        Args:
            deadline: ``time.monotonic()`` after which to give up.

        Raises:
            BlenderStartError: Blender exited first, or stayed silent past the deadline.
        """
        with self._lock:
            while not self.state.ready:
                item = self._read(POLL_MS * 5)
                if item is not None:  # a hello comes first; keep anything else for the stream
                    self.state.leftovers.append(item)
                    continue
                if not self.alive() and not self.state.ready:
                    raise self._error("exited before it was ready (the script must create a DataPublisher); "
                                      "fix the error shown in its log")
                if time.monotonic() > deadline:
                    raise self._error("sent no readiness handshake in time; does the script create a "
                                      "DataPublisher(launch_args)? Raise ready_timeout for slow scenes")

    def _error(self, message: str) -> BlenderStartError:
        return BlenderStartError(f"Blender instance {self.btid}: {message}", btid=self.btid,
                                 log_tail=self.log_tail(), log_path=self.prestarted.log_path)

    def take(self, timeout_ms: int) -> Optional[dict]:
        """The next item, or None (nothing within ``timeout_ms``, or handed over already).

        Args:
            timeout_ms: How long to wait, in milliseconds.

        Returns:
            An item whose arrays are its own, or None.
        """
        with self._lock:
            if self.handed_over:
                return None
            if self.state.leftovers:
                return self.state.leftovers.pop(0)
            return self._read(timeout_ms)

    def hand_over(self) -> None:
        """Pause Blender between two messages, read what it sent, close the socket and hand
        the state to the actor (``blendtorch_ray.handover``, step 2)."""
        d = self.prestarted.dir
        with self._lock:
            if self.handed_over:
                return
            handover.request_pause(d)
            deadline = time.monotonic() + PAUSE_TIMEOUT_S
            quiet = 0
            while not self._paused and self.state.end is None:
                item = self._read(POLL_MS)
                if item is not None:
                    self.state.leftovers.append(item)
                    quiet = 0
                    continue
                quiet += 0 if self.alive() else 1
                if quiet >= 5 or time.monotonic() > deadline:  # gone (a crash sends no marker), or stuck
                    break
            self._unreserve()
            self.receiver.close()
            self._ctx.term()
            handover.write(d, self.prestarted.memory_dir, self.state)
            self.handed_over = True
        log.debug("Blender instance %d: handed over; %s", self.btid, handover.describe(self.state))

    def close(self) -> None:
        """Close the socket without a hand-over (the group did not come up)."""
        with self._lock:
            if not self.handed_over:
                self.handed_over = True
                self._unreserve()
                self.receiver.close()
                self._ctx.term()


class EarlyGroup:
    """The early readers of a group, and the future of the group's start in the background.

    Args:
        readers: One `EarlyReader` per instance, by btid.
    """

    def __init__(self, readers: dict) -> None:
        self.readers = readers
        self.up: Future = Future()
        """Done once Ray is up and every actor ready (its exception: why the start failed)."""
        self._next = 0

    @classmethod
    def open(cls, config: LaunchConfig, prestarted: dict) -> "EarlyGroup":
        """Bind every prestarted instance's socket and wait for each hello.

        Args:
            config: The group's configuration.
            prestarted: btid -> ``Prestarted``.

        Returns:
            The group, every instance ready.

        Raises:
            BlenderStartError: An instance did not say hello (its sockets are closed).
        """
        self = cls({b: EarlyReader(p, config) for b, p in prestarted.items()})
        deadline = time.monotonic() + config.supervision.ready_timeout
        try:
            for reader in self.readers.values():
                reader.wait_ready(deadline)
        except BaseException:
            self.close()
            raise
        return self

    def live(self, btids: Sequence[int]) -> bool:
        """Whether every reader of ``btids`` can still be read (none handed over or ended)."""
        return all(b in self.readers and not self.readers[b].handed_over and self.readers[b].alive() for b in btids)

    def take(self, btids: Sequence[int], timeout: float) -> Optional[dict]:
        """The next item of ``btids``, round-robin; None once they cannot be read early any more.

        Args:
            btids: The instances to read.
            timeout: Seconds without an item before `StreamTimeout`.

        Returns:
            An item, or None: go on with the actors' streams.

        Raises:
            StreamTimeout: No item within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while self.live(btids):
            order = [btids[(self._next + i) % len(btids)] for i in range(len(btids))]
            for i, b in enumerate(order):  # the next one in turn first, without waiting
                item = self.readers[b].take(0)
                if item is not None:
                    self._next = (self._next + i + 1) % len(btids)
                    return item
            item = self.readers[order[0]].take(POLL_MS)
            if item is not None:
                self._next = (self._next + 1) % len(btids)
                return item
            if self.up.done() and self.up.exception() is not None:
                return None  # the caller raises the start's error
            if time.monotonic() > deadline:
                raise StreamTimeout(f"no item from instance(s) {list(btids)} within {timeout:.0f}s while Ray "
                                    "started; is the Blender script publishing? Raise timeout= for slow renders",
                                    btid=btids[0] if len(btids) == 1 else None,
                                    log_tail=self.readers[btids[0]].log_tail())
        return None

    def hand_over(self, actors_waiting: Callable[[int], bool], timeout: float) -> None:
        """Hand every reader over as soon as its actor waits for it.

        Args:
            actors_waiting: ``btid -> bool``: False once that actor failed (it will not ask).
            timeout: Longest wait for all actors, in seconds.
        """
        deadline = time.monotonic() + timeout
        todo = dict(self.readers)
        while todo and time.monotonic() < deadline:
            for b, reader in list(todo.items()):
                if handover.adoption_requested(reader.prestarted.dir) or not actors_waiting(b):
                    reader.hand_over()
                    del todo[b]
            time.sleep(handover.POLL_S)
        for reader in todo.values():
            reader.hand_over()  # the actor's wait_ready then reports why it did not come up

    def wait_up(self) -> None:
        """Block until the group is up.

        Raises:
            Exception: Why it did not come up (from ``BlenderLauncher.start``).
        """
        self.up.result()

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


class EarlyStreams:
    """``OpenStreams``' interface for a dataset: items from the early readers while they can
    be read, then the actors' streams, opened where the early items ended.

    Args:
        group: The `EarlyGroup`.
        btids: The instances to read.
        timeout: Seconds without an item before `StreamTimeout`.
        open_streams: Waits for the group and opens its streams (``OpenStreams``).
    """

    def __init__(self, group: EarlyGroup, btids: Sequence[int], timeout: float,
                 open_streams: Callable[[], Any]) -> None:
        self.group = group
        self.btids = list(btids)
        self.timeout = timeout
        self._open_streams = open_streams
        self.inner: Any = None
        self.leftover: deque = deque()

    def next_batch(self) -> Optional[list]:
        """One item from an early reader, else the actors' next batch (None: all finished)."""
        if self.inner is None:
            item = self.group.take(self.btids, self.timeout)
            if item is not None:
                return [item]
            self.inner = self._open_streams()
        return self.inner.next_batch()

    def serves(self, options: Any, btids: list) -> bool:
        return self.inner.serves(options, btids) if self.inner is not None else list(btids) == self.btids

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
