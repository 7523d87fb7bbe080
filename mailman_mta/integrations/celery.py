"""Posts delivered by Celery workers on many hosts, exactly once per recipient.

One process with a pool moves a post fast; a site that sends more than one
host can carry runs several workers (``celery -A
mailman_mta.integrations.celery worker``), on as many machines, with Redis
as the broker and as the store of each post.  What happens to a post:

1. `submit` stores the message once (``post:ID:message``), records every
   recipient as ``queued`` in the post's **ledger** (``post:ID:ledger``,
   a Redis hash: recipient -> state), and queues one `deliver_chunk` task
   per chunk: recipients grouped by domain (by route, when a plugin routes
   them), ``[celery] chunk_size`` at most.  Different workers take
   different chunks; the message is not copied through the broker.
2. A worker's `deliver_chunk` reads the message and the ledger, leaves out
   whoever already has a final state, and sends the rest with a `Delivery`
   of its own (its configuration layers, its pool), transaction by
   transaction.  Just before a transaction it marks its recipients
   ``sending``; as soon as the transaction is over it writes each one's
   outcome.  Only then is the task acknowledged (late acknowledgement).
3. A worker that dies (``kill -9``) leaves its task unacknowledged, and the
   broker hands it to another worker.  Recipients the relay already
   accepted are ``accepted`` in the ledger and are not sent again.  Those
   still ``sending`` were in a transaction when the worker died: the relay
   may or may not have their copy, so they are reported ``uncertain`` and
   not sent again, unless ``[celery] resend_uncertain`` is yes (a possible
   duplicate rather than a possible loss).
4. Recipients refused with a 4xx (or never attempted) are retried, and only
   they, with Celery's retry and an exponential backoff
   (``retry_delay``, doubled each time), up to ``max_retries`` times; then
   they are ``failed``.  A 5xx is ``permanent`` at once.
5. `PostHandle.result` (or `post_result`) reads the ledger: accepted,
   temporary, permanent, uncertain, dropped, by recipient, once every
   recipient has a final state.

The ledger says what the relay answered, not what reached the mailbox: a
relay that accepted a message whose reply was lost is ``uncertain``, and no
ledger can tell more.  Redis must keep what it is told (``appendonly yes``
with ``appendfsync always``, or ``everysec`` and accept a second's loss);
a restarted Redis then loses nothing, and workers wait for it
(``[celery] store_patience``) rather than failing a post.

The broker and store URL is ``$MAILMAN_MTA_REDIS_URL``
(``redis://127.0.0.1:6379/0`` by default); a worker pushes the
configuration file ``$MAILMAN_MTA_CONFIG`` names, if any, as a layer.
See docs/scaling.rst.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery, signals

from mailman_mta import hookimpl
from mailman_mta.config import Configuration
from mailman_mta.config import config as default_config
from mailman_mta.delivery import Delivery, chunk_by_domain
from mailman_mta.envelope import MessageInput, check_address, message_bytes
from mailman_mta.errors import EnvelopeError
from mailman_mta.results import Failure
from mailman_mta.values import as_count, as_flag, as_positive_count, as_positive_seconds

log = logging.getLogger("mailman_mta.celery")

#: Where the broker and the post store are, unless the environment says.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: The queue the tasks go to.
QUEUE = "mailman-mta"

#: How long a post's message and ledger are kept after its submission.
POST_TTL_SECONDS = 7 * 24 * 3600

#: The states a recipient can be in; the final ones never change.
QUEUED, SENDING, RETRYING = "queued", "sending", "retrying"
ACCEPTED, PERMANENT, FAILED, UNCERTAIN, DROPPED = "accepted", "permanent", "failed", "uncertain", "dropped"
FINAL = frozenset({ACCEPTED, PERMANENT, FAILED, UNCERTAIN, DROPPED})


def redis_url() -> str:
    return os.environ.get("MAILMAN_MTA_REDIS_URL", DEFAULT_REDIS_URL)


def _visibility_timeout() -> float:
    return float(os.environ.get("MAILMAN_MTA_VISIBILITY_TIMEOUT", "3600"))


app = Celery("mailman_mta")
app.conf.update(
    broker_url=redis_url(),
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    # Acknowledged once the ledger holds the outcome; a worker lost
    # mid-task leaves it for another.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": _visibility_timeout(),
        # Look for the tasks of lost workers often (kombu's default scans
        # every 100 s), so that a chunk is taken over in seconds.
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
)


# -- settings ------------------------------------------------------------


@dataclass(frozen=True)
class CelerySettings:
    """``[celery]``: how posts are split and retried (see `mta_declare_config` below)."""

    chunk_size: int
    max_retries: int
    retry_delay: float
    resend_uncertain: bool
    store_patience: float
    stale_after: float


def settings_of(config: Configuration) -> CelerySettings:
    section = config.settings.celery
    return CelerySettings(
        section.chunk_size,
        section.max_retries,
        section.retry_delay,
        section.resend_uncertain,
        section.store_patience,
        section.stale_after,
    )


class CeleryConfiguration:
    """The ``[celery]`` section, declared as every plugin declares its own.

    Registered with the plugin registry under the name ``celery`` when this
    module is imported; it has no hooks but `mta_declare_config`, so
    enabling it changes nothing (its settings are read by `submit` and the
    workers whether it is enabled or not).
    """

    @hookimpl
    def mta_declare_config(self, schema: Any) -> None:
        schema.add_section(
            "celery",
            """
            # The most recipients in one task; a post's recipients are grouped
            # by domain (and route), so that different workers take different
            # chunks.
            chunk_size: 100

            # How many times recipients refused with a 4xx (or not attempted)
            # are tried again before they are reported as failed.
            max_retries: 5

            # Seconds before the first retry; each further one waits twice as long.
            retry_delay: 60

            # A recipient whose transaction was under way when its worker died
            # may have the message already.  no: report it uncertain, never
            # send twice; yes: send again, risking a duplicate rather than a loss.
            resend_uncertain: no

            # Seconds a worker waits for Redis to come back (a restart) before
            # it gives up on writing a post's ledger.
            store_patience: 120

            # Seconds after which a recipient still marked "sending" is taken
            # to belong to a worker that stopped.  Longer than any transaction
            # may last ([mta] transaction_timeout), so that a live worker's
            # transaction is never mistaken for a dead one's.
            stale_after: 900
            """,
            chunk_size=as_positive_count,
            max_retries=as_count,
            retry_delay=as_positive_seconds,
            resend_uncertain=as_flag,
            store_patience=as_positive_seconds,
            stale_after=as_positive_seconds,
        )


def _register_settings() -> None:
    from mailman_mta.manager import registry

    if "celery" not in registry.names():
        registry.add("celery", CeleryConfiguration())


_register_settings()


# -- the store -------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class State:
    """One recipient's line in the ledger.

    *at* is when it was written (``time.time()``); for ``retrying``, when
    the retry is due.
    """

    state: str
    code: int | None = None
    message: str = ""
    worker: str = ""
    at: float = 0.0

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def dumps(self) -> str:
        return json.dumps([self.state, self.code, self.message, self.worker, self.at])

    @classmethod
    def loads(cls, text: bytes | str) -> State:
        return cls(*json.loads(text))


#: Marks each recipient whose state is queued or retrying as ARGV[1]
#: (a "sending" state), atomically; returns those it marked.  Two tasks
#: for the same recipients (a redelivery, a resubmission) can so never
#: both send to one of them.
_CLAIM = """
local claimed = {}
for i = 2, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  local state = raw and cjson.decode(raw)[1] or 'queued'
  if state == 'queued' or state == 'retrying' then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
    table.insert(claimed, ARGV[i])
  end
end
return claimed
"""

#: Sets ARGV[2*i+1] to ARGV[2*i+2] where its line still reads ARGV[2*i]:
#: a stale "sending" is settled only if nobody wrote since it was read.
_SETTLE_IF_UNCHANGED = """
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
return 1
"""


class PostStore:
    """A post's message, ledger and envelope sender, in Redis.

    Every operation waits for Redis up to *patience* seconds (a restart),
    trying again every fraction of a second, before it raises.
    """

    def __init__(self, client: redis.Redis, *, patience: float = 120.0, prefix: str = "mailman-mta") -> None:
        #: Typed loosely: redis-py types every reply as bytes or str, by a
        #: flag this store never sets (it always gets bytes).
        self.client: Any = client
        self.patience = patience
        self.prefix = prefix
        #: Where the store is, when it was made from a URL.
        self.url: str | None = None
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE_IF_UNCHANGED)

    @classmethod
    def from_url(cls, url: str | None = None, **kwargs: Any) -> PostStore:
        url = url or redis_url()
        store = cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5), **kwargs)
        store.url = url
        return store

    def _key(self, post_id: str, part: str) -> str:
        return f"{self.prefix}:post:{post_id}:{part}"

    def _patiently(self, operation: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.patience
        delay = 0.1
        while True:
            try:
                return operation()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as error:
                if time.monotonic() >= deadline:
                    raise
                log.warning("the post store is unreachable (%s); trying again", error)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def create(self, post_id: str, sender: str, message: bytes, recipients: Sequence[str]) -> None:
        def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self._key(post_id, "message"), message, ex=POST_TTL_SECONDS)
            pipe.set(self._key(post_id, "sender"), sender.encode("utf-8"), ex=POST_TTL_SECONDS)
            queued = State(QUEUED, at=time.time()).dumps()
            pipe.hset(self._key(post_id, "ledger"), mapping=dict.fromkeys(recipients, queued))
            pipe.expire(self._key(post_id, "ledger"), POST_TTL_SECONDS)
            pipe.execute()

        self._patiently(write)

    def post(self, post_id: str) -> tuple[str, bytes]:
        """(envelope sender, message bytes) of *post_id*; KeyError if it is gone."""
        sender, message = self._patiently(
            lambda: self.client.mget([self._key(post_id, "sender"), self._key(post_id, "message")])
        )
        if sender is None or message is None:
            raise KeyError(f"post {post_id} is not in the store (expired, or never submitted)")
        return sender.decode("utf-8"), message

    def states(self, post_id: str, recipients: Sequence[str] | None = None) -> dict[str, State]:
        key = self._key(post_id, "ledger")
        if recipients is None:
            raw = self._patiently(lambda: self.client.hgetall(key))
            return {r.decode("utf-8"): State.loads(text) for r, text in raw.items()}
        values = self._patiently(lambda: self.client.hmget(key, list(recipients)))
        return {r: State.loads(text) if text is not None else State(QUEUED) for r, text in zip(recipients, values)}

    def record(self, post_id: str, states: dict[str, State]) -> None:
        if states:
            mapping = {r: state.dumps() for r, state in states.items()}
            self._patiently(lambda: self.client.hset(self._key(post_id, "ledger"), mapping=mapping))

    def raw(self, post_id: str, recipients: Sequence[str]) -> dict[str, bytes | None]:
        values = self._patiently(lambda: self.client.hmget(self._key(post_id, "ledger"), list(recipients)))
        return dict(zip(recipients, values))

    def claim(self, post_id: str, recipients: Sequence[str], sending: State) -> list[str]:
        """Mark *recipients* that are queued or retrying as *sending*; return those marked."""
        if not recipients:
            return []
        key = self._key(post_id, "ledger")
        claimed = self._patiently(lambda: self._claim(keys=[key], args=[sending.dumps(), *recipients]))
        return [address.decode("utf-8") for address in claimed]

    def settle_if_unchanged(self, post_id: str, changes: dict[str, tuple[bytes, State]]) -> None:
        """Write each new state only where the line still reads what was read."""
        if changes:
            args = [part for r, (seen, state) in changes.items() for part in (r, seen, state.dumps())]
            key = self._key(post_id, "ledger")
            self._patiently(lambda: self._settle(keys=[key], args=args))


# -- submitting and reading results ------------------------------------------


@dataclass(frozen=True)
class PostResult:
    """What became of each recipient of one post, once every one is final."""

    post_id: str
    states: dict[str, State]

    def _with(self, *names: str) -> dict[str, State]:
        return {r: s for r, s in self.states.items() if s.state in names}

    @property
    def accepted(self) -> tuple[str, ...]:
        return tuple(self._with(ACCEPTED))

    @property
    def temporary(self) -> dict[str, Failure]:
        return {r: Failure(s.code or 451, s.message) for r, s in self._with(FAILED).items()}

    @property
    def permanent(self) -> dict[str, Failure]:
        return {r: Failure(s.code or 550, s.message) for r, s in self._with(PERMANENT).items()}

    @property
    def uncertain(self) -> tuple[str, ...]:
        return tuple(self._with(UNCERTAIN))

    @property
    def dropped(self) -> dict[str, str]:
        return {r: s.message for r, s in self._with(DROPPED).items()}

    @property
    def ok(self) -> bool:
        return len(self.accepted) == len(self.states)


class PostNotFinished(TimeoutError):
    """`PostHandle.result` waited its time and some recipients are not final yet."""

    def __init__(self, post_id: str, pending: dict[str, State]) -> None:
        counts = Counter(state.state for state in pending.values())
        shown = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
        super().__init__(f"post {post_id}: {len(pending)} recipient(s) not final yet ({shown})")
        self.pending = pending


@dataclass
class PostHandle:
    """A submitted post: wait for its result, or look at it now."""

    post_id: str
    chunks: int
    store: PostStore = field(repr=False)

    def states(self) -> dict[str, State]:
        return self.store.states(self.post_id)

    def done(self) -> bool:
        return all(state.final for state in self.states().values())

    def result(self, timeout: float = 600.0, interval: float = 0.2, stalled_after: float | None = None) -> PostResult:
        """Wait until every recipient is final; raises `PostNotFinished` after *timeout*.

        With *stalled_after*, work that made no progress for that long
        (its task lost with a broker that failed over, say) is queued
        again with `resubmit_stalled`; the ledger's claims keep that from
        sending anyone twice.
        """
        deadline = time.monotonic() + timeout
        last, changed = None, time.monotonic()
        while True:
            states = self.states()
            pending = {r: s for r, s in states.items() if not s.final}
            if not pending:
                return PostResult(self.post_id, states)
            now = time.monotonic()
            if now >= deadline:
                raise PostNotFinished(self.post_id, pending)
            if states != last:
                last, changed = states, now
            elif stalled_after is not None and now - changed >= stalled_after:
                resubmit_stalled(self.post_id, older_than=stalled_after, store=self.store)
                changed = now
            time.sleep(interval)


def post_result(post_id: str, store: PostStore | None = None) -> PostResult | None:
    """The result of *post_id* if every recipient is final, else None (for polling)."""
    states = (store or PostStore.from_url()).states(post_id)
    return PostResult(post_id, states) if all(s.final for s in states.values()) else None


def _chunks(recipients: list[str], config: Configuration) -> list[list[str]]:
    """*recipients* in tasks: by route (when a plugin routes), then by domain, ``chunk_size`` at most."""
    size = settings_of(config).chunk_size
    hooks = config.hooks
    if not hooks.routes:
        return chunk_by_domain(recipients, size)
    routes: dict[str, Any] = {}
    by_route: dict[Any, list[str]] = {}
    for recipient in recipients:
        domain = recipient.rpartition("@")[2].lower()
        if domain not in routes:
            routes[domain] = hooks.choose_route(domain)
        by_route.setdefault(routes[domain], []).append(recipient)
    return [chunk for members in by_route.values() for chunk in chunk_by_domain(members, size)]


def resubmit_stalled(
    post_id: str, *, older_than: float, store: PostStore | None = None, config: Configuration | None = None
) -> int:
    """Queue again the recipients of *post_id* whose work stalled; return how many.

    Stalled: queued, or sending, for *older_than* seconds, or retrying
    that long past its due time.  Safe to call at any time: a task claims
    each recipient before sending (see `PostStore.claim`), and one found
    "sending" by a worker that stopped is reported uncertain, not sent.
    """
    store = store if store is not None else PostStore.from_url()
    now = time.time()
    stalled = [
        recipient
        for recipient, state in store.states(post_id).items()
        if not state.final and now - state.at >= older_than
    ]
    for chunk in _chunks(stalled, config if config is not None else default_config):
        deliver_chunk.apply_async(args=(post_id, chunk), queue=QUEUE)
    if stalled:
        log.warning(
            "post %s: %d recipient(s) made no progress for %g s; queued again", post_id, len(stalled), older_than
        )
    return len(stalled)


def submit(
    sender: str,
    recipients: Sequence[str],
    message: MessageInput,
    *,
    config: Configuration | None = None,
    store: PostStore | None = None,
) -> PostHandle:
    """Queue a post for the workers; return once it is stored and queued.

    Raises `EnvelopeError` for a sender or recipient that cannot be sent
    to, or a message that is not text, bytes or an email message, before
    anything is stored; duplicates are sent once.
    """
    config = config if config is not None else default_config
    if isinstance(recipients, str):
        recipients = [recipients]
    check_address(sender, "sender")
    unique = list(dict.fromkeys(check_address(r, "recipient") for r in recipients))
    if not unique:
        raise EnvelopeError("no recipients: at least one is needed")
    data = message_bytes(message)
    store = store if store is not None else PostStore.from_url()
    post_id = uuid.uuid4().hex
    store.create(post_id, sender, data, unique)
    chunks = _chunks(unique, config)
    for chunk in chunks:
        deliver_chunk.apply_async(args=(post_id, chunk), queue=QUEUE)
    return PostHandle(post_id, len(chunks), store)


# -- the worker ------------------------------------------------------------


@signals.worker_process_init.connect
@signals.worker_init.connect
def _load_worker_layer(**_: Any) -> None:
    """Push ``$MAILMAN_MTA_CONFIG`` as the worker's layer, once."""
    path = os.environ.get("MAILMAN_MTA_CONFIG")
    if path and "celery-worker" not in default_config.layers:
        default_config.push("celery-worker", Path(path).read_text(encoding="utf-8"))


def _worker_name() -> str:
    return os.environ.get("MAILMAN_MTA_WORKER_NAME") or f"pid {os.getpid()}"


def _transactions(recipients: list[str], config: Configuration) -> list[list[str]]:
    """*recipients* as the transactions `Delivery` will make of them, one group each."""
    mta = config.settings.mta
    if mta.delivery == "bulk":
        return chunk_by_domain(recipients, mta.max_recipients)
    return [[recipient] for recipient in recipients]


def _outcomes(
    store: PostStore, post_id: str, sender: str, message: bytes, groups: Iterable[list[str]], worker: str
) -> Iterator[tuple[list[str], Any]]:
    """Deliver each group as one post of `Delivery.deliver_many`; yield (group, result).

    Each group's recipients are claimed (marked ``sending``, atomically,
    if nobody else has them) just before `Delivery` takes it, and only the
    claimed ones are sent; so whatever is ``sending`` when a worker dies
    was, at most, in a transaction under way.
    """
    claimed: list[list[str]] = []

    def posts() -> Iterator[tuple[str, list[str], bytes]]:
        for group in groups:
            mine = store.claim(post_id, group, State(SENDING, worker=worker, at=time.time()))
            if mine:
                claimed.append(mine)
                yield sender, mine, message

    for index, result in enumerate(_delivery().deliver_many(posts())):
        yield claimed[index], result


_local = threading.local()


def _worker_store(patience: float) -> PostStore:
    """This worker thread's `PostStore`: its Redis connections are kept from task to task."""
    store = getattr(_local, "store", None)
    url = redis_url()
    if store is None or (store.patience, store.url) != (patience, url):
        store = _local.store = PostStore.from_url(url, patience=patience)
    return store


def _delivery() -> Delivery:
    """This worker thread's `Delivery`: its connections are kept from task to task."""
    delivery = getattr(_local, "delivery", None)
    if delivery is None:
        delivery = _local.delivery = Delivery()
    return delivery


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _close_delivery(**_: Any) -> None:
    delivery = getattr(_local, "delivery", None)
    if delivery is not None:
        _local.delivery = None
        delivery.close()


def _stale(
    store: PostStore, post_id: str, recipients: Sequence[str], settings: CelerySettings, worker: str
) -> dict[str, tuple[bytes, State]]:
    """Recipients a stopped worker left ``sending``: (the line as read, what it becomes).

    Uncertain (the relay may have the message), or queued again with
    ``resend_uncertain``.  A line younger than ``stale_after`` may be a
    live worker's transaction, and is left alone.
    """
    stale = {}
    for recipient, raw in store.raw(post_id, recipients).items():
        if raw is None:
            continue
        state = State.loads(raw)
        if state.state != SENDING or time.time() - state.at < settings.stale_after:
            continue
        who = state.worker or "a worker"
        if settings.resend_uncertain:
            again = State(QUEUED, None, f"{who} stopped mid-transaction; sent again", worker, 0.0)
        else:
            again = State(
                UNCERTAIN,
                444,
                f"4.4.2 {who} stopped while its transaction was under way; "
                "the relay may have the message, so it is not sent again",
                worker,
                time.time(),
            )
        stale[recipient] = (raw, again)
    return stale


def _state_after(recipient: str, result: Any, worker: str, now: float, due: float, last_try: bool) -> State:
    """The ledger line for *recipient* after its transaction (*result*, a `DeliveryResult`)."""
    if recipient in result.dropped:
        return State(DROPPED, None, result.dropped[recipient], worker, now)
    failure = result.refused.get(recipient)
    if failure is None:
        return State(ACCEPTED, 250, "", worker, now)
    if recipient in result.uncertain:
        return State(UNCERTAIN, failure.code, failure.message, worker, now)
    if failure.permanent:
        return State(PERMANENT, failure.code, failure.message, worker, now)
    if last_try:
        return State(FAILED, failure.code, failure.message, worker, now)
    return State(RETRYING, failure.code, failure.message, worker, due)


@app.task(bind=True, name="mailman_mta.deliver_chunk", acks_late=True, reject_on_worker_lost=True)
def deliver_chunk(self: Any, post_id: str, recipients: list[str]) -> dict[str, int]:
    """Deliver *recipients* of post *post_id*, leaving out those already final.

    Returns how many ended in each state, for Celery's logs.
    """
    config = default_config
    settings = settings_of(config)
    store = _worker_store(settings.store_patience)
    worker = _worker_name()
    try:
        sender, message = store.post(post_id)
    except KeyError as error:
        log.error("%s", error)
        return {}
    stale = _stale(store, post_id, recipients, settings, worker)
    store.settle_if_unchanged(post_id, stale)
    todo = [r for r, state in store.states(post_id, recipients).items() if state.state in (QUEUED, RETRYING)]
    counts: dict[str, int] = {UNCERTAIN: sum(1 for _, state in stale.values() if state.state == UNCERTAIN)}
    temporary: list[str] = []
    last_try = self.request.retries >= settings.max_retries
    delay = settings.retry_delay * 2**self.request.retries
    for group, result in _outcomes(store, post_id, sender, message, _transactions(todo, config), worker):
        now = time.time()
        due = now + delay
        outcome = {}
        for recipient in group:
            state = _state_after(recipient, result, worker, now, due, last_try)
            outcome[recipient] = state
            if state.state == RETRYING:
                temporary.append(recipient)
        store.record(post_id, outcome)
        for state in outcome.values():
            counts[state.state] = counts.get(state.state, 0) + 1
    if temporary:
        raise self.retry(args=(post_id, temporary), countdown=delay, max_retries=settings.max_retries)
    return counts
