"""The built-in plugins, installed as ``mailman_mta.plugins``.

Each module is a plugin on the same hooks third parties use, declares its
own configuration the same way (`mta_declare_config`), and can be switched
off by a layer (``[plugin.NAME] enabled: no``).  `BUILTIN_PLUGINS` is the
one list of them; tests/test_plugins.py checks it against this package's
modules, and ``mailman-mta plugins`` prints it.
"""

#: Every built-in plugin, in registration order (pluggy calls the
#: last-registered first, after any third-party plugin), with what it does.
#: The first six are on by default (``schema.cfg``); the others are off
#: until a layer enables them.
BUILTIN_PLUGINS: dict[str, str] = {
    "smtp": "opens connections with mailman_mta.smtp.transport (mta_create_transport)",
    "sessions": "replaces a connection after its session-count or age limit (mta_session_allowed)",
    "liveness": "replaces connections the server dropped or left idle (mta_session_allowed)",
    "auth": "SMTP AUTH with [mta] smtp_user and smtp_pass (mta_authenticate)",
    "devmode": "sends all mail to [devmode] recipient when [devmode] enabled (mta_rewrite_recipients)",
    "verp": "gives each copy a VERP envelope sender when [mta] delivery is verp (mta_prepare_copy)",
    "relays": "tries [relays] hosts in order, skipping those that are down (mta_create_transport)",
    "routes": "sends each destination through its own relay, as [routes] map says (mta_choose_route)",
    "ratelimit": "paces messages and recipients per relay (mta_pace_transaction)",
    "xoauth2": "SMTP AUTH XOAUTH2 with a token from a command or callable (mta_authenticate)",
    "dkim": "signs each message or copy with DKIM, after every other change (mta_prepare_message)",
    "deliverylog": "one JSON line per transaction, and counters (mta_delivery_result)",
}
