"""The servers the benchmarks talk to, each in a process of its own.

A server in the client's process would share its interpreter lock and its
CPU time, and the numbers would measure both.  So:

    python benchmarks/peers.py sink                      # aiosmtpd, discarding
    python benchmarks/peers.py lockstep                  # the same, no PIPELINING
    python benchmarks/peers.py nagle                     # the same, Nagle on
    python benchmarks/peers.py proxy PORT --delay 0.0015 # a relay further away

Each prints ``listening on PORT`` once it is ready and runs until killed.
`Peer` starts one and stops it again.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Peer:
    """A peer process: ``with Peer("sink") as port: ...``."""

    def __init__(self, *arguments: str) -> None:
        self.arguments = arguments
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> int:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "peers.py"), *self.arguments],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.__exit__()
            raise RuntimeError(f"peer {' '.join(self.arguments)} did not start: {line!r}")
        return int(line.split()[-1])

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()


# -- the aiosmtpd sink ------------------------------------------------------


def run_sink(pipelining: bool = True, nagle: bool = False) -> None:
    """The aiosmtpd sink; with *nagle*, its sockets keep Nagle's algorithm on.

    aiosmtpd writes each reply on its own, and asyncio turns Nagle off.
    With it on, every reply after the first of a pipelined group waits
    until the client acknowledges the one before, as with asyncore's
    smtpd and other servers that write replies one by one.
    """
    import socket

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    class NagleSMTP(SMTP):
        def connection_made(self, transport):
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

    class SinkController(Controller):
        def factory(self):
            return (NagleSMTP if nagle else SMTP)(self.handler, **self.SMTP_kwargs)

    class Discard:
        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            session.host_name = hostname
            if not pipelining:
                return responses
            return [*responses[:-1], "250-PIPELINING", responses[-1]]

        async def handle_DATA(self, server, session, envelope):
            return "250 2.0.0 Ok: discarded"

    controller = SinkController(Discard(), hostname="127.0.0.1", port=_free_port())
    controller.start()
    print(f"listening on {controller.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


# -- a relay further away ---------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward what *reader* gets to *writer*, each piece *delay* seconds later, in order."""
    queue: asyncio.Queue = asyncio.Queue()

    async def forward() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(forward())
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        writer.close()


async def _proxy(target: int, delay: float) -> None:
    async def connected(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            _pipe(client_reader, server_writer, delay),
            _pipe(server_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sink", help="aiosmtpd accepting and discarding everything, offering PIPELINING")
    commands.add_parser("lockstep", help="the same sink without PIPELINING, as aiosmtpd is by default")
    commands.add_parser("nagle", help="the sink with Nagle's algorithm on, writing each reply on its own")
    proxy = commands.add_parser("proxy", help="forward to 127.0.0.1:PORT, delaying each direction")
    proxy.add_argument("port", type=int)
    proxy.add_argument("--delay", type=float, default=0.0015, help="seconds each way (default 0.0015: 3 ms RTT)")
    arguments = parser.parse_args()
    if arguments.command in ("sink", "lockstep", "nagle"):
        run_sink(pipelining=arguments.command != "lockstep", nagle=arguments.command == "nagle")
    else:
        asyncio.run(_proxy(arguments.port, arguments.delay))


if __name__ == "__main__":
    main()
