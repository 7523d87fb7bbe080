"""Built-in plugin ``sessions``: replace a connection after N sessions.

N is the connection's ``sessions_per_connection`` (the argument, or else
``[mta] max_sessions_per_connection``); 0 means no limit.
"""

from mailman_mta import hookimpl


@hookimpl
def mta_session_allowed(connection):
    limit = connection.sessions_per_connection
    return limit == 0 or connection.session_count < limit
