"""How fast mailman-mta hands mail over, against smtplib and the protocol's limit.

    .venv/bin/pip install -e '.[bench]'     # aiosmtplib and matplotlib
    .venv/bin/python benchmarks/run.py      # about five minutes; --quick for seconds

Every client sends the same list post to the same server, in rounds, the
clients taking turns within each round, so a slow patch of the machine hurts
them alike.  The baseline is raw ``smtplib`` on one reused connection,
measured in the same run; every ratio is the median, over the rounds, of a
client's figure over the baseline's in the same round.
Client CPU is this process's CPU time: the servers run in processes of their
own (an aiosmtpd sink, the same behind a proxy that adds 3 ms of round trip,
and a real Postfix that discards, or relays to the sink, when Postfix can be
started here).

Results: a markdown table on standard output, ``benchmarks/results.json``,
and ``benchmarks/results.png`` (a bar chart of the ratios) when matplotlib
is installed.  Everything started is stopped; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import smtplib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import Peer  # noqa: E402

from mailman_mta.connection import Connection  # noqa: E402
from mailman_mta.delivery import Delivery  # noqa: E402

HERE = Path(__file__).resolve().parent
SENDER = "list-bounces@lists.example.org"
DOMAINS = ["example.com", "example.org", "example.net", "lists.example.edu"]
POST = (
    b"From: Anne Person <anne@example.com>\r\nTo: list@lists.example.org\r\n"
    b"Subject: [list] A post of ordinary length\r\nMessage-ID: <bench@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + b"A line of an ordinary list post, about seventy characters long, no more.\r\n"
    * 30
)


def members(count: int) -> list[str]:
    return [f"member{i}@{DOMAINS[i % len(DOMAINS)]}" for i in range(count)]


# -- clients ----------------------------------------------------------------


class Client:
    """Sends *count* messages over whatever connection it keeps."""

    name = ""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def run(self, count: int, recipients: list[str]) -> None:
        for _ in range(count):
            self.send(recipients)

    def send(self, recipients: list[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SmtplibReused(Client):
    name = "smtplib, reused connection (baseline)"

    def __init__(self, host, port):
        super().__init__(host, port)
        self.smtp = smtplib.SMTP(host, port)

    def send(self, recipients):
        self.smtp.sendmail(SENDER, recipients, POST)

    def close(self):
        self.smtp.quit()


class SmtplibFresh(Client):
    name = "smtplib, new connection per message"

    def send(self, recipients):
        with smtplib.SMTP(self.host, self.port) as smtp:
            smtp.sendmail(SENDER, recipients, POST)


class SmtplibThreads(Client):
    """What a program can do today without mailman-mta: four threads of smtplib."""

    name = "smtplib x 4 threads"
    threads = 4

    def __init__(self, host, port):
        super().__init__(host, port)
        self.clients = [smtplib.SMTP(host, port) for _ in range(self.threads)]

    def run(self, count, recipients):
        shares = [count // self.threads + (i < count % self.threads) for i in range(self.threads)]

        def work(smtp, share):
            for _ in range(share):
                smtp.sendmail(SENDER, recipients, POST)

        threads = [threading.Thread(target=work, args=pair) for pair in zip(self.clients, shares)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def close(self):
        for smtp in self.clients:
            smtp.quit()


class AioSmtplib(Client):
    name = "aiosmtplib, reused connection"

    def __init__(self, host, port):
        super().__init__(host, port)
        import aiosmtplib

        self.loop = asyncio.new_event_loop()
        self.smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, use_tls=False)
        self.loop.run_until_complete(self.smtp.connect())

    def run(self, count, recipients):
        async def batch():
            for _ in range(count):
                await self.smtp.sendmail(SENDER, recipients, POST)

        self.loop.run_until_complete(batch())

    def close(self):
        self.loop.run_until_complete(self.smtp.quit())
        self.loop.close()


class RawPipelining(Client):
    """RFC 2920 at its plainest: the protocol's limit, with no checks at all."""

    name = "raw RFC 2920 client (protocol limit)"

    def __init__(self, host, port):
        super().__init__(host, port)
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self._replies(1)
        self.sock.sendall(b"EHLO bench.example\r\n")
        self._replies(1)

    def _replies(self, count):
        for _ in range(count):
            while self.file.readline()[3:4] == b"-":
                pass

    def send(self, recipients):
        commands = [f"MAIL FROM:<{SENDER}>\r\n".encode()]
        commands += [f"RCPT TO:<{r}>\r\n".encode() for r in recipients]
        self.sock.sendall(b"".join(commands) + b"DATA\r\n")
        self._replies(len(recipients) + 2)
        self.sock.sendall(POST + b".\r\n")
        self._replies(1)

    def close(self):
        self.sock.sendall(b"QUIT\r\n")
        self.file.close()
        self.sock.close()


class OurConnection(Client):
    pipelining = False
    name = "mailman-mta Connection, no pipelining"

    def __init__(self, host, port):
        super().__init__(host, port)
        self.connection = Connection(host, port, 0, pipelining=self.pipelining)

    def send(self, recipients):
        self.connection.sendmail(SENDER, recipients, POST)

    def close(self):
        self.connection.quit()


class OurConnectionPipelined(OurConnection):
    pipelining = True
    name = "mailman-mta Connection, pipelining"


class OurDelivery(Client):
    name = "mailman-mta Delivery (bulk), pipelining"
    settings = dict(max_connections=1)

    def __init__(self, host, port):
        super().__init__(host, port)
        self.delivery = Delivery(Connection(host, port, 0, **self.settings))

    def run(self, count, recipients):
        for result in self.delivery.deliver_many((SENDER, recipients, POST) for _ in range(count)):
            assert result.ok, result.refused

    def close(self):
        self.delivery.close()


class OurPool(OurDelivery):
    name = "mailman-mta pool of 4, no pipelining"
    settings = dict(max_connections=4, pipelining=False)


class OurPoolPipelined(OurDelivery):
    name = "mailman-mta pool of 4, pipelining"
    settings = dict(max_connections=4)


CLIENTS: list[type[Client]] = [
    SmtplibReused,
    SmtplibFresh,
    SmtplibThreads,
    AioSmtplib,
    RawPipelining,
    OurConnection,
    OurConnectionPipelined,
    OurDelivery,
    OurPool,
    OurPoolPipelined,
]
OURS = [OurConnection, OurConnectionPipelined, OurDelivery, OurPool, OurPoolPipelined]


# -- measuring ----------------------------------------------------------------


@dataclass
class Row:
    """One client against one peer: a (msg/s, CPU seconds per message) pair per round."""

    peer: str
    recipients: int
    client: str
    messages: int = 0
    rounds: list[tuple[float, float]] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return statistics.median(rate for rate, _ in self.rounds)

    @property
    def cpu_per_message(self) -> float:
        return statistics.median(cpu for _, cpu in self.rounds)

    def ratios(self, base: Row) -> tuple[float, float]:
        """Median, over rounds, of this row's msg/s and CPU/msg over *base*'s in the same round."""
        pairs = list(zip(self.rounds, base.rounds))
        return (
            statistics.median(mine[0] / theirs[0] for mine, theirs in pairs),
            statistics.median(mine[1] / theirs[1] for mine, theirs in pairs),
        )


def measure(client_type: type[Client], host: str, port: int, recipients: list[str], count: int) -> tuple[float, float]:
    client = client_type(host, port)
    try:
        client.run(2, recipients)  # connect, and warm every cache
        wall, cpu = time.perf_counter(), time.process_time()
        client.run(count, recipients)
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        client.close()


def available(client_type: type[Client]) -> bool:
    if client_type is AioSmtplib:
        try:
            import aiosmtplib  # noqa: F401
        except ImportError:
            return False
    return True


@contextmanager
def postfix_peer(relay_port: int | None = None):
    """A Postfix testbed that discards, or relays to *relay_port*; (port, why not)."""
    from mailman_mta.testing import postfix

    reason = postfix.unavailable()
    if reason is not None:
        yield None, f"Postfix not measured: {reason}"
        return
    if relay_port is None:
        testbed = postfix.PostfixTestbed(discard=True)
    else:
        testbed = postfix.PostfixTestbed(relay_port=relay_port)
    with testbed:
        yield testbed.port, None


@dataclass
class SideBySide:
    """Two clients' msg/s against one peer, measured in alternating blocks (see `side_by_side`)."""

    ratio: float  # ours over theirs, of the totals
    low: float  # the per-unit ratios' first quartile
    high: float  # and third
    theirs: float  # msg/s
    ours: float
    messages: int  # per client


@dataclass
class Measured:
    """Everything one run measured."""

    rows: list[Row]
    notes: list[str]
    verp: tuple[float, float, int] | None = None
    verp_cpu: tuple[float, float, float] | None = None
    lockstep: SideBySide | None = None
    verp_nagle: tuple[float, float, float] | None = None


def run(quick: bool, peers: list[str], rounds: int) -> Measured:
    notes = []
    clients = [c for c in CLIENTS if available(c)]
    if AioSmtplib not in clients:
        notes.append("aiosmtplib not measured: pip install -e '.[bench]'")
    # (peer, recipients) -> messages per client per round
    counts = {
        ("sink", 1): 300,
        ("sink", 50): 80,
        ("lock-step", 1): 100,
        ("lock-step", 50): 20,
        ("3 ms", 1): 40,
        ("3 ms", 50): 8,
        ("postfix", 1): 300,
        ("postfix", 50): 120,
        ("postfix relaying", 1): 300,
        ("postfix relaying", 50): 120,
    }
    rows: list[Row] = []
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        sink = stack.enter_context(Peer("sink"))
        if "sink" in peers:
            ports["sink"] = sink
        if "lock-step" in peers:
            ports["lock-step"] = stack.enter_context(Peer("lockstep"))
        nagle = stack.enter_context(Peer("nagle")) if "nagle" in peers else None
        if "3 ms" in peers:
            ports["3 ms"] = stack.enter_context(Peer("proxy", str(sink), "--delay", "0.0015"))
        for peer, relay_port in (("postfix", None), ("postfix relaying", sink)):
            if peer in peers:
                port, why_not = stack.enter_context(postfix_peer(relay_port))
                if port is None:
                    notes.append(why_not)
                else:
                    ports[peer] = port
        for peer, port in ports.items():
            for count in (1, 50):
                messages = counts[(peer, count)] // (10 if quick else 1) or 1
                recipients = members(count)
                results = {c: Row(peer, count, c.name) for c in clients}
                for number in range(rounds * PEER_ROUNDS.get(peer, 1)):
                    # A new order each round: a client is not always measured
                    # just after the same other one (whose closing the peer
                    # may still be busy with).
                    turn = random.Random(number).sample(clients, len(clients))
                    for client_type in turn:
                        seconds, cpu = measure(client_type, "127.0.0.1", port, recipients, messages)
                        row = results[client_type]
                        row.messages += messages
                        row.rounds.append((messages / seconds, cpu / messages))
                rows.extend(results.values())
                print(f"measured {peer}, {count} recipient(s)", file=sys.stderr, flush=True)
        verp = None
        if "3 ms" in ports:
            verp = verp_seconds(ports["3 ms"], rounds, 40 if quick else 200)
            print("measured VERP 3 ms away", file=sys.stderr, flush=True)
        verp_cpu = None
        if "sink" in ports:
            verp_cpu = verp_cpu_ratio(ports["sink"], rounds * 3, 40 if quick else 200)
            print("measured VERP client CPU", file=sys.stderr, flush=True)
        lockstep = None
        if "lock-step" in ports:
            lockstep = side_by_side(ports["lock-step"], SmtplibReused, OurConnectionPipelined, 10 if quick else 200)
            print("measured lock-step side by side", file=sys.stderr, flush=True)
        verp_nagle = None
        if nagle is not None:
            verp_nagle = verp_copies_per_second(nagle, rounds, 40 if quick else 200)
            print("measured VERP against a relay with Nagle on", file=sys.stderr, flush=True)
    return Measured(rows, notes, verp, verp_cpu, lockstep, verp_nagle)


# -- reporting ---------------------------------------------------------------


#: Peers measured in more, shorter rounds: their goal is a small margin, and
#: short rounds taken in turn let a slow patch of the machine hurt every
#: client alike.
PEER_ROUNDS = {"lock-step": 4}


def baseline_of(rows: list[Row], row: Row) -> Row:
    return next(
        r for r in rows if r.peer == row.peer and r.recipients == row.recipients and r.client == SmtplibReused.name
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| peer | rcpts | client | msg/s (median) | rcpt/s | client CPU ms/msg | x msg/s | x CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        rates = [rate for rate, _ in row.rounds]
        spread = f" ±{statistics.pstdev(rates) / statistics.mean(rates):.0%}" if len(rates) > 1 else ""
        faster, cpu = row.ratios(baseline_of(rows, row))
        lines.append(
            f"| {row.peer} | {row.recipients} | {row.client} | {row.per_second:,.0f}{spread} | "
            f"{row.per_second * row.recipients:,.0f} | {row.cpu_per_message * 1000:.3f} | "
            f"{faster:.2f} | {cpu:.2f} |"
        )
    return "\n".join(lines)


@dataclass
class Goal:
    """A figure an issue asked for: a ratio to the baseline, at least or at most *target*."""

    peer: str
    recipients: int
    client: type[Client]
    what: str  # "msg/s" or "CPU"
    target: float

    @property
    def text(self) -> str:
        bound = ">=" if self.what == "msg/s" else "<="
        return (
            f"{self.client.name}, {self.recipients} rcpt, {self.peer}: "
            f"{self.what}{'' if self.what == 'msg/s' else '/msg'} {bound} {self.target}x"
        )

    def measure(self, rows: list[Row]) -> float | None:
        row = next(
            (r for r in rows if (r.peer, r.recipients, r.client) == (self.peer, self.recipients, self.client.name)),
            None,
        )
        if row is None:
            return None
        faster, cpu = row.ratios(baseline_of(rows, row))
        return faster if self.what == "msg/s" else cpu

    def reached(self, value: float) -> bool:
        return value >= self.target if self.what == "msg/s" else value <= self.target


# The figures asked for in the issues: the transaction engine's, then the pool's.
GOALS = [
    Goal("sink", 1, OurConnection, "msg/s", 1.0),
    Goal("postfix", 1, OurConnection, "msg/s", 1.0),
    Goal("sink", 50, OurConnection, "CPU", 0.8),
    Goal("postfix", 50, OurConnection, "CPU", 0.8),
    Goal("3 ms", 50, OurConnectionPipelined, "msg/s", 8.0),
    Goal("postfix", 50, OurConnectionPipelined, "msg/s", 1.3),
    Goal("postfix", 50, OurConnectionPipelined, "CPU", 0.2),
    Goal("postfix", 1, OurPool, "msg/s", 1.5),
    Goal("postfix", 50, OurPool, "msg/s", 1.5),
    Goal("postfix", 50, OurPoolPipelined, "msg/s", 2.0),
]

#: Measured side by side (`side_by_side`), not from the table: the margin
#: asked for is smaller than the table's round-to-round spread.
LOCKSTEP_GOAL = Goal("lock-step", 1, OurConnectionPipelined, "msg/s", 0.95)


def goals_report(
    rows: list[Row],
    verp: tuple[float, float, int] | None,
    verp_cpu: tuple[float, float, float] | None = None,
    lockstep: SideBySide | None = None,
    verp_nagle: tuple[float, float, float] | None = None,
) -> str:
    lines = ["| goal (ratio to the baseline in this run) | measured | reached |", "|---|---:|---|"]
    for goal in GOALS:
        value = goal.measure(rows)
        if value is None:
            lines.append(f"| {goal.text} | not measured | |")
        else:
            lines.append(f"| {goal.text} | {value:.2f}x | {'yes' if goal.reached(value) else 'NO'} |")
    fastest = max(
        (r for r in rows if (r.peer, r.recipients) == ("postfix", 50)), key=lambda r: r.per_second, default=None
    )
    if fastest is not None:
        lines.append(
            f"| fastest row, postfix, 50 rcpt: {OurPoolPipelined.name} | {fastest.client} | "
            f"{'yes' if fastest.client == OurPoolPipelined.name else 'NO'} |"
        )
    versus_aiosmtplib = [(ours_over_aiosmtplib(rows, r), r) for r in rows if r.client in {c.name for c in OURS}]
    versus_aiosmtplib = [(value, row) for value, row in versus_aiosmtplib if value is not None]
    if versus_aiosmtplib:
        value, row = min(versus_aiosmtplib, key=lambda pair: pair[0])
        lines.append(
            f"| every row of ours >= 1.3x aiosmtplib reused (lowest: {row.client}, {row.peer}, "
            f"{row.recipients} rcpt) | {value:.2f}x | {'yes' if value >= 1.3 else 'NO'} |"
        )
    else:
        lines.append("| every row of ours >= 1.3x aiosmtplib reused | not measured | |")
    if verp is not None:
        one, four, count = verp
        lines.append(
            f"| VERP, one post to {count} members, 3 ms away: 4 connections >= 3x one "
            f"({one:.2f} s, {four:.2f} s) | {one / four:.2f}x | {'yes' if one / four >= 3 else 'NO'} |"
        )
    if verp_cpu is not None:
        ratio, theirs, ours = verp_cpu
        lines.append(
            f"| VERP, client CPU per copy <= 0.8x an smtplib loop rewriting the sender, sink "
            f"({ours * 1e6:.0f} µs, {theirs * 1e6:.0f} µs) | {ratio:.2f}x | {'yes' if ratio <= 0.8 else 'NO'} |"
        )
    goal = LOCKSTEP_GOAL
    if lockstep is not None:
        in_table = goal.measure(rows)
        table_said = "" if in_table is None else f"; the table's median of rounds: {in_table:.2f}x"
        lines.append(
            f"| {goal.text}, side by side ({lockstep.messages} messages each, {lockstep.ours:,.0f} and "
            f"{lockstep.theirs:,.0f} msg/s; middle half of the blocks {lockstep.low:.2f}-{lockstep.high:.2f}x"
            f"{table_said}) | {lockstep.ratio:.2f}x | {'yes' if goal.reached(lockstep.ratio) else 'NO'} |"
        )
    if verp_nagle is not None:
        ratio, ours, theirs = verp_nagle
        lines.append(
            f"| VERP on one connection, a relay with Nagle on: copies/s >= 1.0x an smtplib loop rewriting the "
            f"sender ({ours:,.0f} and {theirs:,.0f} copies/s) | {ratio:.2f}x | {'yes' if ratio >= 1.0 else 'NO'} |"
        )
    return "\n".join(lines)


def ours_over_aiosmtplib(rows: list[Row], row: Row) -> float | None:
    other = next(
        (r for r in rows if (r.peer, r.recipients, r.client) == (row.peer, row.recipients, AioSmtplib.name)), None
    )
    return None if other is None else statistics.median(a[0] / b[0] for a, b in zip(row.rounds, other.rounds))


def verp_seconds(port: int, rounds: int, members_count: int = 200) -> tuple[float, float, int]:
    """Median seconds for one VERP post to *members_count* members with 1, then 4, connections."""
    recipients = members(members_count)
    seconds: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(rounds):
        for size in (1, 4):
            delivery = Delivery(Connection("127.0.0.1", port, 0, delivery="verp", max_connections=size))
            try:
                delivery.deliver(SENDER, recipients[:8], POST)  # open the connections
                started = time.perf_counter()
                result = delivery.deliver(SENDER, recipients, POST)
                seconds[size].append(time.perf_counter() - started)
                assert result.ok, result.refused
            finally:
                delivery.close()
    return statistics.median(seconds[1]), statistics.median(seconds[4]), members_count


def verp_turns(port: int, rounds: int, members_count: int, clock: Callable[[], float]) -> tuple[float, float]:
    """*clock* seconds spent sending one VERP post, by an smtplib loop that rewrites the sender and by mailman-mta.

    mailman-mta's `Delivery` on one connection; both keep their connection
    throughout and take turns each round, each going first in every other
    round (a slow patch of the machine that starts mid-round must not
    always land on the same one).  Returns the totals (smtplib's, ours).
    """
    from mailman_mta import verp

    recipients = members(members_count)
    smtp = smtplib.SMTP("127.0.0.1", port)
    delivery = Delivery(Connection("127.0.0.1", port, 0, delivery="verp", max_connections=1))
    spent = {"theirs": 0.0, "ours": 0.0}
    try:
        delivery.deliver(SENDER, recipients[:2], POST)
        for number in range(rounds):
            for side in ("theirs", "ours") if number % 2 == 0 else ("ours", "theirs"):
                started = clock()
                if side == "theirs":
                    for recipient in recipients:
                        smtp.sendmail(verp.encode(SENDER, recipient), [recipient], POST)
                else:
                    result = delivery.deliver(SENDER, recipients, POST)
                    assert result.ok, result.refused
                spent[side] += clock() - started
    finally:
        smtp.quit()
        delivery.close()
    return spent["theirs"], spent["ours"]


def verp_cpu_ratio(port: int, rounds: int, members_count: int = 200) -> tuple[float, float, float]:
    """Client CPU per copy of a VERP post: mailman-mta over an smtplib loop that rewrites the sender.

    Measured by `verp_turns` with the process's CPU time; the ratio is of
    the totals.  Returns (ratio, smtplib's CPU seconds per copy, ours).
    """
    theirs, ours = verp_turns(port, rounds, members_count, time.process_time)
    copies = rounds * members_count
    return ours / theirs, theirs / copies, ours / copies


def verp_copies_per_second(port: int, rounds: int, members_count: int = 200) -> tuple[float, float, float]:
    """Copies per second of a VERP post on one connection: mailman-mta over an smtplib loop rewriting the sender.

    Against the ``nagle`` peer, whose replies to a pipelined group wait on
    the client's acknowledgements (see `peers.run_sink`); measured by
    `verp_turns` with wall-clock time.  Returns (ratio, ours, smtplib's)
    in copies per second.
    """
    theirs, ours = verp_turns(port, rounds, members_count, time.perf_counter)
    copies = rounds * members_count
    return theirs / ours, copies / ours, copies / theirs


def side_by_side(port: int, theirs: type[Client], ours: type[Client], units: int, block: int = 25) -> SideBySide:
    """msg/s of *ours* over *theirs* at one recipient, each on one connection kept throughout.

    They take turns in blocks of *block* messages, *units* times in the
    order theirs, ours, ours, theirs and as often the other way round, so
    that neither always goes first or last, and a slow patch of the
    machine (which lasts longer than a block) hurts both alike.  The ratio
    is of the totals; the quartiles of the ratios of each such unit of
    four blocks show how much it moved.
    """
    recipients = members(1)
    pair = (theirs("127.0.0.1", port), ours("127.0.0.1", port))
    seconds = [0.0, 0.0]
    ratios = []
    try:
        for client in pair:
            client.run(5, recipients)
        for unit in range(units):
            spent = [0.0, 0.0]
            for index in (0, 1, 1, 0) if unit % 2 == 0 else (1, 0, 0, 1):
                started = time.perf_counter()
                pair[index].run(block, recipients)
                spent[index] += time.perf_counter() - started
            seconds[0] += spent[0]
            seconds[1] += spent[1]
            ratios.append(spent[0] / spent[1])
    finally:
        for client in pair:
            client.close()
    messages = units * 2 * block
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return SideBySide(seconds[0] / seconds[1], low, high, messages / seconds[0], messages / seconds[1], messages)


def chart(rows: list[Row], path: Path) -> bool:
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = sorted({(r.peer, r.recipients) for r in rows}, key=lambda g: (g[0], g[1]))
    clients = list(dict.fromkeys(r.client for r in rows))
    figure, axes = plt.subplots(figsize=(12, 5))
    width = 0.8 / len(clients)
    for index, client in enumerate(clients):
        values = []
        for peer, recipients in groups:
            row = next((r for r in rows if (r.peer, r.recipients, r.client) == (peer, recipients, client)), None)
            values.append(row.ratios(baseline_of(rows, row))[0] if row else 0)
        axes.bar([g + index * width for g in range(len(groups))], values, width, label=client)
    axes.set_xticks(
        [g + 0.4 - width / 2 for g in range(len(groups))], [f"{peer}\n{recipients} rcpt" for peer, recipients in groups]
    )
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_ylabel("msg/s, ratio to smtplib reused")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def named(values: tuple[float, ...] | None, *names: str) -> dict[str, float] | None:
    """A measurement's figures under their names, for the JSON; None when it was not measured."""
    return dict(zip(names, values, strict=True)) if values is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages and one round: a smoke test")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every client taking its turn (default 5)")
    parser.add_argument(
        "--peers",
        default="sink,lock-step,3 ms,nagle,postfix,postfix relaying",
        help=(
            "which servers, comma-separated: sink, lock-step, '3 ms', nagle (VERP only), postfix, "
            "'postfix relaying' (default: all)"
        ),
    )
    parser.add_argument("--json", type=Path, default=HERE / "results.json", help="where to write the numbers")
    parser.add_argument("--chart", type=Path, default=HERE / "results.png", help="where to draw the ratios")
    arguments = parser.parse_args(argv)
    peers = [peer.strip() for peer in arguments.peers.split(",") if peer.strip()]
    unknown = set(peers) - {"sink", "lock-step", "3 ms", "nagle", "postfix", "postfix relaying"}
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    measured = run(arguments.quick, peers, 1 if arguments.quick else arguments.rounds)
    print(table(measured.rows))
    print()
    print(goals_report(measured.rows, measured.verp, measured.verp_cpu, measured.lockstep, measured.verp_nagle))
    for note in measured.notes:
        print(f"\n{note}")
    print(
        f"\n{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        f"{time.monotonic() - started:.0f} s"
    )
    arguments.json.write_text(
        json.dumps(
            {
                "rows": [
                    asdict(row) | {"per_second": row.per_second, "cpu_per_message": row.cpu_per_message}
                    for row in measured.rows
                ],
                "verp_seconds": named(measured.verp, "1 connection", "4 connections", "members"),
                "verp_cpu_per_copy": named(measured.verp_cpu, "ratio", "smtplib", "mailman-mta"),
                "lock_step_side_by_side": asdict(measured.lockstep) if measured.lockstep else None,
                "verp_nagle": named(measured.verp_nagle, "ratio", "mailman-mta copies/s", "smtplib copies/s"),
                "notes": measured.notes,
            },
            indent=2,
        )
    )
    if chart(measured.rows, arguments.chart):
        print(f"chart: {arguments.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
