"""Moved to `mailman_mta.smtp.transport`; this name stays an alias of that module."""

import sys

from .smtp import transport as _module
from .smtp.transport import *  # noqa: F403 (the public names, for type checkers)

sys.modules[__name__] = _module
