"""Built-in plugin ``routes``: each destination through its own relay.

``[routes] map`` is a table in the manner of Postfix's ``transport(5)``,
one route per line::

    example.org    smtp.example.org:25
    .example.org   smtp.example.org:25
    example.net    mx1.example.net:587 mx2.example.net:587 secure_mode=starttls max_connections=2
    *              relay.example.com:25

A destination is a domain (exactly that domain), ``.domain`` (any of its
subdomains) or ``*`` (every other domain).  As in Postfix, the exact domain
wins over a parent's ``.domain``, the nearest parent over a farther one,
and ``*`` comes last; a domain no line matches goes through ``[mta]``'s
own relay.  After the destination come the relay's ``host:port``, any
fallbacks (tried in order by the ``relays`` plugin, which must then be
enabled), and ``key=value`` settings of ``[mta]`` for this route's
connections: TLS, timeouts, ``smtp_user``, ``max_connections``,
``max_recipients``...  ``smtp_pass`` has no place in the map, which
``mailman-mta config`` shows to anyone; a route with a password of its
own comes from a plugin's `mta_choose_route`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailman_mta import hookimpl
from mailman_mta.errors import ConfigurationError
from mailman_mta.routes import Route
from mailman_mta.schema import NOT_DEFAULT
from mailman_mta.values import as_host, split_host_port

#: ``[mta]`` keys a map line may not set, with the reason.
_NOT_IN_MAP = {
    "smtp_host": "the relay is the first host:port of the line",
    "smtp_port": "the relay is the first host:port of the line",
    "smtp_pass": "the map is shown by 'mailman-mta config'; give the route from a plugin instead",
    "delivery": "how a post is split is [mta]'s, for every route",
}


@dataclass(frozen=True)
class RouteMap:
    """``[routes] map``, parsed: destination -> `Route`."""

    exact: dict[str, Route] = field(default_factory=dict)
    subdomains: dict[str, Route] = field(default_factory=dict)
    rest: Route | None = None
    #: (destination, key, value) of every setting, for `mta_check_config`.
    settings: tuple[tuple[str, str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.routes)

    @property
    def routes(self) -> list[Route]:
        """Every route of the map, as many times as lines name it."""
        return [*self.exact.values(), *self.subdomains.values(), *([self.rest] if self.rest else [])]

    def route(self, domain: str) -> Route | None:
        """The route for *domain*, Postfix's way: exact, nearest parent, then ``*``."""
        found = self.exact.get(domain)
        if found is not None:
            return found
        labels = domain.split(".")
        for start in range(1, len(labels)):
            found = self.subdomains.get(".".join(labels[start:]))
            if found is not None:
                return found
        return self.rest


def as_route_map(value: str) -> RouteMap:
    """Parse ``[routes] map``; ValueError names the line and what is wrong in it."""
    exact: dict[str, Route] = {}
    subdomains: dict[str, Route] = {}
    rest: Route | None = None
    settings = []
    seen: set[str] = set()
    for line in value.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        destination, *after = words
        # The line itself is not shown: it might hold a secret by mistake.
        where = f"the line for {destination}"
        if destination in seen:
            raise ValueError(f"{where}: {destination} has a route already")
        seen.add(destination)
        hosts, options = [], {}
        for word in after:
            key, equals, text = word.partition("=")
            if equals:
                if key in _NOT_IN_MAP:
                    raise ValueError(f"{where}: {key} cannot be set here: {_NOT_IN_MAP[key]}")
                options[key] = text
                settings.append((destination, key, text))
                continue
            try:
                host, port = split_host_port(word)
            except ValueError as error:
                raise ValueError(f"{where}: {word!r}: {error}") from None
            if options:
                raise ValueError(f"{where}: hosts come before the key=value settings")
            hosts.append((host, port if port is not None else 25))
        if not hosts:
            raise ValueError(f"{where}: a destination needs a relay, host:port")
        route = Route(hosts, options)
        if destination == "*":
            rest = route
            continue
        name = destination[1:] if destination.startswith(".") else destination
        try:
            name = as_host(name).lower()
        except ValueError as error:
            raise ValueError(f"{where}: {destination!r} is not a domain, .domain or *: {error}") from None
        (subdomains if destination.startswith(".") else exact)[name] = route
    return RouteMap(exact, subdomains, rest, tuple(settings))


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "routes",
        """
        # Which relay each destination goes through, one line per route:
        # DESTINATION HOST:PORT [FALLBACK:PORT ...] [key=value ...], where
        # DESTINATION is a domain, .domain for its subdomains, or * for the
        # rest, and key=value are [mta] settings for the route (TLS,
        # smtp_user, max_connections, ...).  A domain no line matches goes
        # through [mta] smtp_host.
        map:
        """,
        map=as_route_map,
    )
    schema.needs_plugin_when("routes", "map", NOT_DEFAULT)


@hookimpl
def mta_check_config(config):
    table = config.settings.routes.map
    for destination, key, text in table.settings:
        where = f"[routes] map, the line for {destination}"
        if key not in config.settings.mta:
            raise ConfigurationError(f"{where}: {key} is not an [mta] key", section="routes", key="map")
        try:
            config.converter_for("mta", key)(text)
        except ValueError as error:
            raise ConfigurationError(f"{where}: {key}: {error}", section="routes", key="map") from None
    if any(len(route.hosts) > 1 for route in table.routes) and "relays" not in config.active_plugins:
        raise ConfigurationError(
            "[routes] map gives a route fallback hosts, which the 'relays' plugin tries; "
            "enable [plugin.relays], or give each route one host",
            section="routes",
            key="map",
        )


@hookimpl
def mta_choose_route(config, domain):
    return config.settings.routes.map.route(domain)
