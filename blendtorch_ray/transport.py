"""The receiving end of the local ZeroMQ hop: a PULL socket in a private directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Optional

import zmq

from blender_worker import codec, sockets
from blender_worker.slots import SlotFile


def memory_dir() -> Optional[str]:
    """/dev/shm when this machine has it (memory-backed), else None (the temp directory).

    Shared-memory rings live there: a file mapped from a disk-backed /tmp gets its dirty
    pages written back to disk by the kernel, which costs I/O and CPU for nothing."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


SHM_MIN_FREE = 256 * 2**20
"""Below this much free space in /dev/shm the shared-memory paths stay off: writing past a
full tmpfs (Docker's default /dev/shm is 64 MB) kills the writer with SIGBUS."""


def shm_min_free() -> int:
    """Free bytes the shared-memory paths need: ``$BLENDTORCH_SHM_MIN_FREE`` if set, else
    SHM_MIN_FREE. Read where the decision is taken (the actor's process; a prestarting driver)."""
    value = os.environ.get("BLENDTORCH_SHM_MIN_FREE")
    return int(value) if value else SHM_MIN_FREE


def has_shared_memory_room(path: str) -> bool:
    """Whether the filesystem of ``path`` has room for the shared-memory paths (see shm_min_free)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= shm_min_free()


def _pid_namespace() -> int:
    """An id of this process's PID namespace (the inode of /proc/self/ns/pid; 0 if unknown):
    a pid means a process only within its namespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def owned_prefix(kind: str) -> str:
    """Directory-name prefix that records this process's pid and PID namespace
    (``btr-<kind>-<pid>-<namespace>-``), so that ``sweep_stale_dirs`` can remove what a killed
    process left behind, and only what a process of its own namespace left (containers and
    ``unshare`` sandboxes that share /dev/shm or /tmp reuse pids)."""
    return f"btr-{kind}-{os.getpid()}-{_pid_namespace()}-"


def sweep_stale_dirs() -> None:
    """Remove this project's directories left by processes that were killed: ring/slot
    directories on /dev/shm (memory until reboot otherwise) and socket/log directories in the
    temp directory, named by ``owned_prefix``; removed once that pid of this PID namespace is
    gone."""
    import glob

    own_ns = _pid_namespace()
    for base in {memory_dir(), tempfile.gettempdir()} - {None}:
        for path in glob.glob(os.path.join(base, "btr-*-*-*-*")):
            try:
                parts = os.path.basename(path).split("-")  # btr-<kind>-<pid>-<namespace>-..., see owned_prefix
                pid, ns = int(parts[2]), int(parts[3])
                if ns != own_ns:
                    continue  # another PID namespace's pid: cannot tell whether it is alive
                os.kill(pid, 0)
            except (ValueError, IndexError):
                continue
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except PermissionError:  # another user's live process
                continue


def ipc_address(directory: "PrivateDir", socket: str) -> str:
    """The ipc:// address of ``socket`` ("data" or "control") in an instance's private
    directory: what the actor binds, and what a prestarted Blender connects to before that."""
    return sockets.ipc_address(directory.path, socket)


class PrivateDir:
    """A 0700 temporary directory for ipc sockets and logs, removed on ``cleanup``.

    ``base``: where to create it (default: the system temp directory)."""

    def __init__(self, prefix: str = "btr-", base: Optional[str] = None) -> None:
        self.path = tempfile.mkdtemp(prefix=prefix, dir=base)  # mkdtemp creates it 0700
        os.chmod(self.path, 0o700)

    @classmethod
    def existing(cls, path: str) -> "PrivateDir":
        """Take over a directory made by another process of this user on this node."""
        self = cls.__new__(cls)
        self.path = path
        return self

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ItemReceiver:
    """PULL socket bound on ``ipc://`` in a private directory (or tcp on 127.0.0.1).

    ``recv(timeout_ms)`` returns ``(header, obj)`` or None on timeout. Messages that are
    malformed, truncated or larger than ``max_message_bytes`` (all frames together) raise
    ``codec.CodecError`` and are dropped; the socket stays usable. The size is checked after
    receipt, not with ZeroMQ's MAXMSGSIZE: that one disconnects the sender mid-message, and
    the message vanishes without anybody hearing of it. ``context``: the ZeroMQ context (default:
    the process's shared one).
    """

    def __init__(
        self,
        directory: Optional[PrivateDir],
        transport: str = "ipc",
        recv_hwm: int = 4,
        max_message_bytes: int = 1 << 30,
        context: Optional[zmq.Context] = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, recv_hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.max_message_bytes = max_message_bytes
        self.address = sockets.bind(self.sock, transport, directory.path if directory is not None else None, "data")
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self.slots: Optional[SlotFile] = None
        """The shared-memory slot file of the Blender process publishing now (if any)."""

    def recv(self, timeout_ms: int) -> Optional[tuple[dict, Any]]:
        try:  # fast path: a message is already queued, no poll system call
            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if not timeout_ms or not self._poller.poll(timeout_ms):
                return None
            frames = self.sock.recv_multipart(copy=False)
        bufs = [f.buffer for f in frames]
        if len(bufs) < 2:
            raise codec.CodecError(f"truncated message: {len(bufs)} frame(s), need at least 2")
        header = codec.decode_header(bufs[0])
        if "slot" not in header:
            self._check_size(bufs)
            return header, codec.decode_body(header, bufs)
        # The arrays are in a shared-memory slot: decode them in place. The caller must
        # release(header) once nothing uses them any more (after the batch has left).
        slot, sizes = (header["slot"] + [None, None])[:2] if isinstance(header["slot"], list) else (None, None)
        views = self.slots.views(slot, sizes) if self.slots is not None and isinstance(sizes, list) else None
        if views is None or len(bufs) != 2:
            raise codec.CodecError(f"message names shared-memory slot {header['slot']!r}, which is not a full slot of this instance")
        header["slot_file"] = self.slots
        try:
            self._check_size(bufs)
            return header, codec.decode_body(header, bufs + views)
        except codec.CodecError:
            self.release(header)
            raise

    def _check_size(self, bufs: list) -> None:
        """Raise ``codec.CodecError`` when the frames on the socket add up to more than
        ``max_message_bytes`` (arrays in a shared-memory slot do not count)."""
        size = sum(b.nbytes for b in bufs)
        if size > self.max_message_bytes:
            raise codec.CodecError(
                f"oversized message: {size} bytes ({size / 2**20:.1f} MiB) over max_message_mb="
                f"{self.max_message_bytes / 2**20:g}; raise max_message_mb (or item_slot_mb, so "
                "that the item's arrays go through a shared-memory slot)")

    @staticmethod
    def release(header: dict) -> None:
        """Give the shared-memory slot of a received message back to Blender (no-op for
        messages that came inline)."""
        slot_file = header.pop("slot_file", None)
        if slot_file is not None:
            slot_file.release(header["slot"][0])

    def close(self) -> None:
        self.sock.close(0)
