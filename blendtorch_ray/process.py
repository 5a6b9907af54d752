"""One Blender subprocess: start it, send its output to a log file, watch it, end it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import Optional, Sequence

from blendtorch_ray.blender import BlenderExecutable

log = logging.getLogger("blendtorch_ray")

POLL_INTERVAL_S = 0.02
"""Seconds between two looks at an adopted process (its exit file, its state)."""

EXIT_CODE_WAIT_S = 2.0
"""Seconds to wait for an adopted process's exit code once it is gone: its parent writes
the code right after reaping it."""

KILL_REAP_TIMEOUT_S = 5.0
"""Seconds ``BlenderProcess.terminate`` waits to reap the child after SIGKILL."""


def tail_file(path: str, max_lines: int = 30, max_bytes: int = 16_384) -> str:
    """The last lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-max_lines:])


class _AdoptedPopen:
    """The ``Popen`` view of a Blender process that another process of this node started
    (the driver's prestart, see ``blendtorch_ray.prestart``): it reaps the child and
    writes its exit code to ``exit_file``."""

    def __init__(self, pid: int, exit_file: str) -> None:
        self.pid, self.exit_file = pid, exit_file
        self.returncode: Optional[int] = None

    def _read_exit(self) -> Optional[int]:
        try:
            with open(self.exit_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _running(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def poll(self) -> Optional[int]:
        if self.returncode is not None:
            return self.returncode
        code = self._read_exit()
        if code is None:
            if self._running():
                return None
            deadline = time.monotonic() + EXIT_CODE_WAIT_S
            while code is None and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL_S)
                code = self._read_exit()
            if code is None:
                code = -signal.SIGKILL  # gone without a word: count it as killed
        self.returncode = code
        return code

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(POLL_INTERVAL_S)
        return self.returncode  # type: ignore[return-value]


class BlenderProcess:
    """A supervised Blender subprocess whose stdout and stderr go to ``log_path``.

    The child is started in its own session (so a terminal's Ctrl-C reaches the
    supervisor, which then ends it in order) and arms its own lifeline against the parent.
    """

    def __init__(
        self,
        blender: BlenderExecutable,
        script: str,
        scene: Optional[str],
        script_args: Sequence[str],
        log_path: str,
        env: Optional[dict] = None,
    ):
        self.blender = blender
        self.cmd = blender.command(script, scene, script_args)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(self.cmd)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=blender.environment(env),
                start_new_session=True,
                close_fds=True,
            )

    @classmethod
    def adopt(cls, blender: BlenderExecutable, pid: int, log_path: str, exit_file: str) -> "BlenderProcess":
        """Supervise a Blender process that was started elsewhere on this node (its parent
        reaps it and writes its exit code to ``exit_file``)."""
        self = cls.__new__(cls)
        self.blender, self.cmd, self.log_path = blender, [f"<adopted pid {pid}>"], log_path
        self._popen = _AdoptedPopen(pid, exit_file)  # type: ignore[assignment]
        return self

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> Optional[int]:
        """Exit code, or None while running (negative: killed by that signal)."""
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def log_tail(self, max_lines: int = 30) -> str:
        return tail_file(self.log_path, max_lines)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the Blender process (no-op if it is gone)."""
        try:
            os.kill(self._popen.pid, sig)
        except ProcessLookupError:  # gone already: nothing to signal, as documented
            log.debug("Blender pid %d is gone; signal %d not sent", self._popen.pid, sig)

    def rss_bytes(self) -> int:
        """Resident memory of the Blender process (0 if gone)."""
        if not self.alive():
            return 0
        import psutil

        try:
            return psutil.Process(self._popen.pid).memory_info().rss
        except psutil.Error as exc:  # exited (or became a zombie) since alive(), or not ours to read
            log.debug("rss of Blender pid %d unavailable (%s): counted as 0", self._popen.pid, type(exc).__name__)
            return 0

    def niceness(self) -> Optional[int]:
        """Scheduling niceness of the Blender process (None if gone)."""
        if not self.alive():
            return None
        try:
            return os.getpriority(os.PRIO_PROCESS, self._popen.pid)
        except OSError:
            return None

    def terminate(self, timeout: float = 3.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; reaps the child."""
        if self._popen.poll() is None:
            try:
                os.killpg(self._popen.pid, signal.SIGTERM)
            except ProcessLookupError:  # exited since poll(): the wait below reaps it
                log.debug("Blender pid %d exited before SIGTERM", self._popen.pid)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self._popen.pid, signal.SIGKILL)
                except ProcessLookupError:  # exited at last: the wait below reaps it
                    log.debug("Blender pid %d exited before SIGKILL", self._popen.pid)
                self._popen.wait(KILL_REAP_TIMEOUT_S)
        return self._popen.poll()

    def describe_exit(self) -> str:
        code = self._popen.poll()
        if code is None:
            return "running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"
