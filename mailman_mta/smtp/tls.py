"""Client TLS contexts, built from the ``[mta]`` TLS settings.

Building an `ssl.SSLContext` reads CA certificates from disk, which costs
milliseconds; a list server opening hundreds of connections should pay it
once.  Contexts are therefore cached per combination of settings (a CA file
is read once per process, so restart to pick up a replaced file).
"""

from __future__ import annotations

import functools
import ssl

#: The accepted values of ``[mta] tls_min_version``.
TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}

#: The accepted values of ``[mta] secure_mode``.
SECURE_MODES = ("smtp", "smtps", "starttls")


def new_client_context(
    verify_cert: bool = True,
    verify_hostname: bool = True,
    ca_file: str = "",
    ca_path: str = "",
    min_version: str = "TLSv1.2",
) -> ssl.SSLContext:
    """A client context for these settings, of its own (to add to, as a client certificate).

    With *ca_file* or *ca_path*, only those CAs are trusted; otherwise the
    system's.  *verify_hostname* needs *verify_cert*: a certificate that is
    not checked cannot vouch for a name.
    """
    context = ssl.create_default_context(cafile=ca_file or None, capath=ca_path or None)
    context.minimum_version = TLS_VERSIONS[min_version]
    if not verify_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not verify_hostname:
        context.check_hostname = False
    return context


#: `new_client_context`, cached: the context for a combination of settings
#: is built once and shared, so it must not be modified.
client_context = functools.lru_cache(maxsize=32)(new_client_context)
