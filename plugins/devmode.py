"""Built-in plugin ``devmode``: deliver everything to one address.

When ``[devmode] enabled`` is yes, every envelope recipient is replaced by
``[devmode] recipient`` (one copy per original recipient, so the count of
deliveries is unchanged).  Headers are untouched: the message still says
who it was meant for.  It runs last (``trylast``) so nothing rewritten by
another plugin escapes it.
"""

from mailman_mta import hookimpl
from mailman_mta.errors import ConfigurationError


@hookimpl(trylast=True)
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
            section="devmode", key="recipient",
        )
