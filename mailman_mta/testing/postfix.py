"""`PostfixTestbed`: a real, throwaway Postfix on loopback, for tests.

Our own aiosmtpd server is a fake; users run Postfix.  This runs a private
Postfix instance (``postfix -c DIR``) whose configuration, queue, data and
log all live in one temporary directory, leaving the system's Postfix
configuration alone.  The instance:

- listens only on 127.0.0.1, on a free port;
- offers STARTTLS with a certificate issued for the test (``trustme``),
  whose CA is in `ca_file`;
- offers SASL AUTH (PLAIN and LOGIN, after STARTTLS) through Cyrus SASL
  against its own sasldb holding `users`;
- refuses the recipients in `refused` with a real Postfix reply;
- relays everything else to ``[127.0.0.1]:relay_port``, normally a
  `CountingSMTPServer`, so a test can see exactly what Postfix delivered;
  or, with ``discard=True``, accepts and throws every message away (for
  benchmarks: Postfix's own cost, with nothing behind it).

It needs root and the Debian packages in `PACKAGES`; `install()` gets them
with apt-get, and `unavailable()` says why a testbed cannot run here.
Nothing is sent anywhere but 127.0.0.1.

    with CountingSMTPServer(credentials=None) as capture, \\
            PostfixTestbed(relay_port=capture.port) as postfix:
        Connection("127.0.0.1", postfix.port, 0).sendmail(...)
        capture.wait_for_messages(1)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

#: The Debian packages a testbed needs.
PACKAGES = ("postfix", "sasl2-bin", "libsasl2-modules", "libsasl2-modules-db")

HOSTNAME = "testbed.localdomain"

#: Settings of the private instance, beyond the paths filled in at start.
MAIN_CF = {
    "compatibility_level": "3.6",
    "myhostname": HOSTNAME,
    "mydomain": "localdomain",
    "myorigin": "$myhostname",
    "smtpd_banner": "$myhostname ESMTP",
    "biff": "no",
    "append_dot_mydomain": "no",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mynetworks": "127.0.0.0/8",
    "mydestination": "",
    "relay_domains": "",
    "local_recipient_maps": "",
    "alias_maps": "",
    "alias_database": "",
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject",
    # Leave messages as the client sent them, so tests can compare bytes.
    "local_header_rewrite_clients": "",
    "always_add_missing_headers": "no",
    "smtpd_peername_lookup": "no",
    "smtpd_client_connection_count_limit": "0",
    "smtpd_client_connection_rate_limit": "0",
    "smtpd_client_message_rate_limit": "0",
    "smtpd_client_recipient_rate_limit": "0",
    "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
    "in_flow_delay": "0s",
    # Incoming TLS and AUTH.
    "smtpd_tls_security_level": "may",
    "smtpd_tls_auth_only": "yes",
    "smtpd_tls_loglevel": "1",
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_sasl_type": "cyrus",
    "smtpd_sasl_path": "smtpd",
    "smtpd_sasl_local_domain": HOSTNAME,
    "smtpd_sasl_security_options": "noanonymous",
    "smtpd_sasl_tls_security_options": "noanonymous",
    # Outgoing: plaintext to the capture server on loopback only.
    "smtp_tls_security_level": "none",
    "smtp_address_preference": "ipv4",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unavailable() -> str | None:
    """Why a testbed cannot run on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    missing = [tool for tool in ("postfix", "postconf", "saslpasswd2") if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (Debian packages: {' '.join(PACKAGES)})"
    if not Path("/usr/share/postfix/master.cf.dist").is_file():
        return "Postfix's /usr/share/postfix/master.cf.dist is missing"
    return None


def install() -> None:
    """Install `PACKAGES` with apt-get, non-interactively (root, Debian)."""
    if shutil.which("apt-get") is None:
        raise RuntimeError("apt-get is not available: install the Debian packages " + " ".join(PACKAGES))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    selections = (
        f"postfix postfix/main_mailer_type select No configuration\npostfix postfix/mailname string {HOSTNAME}\n"
    )
    subprocess.run(["debconf-set-selections"], input=selections, text=True, check=True, env=env)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env)


class PostfixTestbed:
    """A private Postfix instance; see the module docstring.

    :param relay_port: where on 127.0.0.1 Postfix hands every message on.
    :param discard: accept every message and throw it away instead.
    :param users: SASL user name -> password.
    :param refused: recipient -> an access(5) action refusing it, such as
        ``"550 5.1.1 Mailbox unavailable"``; Postfix answers RCPT with that
        code and ``<address>: Recipient address rejected: Mailbox unavailable``.
    """

    def __init__(
        self,
        relay_port: int | None = None,
        *,
        discard: bool = False,
        users: Mapping[str, str] | None = None,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        if (relay_port is None) != discard:
            raise ValueError("give a relay_port, or discard=True, but not both")
        self.relay_port = relay_port
        self.discard = discard
        self.users = dict(users if users is not None else {"testuser": "testpass"})
        self.refused = dict(refused or {})
        self.hostname = "127.0.0.1"
        self.port = 0
        self.base: Path | None = None
        self.ca_file = ""
        self.setup_seconds = 0.0

    # -- lifecycle -------------------------------------------------------

    def start(self) -> PostfixTestbed:
        """Configure and start the instance; return self."""
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(f"cannot run a Postfix testbed: {reason}")
        started = time.monotonic()
        self.base = Path(tempfile.mkdtemp(prefix="mailman-mta-postfix-"))
        try:
            self.port = free_port()
            self._configure()
            self._postfix("start")
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        self.setup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the instance and remove everything it wrote."""
        base, self.base = self.base, None
        if base is None:
            return
        try:
            if (base / "data" / "master.lock").exists():
                self._postfix("stop", base=base, check=False)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def restart(self) -> None:
        """Stop Postfix (closing every client connection) and start it again."""
        self._postfix("stop")
        self._wait_until_closed()
        self._postfix("start")
        self._wait_until_listening()

    def __enter__(self) -> PostfixTestbed:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what tests read -------------------------------------------------

    @property
    def config_directory(self) -> Path:
        assert self.base is not None, "the testbed is not running"
        return self.base / "config"

    def log(self) -> str:
        """Everything Postfix has logged so far."""
        assert self.base is not None, "the testbed is not running"
        path = self.base / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def smtpd_connections(self) -> int:
        """How many SMTP connections Postfix's smtpd has accepted so far."""
        return sum(1 for line in self.log().splitlines() if "postfix/smtpd[" in line and "]: connect from " in line)

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        """Wait until *text* appears in the log (bounded); return the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if text in log or time.monotonic() > deadline:
                return log
            time.sleep(0.05)

    # -- internals -------------------------------------------------------

    def _configure(self) -> None:
        """Write this Postfix's folders, certificates, SASL database, main.cf and master.cf.

        Longer than most functions on purpose: it is one Postfix
        configuration, read top to bottom as postconf(5) would be, and the
        paths, ports and switches in it must agree with each other.
        """
        import trustme

        base = self.base
        assert base is not None, "the testbed is being set up"
        config, queue, data = base / "config", base / "queue", base / "data"
        for path in (config, queue, data, config / "sasl"):
            path.mkdir(parents=True)
        base.chmod(0o755)
        shutil.chown(data, "postfix")

        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(config / "ca.pem"))
        certificate = ca.issue_cert("127.0.0.1", "localhost", HOSTNAME)
        certificate.private_key_and_cert_chain_pem.write_to_path(str(config / "server.pem"))
        (config / "server.pem").chmod(0o600)
        self.ca_file = str(config / "ca.pem")

        access = "".join(f"{address} {reply}\n" for address, reply in self.refused.items())
        (config / "recipient_access").write_text(access)
        (config / "sasl" / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
            f"sasldb_path: {config / 'sasldb2'}\n"
        )
        for user, password in self.users.items():
            subprocess.run(
                ["saslpasswd2", "-p", "-c", "-f", str(config / "sasldb2"), "-u", HOSTNAME, user],
                input=password,
                text=True,
                check=True,
                capture_output=True,
            )
        if self.users:
            shutil.chown(config / "sasldb2", "postfix")
            (config / "sasldb2").chmod(0o600)

        shutil.copy("/usr/share/postfix/master.cf.dist", config / "master.cf")
        (config / "main.cf").write_text("")
        settings = dict(MAIN_CF)
        settings.update(
            {
                "queue_directory": str(queue),
                "data_directory": str(data),
                "maillog_file": str(base / "maillog"),
                "maillog_file_prefixes": str(base),
                "smtpd_recipient_restrictions": f"check_recipient_access texthash:{config / 'recipient_access'}",
                "smtpd_tls_chain_files": str(config / "server.pem"),
                "cyrus_sasl_config_path": str(config / "sasl"),
            }
        )
        if self.discard:
            settings.update(default_transport="discard", relay_transport="discard", local_transport="discard")
        else:
            settings["relayhost"] = f"[127.0.0.1]:{self.relay_port}"
        self._postconf("-e", *(f"{key} = {value}" for key, value in settings.items()))
        self._postconf("-F", "*/*/chroot = n")
        self._postconf("-M#", "smtp/inet")
        self._postconf("-Me", f"127.0.0.1:{self.port}/inet = 127.0.0.1:{self.port} inet n - n - - smtpd")
        self._postfix("post-install", "create-missing")

    def _postconf(self, *args: str) -> None:
        self._run(["postconf", "-c", str(self.config_directory), *args])

    def _postfix(self, *args: str, base: Path | None = None, check: bool = True) -> None:
        base = base or self.base
        assert base is not None, "the testbed is running"
        config = base / "config"
        self._run(["postfix", "-c", str(config), *args], check=check)

    def _run(self, command: list[str], check: bool = True) -> None:
        # Postfix reports problems on stderr only when it is a terminal, and
        # otherwise to its log; show both when a command fails.
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            tail = "\n".join(self.log().splitlines()[-10:]) if self.base else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")

    def _wait_until_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.hostname, self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Postfix did not start listening on {self.hostname}:{self.port} "
                    f"within {timeout:g} s:\n{self.log()[-2000:]}"
                )
            time.sleep(0.05)

    def _wait_until_closed(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.hostname, self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"Postfix still listens on {self.hostname}:{self.port} after stop")


def main() -> None:  # pragma: no cover - a manual helper, exercised by scripts/postfix-testbed
    """Run a testbed with a capture server until Ctrl-C (for manual experiments)."""
    from .server import CountingSMTPServer

    with CountingSMTPServer(
        credentials=None,
        on_message=lambda m: print(
            f"captured: from {m.mail_from} to {', '.join(m.rcpt_tos)} ({len(m.content)} bytes)", flush=True
        ),
    ) as capture:
        with PostfixTestbed(relay_port=capture.port) as postfix:
            print(
                f"Postfix listening on 127.0.0.1:{postfix.port} (STARTTLS CA: {postfix.ca_file}; "
                f"SASL user testuser/testpass); relaying to 127.0.0.1:{capture.port}",
                flush=True,
            )
            print(f"started in {postfix.setup_seconds:.2f} s; Ctrl-C stops it", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":  # pragma: no cover
    main()
