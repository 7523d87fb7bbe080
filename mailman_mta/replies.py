"""Moved to `mailman_mta.smtp.replies`; this name stays an alias of that module."""

import sys

from .smtp import replies as _module
from .smtp.replies import *  # noqa: F403 (the public names, for type checkers)

sys.modules[__name__] = _module
