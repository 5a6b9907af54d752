"""One Blender subprocess: start it, send its output to a log file, watch it, end it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Optional, Sequence

from blendtorch_ray.blender import BlenderExecutable


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
            deadline = time.monotonic() + 2.0  # its parent writes the code right after reaping
            while code is None and time.monotonic() < deadline:
                time.sleep(0.02)
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
            time.sleep(0.02)
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
        self.started_at = time.monotonic()

    @classmethod
    def adopt(cls, blender: BlenderExecutable, pid: int, log_path: str, exit_file: str) -> "BlenderProcess":
        """Supervise a Blender process that was started elsewhere on this node (its parent
        reaps it and writes its exit code to ``exit_file``)."""
        self = cls.__new__(cls)
        self.blender, self.cmd, self.log_path = blender, [f"<adopted pid {pid}>"], log_path
        self._popen = _AdoptedPopen(pid, exit_file)  # type: ignore[assignment]
        self.started_at = time.monotonic()
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
        except ProcessLookupError:
            pass

    def rss_bytes(self) -> int:
        """Resident memory of the Blender process (0 if gone)."""
        if not self.alive():
            return 0
        try:
            import psutil

            return psutil.Process(self._popen.pid).memory_info().rss
        except Exception:  # noqa: BLE001
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
            except ProcessLookupError:
                pass
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self._popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._popen.wait(5)
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
