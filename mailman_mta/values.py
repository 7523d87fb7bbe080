"""Value types for configuration keys: text in, a typed value out.

Every key of every section, ours and the plugins' (see `mailman_mta.schema`),
has one of these converters.  A converter takes the raw text of a key and
returns its typed value, or raises ValueError with a message that completes
"[section] key: ...", so a bad value is refused when its layer is pushed,
naming the layer, section and key, rather than at the first delivery.

A plugin may write its own converter: any callable from str that raises
ValueError for text it refuses.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path

from lazr.config import as_boolean

from .envelope import check_address
from .errors import EnvelopeError
from .secret import Secret

__all__ = [
    "MAX_SECONDS",
    "as_connection_count",
    "as_count",
    "as_existing_directory",
    "as_existing_file",
    "as_flag",
    "as_host",
    "as_host_port_list",
    "as_optional_address",
    "as_port",
    "as_positive_count",
    "as_positive_seconds",
    "as_python_path",
    "as_rate",
    "as_seconds",
    "as_secret",
    "as_text",
    "as_words",
    "one_of",
    "split_host_port",
]


def as_text(value: str) -> str:
    return value


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?")


def as_host(value: str) -> str:
    """A host name or an IPv4 or IPv6 address; an internationalised name as its A-labels.

    Checked as the resolver will need it, so that a name that can never be
    looked up is refused when the layer is pushed, not at the first send.
    ``bücher.example`` becomes ``xn--bcher-kva.example``: the form DNS,
    TLS certificates and SMTP itself use.
    """
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    try:
        ascii_name = value.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    labels = ascii_name[:-1].split(".") if ascii_name.endswith(".") else ascii_name.split(".")
    if not ascii_name or len(ascii_name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return value if value.isascii() else ascii_name


def _whole_number(value: str, low: int, high: float, what: str) -> int:
    """*value* as a whole number from *low* to *high*, or ValueError saying it is not *what*."""
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ValueError(f"{value!r} is not {what}")
    return number


def as_port(value: str) -> int:
    return _whole_number(value, 1, 65535, "a port number (a whole number from 1 to 65535)")


def split_host_port(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[IPv6]`` or ``[IPv6]:port``: the host and the port (None if left out), checked."""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not host, host:port or [IPv6 address]:port")
        port = rest[1:]
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    return as_host(host), as_port(port) if port else None


def as_host_port_list(value: str) -> tuple[tuple[str, int], ...]:
    """Space-separated ``host:port`` (``[v6 address]:port`` for IPv6), in order.

    The port may be left out only when the default port is meant, which
    a list of relays rarely does, so it is required here.
    """
    relays = []
    for item in value.split():
        try:
            host, port = split_host_port(item)
        except ValueError as error:
            raise ValueError(f"{item!r}: {error}") from None
        if port is None:
            raise ValueError(f"{item!r} is not host:port")
        relays.append((host, port))
    return tuple(relays)


def as_positive_count(value: str) -> int:
    return _whole_number(value, 1, math.inf, "a whole number, 1 or more")


#: The most connections one pool may open to one relay (``[mta] max_connections``).
#: Relays count a client's connections and ban hosts that open too many
#: (Postfix lets each destination have 20 by default, and its anvil(8)
#: rate-limits clients); beyond a few dozen, more connections only add
#: threads and the relay's suspicion, not throughput.
MAX_CONNECTIONS = 50


def as_connection_count(value: str) -> int:
    """How many connections at once: a whole number from 1 to `MAX_CONNECTIONS`."""
    return _whole_number(value, 1, MAX_CONNECTIONS, f"a number of connections from 1 to {MAX_CONNECTIONS}")


def as_count(value: str) -> int:
    return _whole_number(value, 0, math.inf, "a count (a whole number, 0 or more)")


def as_flag(value: str) -> bool:
    try:
        return as_boolean(value)
    except ValueError:
        raise ValueError(f"{value!r} is not yes or no (use yes/no, true/false, on/off, 1/0)") from None


#: The longest time any setting may name: sockets cannot wait much longer
#: on some platforms (a 32-bit time_t ends at about 2.1e9 seconds).
MAX_SECONDS = 10**9


def as_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{value!r} is not a number of seconds (0 or more)")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is longer than any timeout can be ({MAX_SECONDS} seconds at most)")
    return seconds


def as_positive_seconds(value: str) -> float:
    seconds = as_seconds(value)
    if seconds == 0:
        raise ValueError(f"{value!r} must be more than 0 seconds")
    return seconds


def as_rate(value: str) -> float:
    """A rate per second, 0 or more (0 conventionally meaning "no limit")."""
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0 <= rate < float("inf"):
        raise ValueError(f"{value!r} is not a rate per second (a number, 0 or more)")
    if 0 < rate < 1 / MAX_SECONDS:
        raise ValueError(f"{value!r} is slower than once in {MAX_SECONDS} seconds")
    return rate


def one_of(*choices: str) -> Callable[[str], str]:
    def as_choice(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return as_choice


def as_words(value: str) -> tuple[str, ...]:
    """Whitespace- or colon-separated words (header names, say), in order."""
    return tuple(word for word in re.split(r"[\s:]+", value) if word)


def as_existing_file(value: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError(f"{value!r} is not a readable file")
    return value


def as_existing_directory(value: str) -> str:
    if value and not Path(value).is_dir():
        raise ValueError(f"{value!r} is not a directory")
    return value


def as_secret(value: str) -> Secret:
    return Secret(value)


def as_optional_address(value: str) -> str:
    if value:
        try:
            check_address(value, "address")
        except EnvelopeError as error:
            raise ValueError(str(error)) from None
    return value


_PYTHON_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")


def as_python_path(value: str) -> str:
    if value and not _PYTHON_PATH.match(value):
        raise ValueError(f"{value!r} is not a Python path like package.module or package.module:Name")
    return value
