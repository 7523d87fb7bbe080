"""Layered configuration, and the plugins the layers make active.

`Configuration` wraps a lazr.config stack.  The schema is the bottom layer:
``[mta]`` and the plugin switches from ``schema.cfg``, and the sections
every known plugin declares (`mta_declare_config`, see `mailman_mta.schema`).
`push` lays a named layer on top and `pop` takes it off again, exactly as
in Mailman's test suite:

    config.push('devmode', '''
    [devmode]
    enabled: yes
    recipient: zperson@example.com
    ''')
    ...
    config.pop('devmode')

Attribute access gives lazr's raw text sections (``config.mta.smtp_port`` is
the string ``'25'``).  `settings` gives the same values converted to their
types, and `hook` calls the enabled plugins.  Both are worked out once per
change of the layer stack, never per message, so the cost of a send does not
grow with the number of layers.

A layer is checked before it is accepted: unknown sections and keys, values
of the wrong type, plugins that cannot be found, a setting left on whose
plugin is off, and rules checked by plugins (`mta_check_config`) raise
`ConfigurationError` naming the layer, section and key, and the stack is
left as it was.  `follow` keeps some keys in step with another lazr.config
configuration (GNU Mailman's), below our own layers.
"""

from .configuration import Configuration
from .settings import SectionSettings, Settings

__all__ = ["Configuration", "SectionSettings", "Settings", "config"]

#: The default configuration, used by every `Connection` given no other.
config = Configuration()
