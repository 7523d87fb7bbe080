"""Built-in plugin ``relays``: several relays, tried in order, with failover.

``[relays] hosts`` lists ``host:port`` relays.  A new connection goes to
the first that is not marked down.  A relay that cannot be reached, or
greets with anything but 220 (421 and 554 say "not now"), is marked down
for ``[relays] down_time`` seconds and the next one is tried.  When every
relay is marked down they are all tried again, in order, rather than
holding mail back.

A TLS failure is never skipped past: it means the relay is not who it
should be, or the configuration is wrong, and quietly trying the next
relay would hide that; the error reaches the caller as it would without
this plugin.  The relay that took each transaction is named by
``connection.host``/``port`` and ``TransactionResult.relay``.

For a route (see ``routes.rst``), the relays tried are the route's hosts,
in order, instead of ``[relays] hosts``.  The marks are shared by every
connection in the process (a relay that is down for one is down for all,
whichever route it serves), and those of relays no longer in ``[relays]
hosts`` are forgotten when it changes.  The other settings (TLS, timeouts, AUTH) are ``[mta]``'s, for
every relay.
"""

from __future__ import annotations

import logging
import smtplib
import threading
import time

from mailman_mta import hookimpl
from mailman_mta.errors import ConfigurationError, MTAConnectionError, TLSError
from mailman_mta.smtp.transport import connect
from mailman_mta.values import as_host_port_list, as_seconds

log = logging.getLogger("mailman_mta.relays")

#: The clock marks are kept by (tests replace it).
clock = time.monotonic

_lock = threading.Lock()
#: (host, port) -> clock() until which the relay is skipped.
_down_until: dict[tuple[str, int], float] = {}


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "relays",
        """
        # The relays to send through, in order of preference, separated by
        # spaces: host:port, or [IPv6 address]:port.
        hosts:

        # Seconds a relay that refused a connection (or greeted with 421 or
        # 554) is skipped before it is tried again.
        down_time: 60
        """,
        hosts=as_host_port_list,
        down_time=as_seconds,
    )


@hookimpl
def mta_check_config(config):
    if not config.settings.relays.hosts:
        raise ConfigurationError(
            "[plugin.relays] is enabled but [relays] hosts is empty: name at least one relay",
            section="relays",
            key="hosts",
        )


def down_relays() -> list[tuple[str, int]]:
    """The relays marked down now, for diagnostics."""
    now = clock()
    with _lock:
        return [relay for relay, until in _down_until.items() if until > now]


def forget() -> None:
    """Forget every mark (after the relays were mended)."""
    with _lock:
        _down_until.clear()


@hookimpl
def mta_create_transport(config, connection):
    settings = config.settings.relays
    route = connection.route
    relays = route.hosts if route is not None else settings.hosts
    now = clock()
    with _lock:
        if route is None:
            for relay in [r for r in _down_until if r not in relays]:
                del _down_until[relay]
        up = [relay for relay in relays if _down_until.get(relay, 0) <= now]
    failures = []
    for host, port in up or relays:
        try:
            return connect(connection, host, port)
        except TLSError:
            raise
        except (MTAConnectionError, smtplib.SMTPException) as error:
            with _lock:
                _down_until[(host, port)] = clock() + settings.down_time
            log.warning("relay %s:%s skipped for %g s: %s", host, port, settings.down_time, error)
            failures.append(f"{host}:{port}: {error}")
    where = f"of route {route.name}" if route is not None else "in [relays] hosts"
    raise MTAConnectionError(f"no relay {where} took the connection (" + "; ".join(failures) + ")")
