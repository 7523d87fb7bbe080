"""Built-in plugin ``verp``: a VERP envelope sender for each copy.

Active when ``[mta] delivery`` is ``verp``: each recipient's copy goes out
from ``[verp] format`` filled in with the sender and that recipient, e.g.
``bounces+anne=example.com@lists.example.org``; `mailman_mta.verp.decode`
turns a bounce's address back into ``anne@example.com``.
"""

from mailman_mta import hookimpl, verp


@hookimpl
def mta_prepare_copy(config, connection, envelope, recipient):
    if connection.setting("delivery") == "verp":
        envelope.sender = verp.encode(envelope.sender, recipient, config.settings.verp.format)
