"""Built-in plugin ``dkim``: sign every message, or every copy, with DKIM.

A list server that changes what it relays (a footer, a subject tag, a
personal copy) must sign what it actually sends, or receivers that check
DMARC will refuse it.  This plugin signs with dkimpy (RFC 6376; install
``mailman-mta[dkim]``) for ``[dkim] domain`` and ``selector`` with the
key in ``[dkim] private_key_file`` (an RSA key in PEM), covering the
``[dkim] headers`` that are present.

It signs as the very last change to a message: its `mta_prepare_message`
is a wrapper around every other implementation, so it sees their result;
and since that hook runs for every transaction, each copy of an
individual or VERP delivery is signed after its own `mta_prepare_copy`
changes.  The key is read again when its file changes.
"""

from __future__ import annotations

import os
import stat
import threading

from mailman_mta import hookimpl
from mailman_mta.errors import ConfigurationError
from mailman_mta.values import as_existing_file, as_host, as_text, as_words

#: Signed when present, in this order (RFC 6376 5.4.1's recommendations).
DEFAULT_HEADERS = (
    "From Reply-To Subject Date To Cc Message-ID In-Reply-To References MIME-Version "
    "Content-Type Content-Transfer-Encoding List-Id List-Help List-Unsubscribe "
    "List-Unsubscribe-Post List-Subscribe List-Post List-Owner List-Archive"
)

_lock = threading.Lock()
#: (path, mtime_ns, size) -> the key's bytes.
_keys: dict[tuple[str, int, int], bytes] = {}


@hookimpl
def mta_declare_config(schema):
    schema.add_section(
        "dkim",
        f"""
        # The signing domain (d=): the domain whose DNS publishes the key.
        domain:

        # The selector (s=): the public key is the TXT record
        # SELECTOR._domainkey.DOMAIN.
        selector:

        # The private key, an RSA key in PEM form, readable by this process
        # and by no one else.
        private_key_file:

        # The header fields to sign, those present, separated by spaces; From
        # must be one of them (RFC 6376 5.4).
        headers: {DEFAULT_HEADERS}
        """,
        domain=as_text,
        selector=as_text,
        private_key_file=as_existing_file,
        headers=as_words,
    )


def _dkim():
    try:
        import dkim
    except ImportError:
        raise ConfigurationError(
            "[plugin.dkim] needs dkimpy: pip install 'mailman-mta[dkim]'", section="plugin.dkim", key="enabled"
        ) from None
    return dkim


@hookimpl
def mta_check_config(config):
    settings = config.settings.dkim
    _dkim()
    for key in ("domain", "selector", "private_key_file"):
        if not settings[key]:
            raise ConfigurationError(f"[plugin.dkim] is enabled but [dkim] {key} is empty", section="dkim", key=key)
    for key in ("domain", "selector"):
        try:
            as_host(settings[key])
        except ValueError as error:
            raise ConfigurationError(f"[dkim] {key}: {error}", section="dkim", key=key) from None
    if "from" not in (name.lower() for name in settings.headers):
        raise ConfigurationError("[dkim] headers must include From (RFC 6376 5.4)", section="dkim", key="headers")
    path = settings.private_key_file
    pem = private_key(path)  # or a ConfigurationError naming the file
    mode = os.stat(path).st_mode
    if mode & 0o077:
        # As OpenSSH refuses a private key others may read: anyone who can
        # read it can sign mail as the domain.
        raise ConfigurationError(
            f"[dkim] private_key_file {path!r} may be read by others (mode {stat.S_IMODE(mode):04o}): "
            "make it readable by its owner alone (chmod 600)",
            section="dkim",
            key="private_key_file",
        )
    _parse(path, pem)


def _parse(path: str, key: bytes) -> None:
    """Refuse, naming the file, a key dkimpy cannot sign with, rather than defer every message later."""
    if b"PRIVATE KEY-----" not in key:
        raise ConfigurationError(
            f"[dkim] private_key_file {path!r} holds no PEM private key", section="dkim", key="private_key_file"
        )
    try:
        from dkim.crypto import parse_pem_private_key

        parse_pem_private_key(key)
    except Exception as error:  # dkimpy raises its own, binascii's and ASN.1 errors alike
        reason = f"{type(error).__name__}: {error}"
    else:
        return
    raise ConfigurationError(
        f"[dkim] private_key_file {path!r} holds no RSA private key dkimpy can use ({reason})",
        section="dkim",
        key="private_key_file",
    )


def private_key(path: str) -> bytes:
    """The key in *path*, read again only when the file changes."""
    try:
        status = os.stat(path)
        identity = (path, status.st_mtime_ns, status.st_size)
        with _lock:
            key = _keys.get(identity)
        if key is None:
            with open(path, "rb") as file:
                key = file.read()
            with _lock:
                _keys.clear()
                _keys[identity] = key
    except OSError as error:
        raise ConfigurationError(
            f"[dkim] private_key_file {path!r} cannot be read: {error.strerror}", section="dkim", key="private_key_file"
        ) from None
    return key


def signature(message: bytes, settings) -> bytes:
    """The ``DKIM-Signature:`` field for *message* (CRLF line endings), CRLF-terminated."""
    dkim = _dkim()
    present = {name.split(b":", 1)[0].strip().lower() for name in _header_lines(message)}
    headers = [name.encode("ascii") for name in settings.headers if name.lower().encode("ascii") in present]
    try:
        return dkim.sign(
            message,
            settings.selector.encode("ascii"),
            settings.domain.encode("ascii"),
            private_key(settings.private_key_file),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
        )
    except (dkim.DKIMException, ValueError) as error:
        # The file changed since it was checked (ValueError: a body that is
        # not base64).
        raise ConfigurationError(
            f"[dkim] cannot sign with private_key_file {settings.private_key_file!r}: {type(error).__name__}: {error}",
            section="dkim",
            key="private_key_file",
        ) from None


def _header_lines(message: bytes) -> list[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0]
    return [line for line in head.split(b"\r\n") if line and line[:1] not in b" \t"]


@hookimpl(wrapper=True)
def mta_prepare_message(config, envelope):
    result = yield
    envelope.message = signature(envelope.message, config.settings.dkim) + envelope.message
    return result
