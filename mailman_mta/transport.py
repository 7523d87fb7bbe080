"""`SMTPTransport`: the standard library's SMTP client, made safe to run unattended.

What it adds to `smtplib.SMTP`:

- separate connect and per-command timeouts, and errors that name the
  host, the port and the command that went unanswered;
- implicit TLS (SMTPS) and STARTTLS that refuses to carry on in plaintext;
- `message_data_sent`, which tells whether the current transaction got as
  far as sending message data, so a caller knows when a retry cannot
  deliver twice;
- a debug transcript sent to the ``mailman_mta.transcript`` logger with
  everything the client sends while authenticating masked.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl

from zope.interface import classImplements

from .errors import MTAConnectionError, SMTPTimeoutError, TLSError
from .interfaces import ITransport

transcript = logging.getLogger("mailman_mta.transcript")

MASK = "***"

#: Seconds to wait for a TCP connection, and for each reply, by default.
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_COMMAND_TIMEOUT = 300.0


class SMTPTransport(smtplib.SMTP):
    """An `smtplib.SMTP` with timeouts, TLS modes and a masked transcript.

    :param connect_timeout: seconds to wait for the TCP connection.
    :param command_timeout: seconds to wait for each reply (and for each
        send to make progress); RFC 5321 suggests minutes.
    :param implicit_tls: a client context to wrap the connection in TLS
        as soon as it opens (SMTPS, usually port 465).
    """

    _authenticating = False
    _port = 0

    def __init__(
        self,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        implicit_tls: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.implicit_tls = implicit_tls
        #: The command whose reply is awaited, for error messages.
        self.last_command = "the greeting"
        #: True once the current transaction started sending message data.
        self.message_data_sent = False
        super().__init__(local_hostname=local_hostname, timeout=command_timeout)

    @property
    def where(self) -> str:
        return f"{self._host}:{self._port}"

    # -- connecting ------------------------------------------------------

    def connect(self, host="localhost", port=0, source_address=None):
        # smtplib remembers the host only when given to the constructor, and
        # TLS checks the certificate against that remembered name.
        self._host, self._port = host, port
        self.last_command = "the greeting"
        code, reply = super().connect(host, port, source_address)
        if code != 220:
            # smtplib checks the greeting only when connecting from __init__.
            self.close()
            raise smtplib.SMTPConnectError(code, reply)
        return code, reply

    def _get_socket(self, host, port, timeout):
        if self.debuglevel > 0:
            self._print_debug("connect: to", (host, port), self.source_address)
        try:
            sock = socket.create_connection((host, port), self.connect_timeout, self.source_address)
        except TimeoutError as error:
            raise MTAConnectionError(
                f"connecting to {host}:{port} timed out after {self.connect_timeout:g} s"
            ) from error
        except OSError as error:
            raise MTAConnectionError(f"cannot connect to {host}:{port}: {error.strerror or error}") from error
        sock.settimeout(timeout)
        if self.implicit_tls is not None:
            sock = self._wrap(sock, self.implicit_tls, host, port, "implicit TLS (SMTPS)")
        return sock

    def _wrap(self, sock: socket.socket, context: ssl.SSLContext, host: str, port: int, how: str) -> ssl.SSLSocket:
        try:
            return context.wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, ssl.CertificateError, OSError) as error:
            sock.close()
            reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
            raise TLSError(f"{how} with {host}:{port} failed: {reason}") from error

    def starttls_or_refuse(self, context: ssl.SSLContext) -> None:
        """Upgrade to TLS with STARTTLS, or raise `TLSError` and close.

        Never falls back to plaintext: if the server does not offer
        STARTTLS, or refuses it, or the handshake fails, nothing more is said.
        """
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("starttls"):
            self.close()
            raise TLSError(
                f"{self.where} does not offer STARTTLS, and secure_mode is starttls: "
                "refusing to send in plaintext"
            )
        code, reply = self.docmd("STARTTLS")
        if code != 220:
            self.close()
            raise TLSError(f"{self.where} refused STARTTLS: {code} {reply.decode(errors='replace')}")
        self.sock = self._wrap(self.sock, context, self._host, self._port, "STARTTLS")
        self.file = None
        # RFC 3207: forget everything learnt before TLS; EHLO again.
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False
        self.ehlo()

    # -- the conversation ------------------------------------------------

    def putcmd(self, cmd, args=""):
        self.last_command = cmd.upper()
        super().putcmd(cmd, args)

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):
        """Run one transaction; the contract of `smtplib.SMTP.sendmail`.

        Written out here because smtplib decides "every recipient refused"
        by comparing a dict of refusals, keyed by address, with the list of
        recipients: with a recipient listed twice (devmode sends one copy per
        original recipient) it never sees that all were refused, goes on to
        DATA and reports a misleading error.  This counts acceptances.
        """
        self.ehlo_or_helo_if_needed()
        if isinstance(to_addrs, str):
            to_addrs = [to_addrs]
        if isinstance(msg, str):
            msg = "\r\n".join(msg.splitlines()).encode("ascii") + b"\r\n"
        options = []
        if self.does_esmtp:
            if self.has_extn("size"):
                options.append(f"SIZE={len(msg)}")
            options.extend(mail_options)
        code, reply = self.mail(from_addr, options)
        if code != 250:
            self._end_failed_transaction(code)
            raise smtplib.SMTPSenderRefused(code, reply, from_addr)
        refused = {}
        accepted = 0
        for recipient in to_addrs:
            code, reply = self.rcpt(recipient, rcpt_options)
            if code in (250, 251):
                accepted += 1
                continue
            refused[recipient] = (code, reply)
            if code == 421:
                self.close()
                raise smtplib.SMTPRecipientsRefused(refused)
        if not accepted:
            self._end_failed_transaction(code)
            raise smtplib.SMTPRecipientsRefused(refused)
        code, reply = self.data(msg)
        if code != 250:
            self._end_failed_transaction(code)
            raise smtplib.SMTPDataError(code, reply)
        return refused

    def _end_failed_transaction(self, code: int) -> None:
        if code == 421:
            self.close()  # the server is closing the connection anyway
        else:
            self._rset()

    def mail(self, sender, options=()):
        self.message_data_sent = False
        return super().mail(sender, options)

    def send(self, s):
        if isinstance(s, (bytes, bytearray)):
            # smtplib sends commands as str and only message data as bytes.
            self.message_data_sent = True
            self.last_command = "the end of DATA"
        try:
            super().send(s)
        except smtplib.SMTPServerDisconnected as error:
            raise self._explain(error, "while sending") from error.__context__

    def getreply(self):
        try:
            return super().getreply()
        except smtplib.SMTPServerDisconnected as error:
            raise self._explain(error, "while waiting for the reply to") from error.__context__

    def _explain(self, error: smtplib.SMTPServerDisconnected, doing: str) -> smtplib.SMTPServerDisconnected:
        cause = error.__context__
        if isinstance(cause, TimeoutError):
            return SMTPTimeoutError(
                f"{self.where} did not answer {self.last_command} within {self.timeout:g} s"
            )
        if self.sock is None and "run connect() first" in str(error):
            return error
        detail = f" ({cause})" if cause is not None else ""
        return smtplib.SMTPServerDisconnected(
            f"{self.where} closed the connection {doing} {self.last_command}{detail}"
        )

    # -- the transcript --------------------------------------------------

    def auth(self, mechanism, authobject, *, initial_response_ok=True):
        self._authenticating = True
        try:
            return super().auth(mechanism, authobject, initial_response_ok=initial_response_ok)
        finally:
            self._authenticating = False

    def _print_debug(self, *args) -> None:
        if self._authenticating and args and args[0] == "send:":
            # Keep "AUTH PLAIN" so the transcript shows what happened.
            sent = args[1] if len(args) > 1 else ""
            words = sent.strip("'\"").split()
            shown = " ".join(words[:2]) + f" {MASK}" if sent.lstrip("'\"").startswith("AUTH") else MASK
            args = ("send:", shown)
        if transcript.isEnabledFor(logging.DEBUG):
            transcript.debug("%s %s", self.where, " ".join(map(str, args)))


classImplements(smtplib.SMTP, ITransport)
