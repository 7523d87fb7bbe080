"""mailman-mta as GNU Mailman's outgoing delivery, tested inside Mailman's own test layers.

Run by nose2 in Mailman's environment (tests/test_mailman.py), beside
Mailman's ``mailman.mta`` tests, against the SMTP server of Mailman's
``SMTPLayer``; it cannot be imported without Mailman.
"""

import copy
import os
import re
import tempfile
import unittest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailman.app.lifecycle import create_list
from mailman.config import config
from mailman.interfaces.bounce import IBounceProcessor
from mailman.interfaces.mailinglist import Personalization
from mailman.interfaces.mta import SomeRecipientsFailed
from mailman.mta.deliver import deliver as mailmans_deliver
from mailman.runners.outgoing import OutgoingRunner
from mailman.testing.helpers import (
    LogFileMark,
    configuration,
    get_queue_messages,
    make_testable_runner,
    subscribe,
)
from mailman.testing.helpers import (
    specialized_message_from_string as message_from_string,
)
from mailman.testing.layers import SMTPLayer
from zope.component import getUtility

from mailman_mta.config import config as mta_config
from mailman_mta.errors import ConfigurationError
from mailman_mta.integrations.mailman import SITE_FILE_VARIABLE, deliver
from mailman_mta.results import PROTOCOL_CODES
from mailman_mta.testing import CountingSMTPServer

OUR_DELIVERY = "mailman_mta.integrations.mailman.deliver"


class _ListCase(unittest.TestCase):
    layer = SMTPLayer

    def setUp(self):
        self._mlist = create_list("test@example.com")
        for name in ("Anne", "Bart", "Cate"):
            subscribe(self._mlist, name)
        self._msg = message_from_string("""\
From: anne@example.com
To: test@example.com
Subject: news
Message-ID: <ant>

Hello members.
""")
        self._recipients = ["aperson@example.com", "bperson@example.com", "cperson@example.com"]
        SMTPLayer.smtpd.clear()

    def received(self):
        return list(SMTPLayer.smtpd.messages)

    def run_once(self, msgdata):
        """Put the post in the out queue and let Mailman's outgoing runner hand it to ``[mta] outgoing``."""
        with configuration("mta", outgoing=OUR_DELIVERY):
            runner = make_testable_runner(OutgoingRunner, "out", lambda runner: True)
            config.switchboards["out"].enqueue(self._msg, msgdata, listid=self._mlist.list_id)
            runner.run()


class TestDeliver(_ListCase):
    def test_bulk_delivery_reaches_every_recipient_in_one_transaction(self):
        self.assertIsNone(deliver(self._mlist, self._msg, {"recipients": self._recipients}))
        messages = self.received()
        self.assertEqual(len(messages), 1)
        self.assertEqual(messages[0]["X-MailFrom"], "test-bounces@example.com")
        self.assertEqual(sorted(messages[0]["X-RcptTo"].split(", ")), self._recipients)

    def test_a_5xx_refusal_is_permanent_and_a_4xx_temporary(self):
        SMTPLayer.smtpd.err_queue.put_nowait(("rcpt", 550))
        SMTPLayer.smtpd.err_queue.put_nowait(("rcpt", 450))
        with self.assertRaises(SomeRecipientsFailed) as raised:
            deliver(self._mlist, self._msg, {"recipients": self._recipients})
        ((address, code, _),) = raised.exception.permanent_failures
        self.assertEqual((address, code), ("aperson@example.com", 550))
        self.assertEqual(raised.exception.temporary_failures, ["bperson@example.com"])
        self.assertEqual(len(self.received()), 1)

    def test_a_refused_sender_is_never_a_member_bounce(self):
        SMTPLayer.smtpd.err_queue.put_nowait(("mail", 553))
        with self.assertRaises(SomeRecipientsFailed) as raised:
            deliver(self._mlist, self._msg, {"recipients": self._recipients})
        self.assertEqual(raised.exception.permanent_failures, [])
        self.assertEqual(sorted(raised.exception.temporary_failures), self._recipients)

    def test_verp_gives_each_copy_its_own_sender(self):
        deliver(self._mlist, self._msg, {"recipients": self._recipients, "verp": True})
        senders = sorted(message["X-MailFrom"] for message in self.received())
        self.assertEqual(
            senders,
            [
                "test-bounces+aperson=example.com@example.com",
                "test-bounces+bperson=example.com@example.com",
                "test-bounces+cperson=example.com@example.com",
            ],
        )

    def test_personalized_copies_are_made_by_mailmans_own_steps(self):
        self._mlist.personalize = Personalization.full
        deliver(self._mlist, self._msg, {"recipients": self._recipients})
        tos = sorted(message["To"] for message in self.received())
        self.assertEqual(
            tos,
            [
                "Anne Person <aperson@example.com>",
                "Bart Person <bperson@example.com>",
                "Cate Person <cperson@example.com>",
            ],
        )

    def test_devmode_follows_mailmans_configuration(self):
        with configuration("devmode", enabled="yes", recipient="developer@example.com"):
            self.assertTrue(mta_config.settings.devmode.enabled)
            self.assertEqual(mta_config.origin("devmode", "recipient"), "Mailman's configuration")
            deliver(self._mlist, self._msg, {"recipients": self._recipients})
        self.assertFalse(mta_config.settings.devmode.enabled)
        (message,) = self.received()
        self.assertEqual(message["X-RcptTo"], ", ".join(["developer@example.com"] * 3))

    def test_a_plugins_verdicts_reach_mailman_on_every_path(self):
        from mailman_mta import hookimpl
        from mailman_mta.manager import registry

        class Screen:
            @hookimpl
            def mta_screen_recipients(self, envelope):
                for recipient in list(envelope.recipients):
                    if recipient.startswith("aperson@"):
                        envelope.refuse(recipient, 550, "5.7.1 suppressed")
                    elif recipient.startswith("bperson@"):
                        envelope.drop(recipient, "held")

        registry.add("screen", Screen())
        mta_config.push("screen", "[plugin.screen]\nenabled: yes\n")
        try:
            for msgdata in ({}, {"verp": True}):
                SMTPLayer.smtpd.clear()
                with self.assertRaises(SomeRecipientsFailed) as raised:
                    deliver(self._mlist, self._msg, dict(msgdata, recipients=self._recipients))
                self.assertEqual(
                    raised.exception.permanent_failures, [("aperson@example.com", 550, "5.7.1 suppressed")]
                )
                self.assertEqual(raised.exception.temporary_failures, [], "a dropped member is not retried")
                rcpt_tos = [message["X-RcptTo"] for message in self.received()]
                self.assertEqual(rcpt_tos, ["cperson@example.com"])
        finally:
            mta_config.pop("screen")
            registry.remove("screen")

    def test_no_recipients_is_nothing_to_do(self):
        self.assertIsNone(deliver(self._mlist, self._msg, {"recipients": []}))
        self.assertEqual(self.received(), [])


class TestOutgoingRunner(_ListCase):
    """The one-line switch, ``[mta] outgoing``, through Mailman's outgoing runner."""

    def test_the_runner_delivers_through_mailman_mta(self):
        self.run_once({"recipients": self._recipients})
        self.assertEqual(len(self.received()), 1)
        get_queue_messages("retry", expected_count=0)

    def test_permanent_failures_bounce_and_temporary_ones_are_retried(self):
        SMTPLayer.smtpd.err_queue.put_nowait(("rcpt", 550))
        SMTPLayer.smtpd.err_queue.put_nowait(("rcpt", 451))
        self.run_once({"recipients": self._recipients})
        events = list(getUtility(IBounceProcessor).events)
        self.assertEqual([event.email for event in events], ["aperson@example.com"])
        (retry,) = get_queue_messages("retry", expected_count=1)
        self.assertEqual(retry.msgdata["recipients"], ["bperson@example.com"])


class TestSameAsMailmansOwnDelivery(_ListCase):
    """The same post through Mailman's own delivery and ours: the same bytes reach each member."""

    def both(self, msgdata, errors=()):
        """(what Mailman's delivery sent, what ours sent, their smtp.log lines, ours), per recipient."""
        outcomes = []
        for delivery in (mailmans_deliver, deliver):
            SMTPLayer.smtpd.clear()
            for error in errors:
                SMTPLayer.smtpd.err_queue.put_nowait(error)
            mark = LogFileMark("mailman.smtp")
            try:
                delivery(self._mlist, copy.deepcopy(self._msg), copy.deepcopy(msgdata))
                failed = None
            except SomeRecipientsFailed as error:
                failed = (sorted(error.temporary_failures), sorted(r for r, _, _ in error.permanent_failures))
            copies = []
            for message in self.received():
                del message["X-Peer"]
                sender = message["X-MailFrom"]
                for recipient in message["X-RcptTo"].split(", "):
                    del message["X-RcptTo"]
                    message["X-RcptTo"] = recipient
                    copies.append((recipient, sender, message.as_bytes()))
            lines = [re.sub(r"^.*?\(\d+\) ", "", line) for line in mark.read().splitlines()]
            outcomes.append((sorted(copies), failed, lines))
        return outcomes

    def assertSame(self, msgdata, errors=()):
        (theirs, their_failures, their_lines), (ours, our_failures, our_lines) = self.both(msgdata, errors)
        self.assertEqual(len(theirs), len(self._recipients) - len(errors))
        self.assertEqual(ours, theirs)
        self.assertEqual(our_failures, their_failures)
        return theirs, their_lines, our_lines

    def test_a_bulk_post_gets_the_list_footer_as_from_mailman(self):
        theirs, _, _ = self.assertSame({"recipients": self._recipients})
        for _, _, content in theirs:
            self.assertIn(b"To unsubscribe send an email to test-leave@example.com", content)

    def test_a_verp_post_is_the_same_copy_for_copy(self):
        theirs, _, _ = self.assertSame({"recipients": self._recipients, "verp": True})
        self.assertEqual(theirs[0][1], "test-bounces+aperson=example.com@example.com")

    def test_a_personalized_post_is_the_same_copy_for_copy(self):
        self._mlist.personalize = Personalization.full
        theirs, _, _ = self.assertSame({"recipients": self._recipients})
        self.assertIn(b"To: Anne Person <aperson@example.com>", theirs[0][2])

    def test_smtp_log_has_mailmans_lines(self):
        _, their_lines, our_lines = self.assertSame(
            {"recipients": self._recipients, "to_list": True}, [("rcpt", 550), ("rcpt", 451)]
        )

        def comparable(lines):
            # The time taken differs; Mailman's own lines show the reply as
            # Python bytes (b'...'), ours as text; and Mailman adds lines
            # about its own agents: one per refused chunk, and (the test
            # layer logs at debug level) the agent it chose.
            kept = [line for line in lines if "recipients refused" not in line and "Using agent" not in line]
            kept = [re.sub(r"completed in [0-9.e-]+ seconds", "completed in T seconds", line) for line in kept]
            return sorted(re.sub(r", b'(.*)'$", r", \1", line) for line in kept)

        self.assertEqual(comparable(our_lines), comparable(their_lines))
        self.assertIn("<ant> delivery to aperson@example.com failed with code 550, ", "\n".join(our_lines))
        self.assertIn("<ant> post to test@example.com from anne@example.com, ", "\n".join(our_lines))
        self.assertIn(", 2 failures", "\n".join(our_lines))


class TestSiteConfiguration(_ListCase):
    """A site sets mailman-mta's own settings in a file of its own; misplaced ones are refused."""

    def site_file(self, text):
        handle, path = tempfile.mkstemp(suffix=".cfg")
        with os.fdopen(handle, "w") as file:
            file.write(text)
        self.addCleanup(os.unlink, path)
        return path

    def test_the_file_named_in_mailman_cfg_is_a_layer(self):
        path = self.site_file("[mta]\nmax_connections: 8\n[plugin.deliverylog]\nenabled: yes\n")
        with configuration("plugin.mailman_mta", configuration=path):
            deliver(self._mlist, self._msg, {"recipients": self._recipients})
            self.assertEqual(mta_config.settings.mta.max_connections, 8)
            self.assertEqual(mta_config.origin("mta", "max_connections"), os.path.basename(path))
            self.assertIn("deliverylog", mta_config.active_plugins)
        deliver(self._mlist, self._msg, {"recipients": self._recipients})
        self.assertEqual(mta_config.settings.mta.max_connections, 4)
        self.assertNotIn("deliverylog", mta_config.active_plugins)

    def test_or_the_file_named_by_the_environment(self):
        path = self.site_file("[mta]\nmax_connections: 2\n")
        os.environ[SITE_FILE_VARIABLE] = path
        try:
            deliver(self._mlist, self._msg, {"recipients": self._recipients})
            self.assertEqual(mta_config.settings.mta.max_connections, 2)
            other = self.site_file("[mta]\nmax_connections: 3\n")
            with configuration("plugin.mailman_mta", configuration=other):
                with self.assertRaisesRegex(ConfigurationError, "two mailman-mta site files are named"):
                    deliver(self._mlist, self._msg, {"recipients": self._recipients})
        finally:
            del os.environ[SITE_FILE_VARIABLE]
        deliver(self._mlist, self._msg, {"recipients": self._recipients})
        self.assertEqual(mta_config.settings.mta.max_connections, 4)

    def test_a_setting_of_ours_in_mailmans_mta_section_is_refused_naming_it(self):
        with configuration("mta", max_connections=8):
            with self.assertRaisesRegex(ConfigurationError, r"mailman.cfg sets \[mta\] max_connections"):
                deliver(self._mlist, self._msg, {"recipients": self._recipients})
        self.assertEqual(self.received(), [])
        deliver(self._mlist, self._msg, {"recipients": self._recipients})
        self.assertEqual(len(self.received()), 1)

    def test_a_plugin_of_ours_switched_in_mailmans_plugin_table_is_refused(self):
        # (Mailman imports a module of the section's name for every
        # [plugin.NAME]: only dkim, which is dkimpy's, can be named here.)
        with configuration("plugin.dkim", enabled="yes"):
            with self.assertRaisesRegex(ConfigurationError, r"\[plugin.dkim\] without a class"):
                deliver(self._mlist, self._msg, {"recipients": self._recipients})

    def test_what_mailman_decides_is_refused_in_the_site_file(self):
        for text, named in [
            ("[mta]\nsmtp_port: 2525\n", r"\[mta\] smtp_port, which follows Mailman's \[mta\] smtp_port"),
            ("[mta]\nsecure_mode: starttls\n", r"follows Mailman's \[mta\] smtp_secure_mode"),
            ("[devmode]\nenabled: yes\n", r"\[devmode\] enabled, which follows Mailman's"),
            ("[mta]\ndelivery: individual\n", r"\[mta\] delivery: Mailman chooses"),
            ("[verp]\nformat: $local@$domain\n", r"\[verp\] format: Mailman makes VERP senders"),
            ("[mta]\nmax_conections: 8\n", r"has no key 'max_conections' \(did you mean 'max_connections'\?\)"),
        ]:
            with self.subTest(text=text), configuration("plugin.mailman_mta", configuration=self.site_file(text)):
                with self.assertRaisesRegex(ConfigurationError, named):
                    deliver(self._mlist, self._msg, {"recipients": self._recipients})
        self.assertEqual(self.received(), [])

    def test_the_runner_shunts_a_post_while_the_configuration_is_refused(self):
        mark = LogFileMark("mailman.error")
        with configuration("mta", max_connections=8):
            self.run_once({"recipients": self._recipients})
        (shunted,) = get_queue_messages("shunt", expected_count=1)
        self.assertEqual(shunted.msgdata["recipients"], self._recipients)
        self.assertIn("mailman.cfg sets [mta] max_connections", mark.read())
        self.assertEqual(self.received(), [])


#: A reply a relay may give one RCPT: None accepts; 503 is a protocol error.
_RCPT_REPLIES = st.sampled_from([None, None, 450, 451, 452, 550, 551, 552, 553, 554, 503])


class TestVerdictsAgainstMailmans(_ListCase):
    """Replies drawn for each member: who is retried and who bounces is what Mailman's own delivery says.

    Except where mailman-mta knows better: a reply that says the server did
    not understand the command (500-504, 555) is no verdict on a member,
    so it is retried rather than bounced.
    """

    def verdicts(self, delivery, server, msgdata):
        server.clear()
        try:
            delivery(self._mlist, copy.deepcopy(self._msg), copy.deepcopy(msgdata))
            temporary, permanent = [], {}
        except SomeRecipientsFailed as error:
            temporary = sorted(error.temporary_failures)
            permanent = {recipient: code for recipient, code, _ in error.permanent_failures}
        got = sorted((rcpt, received.mail_from) for received in server.received for rcpt in received.rcpt_tos)
        return temporary, permanent, got

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(replies=st.lists(_RCPT_REPLIES, min_size=3, max_size=3), verp=st.booleans())
    def test_the_same_members_are_retried_and_bounced(self, replies, verp):
        drawn = dict(zip(self._recipients, replies, strict=True))
        with CountingSMTPServer(credentials=None) as server, configuration("mta", smtp_port=server.port):
            for recipient, code in drawn.items():
                if code is not None:
                    server.refuse_recipient(recipient, f"{code} {code // 100}.0.0 drawn for the test")
            msgdata = {"recipients": self._recipients, "verp": verp}
            their_temporary, their_permanent, their_copies = self.verdicts(mailmans_deliver, server, msgdata)
            our_temporary, our_permanent, our_copies = self.verdicts(deliver, server, msgdata)
        self.assertEqual(our_copies, their_copies)
        understood = {r: c for r, c in drawn.items() if c not in PROTOCOL_CODES}
        bounced = {r: c for r, c in understood.items() if c is not None and c >= 500 and c != 552}
        self.assertEqual(our_permanent, bounced)
        self.assertEqual(our_temporary, sorted(r for r, c in drawn.items() if c is not None and r not in bounced))
        self.assertEqual(our_permanent, {r: c for r, c in their_permanent.items() if r in understood})
        self.assertEqual([r for r in our_temporary if r in understood], [r for r in their_temporary if r in understood])
