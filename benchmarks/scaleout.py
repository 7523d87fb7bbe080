"""Scale-out: 1, 2 and 4 Celery worker processes against one Delivery in one process.

Every client delivers the same posts (a 2.4 KB message to MEMBERS members
each) to the same relay: a real Postfix that discards everything when this
machine can run one, else the aiosmtpd sink.  The table gives recipients
per second, wall clock from the first submission to the last recipient
final, and the client CPU per recipient: this process's for the single
`Delivery`, the workers' own (from /proc) for the workers.  Run on demand:

    .venv/bin/pip install -e '.[test]' && .venv/bin/python benchmarks/scaleout.py

``--quick`` sends a tenth as much (the test suite checks that it runs).
Needs redis-server (Debian package redis-server).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers import Peer  # noqa: E402

from mailman_mta.config import Configuration  # noqa: E402
from mailman_mta.delivery import Delivery  # noqa: E402
from mailman_mta.testing.workers import CeleryWorker, RedisServer, redis_unavailable  # noqa: E402

MESSAGE = ("Subject: scale-out\r\nFrom: list@example.com\r\n\r\n" + "x" * 76 + "\r\n") * 30
MEMBERS = 200
DOMAINS = 8


def members(post: int) -> list[str]:
    return [f"p{post}m{n}@d{n % DOMAINS}.example" for n in range(MEMBERS)]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process *pid* (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def relay(choice: str) -> Iterator[tuple[str, int]]:
    """(name, port) of Postfix discarding (when *choice* allows and it can run here), or of the sink."""
    from mailman_mta.testing import postfix

    if choice != "sink" and postfix.unavailable() is None:
        with postfix.PostfixTestbed(discard=True) as testbed:
            yield "postfix", testbed.port
        return
    with Peer("sink") as port:
        yield "sink", port


def one_process(port: int, posts: int) -> tuple[float, float]:
    config = Configuration()
    config.push("bench", f"[mta]\nsmtp_host: 127.0.0.1\nsmtp_port: {port}\nmax_recipients: 50\n")
    started, cpu = time.perf_counter(), time.process_time()
    with Delivery(config=config) as delivery:
        for post in range(posts):
            assert delivery.deliver("list@example.com", members(post), MESSAGE).ok
    return time.perf_counter() - started, time.process_time() - cpu


def with_workers(port: int, posts: int, count: int, folder: Path, redis_server: RedisServer) -> tuple[float, float]:
    from mailman_mta.integrations import celery as integration

    store = integration.PostStore.from_url(redis_server.url)
    store.client.flushall()
    config_file = folder / "worker.cfg"
    config_file.write_text(f"[mta]\nsmtp_host: 127.0.0.1\nsmtp_port: {port}\nmax_recipients: 50\n")
    workers = [
        CeleryWorker(f"b{n}", redis_server.url, config_file, folder / f"b{count}-{n}.log").start() for n in range(count)
    ]
    try:
        before = sum(cpu_seconds(w.process.pid) for w in workers if w.process)
        config = Configuration()
        config.push("bench", "[celery]\nchunk_size: 50\n")
        started = time.perf_counter()
        handles = [
            integration.submit("list@example.com", members(post), MESSAGE, config=config, store=store)
            for post in range(posts)
        ]
        for handle in handles:
            assert handle.result(timeout=600, interval=0.05).ok
        elapsed = time.perf_counter() - started
        after = sum(cpu_seconds(w.process.pid) for w in workers if w.process)
    finally:
        for worker in workers:
            worker.stop()
    return elapsed, after - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the posts")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (default 1,2,4)")
    parser.add_argument("--relay", choices=["postfix", "sink"], default="postfix", help="the relay (default postfix)")
    arguments = parser.parse_args()
    reason = redis_unavailable()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    posts = 3 if arguments.quick else 30
    recipients = posts * MEMBERS
    rows = []
    with relay(arguments.relay) as (name, port), tempfile.TemporaryDirectory() as folder:
        seconds, cpu = one_process(port, posts)
        rows.append(("one process, Delivery (pool of 4)", seconds, cpu))
        with RedisServer(Path(folder) / "redis") as redis_server:
            from mailman_mta.integrations import celery as integration

            integration.app.conf.broker_url = redis_server.url
            for count in (int(n) for n in arguments.workers.split(",")):
                seconds, cpu = with_workers(port, posts, count, Path(folder), redis_server)
                rows.append((f"{count} Celery worker(s), each a pool of 4", seconds, cpu))
    baseline = rows[0][1]
    print(f"\n{posts} posts x {MEMBERS} members = {recipients} recipients, to {name}\n")
    print("| client | recipients/s | x one process | client CPU µs/recipient |")
    print("|---|---:|---:|---:|")
    for label, seconds, cpu in rows:
        print(f"| {label} | {recipients / seconds:,.0f} | {baseline / seconds:.2f} | {cpu / recipients * 1e6:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
