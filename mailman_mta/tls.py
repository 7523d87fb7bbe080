"""Moved to `mailman_mta.smtp.tls`; this name stays an alias of that module."""

import sys

from .smtp import tls as _module
from .smtp.tls import *  # noqa: F403 (the public names, for type checkers)

sys.modules[__name__] = _module
