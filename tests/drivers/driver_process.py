"""A driver script run in its own process, read without ever blocking the test for good.

Its stdout is read line by line on a thread (``wait_line`` waits a bounded time), its stderr
goes to a file (nothing can fill a pipe and stall it) and is shown when a wait fails.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

TESTS = Path(__file__).resolve().parent.parent


def driver_env(**extra: str) -> dict:
    """This environment without RAY_ADDRESS (a fresh local Ray unless given), tests/ importable."""
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


class DriverProcess:
    def __init__(self, argv: list[str], stderr_path: Path, env: Optional[dict] = None, stdin: bool = False) -> None:
        self.stderr_path = Path(stderr_path)
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=self._stderr,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True,
            env=driver_env() if env is None else env, start_new_session=True,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, name=f"driver-{self.pid}-stdout", daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def _fail(self, why: str) -> None:
        pytest.fail(f"{why}\n--- driver stdout ---\n{''.join(self.lines)[-3000:]}"
                    f"\n--- driver stderr ---\n{self.stderr()[-5000:]}", pytrace=False)

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix`` (the rest of it, stripped); fails the
        test, showing stdout and stderr, if none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._fail(f"no {prefix!r} line from the driver within {timeout:.0f}s")
            if line is None:
                self._queue.put(None)
                self._fail(f"the driver exited (code {self.proc.wait(10)}) before printing {prefix!r}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the driver process alone (not its process group)."""
        os.kill(self.pid, sig)

    def cleanup(self) -> None:
        """Kill what is left of the driver's process group; close files."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        finally:
            self._stderr.close()
