"""A signature line under every message: a complete third-party mailman-mta plugin."""

from mailman_mta import hookimpl
from mailman_mta.values import as_flag


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "signature",
        """
        # The line added at the end of every message.
        text: -- sent through our lists
        # Whether to add it again to a message that already ends with it.
        repeat: no
        """,
        repeat=as_flag,
    )


@hookimpl
def mta_prepare_message(config, envelope):
    settings = config.settings.signature
    line = settings.text.encode("utf-8") + b"\r\n"
    if settings.repeat or not envelope.message.endswith(line):
        envelope.message += line
