"""Built-in plugin ``verp``: a VERP envelope sender for each copy.

Active when ``[mta] delivery`` is ``verp``: each recipient's copy goes out
from ``[verp] format`` filled in with the sender and that recipient, e.g.
``bounces+anne=example.com@lists.example.org``; `mailman_mta.verp.decode`
turns a bounce's address back into ``anne@example.com``.  A layer that
sets ``delivery: verp`` while this plugin is off is refused: the copies
would go out with the plain sender, and bounces would name nobody.
"""

from mailman_mta import hookimpl, verp


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "verp",
        """
        # The envelope sender of each copy in `[mta] delivery: verp`, as a
        # template of $bounces and $bounces_domain (the two halves of the
        # sender given to Delivery) and $local and $domain (the
        # recipient's).  It must decode back to the recipient, which is
        # checked when a layer sets it; use a delimiter that cannot appear
        # in a domain name, such as "=".
        format: $bounces+$local=$domain@$bounces_domain
        """,
        format=verp.check_format,
    )
    schema.needs_plugin_when("mta", "delivery", "verp")


@hookimpl
def mta_prepare_copy(config, connection, envelope, recipient):
    if connection.setting("delivery") == "verp":
        envelope.sender = verp.encode(envelope.sender, recipient, config.settings.verp.format)
