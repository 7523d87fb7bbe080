"""Bridges to the applications mailman-mta is dropped into (GNU Mailman 3, Django).

Each module imports its application, so import one only where that
application is installed; nothing else in mailman-mta imports them.
"""
