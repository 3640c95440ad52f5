"""A ``trustvlm`` subcommand in its own process, watched from the outside.

Scripts that orchestrate the pipeline (the streaming demo, the benchmarks, the tests) run each stage as the
real command-line process. :class:`ChildProcess` starts one, keeps its stdout lines (echoed with a prefix,
if asked) and sends its stderr to a file, and lets the caller wait for a line, the exit status or a graceful
stop, each with a bounded wait.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class ProcessError(RuntimeError):
    """A child process that failed, ended early or took too long; the message quotes its stderr."""


class ChildProcess:
    """A ``trustvlm`` subcommand in its own process: stdout echoed with a prefix and kept, stderr to a file.

    Args:
        name: Name in messages, in the echo prefix and of the stderr file (``<log_dir>/<name>.stderr``).
        args: The subcommand and its flags (``python -m trustvlm`` comes before them).
        log_dir: Folder of the stderr file.
        echo: Print every stdout line as ``  [name] line``.
        cwd: Working directory of the process (default: this process's).
    """

    def __init__(self, name: str, args: list[str], log_dir: Path, echo: bool = True, cwd: Path | None = None):
        self.name, self.echo = name, echo
        self.stderr_path = Path(log_dir) / f"{name}.stderr"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._terminated = False
        with open(self.stderr_path, "w") as stderr:
            # Unbuffered, so each line arrives when it is printed, not when a buffer fills.
            self.process = subprocess.Popen([sys.executable, "-m", "trustvlm", *args], stdout=subprocess.PIPE,
                                            stderr=stderr, text=True, bufsize=1, cwd=cwd,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._pump = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        """Process id."""
        return self.process.pid

    def _read(self) -> None:
        # Reading stdout to the end, whoever waits for what, keeps the pipe from filling and stalling the child.
        for line in self.process.stdout:
            line = line.rstrip("\n")
            if self.echo:
                print(f"  [{self.name}] {line}", flush=True)
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match:
        """The first stdout line matching `pattern` (``re.search``).

        Raises:
            ProcessError: The process ended, or `timeout_s` passed, before such a line.
        """
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        checked = 0
        with self._changed:
            while True:
                for line in self.lines[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.process.poll() is not None and not self._pump.is_alive():
                    raise ProcessError(f"{self.name} exited with status {self.process.returncode} before printing "
                                       f"/{pattern}/; {self.stderr_tail()}")
                if remaining <= 0:
                    raise ProcessError(f"{self.name} did not print /{pattern}/ within {timeout_s:.0f} s; "
                                       f"{self.stderr_tail()}")
                # The pump notifies on every line and at the end of stdout; the cap rechecks an exit
                # whose notification came before this wait began.
                self._changed.wait(min(remaining, 0.5))

    def wait(self, timeout_s: float) -> int:
        """The exit status.

        Raises:
            ProcessError: It had not ended within `timeout_s` (it is killed first).
        """
        try:
            status = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProcessError(f"{self.name} did not end within {timeout_s:.0f} s and was killed; "
                               f"{self.stderr_tail()}") from None
        self._pump.join(5)
        return status

    def terminate(self) -> None:
        """Send SIGTERM (graceful for every trustvlm command) once, if it is still running; do not wait."""
        # Once only: a second SIGTERM can land after Python has restored the default handler on its way out,
        # and would turn a clean exit into death by signal.
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit status (:meth:`wait`)."""
        self.terminate()
        return self.wait(timeout_s)

    def expect_success(self, status: int) -> None:
        """Raise :class:`ProcessError` (with its stderr tail) unless `status` is 0."""
        if status != 0:
            raise ProcessError(f"{self.name} exited with status {status}; {self.stderr_tail()}")

    def kill(self) -> None:
        """SIGKILL if it is still running, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stderr_tail(self, lines: int = 5) -> str:
        """The last `lines` lines of its stderr file, as a message fragment."""
        tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return f"last stderr lines ({self.stderr_path}):\n    " + "\n    ".join(tail) if tail else "no stderr output"
