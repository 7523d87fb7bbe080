"""Every error's bases, pinned: what a caller may catch it as."""

from __future__ import annotations

import inspect
import smtplib
import socket
import ssl

import pytest

from mailman_mta import errors
from mailman_mta.errors import (
    ConfigurationError,
    ConnectTimeoutError,
    DeliveryInterrupted,
    EnvelopeError,
    MTAConnectionError,
    MTAError,
    NoTransportError,
    SMTPProtocolError,
    SMTPTimeoutError,
    SMTPUTF8NotOffered,
    STARTTLSNotOffered,
    TLSError,
    TLSHandshakeError,
    UnsendableMessageError,
    VERPError,
)
from mailman_mta.smtp.transport import SMTPTransport

BASES = {
    MTAError: (Exception,),
    ConfigurationError: (MTAError, ValueError),
    EnvelopeError: (MTAError, ValueError),
    VERPError: (MTAError, ValueError),
    NoTransportError: (MTAError,),
    MTAConnectionError: (MTAError, ConnectionError),
    ConnectTimeoutError: (MTAConnectionError, TimeoutError),
    TLSError: (MTAConnectionError,),
    TLSHandshakeError: (TLSError, ssl.SSLError),
    STARTTLSNotOffered: (TLSError, smtplib.SMTPNotSupportedError),
    SMTPTimeoutError: (MTAError, smtplib.SMTPServerDisconnected, TimeoutError),
    SMTPProtocolError: (MTAError, smtplib.SMTPServerDisconnected),
    UnsendableMessageError: (MTAError, smtplib.SMTPResponseException),
    SMTPUTF8NotOffered: (UnsendableMessageError, smtplib.SMTPNotSupportedError),
    DeliveryInterrupted: (KeyboardInterrupt,),
}


def test_every_error_class_is_pinned():
    defined = {cls for _, cls in inspect.getmembers(errors, inspect.isclass) if cls.__module__ == errors.__name__}
    assert defined == set(BASES)


@pytest.mark.parametrize("error", list(BASES), ids=lambda cls: cls.__name__)
def test_bases(error):
    assert error.__bases__ == BASES[error]


def test_ours_have_one_root_and_ctrl_c_is_never_an_exception():
    assert all(issubclass(cls, MTAError) for cls in BASES if cls is not DeliveryInterrupted)
    assert not issubclass(DeliveryInterrupted, Exception)


def test_a_connect_timeout_is_not_a_command_timeout(monkeypatch):
    def never(*args, **kwargs):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", never)
    transport = SMTPTransport(connect_timeout=0.5)
    with pytest.raises(ConnectTimeoutError, match=r"connecting to 192\.0\.2\.1:25 timed out after 0\.5 s") as caught:
        transport.connect("192.0.2.1", 25)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, ConnectionError)
    assert not isinstance(caught.value, SMTPTimeoutError)


def test_a_command_timeout_is_a_timeout_error(mta_smtpd):
    from mailman_mta.connection import Connection

    mta_smtpd.script("MAIL", hang=True)
    connection = Connection(mta_smtpd.hostname, mta_smtpd.port, command_timeout=0.3)
    with pytest.raises(TimeoutError) as caught:
        connection.sendmail("a@example.com", ["b@example.com"], "Subject: x\n\n")
    assert isinstance(caught.value, SMTPTimeoutError)
    assert isinstance(caught.value, smtplib.SMTPServerDisconnected)
