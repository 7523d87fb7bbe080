"""Built-in plugin ``devmode``: deliver everything to one address.

When ``[devmode] enabled`` is yes, every envelope recipient is replaced by
``[devmode] recipient`` (one copy per original recipient, so the count of
deliveries is unchanged).  Headers are untouched: the message still says
who it was meant for.  It runs last (``trylast``) so nothing rewritten by
another plugin escapes it.

``[devmode] enabled`` is the feature's one switch (as in Mailman); the
plugin itself is on by default, and a layer that turns it off while
``[devmode] enabled`` is yes is refused, since mail would then reach the
real recipients.
"""

from mailman_mta import hookimpl
from mailman_mta.errors import ConfigurationError
from mailman_mta.hooks import idle_unless
from mailman_mta.values import as_flag, as_optional_address


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "devmode",
        """
        # Development mode: when enabled, every envelope recipient of every
        # message is replaced by `recipient` below, so that a test
        # installation can never deliver to real people.  The message headers
        # are left as they are.
        enabled: no

        # Where all mail goes in development mode.  Required when `enabled`
        # is yes.
        recipient:
        """,
        enabled=as_flag,
        recipient=as_optional_address,
    )
    schema.needs_plugin_when("devmode", "enabled", True)


@hookimpl(trylast=True)
@idle_unless(lambda settings: settings.devmode.enabled)
def mta_rewrite_recipients(config, envelope):
    devmode = config.settings.devmode
    if devmode.enabled:
        envelope.recipients = [devmode.recipient] * len(envelope.recipients)


@hookimpl
def mta_check_config(config):
    devmode = config.settings.devmode
    if devmode.enabled and not devmode.recipient:
        raise ConfigurationError(
            "[devmode] enabled is yes but [devmode] recipient is empty: say where mail should go",
            section="devmode",
            key="recipient",
        )
