"""A real GNU Mailman 3.3.10 site delivering through mailman-mta, against Mailman's own delivery.

Each run starts two Mailman sites side by side, from the same
configuration, in the environment where Mailman and mailman-mta's wheel
are installed as a site installs them: site A keeps Mailman's own
``[mta] outgoing`` (``mailman.mta.deliver.deliver``), site B names ours
(``mailman_mta.integrations.mailman.deliver``) and a mailman-mta site file
(``[plugin.mailman_mta] configuration``).  Each site gets the same lists
and members (several domains, some of whom the relay refuses with 550,
451 or 552), is started with ``mailman start``, and is sent the same posts
with ``mailman inject``; each delivers to an SMTP server of its own that
refuses the same members.  Then, A against B:

- every copy that reached the server, per recipient: envelope sender and
  message bytes (decoration, personalization, VERP), identical but for
  the ARC signatures' time and signature values, and every ARC chain
  verified;
- the bounce events Mailman registered (the 5xx only) and what its retry
  queue holds (the 4xx, and the 552 that RFC 5321 says to retry);
- the lines of ``logs/smtp.log``.

The runs differ in Mailman's own settings: ARC signing with bulk and
personalized lists; ARC signing with VERP (``verp_delivery_interval``),
plain and personalized; and development mode.  A last test delivers
through the real Postfix with STARTTLS and AUTH.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import pytest

from mailman_mta.testing import CountingSMTPServer

pytestmark = pytest.mark.mailman

#: The environment tests/test_mailman.py builds (the same one, shared).
REQUIREMENTS = ["mailman==3.3.10", "nose2==0.16.0", "flufl.testing==0.8", "hypothesis==6.170.17"]
SITE_TOOL = Path(__file__).resolve().parent / "mailman_site" / "site_tool.py"

MAILMANS = "mailman.mta.deliver.deliver"
OURS = "mailman_mta.integrations.mailman.deliver"

DOMAIN = "lists.example.com"
ARC_SELECTOR = "arc"

#: Members the relay refuses, and how; each list has all three.
REFUSALS = {
    "gone@a.example.com": "550 5.1.1 No such user here",
    "later@b.example.org": "451 4.2.1 Try again later",
    "full@c.example.net": "552 5.2.2 Mailbox full",
}
MEMBER_DOMAINS = ["a.example.com", "b.example.org", "c.example.net", "d.example.de"]
MEMBERS = [f"Member {n} of {d.split('.')[0].upper()} <m{n}@{d}>" for d in MEMBER_DOMAINS for n in range(5)] + [
    "Gone Person <gone@a.example.com>",
    "Later Person <later@b.example.org>",
    "full@c.example.net",
]
LISTS = [
    {"address": f"bulk@{DOMAIN}", "personalize": "none", "members": MEMBERS},
    {"address": f"personal@{DOMAIN}", "personalize": "full", "members": MEMBERS},
]

POSTS = {
    "plain": """\
From: Poster <poster@example.com>
To: {list}
Subject: Meeting notes
Message-ID: <{id}@example.com>
Date: Tue, 01 Dec 2026 10:00:00 +0000

Hello list,

the notes are attached below.
""",
    "utf8": """\
From: =?utf-8?q?J=C3=B6rg?= <joerg@example.com>
To: {list}
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=
Message-ID: <{id}@example.com>
Date: Tue, 01 Dec 2026 11:00:00 +0000
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 8bit

Grüße aus Köln, und schöne Feiertage.
""",
}

#: Mailman's settings for each run (both sites), beyond the common ones.
RUNS = {
    "arc-bulk-and-personalized": {"ARC": "arc"},
    "arc-verp": {"ARC": "arc", "mta": {"verp_delivery_interval": "1", "verp_personalized_deliveries": "yes"}},
    "devmode": {"devmode": {"enabled": "yes", "recipient": "developer@devmode.example"}},
}

#: The post each run sends to each list (bulk, personal): over the runs,
#: every path gets both a plain ASCII post and an 8-bit UTF-8 one.
KINDS = {
    "arc-bulk-and-personalized": ("plain", "utf8"),
    "arc-verp": ("utf8", "plain"),
    "devmode": ("utf8", "plain"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class MailmanSite:
    """One GNU Mailman site in a folder of its own, run with the ``mailman`` command of *python*'s environment."""

    python: Path
    root: Path
    sections: dict[str, dict[str, str]]
    running: bool = field(default=False, init=False)

    @property
    def cfg(self) -> Path:
        return self.root / "mailman.cfg"

    @property
    def var(self) -> Path:
        return self.root / "var"

    def write_configuration(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        lines = []
        for section, values in self.sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key}: {value}" for key, value in values.items())
            lines.append("")
        self.cfg.write_text("\n".join(lines))

    def mailman(self, *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``mailman -C mailman.cfg ARGUMENTS`` (as root, with the flag Mailman asks for)."""
        done = subprocess.run(
            [str(self.python.parent / "mailman"), "-C", str(self.cfg), "--run-as-root", *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        assert done.returncode == 0, f"mailman {' '.join(arguments)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done

    def tool(self, *arguments: str) -> str:
        done = subprocess.run(
            [str(self.python), str(SITE_TOOL), arguments[0], str(self.cfg), *arguments[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def set_up(self, lists: list[dict]) -> None:
        self.write_configuration()
        spec = self.root / "lists.json"
        spec.write_text(json.dumps(lists))
        self.tool("setup", str(spec))

    def start(self) -> None:
        # `mailman start` leaves its runners holding the caller's output:
        # it goes to a file, never a pipe.
        with (self.root / "start.out").open("w") as out:
            subprocess.run(
                [str(self.python.parent / "mailman"), "-C", str(self.cfg), "--run-as-root", "start"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                cwd=self.root,
                check=True,
            )
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.mailman("stop")
            deadline = time.monotonic() + 30
            while (self.var / "master.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.1)

    def inject(self, post: Path, address: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(self.python.parent / "mailman"), "-C", str(self.cfg), "--run-as-root", "inject", "-f", str(post)]
            + [address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )

    def log(self, name: str) -> str:
        path = self.var / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def smtp_lines(self) -> list[str]:
        """smtp.log without each line's date and process number."""
        return [re.sub(r"^.*? \(\d+\) ", "", line) for line in self.log("smtp").splitlines()]

    def busy(self) -> bool:
        """Is a message still on its way (in, pipeline or out)?"""
        return any(
            path.suffix in (".pck", ".bak")
            for queue in ("in", "pipeline", "out")
            for path in (self.var / "queue" / queue).glob("*")
        )

    def inspect(self) -> dict:
        return json.loads(self.tool("inspect"))


def site_sections(root: Path, outgoing: str, smtp_port: int, run: dict, key_pair: Path) -> dict[str, dict[str, str]]:
    """mailman.cfg for one site of a run, as sections."""
    sections: dict[str, dict[str, str]] = {
        "mailman": {"layout": "here", "site_owner": f"owner@{DOMAIN}"},
        "paths.here": {"var_dir": str(root / "var")},
        "mta": {
            "incoming": "mailman.mta.null.NullMTA",
            "outgoing": outgoing,
            "smtp_host": "127.0.0.1",
            "smtp_port": str(smtp_port),
            "lmtp_port": str(free_port()),
        },
        "webservice": {"port": str(free_port())},
    }
    # The runners a post passes through, polling often; the others stay
    # off (a retry runner would take 4xx recipients out of the queue
    # this test reads).
    for runner in ("in", "pipeline", "out"):
        sections[f"runner.{runner}"] = {"sleep_time": "0.1s"}
    for runner in ("archive", "bounces", "command", "digest", "lmtp", "nntp", "rest", "retry", "task", "virgin"):
        sections[f"runner.{runner}"] = {"start": "no"}
    for section, values in run.items():
        if values == "arc":
            sections["ARC"] = {
                "enabled": "yes",
                "dkim": "no",
                "dmarc": "no",
                "authserv_id": DOMAIN,
                "privkey": str(key_pair),
                "selector": ARC_SELECTOR,
                "domain": DOMAIN,
            }
        else:
            sections.setdefault(section, {}).update(values)
    return sections


@pytest.fixture(scope="module")
def mailman_python(host_environment) -> Path:
    return host_environment("mailman-3.3.10", REQUIREMENTS)


def each(action: Callable[[MailmanSite], object], sites: Sequence[MailmanSite]) -> list:
    """*action* on every site at once (each is a few `mailman` processes of its own)."""
    with ThreadPoolExecutor(len(sites)) as pool:
        return list(pool.map(action, sites))


@contextlib.contextmanager
def running(*sites: MailmanSite) -> Iterator[None]:
    try:
        each(MailmanSite.start, sites)
        yield
    finally:
        each(MailmanSite.stop, sites)


def post_all(sites: list[MailmanSite], folder: Path, run: str, posts: Sequence[tuple[str, str]]) -> list[str]:
    """Inject each (list address, kind of post) into every site with ``mailman inject``; return the Message-IDs."""
    ids, injections = [], []
    for address, kind in posts:
        message_id = f"{run}-{kind}-{address.split('@')[0]}"
        path = folder / f"{message_id}.eml"
        path.write_text(POSTS[kind].format(list=address, id=message_id), encoding="utf-8")
        ids.append(f"<{message_id}@example.com>")
        injections += [site.inject(path, address) for site in sites]
    for injection in injections:
        output = injection.communicate(timeout=120)[0]
        assert injection.returncode == 0, output
    return ids


def wait_until(done: Callable[[], bool], sites: Sequence[MailmanSite], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.2)
    details = {str(site.root): (site.log("smtp")[-1500:], site.log("mailman")[-1500:]) for site in sites}
    raise AssertionError(f"{what} did not happen in {timeout} s: {details}")


def wait_for_delivery(sites: list[MailmanSite], message_ids: list[str]) -> None:
    """Until every site has logged each post's delivery and has nothing left on its way."""

    def delivered() -> bool:
        logged = all(f"{mid} smtp to " in site.log("smtp") for site in sites for mid in message_ids)
        return logged and not any(site.busy() for site in sites)

    wait_until(delivered, sites, "the delivery of every post")


_ARC_VALUES = re.compile(rb"(\b[tb]=)[^;]*")


def copies(server: CountingSMTPServer) -> Counter:
    """Each copy the server took, once per recipient: (recipient, envelope sender, bytes).

    The time (``t=``) and signature (``b=``) values of ARC headers are
    blanked: they differ between any two signings.  The chains themselves
    are verified by the test.
    """
    found: Counter = Counter()
    for received in server.received:
        content = received.content
        head, _, body = content.partition(b"\r\n\r\n")
        head = re.sub(rb"(?m)^(ARC-[A-Za-z-]+:)((?:.*\r\n?)(?:[ \t].*\r\n?)*)", _blank_arc, head + b"\r\n")
        for recipient in received.rcpt_tos:
            found[(recipient, received.mail_from, head + b"\r\n" + body)] += 1
    return found


def _blank_arc(match: re.Match) -> bytes:
    return match[1] + _ARC_VALUES.sub(rb"\1...", match[2])


def text_of(content: bytes) -> str:
    """The text of every text part of a message, decoded (Mailman re-encodes a decorated UTF-8 body)."""
    message = email.message_from_bytes(content, policy=email.policy.default)
    return "\n".join(part.get_content() for part in message.walk() if part.get_content_maintype() == "text")


def comparable_log(lines: list[str]) -> list[str]:
    """smtp.log lines as both deliveries write them (see docs/mailman.rst for the differences)."""
    kept = [line for line in lines if "recipients refused" not in line and "Using agent" not in line]
    kept = [re.sub(r"completed in [0-9.e-]+ seconds", "completed in T seconds", line) for line in kept]
    kept = [re.sub(r", b'(.*)'$", r", \1", line) for line in kept]
    # A 552 is the temporary failure RFC 5321 says it is: logged as 452 with
    # the server's reply, where Mailman logs the 552 itself.
    kept = [
        re.sub(r"code 452, 4\.3\.1 taken as temporary \(RFC 5321 4\.5\.3\.1\.10\): 552 ", "code 552, ", line)
        for line in kept
    ]
    return sorted(kept)


def without_message_ids(queues: dict[str, list[dict]]) -> dict[str, list[tuple]]:
    """The queues' entries as (list, recipients).

    Not by Message-ID: when one post has both permanent and temporary
    failures, Mailman 3.3.10's outgoing runner queues for retry the last
    bounce notice it made (a new Message-ID) instead of the post, whichever
    delivery function is used (runners/outgoing.py reuses the name ``msg``).
    """
    return {name: sorted((e["listid"], tuple(e["recipients"])) for e in entries) for name, entries in queues.items()}


def refusing_server() -> CountingSMTPServer:
    server = CountingSMTPServer(credentials=None)
    for address, reply in REFUSALS.items():
        server.refuse_recipient(address, reply)
    return server


@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_site_delivers_through_mailman_mta_as_through_mailmans_own_delivery(run, mailman_python, key_pair, tmp_path):
    settings = RUNS[run]
    key_path, key_record = key_pair
    with refusing_server() as theirs_server, refusing_server() as ours_server:
        theirs = MailmanSite(mailman_python, tmp_path / "theirs", {})
        theirs.sections = site_sections(theirs.root, MAILMANS, theirs_server.port, settings, key_path)
        ours = MailmanSite(mailman_python, tmp_path / "ours", {})
        ours.sections = site_sections(ours.root, OURS, ours_server.port, settings, key_path)
        site_file = tmp_path / "mailman-mta.cfg"
        site_file.write_text(
            f"[mta]\nmax_connections: 2\n[plugin.deliverylog]\nenabled: yes\n"
            f"[deliverylog]\npath: {ours.root / 'deliveries.jsonl'}\n"
        )
        ours.sections["plugin.mailman_mta"] = {
            "class": "mailman_mta.integrations.mailman.MailmanPlugin",
            "enabled": "yes",
            "configuration": str(site_file),
        }
        each(lambda site: site.set_up(LISTS), [theirs, ours])
        with running(theirs, ours):
            posts = [(spec["address"], kind) for spec, kind in zip(LISTS, KINDS[run], strict=True)]
            message_ids = post_all([theirs, ours], tmp_path, run, posts)
            wait_for_delivery([theirs, ours], message_ids)
        their_copies, our_copies = copies(theirs_server), copies(ours_server)

    # Who got what: the same copies, byte for byte, from the same senders.
    assert our_copies == their_copies
    devmode = "devmode" in settings
    recipients = Counter(recipient for recipient, _, _ in our_copies.elements())
    if devmode:
        assert set(recipients) == {"developer@devmode.example"}
        assert recipients["developer@devmode.example"] == len(message_ids) * len(MEMBERS)
    else:
        delivered = {address for address in (m.rpartition("<")[2].rstrip(">") for m in MEMBERS)} - set(REFUSALS)
        assert recipients == Counter(dict.fromkeys(delivered, len(message_ids)))
    for _, sender, content in our_copies:
        assert "To unsubscribe send an email to " in text_of(content)  # the list footer, on every path
        if "verp" in run:
            assert re.match(r"^(bulk|personal)-bounces\+[^=]+=[^@]+@lists\.example\.com$", sender), sender
        else:
            assert sender in (f"bulk-bounces@{DOMAIN}", f"personal-bounces@{DOMAIN}")
    if settings.get("ARC"):
        signed = [r for r in ours_server.received] + [r for r in theirs_server.received]
        for received in signed:
            assert received.content.startswith(b"ARC-Seal:") or b"\r\nARC-Seal:" in received.content
            chain, _, reason = dkim.arc_verify(received.content, dnsfunc=lambda name, timeout=5: key_record)
            assert chain == dkim.CV_Pass, reason

    # Mailman's own bookkeeping: bounces for the 5xx, retries for the 4xx.
    their_state, our_state = each(MailmanSite.inspect, [theirs, ours])
    assert our_state["bounce_events"] == their_state["bounce_events"]
    assert without_message_ids(our_state["queues"]) == without_message_ids(their_state["queues"])
    if not devmode:
        assert {event["email"] for event in our_state["bounce_events"]} == {"gone@a.example.com"}
        assert len(our_state["bounce_events"]) == len(message_ids)
        assert {tuple(entry["recipients"]) for entry in our_state["queues"]["retry"]} == {
            ("full@c.example.net", "later@b.example.org")
        }
        assert len(our_state["queues"]["retry"]) == len(message_ids)
    assert our_state["queues"]["shunt"] == [] and our_state["queues"]["out"] == []

    # Mailman's smtp.log lines, and no error in Mailman's error log (mailman.log).
    assert comparable_log(ours.smtp_lines()) == comparable_log(theirs.smtp_lines())
    assert "Traceback" not in ours.log("mailman"), ours.log("mailman")[-3000:]
    # The site file was read: its plugin wrote a line per transaction.
    logged = (ours.root / "deliveries.jsonl").read_text().splitlines()
    assert len(logged) >= len(message_ids)


@pytest.mark.postfix
def test_a_site_delivers_through_a_real_postfix_with_starttls_and_auth(
    mailman_python, postfix, postfix_capture, tmp_path
):
    members = ["Anne <anne@example.com>", "bart@example.org", "refused@example.com", "Cate <cate@example.net>"]
    site = MailmanSite(mailman_python, tmp_path / "site", {})
    site.sections = site_sections(site.root, OURS, postfix.port, {}, Path("/nonexistent"))
    site.sections["mta"].update(
        smtp_secure_mode="starttls", smtp_user="testuser", smtp_pass="testpass", smtp_verify_cert="yes"
    )
    site_file = tmp_path / "mailman-mta.cfg"
    site_file.write_text(f"[mta]\nca_file: {postfix.ca_file}\n")
    site.sections["plugin.mailman_mta"] = {
        "class": "mailman_mta.integrations.mailman.MailmanPlugin",
        "enabled": "yes",
        "configuration": str(site_file),
    }
    site.set_up([{"address": f"bulk@{DOMAIN}", "personalize": "none", "members": members}])
    postfix_capture.clear()
    with running(site):
        (message_id,) = post_all([site], tmp_path, "postfix", [(f"bulk@{DOMAIN}", "plain")])
        wait_for_delivery([site], [message_id])

        def relayed() -> Counter:
            return postfix_capture.copies

        wait_until(lambda: sum(relayed().values()) >= 3, [site], "Postfix's relaying of the post")
        arrived = postfix_capture.received
    got = relayed()
    assert got == Counter({"anne@example.com": 1, "bart@example.org": 1, "cate@example.net": 1})
    assert "To unsubscribe send an email to bulk-leave@lists.example.com" in text_of(arrived[0].content)
    state = site.inspect()
    assert [event["email"] for event in state["bounce_events"]] == ["refused@example.com"]
    assert state["queues"]["retry"] == [] and state["queues"]["shunt"] == []
    log = postfix.wait_for_log("sasl_username=testuser")
    assert "STARTTLS" in log or "TLS connection established" in log
    assert f"{message_id} delivery to refused@example.com failed with code 550" in site.log("smtp")


def test_a_setting_of_ours_in_mailman_cfg_is_refused_by_name_and_the_post_kept(mailman_python, tmp_path):
    """``max_connections: 8`` in mailman.cfg's [mta] would be read by nobody: the site says so and sends nothing."""
    with refusing_server() as server:
        site = MailmanSite(mailman_python, tmp_path / "site", {})
        site.sections = site_sections(site.root, OURS, server.port, {}, Path("/nonexistent"))
        site.sections["mta"]["max_connections"] = "8"
        site.sections["plugin.mailman_mta"] = {
            "class": "mailman_mta.integrations.mailman.MailmanPlugin",
            "enabled": "yes",
        }
        site.set_up([{"address": f"bulk@{DOMAIN}", "personalize": "none", "members": MEMBERS}])
        refusal = "mailman.cfg sets [mta] max_connections, a mailman-mta setting, where Mailman ignores it"
        with running(site):
            # Said when Mailman starts (the plugin's check), before any post.
            wait_until(lambda: refusal in site.log("mailman"), [site], "the refusal in the error log")
            post_all([site], tmp_path, "misplaced", [(f"bulk@{DOMAIN}", "plain")])
            shunt = site.var / "queue" / "shunt"
            wait_until(lambda: any(shunt.glob("*.pck")) and not site.busy(), [site], "the post's shunting")
        assert server.received == []
    (kept,) = site.inspect()["queues"]["shunt"]
    assert kept["message_id"] == "<misplaced-plain-bulk@example.com>"
    assert len(kept["recipients"]) == len(MEMBERS)
    # Mailman's error log (mailman.log, unless [logging.error] names a file)
    # has the reason for the post it shunted.
    assert "posts will be shunted until this is mended" in site.log("mailman")
    assert re.search(r"ConfigurationError: mailman\.cfg sets \[mta\] max_connections", site.log("mailman"))
