"""Built-in plugin ``smtp``: open connections with the standard library's client.

Connects to the connection's host and port with its timeouts, and secures
the connection as ``secure_mode`` says: not at all (``smtp``), TLS from the
start (``smtps``), or STARTTLS before anything else is said (``starttls``),
never falling back to plaintext.  It runs last (``trylast``), so a plugin
that supplies its own transport (a pipelining client, relays with failover)
is asked first.
"""

from mailman_mta import hookimpl
from mailman_mta.transport import SMTPTransport


@hookimpl(trylast=True)
def mta_create_transport(connection):
    mode = connection.setting("secure_mode")
    context = connection.tls_context() if mode != "smtp" else None
    transport = SMTPTransport(
        connect_timeout=connection.setting("connect_timeout"),
        command_timeout=connection.setting("command_timeout"),
        implicit_tls=context if mode == "smtps" else None,
    )
    transport.set_debuglevel(1 if connection.debug else 0)
    transport.connect(connection.host, connection.port)
    if mode == "starttls":
        transport.starttls_or_refuse(context)
    return transport
