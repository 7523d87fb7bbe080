"""Moved to `mailman_mta.smtp.transaction`; this name stays an alias of that module."""

import sys

from .smtp import transaction as _module
from .smtp.transaction import *  # noqa: F403 (the public names, for type checkers)

sys.modules[__name__] = _module
