"""pytest fixtures for testing with mailman-mta, registered via ``pytest11``.

Installed with mailman-mta, so a plugin author's suite has them with no
conftest.py:

- ``mta_smtpd``: a running `CountingSMTPServer` on a free loopback port,
  stopped after the test;
- ``mta_config``: the default configuration with a layer pointing
  ``[mta] smtp_host``/``smtp_port`` at ``mta_smtpd``, popped after the
  test together with every layer pushed on top of it;
- ``mta_layers``: a helper to push more layers that are popped for you.

    def test_my_plugin(mta_config, mta_smtpd, mta_layers):
        mta_layers.push("mine", "[plugin.mine]\\nenabled: yes\\n")
        Connection().sendmail("a@example.com", ["b@example.com"], "Subject: hi\\n\\n")
        assert len(mta_smtpd.messages) == 1
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mailman_mta.config import Configuration
from mailman_mta.config import config as default_config
from mailman_mta.testing.server import CountingSMTPServer

#: The name of the layer ``mta_config`` pushes.
SERVER_LAYER = "mta-testing-server"


@pytest.fixture
def mta_smtpd() -> Iterator[CountingSMTPServer]:
    """A running `CountingSMTPServer` on 127.0.0.1 and a free port."""
    with CountingSMTPServer() as server:
        yield server


@contextmanager
def pointed_at(server: CountingSMTPServer, config: Configuration = default_config) -> Iterator[Configuration]:
    """Push a layer pointing ``[mta]`` at *server*; pop it (and all above) after."""
    config.push(SERVER_LAYER, f"[mta]\nsmtp_host: {server.hostname}\nsmtp_port: {server.port}\n")
    try:
        yield config
    finally:
        config.pop(SERVER_LAYER)


@pytest.fixture
def mta_config(mta_smtpd: CountingSMTPServer) -> Iterator[Configuration]:
    """The default configuration, pointed at ``mta_smtpd`` for one test."""
    with pointed_at(mta_smtpd) as config:
        yield config


class LayerStack:
    """Pushes layers on a configuration and pops whatever is left at the end."""

    def __init__(self, config: Configuration) -> None:
        self.config = config
        self._pushed: list[str] = []

    def push(self, name: str, text: str) -> None:
        self.config.push(name, text)
        self._pushed.append(name)

    def pop(self, name: str) -> None:
        self.config.pop(name)
        self._pushed.remove(name)

    def pop_all(self) -> None:
        if self._pushed and self._pushed[0] in self.config.layers:
            self.config.pop(self._pushed[0])
        self._pushed.clear()


@pytest.fixture
def mta_layers(mta_config: Configuration) -> Iterator[LayerStack]:
    """Push layers on ``mta_config`` that are popped after the test."""
    stack = LayerStack(mta_config)
    try:
        yield stack
    finally:
        stack.pop_all()
