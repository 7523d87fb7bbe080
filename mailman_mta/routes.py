"""`Route`: the relay a destination's mail goes through, with its own settings.

Postfix's ``transport(5)`` table maps a destination to a next hop, and
each next hop gets connections of its own.  mailman-mta does the same:
`mta_choose_route` gives each recipient domain a `Route`, and
`mailman_mta.delivery.Delivery` sends each route's recipients over a pool
of its own (``max_connections`` per route), never mixing two routes in one
transaction.  The built-in ``routes`` plugin builds routes from
``[routes] map``; a plugin of your own can build them from anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError

#: The ``[mta]`` keys a route sets through its own attributes.
_HOST_KEYS = ("smtp_host", "smtp_port")


@dataclass(frozen=True)
class Route:
    """One relay (with fallbacks) and the ``[mta]`` settings its connections use.

    :param hosts: (host, port) pairs, the relay first; the others are its
        fallbacks, tried in order by the ``relays`` plugin.
    :param settings: other ``[mta]`` keys for this route's connections
        (``secure_mode``, ``smtp_user``, ``smtp_pass``, ``max_connections``,
        ...), as values or text; every key left out follows ``[mta]``.
        Checked as ``Connection(**settings)`` checks them, when the route is
        first used.

    Routes are equal when they name the same hosts and settings, and so
    share connections.  The repr shows the hosts and the names of the
    settings, never their values (a password may be one).
    """

    hosts: tuple[tuple[str, int], ...]
    settings: tuple[tuple[str, Any], ...] = field(default=())

    def __init__(self, hosts: Any, settings: Mapping[str, Any] | None = None) -> None:
        if isinstance(hosts, tuple) and len(hosts) == 2 and isinstance(hosts[0], str):
            hosts = [hosts]
        hosts = tuple((str(host), int(port)) for host, port in hosts)
        if not hosts:
            raise ConfigurationError("a route needs at least one host")
        settings = dict(settings or {})
        for key in _HOST_KEYS:
            if key in settings:
                raise ConfigurationError(f"a route names its relay in its hosts, not with {key}")
        object.__setattr__(self, "hosts", hosts)
        object.__setattr__(self, "settings", tuple(sorted(settings.items())))

    @property
    def host(self) -> str:
        return self.hosts[0][0]

    @property
    def port(self) -> int:
        return self.hosts[0][1]

    @property
    def name(self) -> str:
        """host:port of the relay, for logs and results."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def connection_settings(self) -> dict[str, Any]:
        """The keyword arguments a `Connection` for this route is made with."""
        return dict(self.settings, smtp_host=self.host, smtp_port=self.port)

    def __repr__(self) -> str:
        hosts = " ".join(f"{host}:{port}" for host, port in self.hosts)
        keys = f" with {', '.join(key for key, _ in self.settings)}" if self.settings else ""
        return f"<Route {hosts}{keys}>"
