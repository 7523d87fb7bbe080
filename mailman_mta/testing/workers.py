"""A real Redis and real Celery worker processes, for tests of the Celery integration.

`RedisServer` runs Debian's ``redis-server`` on 127.0.0.1 and a free port,
in a directory of its own, writing every change to its append-only file
before answering (``appendfsync always``), so a test can stop it hard and
start it again without losing anything.  `CeleryWorker` runs ``celery
worker`` for `mailman_mta.integrations.celery` in a process of its own
(so a test can SIGKILL it), with a mailman-mta configuration file.
Every wait is bounded, and `stop` always ends the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: The Debian package that provides ``redis-server``.
REDIS_PACKAGE = "redis-server"


def redis_unavailable() -> str | None:
    """Why no Redis can be run here, or None."""
    if shutil.which("redis-server") is None:
        return f"redis-server is not installed (Debian package {REDIS_PACKAGE})"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """``redis-server`` on loopback, persistent across `stop`/`start` in *directory*."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        arguments = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self, *, hard: bool = False) -> None:
        """End the server: SIGKILL when *hard* (what is acknowledged is on disk), else SIGTERM."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class CeleryWorker:
    """One ``celery worker`` process (solo pool) taking mailman-mta's tasks."""

    def __init__(
        self,
        name: str,
        redis_url: str,
        config_file: Path,
        log_file: Path,
        *,
        visibility: float = 3,
        python: str | Path = sys.executable,
    ) -> None:
        #: The Python to run the worker with: one whose environment has
        #: mailman-mta installed (from the wheel, in the tests) and Celery.
        self.python = str(python)
        self.name = name
        self.log_file = Path(log_file)
        self.environment = dict(
            os.environ,
            MAILMAN_MTA_REDIS_URL=redis_url,
            MAILMAN_MTA_CONFIG=str(config_file),
            MAILMAN_MTA_WORKER_NAME=name,
            MAILMAN_MTA_VISIBILITY_TIMEOUT=str(visibility),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> CeleryWorker:
        arguments = [
            self.python, "-m", "celery", "-A", "mailman_mta.integrations.celery:app", "worker",
            "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"{self.name}@%h", "-Q", "mailman-mta",
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                arguments,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                start_new_session=True,
                cwd=self.log_file.parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log()[-3000:]}")
            if " ready." in self.log():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"worker {self.name} was not ready within {timeout} s: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a machine that dies does it: no goodbye, no acknowledgement."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
