"""The reply reader: every reply bounded in time and size, and never misread.

Each test writes raw bytes into one end of a socket pair and reads replies
from the other, so what the reader is given is exactly what a relay could
send.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
import tracemalloc
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailman_mta.errors import SMTPProtocolError, SMTPTimeoutError
from mailman_mta.smtp import replies as reply_module
from mailman_mta.smtp.replies import MAX_LINE_OCTETS, MAX_REPLY_OCTETS, Reply, ReplyReader
from mailman_mta.smtp.transport import readable_now


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.settimeout(2.0)
    yield ours, theirs
    ours.close()
    theirs.close()


def reader_for(sock: socket.socket) -> ReplyReader:
    return ReplyReader(sock, "relay.example:25")


def test_single_and_multi_line_replies(pair):
    ours, theirs = pair
    theirs.sendall(b"250 OK\r\n250-first\r\n250-second\r\n250 last\r\n354\r\n")
    reader = reader_for(ours)
    assert reader.read("MAIL") == Reply(250, (b"OK",))
    reply = reader.read("EHLO")
    assert reply.code == 250 and reply.text == b"first\nsecond\nlast"
    assert reader.read("DATA") == Reply(354, (b"",))
    assert reader.buffered == 0


def test_bare_lf_line_endings_are_read(pair):
    ours, theirs = pair
    theirs.sendall(b"250-one\n250 two\n")
    assert reader_for(ours).read("EHLO").text == b"one\ntwo"


def test_replies_that_arrive_together_are_kept_for_the_next_read(pair):
    ours, theirs = pair
    theirs.sendall(b"250 a\r\n250 b\r\n354 go\r\n")
    reader = reader_for(ours)
    assert [reader.read(c).code for c in ("MAIL", "RCPT", "DATA")] == [250, 250, 354]


@pytest.mark.parametrize(
    "garbage, words",
    [
        (b"garbage\r\n", "is not SMTP: 'garbage'"),
        (b"25\r\n", "is not SMTP"),
        (b"-250 minus\r\n", "is not SMTP"),
        (b"abc def\r\n", "is not SMTP"),
        (b"150 one hundred\r\n", "is not SMTP"),
        (b"650 six hundred\r\n", "is not SMTP"),
        (b"250x no separator\r\n", "is not SMTP"),
        (b"\xff\xfe\r\n", "is not SMTP: '\\\\xff\\\\xfe'"),
        (b"250-part one\r\n550 part two\r\n", "disagree on the code (250 then 550)"),
    ],
)
def test_a_reply_that_is_not_smtp_is_a_protocol_error(pair, garbage, words):
    ours, theirs = pair
    theirs.sendall(garbage)
    with pytest.raises(SMTPProtocolError, match="relay.example:25 sent a .*reply to RCPT") as caught:
        reader_for(ours).read("RCPT")
    assert words in str(caught.value)
    assert isinstance(caught.value, smtplib.SMTPServerDisconnected), "handled as a lost connection: temporary"


def test_an_over_long_line_is_refused_without_reading_it_all(pair):
    ours, theirs = pair
    theirs.sendall(b"250 " + b"x" * (MAX_LINE_OCTETS * 4))
    with pytest.raises(SMTPProtocolError, match=f"longer than {MAX_LINE_OCTETS} octets"):
        reader_for(ours).read("MAIL")


def test_a_line_at_the_limit_is_fine(pair):
    ours, theirs = pair
    text = b"y" * (MAX_LINE_OCTETS - 6)
    theirs.sendall(b"250 " + text + b"\r\n")
    assert reader_for(ours).read("MAIL").lines == (text,)


def test_a_huge_multi_line_reply_fails_and_memory_stays_flat(pair):
    """A relay offering a 200 MB EHLO reply costs us at most MAX_REPLY_OCTETS."""
    ours, theirs = pair
    line = b"250-" + b"z" * 996 + b"\r\n"
    stop = threading.Event()

    def flood():
        sent = 0
        try:
            while sent < 200 * 1024 * 1024 and not stop.is_set():
                theirs.sendall(line * 64)
                sent += len(line) * 64
        except OSError:
            pass

    writer = threading.Thread(target=flood, daemon=True)
    tracemalloc.start()
    try:
        writer.start()
        with pytest.raises(SMTPProtocolError, match=f"larger than {MAX_REPLY_OCTETS} octets"):
            reader_for(ours).read("EHLO")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        stop.set()
        ours.shutdown(socket.SHUT_RDWR)
        writer.join(timeout=5)
    assert peak < 4 * MAX_REPLY_OCTETS + 256 * 1024, f"peak {peak} octets"


def test_the_timeout_caps_the_whole_reply_not_each_recv(pair):
    """A relay that trickles a byte every 50 ms must not stretch a 0.3 s timeout."""
    ours, theirs = pair
    ours.settimeout(0.3)
    stop = threading.Event()

    def trickle():
        for byte in b"250-a never ending reply\r\n" * 100:
            if stop.wait(0.05):
                return
            try:
                theirs.send(bytes([byte]))
            except OSError:
                return

    writer = threading.Thread(target=trickle, daemon=True)
    writer.start()
    started = time.monotonic()
    try:
        with pytest.raises(SMTPTimeoutError, match="relay.example:25 did not answer EHLO within 0.3 s"):
            reader_for(ours).read("EHLO")
    finally:
        stop.set()
        writer.join(timeout=5)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0, elapsed
    assert ours.gettimeout() == 0.3, "the socket's own timeout is left as it was"


def test_a_multi_line_reply_that_never_ends_times_out(pair):
    ours, theirs = pair
    ours.settimeout(0.2)
    theirs.sendall(b"250-first\r\n250-second\r\n")
    with pytest.raises(SMTPTimeoutError, match="did not answer EHLO within 0.2 s"):
        reader_for(ours).read("EHLO")


def test_a_hang_up_in_the_middle_of_a_reply(pair):
    ours, theirs = pair
    theirs.sendall(b"250-first\r\n250 sec")
    theirs.close()
    with pytest.raises(
        smtplib.SMTPServerDisconnected,
        match="relay.example:25 closed the connection while waiting for the reply to RCPT",
    ):
        reader_for(ours).read("RCPT")


def test_a_mask_hides_what_the_server_echoes(pair):
    ours, theirs = pair
    theirs.sendall(b"535 5.7.8 bad credentials czNjcjN0 for you\r\n")
    reader = ReplyReader(ours, "relay.example:25", mask=lambda text: text.replace(b"czNjcjN0", b"***"))
    assert reader.read("AUTH").text == b"5.7.8 bad credentials *** for you"


codes = st.integers(min_value=200, max_value=599)
texts = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), min_size=1, max_size=5
)


@given(st.lists(st.tuples(codes, texts), min_size=1, max_size=5), st.integers(min_value=1, max_value=50))
def test_any_well_formed_replies_read_back_exactly_however_they_are_split(replies, piece):
    """Replies come back the same however the bytes are cut into packets."""
    wire = b"".join(
        b"".join(b"%d%s%s\r\n" % (code, b"-" if i < len(lines) - 1 else b" ", line) for i, line in enumerate(lines))
        for code, lines in replies
    )
    ours, theirs = socket.socketpair()
    ours.settimeout(2)
    try:

        def write():
            for start in range(0, len(wire), piece):
                theirs.sendall(wire[start : start + piece])

        writer = threading.Thread(target=write)
        writer.start()
        reader = reader_for(ours)
        got = [reader.read("NOOP") for _ in replies]
        writer.join()
    finally:
        ours.close()
        theirs.close()
    assert got == [Reply(code, tuple(line.strip(b" \t") for line in lines)) for code, lines in replies]


def outcome_of(wire: bytes, piece: int):
    """What reading one reply from *wire*, arriving *piece* octets at a time, gives."""
    ours, theirs = socket.socketpair()
    ours.settimeout(1.0)

    def write():
        for start in range(0, len(wire), piece):
            theirs.sendall(wire[start : start + piece])
            time.sleep(0.002)
        theirs.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write)
    try:
        if piece >= len(wire):
            write()
        else:
            writer.start()
        try:
            return reader_for(ours).read("RCPT")
        except (SMTPProtocolError, smtplib.SMTPServerDisconnected) as error:
            return type(error)
    finally:
        if writer.is_alive() or writer.ident:
            writer.join()
        ours.close()
        theirs.close()


reply_lines = st.builds(
    lambda code, separator, text: code + separator + text,
    st.sampled_from([b"250", b"550", b"421", b"25", b"2x0", b"650", b"", b"-25"]),
    st.sampled_from([b"", b" ", b"-", b"\t", b"  ", b" \t", b"x", b"\r"]),
    st.binary(max_size=12).map(lambda text: text.replace(b"\n", b"")),
)


@given(reply_lines, st.sampled_from([b"\r\n", b"\n", b"\r\r\n"]))
def test_a_line_is_read_the_same_whole_or_in_pieces(line, ending):
    """The quick path (a whole line at hand) and the careful one agree."""
    wire = line + ending
    assert outcome_of(wire, len(wire)) == outcome_of(wire, 3)


def test_what_is_kept_of_a_reply_is_bounded_and_says_what_was_cut():
    from mailman_mta.smtp.replies import KEPT_OCTETS

    short = Reply(550, (b"5.1.1 No such user",))
    assert short.kept() is short
    huge = Reply(550, tuple(b"5.1.1 " + b"x" * 1000 for _ in range(60)))
    kept = huge.kept()
    assert kept.code == 550 and kept.lines[0] == huge.lines[0]
    assert len(kept.text) <= KEPT_OCTETS + 40
    assert kept.text.endswith(f"[{len(huge.text) - KEPT_OCTETS} more octets not kept]".encode())
    one_line = Reply(550, (b"y" * 5000,)).kept()
    assert one_line.text.startswith(b"y" * KEPT_OCTETS + b" [")


def test_a_relay_refusing_every_recipient_at_length_leaves_a_small_result():
    """Raw bytes: 300 RCPTs, each refused with a 60 KB reply; the result keeps about 1 KB of each."""
    from mailman_mta.connection import Connection
    from mailman_mta.delivery import Delivery
    from mailman_mta.smtp.replies import KEPT_OCTETS
    from mailman_mta.testing.scripted import Action, ScriptedSMTPServer

    long_reply = b"".join(b"550-5.1.1 " + b"z" * 990 + b"\r\n" for _ in range(59)) + b"550 5.1.1 gone\r\n"
    members = [f"member{n}@example.com" for n in range(300)]
    with ScriptedSMTPServer() as server:
        server.script(Action(), Action(), Action(), *(Action(reply=long_reply) for _ in members))
        connection = Connection(server.hostname, server.port, 0)
        with Delivery(connection) as delivery:
            result = delivery.deliver("list@example.org", members, "Subject: x\n\nHello\n")
    assert set(result.refused) == set(members)
    assert {failure.code for failure in result.refused.values()} == {550}
    assert all(len(failure.message.encode()) <= KEPT_OCTETS + 40 for failure in result.refused.values())
    assert all("more octets not kept]" in failure.message for failure in result.refused.values())


# -- fewer wake-ups for pipelined replies (SO_RCVLOWAT, plain TCP only) ------


@contextmanager
def connected_over_tcp(timeout: float):
    """(ours, theirs): a connected loopback TCP pair, since the low-water mark is a TCP socket's."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname(), timeout=timeout)
        theirs, _ = listener.accept()
    with ours, theirs:
        yield ours, theirs


@pytest.fixture
def tcp_pair():
    with connected_over_tcp(10.0) as pair:
        yield pair


class CountingPoller:
    """The reader's poller, counting the waits that ended with input."""

    def __init__(self, poller):
        self.poller = poller
        self.wake_ups = 0

    def poll(self, timeout):
        ready = self.poller.poll(timeout)
        self.wake_ups += bool(ready)
        return ready


def written_one_by_one(sock: socket.socket, replies: list[bytes], gap: float) -> threading.Thread:
    def write():
        for reply in replies:
            time.sleep(gap)
            sock.sendall(reply)

    writer = threading.Thread(target=write)
    writer.start()
    return writer


@pytest.mark.parametrize("shortest, most_wake_ups", [(4, 2), (0, 4)], ids=["low water", "each reply"])
def test_replies_written_one_by_one_wake_the_reader_once_per_enough_octets(
    tcp_pair, monkeypatch, shortest, most_wake_ups
):
    """Four 5-octet replies: the first wait needs 13 octets (1 + 4 for each reply after it), so three replies."""
    ours, theirs = tcp_pair
    monkeypatch.setattr(reply_module, "LOW_WATER_PATIENCE", 5.0)
    monkeypatch.setattr(reply_module, "SHORTEST_REPLY_OCTETS", shortest)
    reader = reader_for(ours)
    reader._poller = poller = CountingPoller(reader._poller)
    writer = written_one_by_one(theirs, [b"250\r\n", b"250\r\n", b"250\r\n", b"354\r\n"], gap=0.05)
    got = [reply.code for reply in reader.read_many(["MAIL", "RCPT", "RCPT", "DATA"])]
    writer.join()
    assert got == [250, 250, 250, 354]
    assert poller.wake_ups <= most_wake_ups


def test_a_relay_that_sends_less_than_a_group_needs_is_heard_after_a_moment(tcp_pair):
    """A 421 on its own (a relay that then keeps the connection open, against RFC 5321 3.8) is read at once.

    The wait for the group's octets gives up after `LOW_WATER_PATIENCE`,
    not after the reply's whole timeout (10 s here).
    """
    ours, theirs = tcp_pair
    theirs.sendall(b"421\r\n")
    reader = reader_for(ours)
    started = time.monotonic()
    got = [reply.code for reply in reader.read_many(["MAIL", "RCPT", "RCPT", "DATA"])]
    assert got == [421]
    assert time.monotonic() - started < reply_module.LOW_WATER_PATIENCE + 2.0
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1


def test_short_garbage_in_a_group_is_still_a_protocol_error_not_a_timeout(tcp_pair):
    ours, theirs = tcp_pair
    theirs.sendall(b"250\r\nx\n")
    reader = reader_for(ours)
    replies_read = reader.read_many(["MAIL", "RCPT", "RCPT", "DATA"])
    assert next(replies_read).code == 250
    started = time.monotonic()
    with pytest.raises(SMTPProtocolError, match="not SMTP"):
        next(replies_read)
    assert time.monotonic() - started < reply_module.LOW_WATER_PATIENCE + 2.0


def test_settle_lets_a_poll_see_a_short_unprompted_reply_after_a_group(tcp_pair):
    """A group read in one wake-up leaves the mark raised; `settle` (asked by liveness checks) lowers it."""
    ours, theirs = tcp_pair
    reader = reader_for(ours)
    theirs.sendall(b"250 a\r\n250 b\r\n250 c\r\n354 d\r\n")
    assert len(list(reader.read_many(["MAIL", "RCPT", "RCPT", "DATA"]))) == 4
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 13
    theirs.sendall(b"421\r\n")
    time.sleep(0.05)
    assert not readable_now(ours)
    reader.settle()
    assert readable_now(ours)
    assert reader.read("NOOP").code == 421


one_line_replies = st.lists(
    st.tuples(codes, st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None)
@given(
    one_line_replies,
    st.booleans(),
    st.integers(min_value=1, max_value=20),
    st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.005]), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=12),
)
def test_a_group_read_over_tcp_gets_exactly_what_came_and_never_waits_for_what_does_not(
    drawn, bare_lf, piece, pauses, sent
):
    """Over TCP, where the low-water mark is used: however the replies are cut up and paced,
    `read_many` yields exactly the replies that came, in order; when the relay stops short
    (sends only *sent* of them and falls silent), it yields those and then times out,
    within the reply's timeout and the patience, never later.
    """
    ending = b"\n" if bare_lf else b"\r\n"
    lines = [b"%d %s%s" % (code, text, ending) for code, text in drawn]
    sent = min(sent, len(lines))
    wire = b"".join(lines[:sent])
    expected = [Reply(code, (text.strip(b" \t"),)) for code, text in drawn][:sent]
    expected = expected[: next((i + 1 for i, r in enumerate(expected) if r.code == 421), len(expected))]
    timeout = 0.2
    with connected_over_tcp(timeout) as (ours, theirs):

        def write():
            for number, start in enumerate(range(0, len(wire), piece)):
                time.sleep(pauses[number % len(pauses)])
                theirs.sendall(wire[start : start + piece])

        writer = threading.Thread(target=write)
        writer.start()
        got: list[Reply] = []
        error = None
        started = time.monotonic()
        try:
            for reply in reader_for(ours).read_many(["NOOP"] * len(lines)):
                got.append(reply)
        except SMTPTimeoutError as timed_out:
            error = timed_out
        waited = time.monotonic() - started
        writer.join()
    assert got == expected
    stopped_short = len(expected) < len(lines) and (not expected or expected[-1].code != 421)
    assert (error is not None) == stopped_short
    paced = sum(pauses) * (len(wire) // piece + 1)
    assert waited < paced + timeout + reply_module.LOW_WATER_PATIENCE + 1.0
