"""Built-in plugin ``auth``: SMTP AUTH with a user name and password.

Runs after every new connection when the connection has a user name (the
argument, or else ``[mta] smtp_user``).  It runs last (``trylast``) so a
plugin for another scheme, such as XOAUTH2, can authenticate first and
return True.  smtplib picks the mechanism (CRAM-MD5, PLAIN, LOGIN) from
those the server offers.
"""

from mailman_mta import hookimpl
from mailman_mta.errors import ConfigurationError
from mailman_mta.interfaces import IMessageTransactions


@hookimpl(trylast=True)
def mta_authenticate(connection, transport):
    user = connection.smtp_user
    if not user:
        return None
    password = connection.smtp_pass
    if password is None:
        raise ConfigurationError(
            f"SMTP user {user!r} has no password: give smtp_pass to the Connection or set [mta] smtp_pass",
            section="mta",
            key="smtp_pass",
        )
    ours = IMessageTransactions.providedBy(transport)
    if ours:
        # Ours takes the Secret itself, and never holds the password as text.
        transport.login(user, password)
    else:
        transport.login(user, password.reveal())
    return True


@hookimpl
def mta_check_config(config):
    mta = config.settings.mta
    others = [impl for impl in config.hook.mta_authenticate.get_hookimpls() if impl.function is not mta_authenticate]
    if mta.smtp_user and not mta.smtp_pass and not others:
        raise ConfigurationError(
            "[mta] smtp_user is set but [mta] smtp_pass is empty",
            section="mta",
            key="smtp_pass",
        )
