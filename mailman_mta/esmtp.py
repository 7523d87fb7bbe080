"""Moved to `mailman_mta.smtp.esmtp`; this name stays an alias of that module."""

import sys

from .smtp import esmtp as _module
from .smtp.esmtp import *  # noqa: F403 (the public names, for type checkers)

sys.modules[__name__] = _module
