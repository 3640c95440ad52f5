"""Start ``trustvlm serve`` from a script and learn where it listens.

``serve`` prints one line when its sockets are bound::

    trustvlm serve: listening ingest=tcp://127.0.0.1:41234 (pull, bind) publish=tcp://127.0.0.1:41235 (...) ...

:class:`ServeProcess` starts it (by default on random loopback ports, ``tcp://127.0.0.1:*``), waits for
that line (an event on its stdout, not a fixed delay), parses the two endpoints from it, and stops the
service with SIGTERM (graceful: in-flight frames are answered, a final ``stopped`` heartbeat is
published) and a bounded wait::

    with ServeProcess(artifacts, bundle, log_dir) as serve:
        ...  # connect to serve.ingest and serve.publish
        status = serve.stop()
"""

from __future__ import annotations

import re
from pathlib import Path

from trustvlm.pipelines.processes import ChildProcess, ProcessError

#: The line ``serve`` prints once it listens; group 1 is the ingest endpoint, group 2 the publish endpoint.
LISTENING_PATTERN = r"listening ingest=(\S+) .*?publish=(\S+)"
ANY_LOOPBACK_PORT = "tcp://127.0.0.1:*"


class ServiceStartError(ProcessError):
    """``trustvlm serve`` exited, or said nothing, before it listened (its stderr ends the message)."""


def parse_listening_line(line: str) -> tuple[str, str] | None:
    """The (ingest, publish) endpoints of a ``serve`` 'listening' line; None for any other line."""
    found = re.search(LISTENING_PATTERN, line)
    return (found.group(1), found.group(2)) if found else None


class ServeProcess:
    """``trustvlm serve`` in its own process; a context manager that stops it on the way out.

    Args:
        artifacts: Export folder of the model.
        bundle: Prototype bundle folder, or a camera map file (served with ``--bundles``).
        log_dir: Folder of its stderr file (``<log_dir>/<name>.stderr``).
        args: More ``serve`` flags, e.g. ``("--heartbeat-ms", "200")``.
        ingest: Ingest endpoint to bind.
        publish: Publish endpoint to bind.
        name: Name in messages and of the stderr file.
        echo: Print its stdout lines as ``  [name] line``.
        cwd: Working directory of the process (paths given to it are taken as they are).
        start_timeout_s: Longest wait for the 'listening' line.

    Attributes:
        ingest: Where it takes frames, once started (a bound port instead of ``*``).
        publish: Where it publishes decisions, once started.
    """

    def __init__(self, artifacts: Path, bundle: Path, log_dir: Path, args: tuple[str, ...] | list[str] = (), *,
                 ingest: str = ANY_LOOPBACK_PORT, publish: str = ANY_LOOPBACK_PORT, name: str = "serve",
                 echo: bool = False, cwd: Path | None = None, start_timeout_s: float = 120.0):
        flag = "--bundles" if Path(bundle).is_file() else "--bundle"
        self._command = ["serve", "--artifacts", str(artifacts), flag, str(bundle), "--ingest", ingest,
                         "--publish", publish, *args]
        self._log_dir, self._name, self._echo, self._cwd = Path(log_dir), name, echo, cwd
        self._start_timeout_s = start_timeout_s
        self.child: ChildProcess | None = None
        self.ingest = self.publish = ""

    def start(self) -> "ServeProcess":
        """Start it and wait until it listens.

        Returns:
            This object, with :attr:`ingest` and :attr:`publish` set.

        Raises:
            ServiceStartError: It exited, or printed no 'listening' line within ``start_timeout_s`` (then it is
                killed).
        """
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.child = ChildProcess(self._name, self._command, self._log_dir, echo=self._echo, cwd=self._cwd)
        try:
            found = self.child.wait_for_line(LISTENING_PATTERN, self._start_timeout_s)
        except ProcessError as error:
            self.child.kill()
            raise ServiceStartError(f"trustvlm serve did not start: {error}") from None
        self.ingest, self.publish = found.group(1), found.group(2)
        return self

    @property
    def pid(self) -> int:
        """Process id of the service."""
        return self._started().pid

    def request_stop(self) -> None:
        """Send SIGTERM (once it is sent, the service finishes in-flight frames and exits); do not wait."""
        self._started().terminate()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait at most `timeout_s` for the exit; after that it is killed.

        Returns:
            Its exit status (0: a clean stop; negative: the signal that ended it).
        """
        child = self._started()
        child.terminate()
        try:
            return child.wait(timeout_s)
        except ProcessError:  # it was killed: the status says so
            return child.process.returncode

    def kill(self) -> None:
        """SIGKILL, no goodbye (what a crash looks like to its clients)."""
        self._started().kill()

    def stderr_tail(self, lines: int = 5) -> str:
        """The last `lines` lines of its stderr, as a message fragment."""
        return self._started().stderr_tail(lines)

    def _started(self) -> ChildProcess:
        if self.child is None:
            raise RuntimeError("ServeProcess.start() has not been called")
        return self.child

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, exc_type, *_) -> None:
        if self.child is None or self.child.process.poll() is not None:
            return
        if exc_type is None:
            self.stop()
        else:  # something failed: end it now rather than wait for a graceful stop
            self.kill()
