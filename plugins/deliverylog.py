"""Built-in plugin ``deliverylog``: one JSON line per transaction, and counters.

Each transaction's outcome becomes one line of JSON, appended to
``[deliverylog] path`` or, when that is empty, logged at INFO to the
``mailman_mta.delivery`` logger::

    {"time": "2026-11-23T20:19:04.250Z", "relay": "mx.example.com:25",
     "connection": 3, "opened": 1, "session": 2, "sender": "...",
     "recipients": 10, "accepted": 9, "temporary": 0, "permanent": 1,
     "uncertain": 0, "duration": 0.0123, "pipelined": true, "error": null}

``connection`` is the `Connection`'s serial number in the process,
``opened`` how many connections it has opened so far, and ``session`` the
transaction's number on the current one.  A recipient is ``temporary`` or
``permanent`` as `mailman_mta.results` judges it; ``uncertain`` counts
those whose message may have arrived although no answer came.  Addresses
of recipients are not written (the log would hold the whole membership);
the sender is.

`counters()` gives a host application the totals since the process
started (or `reset`), for metrics.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from datetime import UTC, datetime

from mailman_mta import hookimpl
from mailman_mta.results import failures_of
from mailman_mta.values import as_text

log = logging.getLogger("mailman_mta.delivery")

_lock = threading.Lock()
_counters: Counter[str] = Counter()

COUNTERS = ("transactions", "delivered", "failed", "recipients", "accepted", "temporary", "permanent", "uncertain")


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "deliverylog",
        """
        # The file each transaction's JSON line is appended to.  Empty: log it
        # at INFO to the mailman_mta.delivery logger instead.
        path:
        """,
        path=as_text,
    )


def counters() -> dict[str, int]:
    """The totals so far: transactions, delivered, failed, and recipients by outcome."""
    with _lock:
        return {name: _counters[name] for name in COUNTERS}


def reset() -> None:
    """Set every counter back to 0."""
    with _lock:
        _counters.clear()


def record(connection, result) -> dict:
    """The line written for *result*, carried by *connection*, as a dict."""
    failures = failures_of(result)
    uncertain = len(result.recipients) if result.may_have_been_delivered else 0
    permanent = sum(1 for failure in failures.values() if failure.permanent)
    relay = result.relay
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "relay": f"{relay[0]}:{relay[1]}" if relay else None,
        "connection": connection.number,
        "opened": connection.connection_count,
        "session": result.session,
        "sender": result.sender,
        "recipients": len(result.recipients),
        "accepted": len(result.recipients) - len(failures),
        "temporary": len(failures) - permanent,
        "permanent": permanent,
        "uncertain": uncertain,
        "duration": round(result.duration, 6) if result.duration is not None else None,
        "pipelined": result.pipelined,
        "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
    }


@hookimpl
def mta_delivery_result(config, connection, result):
    line = record(connection, result)
    with _lock:
        _counters.update(
            {
                "transactions": 1,
                "delivered" if result.error is None else "failed": 1,
                **{name: line[name] for name in ("recipients", "accepted", "temporary", "permanent", "uncertain")},
            }
        )
        path = config.settings.deliverylog.path
        text = json.dumps(line, ensure_ascii=False)
        if path:
            with open(path, "a", encoding="utf-8") as file:
                file.write(text + "\n")
    if not path:
        log.info("%s", text)
