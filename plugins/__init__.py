"""The built-in plugins, installed as ``mailman_mta.plugins``.

Each module is a plugin on the same hooks third parties use, and each can be
switched off by a configuration layer (``[plugin.NAME] enabled: no``):

- ``smtp``: opens connections with `smtplib` (`mta_create_transport`);
- ``sessions``: the session-count and age limits (`mta_session_allowed`);
- ``liveness``: replaces connections the server dropped (`mta_session_allowed`);
- ``auth``: SMTP AUTH with a user name and password (`mta_authenticate`);
- ``devmode``: sends all mail to one address (`mta_rewrite_recipients`).
"""
