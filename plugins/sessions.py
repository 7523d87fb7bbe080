"""Built-in plugin ``sessions``: limits on how long one connection is reused.

A connection is replaced after ``sessions_per_connection`` sessions (the
argument, or ``[mta] max_sessions_per_connection``; 0 means no limit) or
once it is older than ``[mta] max_connection_age`` seconds (0: no limit),
whichever comes first, like Postfix's reuse count and time limits.
"""

import time

from mailman_mta import hookimpl


@hookimpl
def mta_session_allowed(connection):
    limit = connection.sessions_per_connection
    if limit and connection.session_count >= limit:
        return False
    max_age = connection.setting("max_connection_age")
    if max_age and time.monotonic() - connection.connected_at > max_age:
        return False
    return True
