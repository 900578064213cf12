"""Durable, paced, coalescing delivery of every Slack write.

A write is a row before it is anything else. One worker delivers rows in id order per channel (so a
thread keeps its order and a parent is posted before its replies), paces each channel and method
within Slack's limits, honours `Retry-After`, retries 5xx and timeouts with backoff, and gives up only
on permanent errors. Pending updates of one message collapse into the newest; a post whose logical key
already has a message becomes an update of it. A post is marked `sending` before the call; if the
process dies in between, start-up looks the message up by its metadata marker before posting again,
so a restart never posts the same message twice.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from sqlite_utils import Database

from bot.clock import Clock
from bot.metrics import Metrics
from bot.ports import SqlStore
from bot.redact import Redactor
from bot.store import one, rows

log = logging.getLogger(__name__)

Payload = Mapping[str, Any]
LEARN_IDS_S = 5.0  # at start, for the ids of the configured channels (one conversations.list)
MARKER_EVENT = "opsloop_write"


def _digest(body: str) -> str:
    return hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()


def _requeue(db: Database, row_id: int) -> None:
    db.execute("UPDATE outbox SET state = 'pending' WHERE id = ?", (row_id,))


class Op(enum.StrEnum):
    POST = "post"
    UPDATE = "update"
    EPHEMERAL = "ephemeral"
    HOME = "home"
    RESPOND = "respond"
    UPLOAD = "upload"
    PIN = "pin"
    UNPIN = "unpin"


class State(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class MessageRef:
    """Where the message of a logical key lives."""

    key: str
    channel: str
    ts: str


class DeliveryError(Exception):
    """A transport failure; `retryable` decides between backoff and giving up."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None, method: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.method = method


class ChatTransport(Protocol):
    """What the outbox needs from a chat surface (Slack or the console)."""

    paced: bool

    async def post(self, channel: str, payload: Payload, *, thread_ts: str | None, marker: str) -> tuple[str, str]:
        """Post; return (channel id, ts)."""
        ...

    async def update(self, channel: str, ts: str, payload: Payload) -> None: ...

    async def ephemeral(self, channel: str, user: str, payload: Payload, *, thread_ts: str | None) -> None: ...

    async def publish_home(self, user: str, view: Payload) -> None: ...

    async def respond(self, url: str, payload: Payload) -> None: ...

    async def upload(self, channel: str, payload: Payload, *, thread_ts: str | None) -> None: ...

    async def find_posted(
        self, channel: str, thread_ts: str | None, marker: str, since: float
    ) -> tuple[str, str] | None:
        """(channel id, ts) of a message we posted with this marker, if it exists."""
        ...

    async def pin(self, channel: str, ts: str, *, pinned: bool) -> None:
        """Pin or unpin a message; pinning what is pinned (or the reverse) is no error."""
        ...

    async def channel_id(self, channel: str) -> str:
        """The id of a channel named `#name`; anything else as it is."""
        ...


@dataclass
class Pacing:
    """Rates within Slack's published limits (chat.postMessage ~1/s per channel; Tier 3/4 per minute)."""

    post_per_channel: float = 1.0
    post_burst: int = 4
    update_per_second: float = 50 / 60
    update_burst: int = 20
    other_per_second: float = 100 / 60
    other_burst: int = 20
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    max_in_flight: int = 8

    @classmethod
    def unpaced(cls) -> Pacing:
        """No pacing (the console; tests of logic that isn't about pacing)."""
        return cls(1e6, 10**6, 1e6, 10**6, 1e6, 10**6, 0.01, 0.05, 32)


class _Bucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.paused_until = 0.0

    def delay(self) -> float:
        """0 and a token taken, or the seconds to wait."""
        now = time.monotonic()
        if now < self.paused_until:
            return self.paused_until - now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        self.tokens = 0


class Outbox:
    """See the module docstring."""

    def __init__(
        self,
        store: SqlStore,
        transport: ChatTransport,
        metrics: Metrics,
        clock: Clock,
        redactor: Redactor,
        pacing: Pacing | None = None,
    ) -> None:
        self._store = store
        self.transport = transport
        self._metrics = metrics
        self._clock = clock
        self._redact = redactor
        self.pacing = pacing or (Pacing() if transport.paced else Pacing.unpaced())
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._producers: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_posted: list[Callable[[MessageRef], Awaitable[None]]] = []
        self._ids: dict[str, str] = {}  # channel names (`#ops`) -> the ids Slack answered posts with

    # --- enqueue -------------------------------------------------------------------------------------

    def _body(self, payload: Payload) -> str:
        """A payload as its row stores it: redacted, then JSON. Made once per queued write: a keyed post
        may become an update or the new body of a pending row, and each would otherwise make it again."""
        return json.dumps(self._redacted(payload), separators=(",", ":"))

    def _row(self, op: Op, channel: str, body: str, **extra: Any) -> dict[str, Any]:
        now = self._clock.now()
        return {
            "op": str(op),
            "channel": self._ids.get(channel, channel),
            "payload": body,
            "state": str(State.PENDING),
            "next_at": time.time(),
            "created_at": now,
            **extra,
        }

    def _redacted(self, payload: Payload) -> dict[str, Any]:
        # One scan of the whole payload first: the walk redacts string by string, which for a digest page
        # of forty sections was most of the cost of queueing it.
        return dict(self._redact.document(dict(payload)))

    def post_in(
        self,
        db: Database,
        channel: str,
        payload: Payload,
        *,
        key: str | None = None,
        thread_key: str | None = None,
        thread_ts: str | None = None,
        dedupe: str | None = None,
    ) -> None:
        """Queue a post inside a running write; with `key`, an existing message is updated instead."""
        body = self._body(payload)
        if key is not None:
            if self._update_in(db, key, body):
                return
            pending_post = one(
                db, "SELECT id FROM outbox WHERE ref_key = ? AND op = 'post' AND state = 'pending'", (key,)
            )
            if pending_post:
                db.execute(
                    "UPDATE outbox SET payload = ? WHERE id = ?",
                    (body, pending_post["id"]),
                )
                return
        row = self._row(
            Op.POST, channel, body, ref_key=key, thread_key=thread_key, thread_ts=thread_ts, dedupe_key=dedupe
        )
        self._insert(db, row)

    def update_in(self, db: Database, key: str, payload: Payload) -> bool:
        """Queue an update of the message of `key` inside a running write; False if there is none."""
        return self._update_in(db, key, self._body(payload))

    def _update_in(self, db: Database, key: str, body: str) -> bool:
        # Newest wins: a pending post or a pending update of the same message takes the new body.
        pending = one(
            db,
            "SELECT id FROM outbox WHERE ref_key = ? AND op IN ('post', 'update') AND state = 'pending'"
            " ORDER BY id DESC LIMIT 1",
            (key,),
        )
        if pending:
            db.execute("UPDATE outbox SET payload = ? WHERE id = ?", (body, pending["id"]))
            return True
        ref = one(db, "SELECT channel, sent_hash FROM message_refs WHERE key = ?", (key,))
        if ref is not None and ref["sent_hash"] == _digest(body):
            in_flight = one(db, "SELECT id FROM outbox WHERE ref_key = ? AND state = 'sending'", (key,))
            if in_flight is None:
                return True  # Slack already shows exactly this: an edit would change nothing
        channel = ref["channel"] if ref is not None else self._posting_channel(db, key)
        if channel is None:
            return False
        self._insert(db, self._row(Op.UPDATE, channel, body, ref_key=key))
        return True

    @staticmethod
    def _posting_channel(db: Database, key: str) -> str | None:
        """The channel of the post of `key` still queued or in flight (its row comes before any edit)."""
        post = one(
            db,
            "SELECT channel FROM outbox WHERE ref_key = ? AND op = 'post' AND state IN ('pending', 'sending')",
            (key,),
        )
        return str(post["channel"]) if post else None

    def pin_in(self, db: Database, key: str, *, pinned: bool = True) -> bool:
        """Queue a pin (or unpin) of the message of `key` inside a running write, after its post; False if
        there is no such message."""
        ref = one(db, "SELECT channel FROM message_refs WHERE key = ?", (key,))
        channel = ref["channel"] if ref is not None else self._posting_channel(db, key)
        if channel is None:
            return False
        self._insert(db, self._row(Op.PIN if pinned else Op.UNPIN, channel, "{}", ref_key=key))
        return True

    def ephemeral_in(
        self, db: Database, channel: str, user: str, payload: Payload, thread_ts: str | None = None
    ) -> None:
        """Queue an ephemeral message to one user inside a running write."""
        self._insert(db, self._row(Op.EPHEMERAL, channel, self._body(payload), user=user, thread_ts=thread_ts))

    def home_in(self, db: Database, user: str, view: Payload) -> None:
        """Queue a publish of a user's App Home; pending publishes for the user collapse."""
        body = self._body(view)
        pending = one(db, "SELECT id FROM outbox WHERE op = 'home' AND user = ? AND state = 'pending'", (user,))
        if pending:
            db.execute("UPDATE outbox SET payload = ? WHERE id = ?", (body, pending["id"]))
            return
        self._insert(db, self._row(Op.HOME, f"home:{user}", body, user=user))

    def respond_in(self, db: Database, url: str, payload: Payload) -> None:
        """Queue a post to a response_url inside a running write."""
        self._insert(db, self._row(Op.RESPOND, f"respond:{url[-24:]}", self._body(payload), user=url))

    def upload_in(
        self,
        db: Database,
        channel: str,
        payload: Payload,
        *,
        thread_key: str | None = None,
        thread_ts: str | None = None,
    ) -> None:
        """Queue a file upload (`filename`, `content`, `title`, `comment`) inside a running write."""
        body = self._body(payload)
        self._insert(db, self._row(Op.UPLOAD, channel, body, thread_key=thread_key, thread_ts=thread_ts))

    def _insert(self, db: Database, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join(f":{c}" for c in row)
        db.execute(f"INSERT INTO outbox ({cols}) VALUES ({marks}) ON CONFLICT(dedupe_key) DO NOTHING", row)

    # async conveniences for callers that have nothing else to write

    async def post(self, channel: str, payload: Payload, **kw: Any) -> None:
        """Queue a post (see `post_in`)."""
        await self._store.write(lambda db: self.post_in(db, channel, payload, **kw))
        self.kick()

    async def update(self, key: str, payload: Payload) -> bool:
        """Queue an update (see `update_in`)."""
        done = await self._store.write(lambda db: self.update_in(db, key, payload))
        self.kick()
        return done

    async def ephemeral(self, channel: str, user: str, payload: Payload, thread_ts: str | None = None) -> None:
        """Queue an ephemeral message."""
        await self._store.write(lambda db: self.ephemeral_in(db, channel, user, payload, thread_ts))
        self.kick()

    async def publish_home(self, user: str, view: Payload) -> None:
        """Queue an App Home publish."""
        await self._store.write(lambda db: self.home_in(db, user, view))
        self.kick()

    async def ref(self, key: str) -> MessageRef | None:
        """Where the message of `key` was posted, if it was."""
        r = await self._store.read(lambda db: one(db, "SELECT * FROM message_refs WHERE key = ?", (key,)))
        return MessageRef(r["key"], r["channel"], r["ts"]) if r else None

    def track(self, task: asyncio.Task[None]) -> None:
        """A task that will queue rows soon (a deferred render): `drain` and `stop` wait for it."""
        self._producers.add(task)
        task.add_done_callback(self._producers.discard)

    def kick(self) -> None:
        """Tell the worker there is something new."""
        self._idle.clear()
        self._wake.set()

    # --- worker ---------------------------------------------------------------------------------------

    async def start(self, channels: Iterable[str] = ()) -> None:
        """Learn the ids of the configured `channels`, reconcile rows left `sending` by a crash, then start
        delivering."""
        known = await self._store.read(lambda db: rows(db, "SELECT name, id FROM channel_ids"))
        self._ids = {r["name"]: r["id"] for r in known}
        await self._learn_ids([c for c in channels if c.startswith("#") and c not in self._ids])
        await self._recover()
        self._stopping = False
        self._runner = asyncio.create_task(self._run(), name="outbox")

    async def _learn_ids(self, names: list[str]) -> None:
        # With every channel queued by its id from the start, a card queued by name and a reply queued by
        # id share one stream (one order, one pace). A name not found now is learned from its first post.
        learned: dict[str, str] = {}
        for name in names:
            try:
                learned[name] = await asyncio.wait_for(self.transport.channel_id(name), LEARN_IDS_S)
            except (DeliveryError, TimeoutError) as err:
                log.warning("outbox: the id of %s is not known yet (%s); its first post will tell", name, err)
        learned = {n: i for n, i in learned.items() if i != n}
        if learned:
            self._ids.update(learned)
            await self._store.write(
                lambda db: db.conn.executemany(
                    "INSERT OR REPLACE INTO channel_ids (name, id) VALUES (?, ?)", list(learned.items())
                )
            )

    async def stop(self) -> None:
        """Stop the worker; in-flight deliveries finish, the rest waits in the table for next time."""
        if self._producers:  # their rows are part of what was promised before the stop
            await asyncio.wait(set(self._producers), timeout=10)
        self._stopping = True
        self._wake.set()
        if self._runner:
            await self._runner
            self._runner = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is pending or in flight; False on timeout."""
        self.kick()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._producers:
                await asyncio.wait(set(self._producers), timeout=max(0.0, deadline - time.monotonic()))
                continue
            if await self.depth() == 0 and not self._tasks:
                return True
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                pass
        return False

    async def depth(self) -> int:
        """Rows pending or in flight."""
        n = await self._store.read(
            lambda db: db.execute("SELECT count(*) FROM outbox WHERE state IN ('pending', 'sending')").fetchone()[0]
        )
        self._metrics.outbox_depth.set(n)
        return int(n)

    async def _recover(self) -> None:
        stuck = await self._store.read(lambda db: rows(db, "SELECT * FROM outbox WHERE state = 'sending' ORDER BY id"))
        for r in stuck:
            if r["op"] == Op.POST:
                thread_ts = r["thread_ts"] or await self._thread_ts(r)
                try:
                    found = await self.transport.find_posted(
                        r["channel"], thread_ts, self._marker(r), (r["started_at"] or r["created_at"]) - 60
                    )
                except DeliveryError as err:
                    log.warning("outbox: could not check whether row %s was posted (%s); retrying it", r["id"], err)
                    found = None
                if found is not None:
                    channel, ts = found
                    log.info("outbox: row %s was posted before the restart (ts %s); not posting again", r["id"], ts)
                    await self._store.write(partial(self._mark_sent, r=r, channel=channel, ts=ts))
                    continue
            await self._store.write(partial(_requeue, row_id=r["id"]))

    @staticmethod
    def _marker(r: Mapping[str, Any]) -> str:
        return str(r["dedupe_key"] or f"ob-{r['id']}")

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                wait = await self._dispatch()
            except Exception:
                log.exception("outbox worker cycle failed; retrying in 1 s")
                wait = 1.0
            if wait is None and not self._tasks:
                self._idle.set()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait if wait is not None else 5.0)
            except TimeoutError:
                pass

    async def _dispatch(self) -> float | None:
        heads = await self._store.read(
            lambda db: rows(
                db,
                "SELECT * FROM outbox WHERE id IN (SELECT MIN(id) FROM outbox"
                " WHERE state IN ('pending', 'sending') GROUP BY channel) ORDER BY id",
            )
        )
        self._metrics.outbox_depth.set(len(heads))
        soonest: float | None = None
        now = time.time()
        for r in heads:
            if r["channel"] in self._busy or r["state"] == State.SENDING:
                continue
            if len(self._tasks) >= self.pacing.max_in_flight:
                soonest = 0.05
                break
            wait = r["next_at"] - now
            if wait <= 0:
                wait = self._bucket(r).delay()
            if wait > 0:
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            self._busy.add(r["channel"])
            task = asyncio.create_task(self._deliver(r), name=f"outbox-{r['id']}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return soonest

    def _bucket(self, r: Mapping[str, Any]) -> _Bucket:
        p = self.pacing
        op = r["op"]
        if op == Op.POST or op == Op.UPLOAD:
            key, rate, burst = (op, r["channel"]), p.post_per_channel, p.post_burst
        elif op == Op.UPDATE:
            key, rate, burst = (op, ""), p.update_per_second, p.update_burst
        else:
            key, rate, burst = (op, ""), p.other_per_second, p.other_burst
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(rate, burst)
        return b

    async def _thread_ts(self, r: Mapping[str, Any]) -> str | None:
        if not r["thread_key"]:
            return None
        ref = await self.ref(r["thread_key"])
        return ref.ts if ref else None

    def _claim(self, db: Database, row_id: int, now: float) -> dict[str, Any] | None:
        # Only a pending row is ours to send, and what we send is what it holds now: the list of
        # heads was read a moment ago, and since then the row may have been delivered (by a delivery
        # that finished meanwhile) or given a newer payload (coalescing).
        cur = db.execute(
            "UPDATE outbox SET state = 'sending', started_at = ? WHERE id = ? AND state = 'pending'", (now, row_id)
        )
        if cur.rowcount != 1:
            return None
        return one(db, "SELECT * FROM outbox WHERE id = ?", (row_id,))

    async def _deliver(self, head: dict[str, Any]) -> None:
        r: dict[str, Any] | None = head
        try:
            r = await self._store.write(partial(self._claim, row_id=head["id"], now=self._clock.now()))
            if r is not None:
                await self._deliver_one(r)
        except DeliveryError as err:
            assert r is not None
            await self._failed(r, err)
        except Exception as err:  # a bug or an unexpected library error: keep the row, retry later
            log.exception("outbox: delivering row %s raised", head["id"])
            await self._failed(r or head, DeliveryError(f"{type(err).__name__}: {err}", retryable=True))
        finally:
            self._busy.discard(head["channel"])
            self._wake.set()

    async def _deliver_one(self, r: dict[str, Any]) -> None:
        payload = json.loads(r["payload"])
        op = Op(r["op"])
        t = self.transport
        if op is Op.POST:
            thread_ts = r["thread_ts"] or await self._thread_ts(r)
            found = None
            if r["attempts"] and not str(r["error"] or "").endswith("rate limited"):
                # The last try timed out or got a 5xx: Slack may have posted it all the same (as at a
                # restart, look for the marker first, or a retry would post it twice).
                found = await t.find_posted(r["channel"], thread_ts, self._marker(r), r["created_at"] - 60)
            if found is not None:
                log.info(
                    "outbox: row %s was posted by an attempt that failed (ts %s); not posting again", r["id"], found[1]
                )
                channel, ts = found
            else:
                channel, ts = await t.post(r["channel"], payload, thread_ts=thread_ts, marker=self._marker(r))
            await self._store.write(lambda db: self._mark_sent(db, r, channel, ts))
            if r["ref_key"]:
                for cb in self.on_posted:
                    await cb(MessageRef(r["ref_key"], channel, ts))
        else:
            if op is Op.UPDATE:
                ref = await self.ref(r["ref_key"])
                if ref is None:
                    raise DeliveryError(f"no message is known for `{r['ref_key']}`", retryable=False)
                await t.update(ref.channel, ref.ts, payload)
            elif op is Op.EPHEMERAL:
                await t.ephemeral(r["channel"], r["user"], payload, thread_ts=r["thread_ts"])
            elif op is Op.HOME:
                await t.publish_home(r["user"], payload)
            elif op is Op.RESPOND:
                await t.respond(r["user"], payload)
            elif op is Op.UPLOAD:
                await t.upload(r["channel"], payload, thread_ts=r["thread_ts"] or await self._thread_ts(r))
            elif op is Op.PIN or op is Op.UNPIN:
                ref = await self.ref(r["ref_key"])
                if ref is None:
                    raise DeliveryError(f"no message is known for `{r['ref_key']}`", retryable=False)
                await t.pin(ref.channel, ref.ts, pinned=op is Op.PIN)
            await self._store.write(lambda db: self._mark_sent(db, r, r["channel"], None))
        self._metrics.outbox_sent.labels(op=str(op)).inc()

    def _mark_sent(self, db: Database, r: Mapping[str, Any], channel: str, ts: str | None) -> None:
        db.execute(
            "UPDATE outbox SET state = 'sent', sent_at = ?, error = NULL WHERE id = ?", (self._clock.now(), r["id"])
        )
        name = r["channel"]
        if ts is not None and name.startswith("#") and channel != name:
            # Slack answered with the channel's id: from now on this channel is one queue, by its id.
            self._ids[name] = channel
            db.execute("INSERT OR REPLACE INTO channel_ids (name, id) VALUES (?, ?)", (name, channel))
            db.execute("UPDATE outbox SET channel = ? WHERE channel = ? AND state = 'pending'", (channel, name))
        if ts is not None and r["ref_key"]:
            db.execute(
                "INSERT INTO message_refs (key, channel, ts, created_at, sent_hash) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET channel = excluded.channel, ts = excluded.ts,"
                " sent_hash = excluded.sent_hash",
                (r["ref_key"], channel, ts, self._clock.now(), _digest(r["payload"])),
            )
        elif r["op"] == Op.UPDATE and r["ref_key"]:
            db.execute("UPDATE message_refs SET sent_hash = ? WHERE key = ?", (_digest(r["payload"]), r["ref_key"]))

    async def _failed(self, r: Mapping[str, Any], err: DeliveryError) -> None:
        op = str(r["op"])
        if not err.retryable:
            log.error("outbox: giving up on %s row %s to %s: %s", op, r["id"], r["channel"], err.reason)
            self._metrics.outbox_failed.labels(op=op).inc()
            await self._store.write(
                lambda db: db.execute(
                    "UPDATE outbox SET state = 'failed', error = ?, attempts = attempts + 1 WHERE id = ?",
                    (err.reason, r["id"]),
                )
            )
            return
        attempts = int(r["attempts"]) + 1
        if err.retry_after is not None:
            delay = err.retry_after
            self._metrics.slack_429.labels(method=err.method or op).inc()
            self._bucket(r).pause(delay)
            reason = "ratelimited"
        else:
            delay = min(self.pacing.backoff_max, self.pacing.backoff_base * 2 ** min(attempts, 16))
            delay *= 0.75 + random.random() / 2
            reason = "error"
        self._metrics.slack_retries.labels(reason=reason).inc()
        log.warning(
            "outbox: %s row %s to %s failed (%s); retry %d in %.1fs",
            op,
            r["id"],
            r["channel"],
            err.reason,
            attempts,
            delay,
        )
        await self._store.write(
            lambda db: db.execute(
                "UPDATE outbox SET state = 'pending', attempts = ?, next_at = ?, error = ? WHERE id = ?",
                (attempts, time.time() + delay, err.reason, r["id"]),
            )
        )
