"""The ``mailman-mta`` command.

`mailman_mta.cli.app` holds the command group and what every command
shares (the ``-c``/``-o`` layers, errors and their exit statuses, plain
output); each command is a module of its own, named for it: `send`,
`config`, `plugins`, `check`, `sink`, `demo`.
"""

from . import check, config, demo, plugins, send, sink  # noqa: F401 (each registers its command)
from .app import EXIT_TEMPFAIL, _host_and_port, main

__all__ = ["EXIT_TEMPFAIL", "_host_and_port", "main"]
