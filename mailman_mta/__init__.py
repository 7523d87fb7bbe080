"""mailman-mta: hand outgoing mail to an SMTP server, pluggably.

The public entry points are `mailman_mta.connection.Connection` (one SMTP
connection carrying many sessions), `mailman_mta.config.config` (the layered
configuration) and `hookimpl`, the marker third-party plugins put on the hook
functions they implement (see `mailman_mta.hookspecs`).
"""

import pluggy

__version__ = "0.1.0"

#: The pluggy project name: hook specs and implementations are matched on it.
PROJECT_NAME = "mailman_mta"

#: Decorate a plugin's hook functions with this (``@hookimpl`` or
#: ``@hookimpl(tryfirst=True)``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]
