"""mailman-mta: hand outgoing mail to an SMTP server, pluggably.

What most programs need is importable from here::

    from mailman_mta import Configuration, Connection, Delivery, hookimpl

`Connection` is one SMTP connection carrying many sessions (GNU Mailman's
interface), `Delivery` sends a post to many recipients with a result for
each, `Configuration` is a stack of configuration layers, and `hookimpl`
marks a plugin's hook functions (see `mailman_mta.hookspecs`).  The
default configuration every connection follows is
``from mailman_mta.config import config``, as in GNU Mailman: the name
``config`` here is the module, which Python's import system binds to it.  The errors, results and interfaces are here
too; `__all__` lists everything.  Each name still lives in its own module
(`mailman_mta.connection.Connection`, ...), and those imports keep
working.  Names are imported on first use, so ``import mailman_mta`` (as
every plugin does, for `hookimpl`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

#: The pluggy project name: hook specs and implementations are matched on it.
PROJECT_NAME = "mailman_mta"

#: Decorate a plugin's hook functions with this (``@hookimpl`` or
#: ``@hookimpl(tryfirst=True)``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: Public name -> the module that defines it.
_EXPORTS = {
    "Configuration": "config",
    "Connection": "connection",
    "Delivery": "delivery",
    "DeliveryResult": "results",
    "Failure": "results",
    "Envelope": "envelope",
    "Verdict": "envelope",
    "Route": "routes",
    "TransactionResult": "smtp.transaction",
    "Secret": "secret",
    "IConnection": "interfaces",
    "ITransport": "interfaces",
    "IConfiguration": "interfaces",
    "MTAError": "errors",
    "ConfigurationError": "errors",
    "EnvelopeError": "errors",
    "MTAConnectionError": "errors",
    "ConnectTimeoutError": "errors",
    "TLSError": "errors",
    "SMTPTimeoutError": "errors",
    "SMTPProtocolError": "errors",
    "UnsendableMessageError": "errors",
    "DeliveryInterrupted": "errors",
}

__all__ = [
    "PROJECT_NAME",
    "__version__",
    "hookimpl",
    "Configuration",
    "Connection",
    "Delivery",
    "DeliveryResult",
    "Failure",
    "Envelope",
    "Verdict",
    "Route",
    "TransactionResult",
    "Secret",
    "IConnection",
    "ITransport",
    "IConfiguration",
    "MTAError",
    "ConfigurationError",
    "EnvelopeError",
    "MTAConnectionError",
    "ConnectTimeoutError",
    "TLSError",
    "SMTPTimeoutError",
    "SMTPProtocolError",
    "UnsendableMessageError",
    "DeliveryInterrupted",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .config import Configuration
    from .connection import Connection
    from .delivery import Delivery
    from .envelope import Envelope, Verdict
    from .errors import (
        ConfigurationError,
        ConnectTimeoutError,
        DeliveryInterrupted,
        EnvelopeError,
        MTAConnectionError,
        MTAError,
        SMTPProtocolError,
        SMTPTimeoutError,
        TLSError,
        UnsendableMessageError,
    )
    from .interfaces import IConfiguration, IConnection, ITransport
    from .results import DeliveryResult, Failure
    from .routes import Route
    from .secret import Secret
    from .smtp.transaction import TransactionResult
