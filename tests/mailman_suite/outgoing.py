"""mailman-mta as GNU Mailman's outgoing delivery, tested inside Mailman's own test layers.

Run by nose2 in Mailman's environment (tests/test_mailman.py), beside
Mailman's ``mailman.mta`` tests, against the SMTP server of Mailman's
``SMTPLayer``; it cannot be imported without Mailman.
"""

import unittest

from mailman.app.lifecycle import create_list
from mailman.config import config
from mailman.interfaces.bounce import IBounceProcessor
from mailman.interfaces.mailinglist import Personalization
from mailman.interfaces.mta import SomeRecipientsFailed
from mailman.runners.outgoing import OutgoingRunner
from mailman.testing.helpers import (
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
from mailman_mta.integrations.mailman import deliver

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

    def test_no_recipients_is_nothing_to_do(self):
        self.assertIsNone(deliver(self._mlist, self._msg, {"recipients": []}))
        self.assertEqual(self.received(), [])


class TestOutgoingRunner(_ListCase):
    """The one-line switch, ``[mta] outgoing``, through Mailman's outgoing runner."""

    def run_once(self, msgdata):
        with configuration("mta", outgoing=OUR_DELIVERY):
            runner = make_testable_runner(OutgoingRunner, "out", lambda runner: True)
            config.switchboards["out"].enqueue(self._msg, msgdata, listid=self._mlist.list_id)
            runner.run()

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
