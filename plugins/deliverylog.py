"""Built-in plugin ``deliverylog``: one JSON line per transaction, and counters.

Each transaction's outcome becomes one line of JSON, appended to
``[deliverylog] path`` or, when that is empty, logged at INFO to the
``mailman_mta.delivery`` logger::

    {"time": "2026-11-23T20:19:04.250Z", "relay": "mx.example.com:25",
     "connection": 3, "opened": 1, "session": 2,
     "sender_domain": "lists.example.org", "recipients": 10, "accepted": 9,
     "temporary": 0, "permanent": 1, "uncertain": 0, "duration": 0.0123,
     "pipelined": true, "error": null, "code": null}

``connection`` is the `Connection`'s serial number in the process,
``opened`` how many connections it has opened so far, and ``session`` the
transaction's number on the current one.  A recipient is ``temporary`` or
``permanent`` as `mailman_mta.results` judges it; ``uncertain`` counts
those whose message may have arrived although no answer came.  No field
holds an address (the log would hold the whole membership): the sender
only by its domain (a VERP sender names its recipient), and a failure by
the kind of error and the server's reply code, never its text, which
often quotes an address.

The plugin must never hold up delivery: the lines are written by a thread
of its own, through a bounded queue (a line that finds it full is dropped,
and counted in ``counters()['dropped']``), and a path that is not a
regular file is refused when the layer is pushed and never opened in a
way that could block (a FIFO with no reader).  `flush` waits for what is
queued, and runs when the process exits.

`counters()` gives a host application the totals since the process
started (or `reset`), for metrics.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import stat
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from mailman_mta import hookimpl
from mailman_mta.errors import ConfigurationError
from mailman_mta.results import failures_of
from mailman_mta.values import as_text

log = logging.getLogger("mailman_mta.delivery")

_lock = threading.Lock()
_counters: Counter[str] = Counter()

COUNTERS = (
    "transactions",
    "delivered",
    "failed",
    "recipients",
    "accepted",
    "temporary",
    "permanent",
    "uncertain",
    "dropped",
)

#: Lines waiting to be written, at most; more are dropped rather than waited for.
MAX_PENDING = 10_000


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "deliverylog",
        """
        # The file each transaction's JSON line is appended to: a regular
        # file, or none yet in a folder that exists.  Empty: log it at INFO
        # to the mailman_mta.delivery logger instead.
        path:
        """,
        path=as_text,
    )


@hookimpl
def mta_check_config(config):
    path = config.settings.deliverylog.path
    if not path:
        return
    problem = _path_problem(path)
    if problem is not None:
        raise ConfigurationError(f"[deliverylog] path {path!r} {problem}", section="deliverylog", key="path")


def _path_problem(path: str) -> str | None:
    """Why the log cannot be appended to *path* without risk of blocking, or None.

    (A NUL in the path is refused by every layer already.)
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        parent = Path(path).parent
        return None if parent.is_dir() else f"is in a folder that does not exist ({str(parent)!r})"
    except OSError as error:
        return f"cannot be looked at: {error.strerror}"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO or device could hold up every delivery)"
    return None


class _Writer:
    """Appends lines to files from a thread of its own, so that writing never holds up a send."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue(MAX_PENDING)
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    def put(self, path: str, text: str) -> bool:
        """Queue *text* for *path*; False (the line is dropped) when the queue is full."""
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mailman-mta-deliverylog", daemon=True)
                    self._thread.start()
        try:
            self._queue.put_nowait((path, text))
        except queue.Full:
            return False
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (at most *timeout* seconds) until every queued line is written; True if it was."""
        deadline = time.monotonic() + timeout
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            path, text = self._queue.get()
            try:
                self._append(path, text)
            except OSError as error:
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("cannot write the delivery log %r: %s; its lines are lost", path, error)
            finally:
                self._queue.task_done()

    @staticmethod
    def _append(path: str, text: str) -> None:
        # O_NONBLOCK: opening a FIFO put there since the layer was checked
        # fails at once instead of waiting for a reader.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
        descriptor = os.open(path, flags, 0o640)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise OSError(f"{path!r} is not a regular file")
            os.set_blocking(descriptor, True)
            os.write(descriptor, (text + "\n").encode("utf-8"))
        finally:
            os.close(descriptor)


_writer = _Writer()


def flush(timeout: float = 5.0) -> bool:
    """Wait until every line queued so far is written (at most *timeout* seconds); True if all were."""
    return _writer.flush(timeout)


atexit.register(flush)


def counters() -> dict[str, int]:
    """The totals so far: transactions, delivered, failed, and recipients by outcome."""
    with _lock:
        return {name: _counters[name] for name in COUNTERS}


def reset() -> None:
    """Set every counter back to 0."""
    with _lock:
        _counters.clear()


def record(connection, result) -> dict:
    """The line written for *result*, carried by *connection*, as a dict (no field holds an address)."""
    failures = failures_of(result)
    uncertain = len(result.recipients) if result.may_have_been_delivered else 0
    permanent = sum(1 for failure in failures.values() if failure.permanent)
    relay = result.relay
    error = result.error
    code = result.reply.code if result.reply is not None else getattr(error, "smtp_code", None)
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "relay": f"{relay[0]}:{relay[1]}" if relay else None,
        "connection": connection.number,
        "opened": connection.connection_count,
        "session": result.session,
        "sender_domain": result.sender.rpartition("@")[2] if "@" in result.sender else None,
        "recipients": len(result.recipients),
        "accepted": len(result.recipients) - len(failures),
        "temporary": len(failures) - permanent,
        "permanent": permanent,
        "uncertain": uncertain,
        "duration": round(result.duration, 6) if result.duration is not None else None,
        "pipelined": result.pipelined,
        "error": None if error is None else type(error).__name__,
        "code": code if isinstance(code, int) else None,
    }


@hookimpl
def mta_delivery_result(config, connection, result):
    line = record(connection, result)
    path = config.settings.deliverylog.path
    text = json.dumps(line, ensure_ascii=False)
    written = not path or _writer.put(path, text)
    with _lock:
        _counters.update(
            {
                "transactions": 1,
                "delivered" if result.error is None else "failed": 1,
                "dropped": 0 if written else 1,
                **{name: line[name] for name in ("recipients", "accepted", "temporary", "permanent", "uncertain")},
            }
        )
    if not path:
        log.info("%s", text)
