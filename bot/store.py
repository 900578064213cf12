"""SQLite through sqlite-utils: one writer thread with group commit, reader threads, migrations, WAL.

Every write is a function run on the writer thread inside a savepoint; the writer drains whatever is
queued and commits it as one transaction, then wakes all the callers. So a write is durable (against
a crash of the process) when `await store.write(...)` returns, and a burst of writes costs one commit.
Reads run on a small pool of read-only connections; in WAL mode they never wait for the writer.

SQLite specifics stay in this module and in the table helpers of the modules that own the tables.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from bot.errors import StartupError

T = TypeVar("T")
log = logging.getLogger(__name__)

MIGRATIONS = Migrations("opsloop")


@MIGRATIONS()
def m001_core(db: Database) -> None:
    db.execute(
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL,
            requester TEXT, channel TEXT, thread_ts TEXT, payload TEXT NOT NULL DEFAULT '{}',
            error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, updated_at REAL NOT NULL)"""
    )
    db.execute("CREATE INDEX jobs_state ON jobs(state)")
    db.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY, op TEXT NOT NULL, channel TEXT NOT NULL, ref_key TEXT,
            thread_key TEXT, thread_ts TEXT, user TEXT, payload TEXT NOT NULL,
            dedupe_key TEXT UNIQUE, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL, created_at REAL NOT NULL, started_at REAL, sent_at REAL,
            error TEXT)"""
    )
    db.execute("CREATE INDEX outbox_pending ON outbox(state, channel, id)")
    db.execute("CREATE INDEX outbox_ref ON outbox(ref_key, state)")
    db.execute(
        """CREATE TABLE message_refs (
            key TEXT PRIMARY KEY, channel TEXT NOT NULL, ts TEXT NOT NULL, created_at REAL NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, channel TEXT,
            action TEXT NOT NULL, target TEXT, outcome TEXT NOT NULL, reason TEXT,
            detail TEXT NOT NULL DEFAULT '{}', prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"""
    )
    db.execute("CREATE TABLE audit_head (one INTEGER PRIMARY KEY CHECK (one = 1), id INTEGER, hash TEXT)")
    db.execute(
        """CREATE TABLE approvals (
            id TEXT PRIMARY KEY, policy_key TEXT NOT NULL, subject TEXT NOT NULL,
            fingerprint TEXT NOT NULL, summary TEXT NOT NULL, requester TEXT NOT NULL,
            state TEXT NOT NULL, required INTEGER NOT NULL, role TEXT NOT NULL,
            self_approval INTEGER NOT NULL DEFAULT 0, expires_at REAL NOT NULL,
            created_at REAL NOT NULL, decided_at REAL, decided_reason TEXT,
            channel TEXT, thread_ts TEXT, action TEXT NOT NULL DEFAULT '{}')"""
    )
    # One open request per subject: a second `plan done` joins the first instead of racing it.
    db.execute("CREATE UNIQUE INDEX approvals_one_pending ON approvals(subject) WHERE state = 'pending'")
    db.execute(
        """CREATE TABLE approval_votes (
            approval_id TEXT NOT NULL REFERENCES approvals(id), user TEXT NOT NULL,
            vote TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (approval_id, user))"""
    )
    # The executed approval: a primary key, so a double click cannot run the action twice.
    db.execute(
        """CREATE TABLE approval_executions (
            approval_id TEXT PRIMARY KEY REFERENCES approvals(id), job_id INTEGER, at REAL NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE plan_items (
            id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, reporter TEXT NOT NULL,
            assignee TEXT, critical INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
            closed_at REAL, closed_by TEXT)"""
    )
    db.execute(
        """CREATE TABLE feedback (
            id INTEGER PRIMARY KEY, text TEXT NOT NULL, author TEXT NOT NULL, channel TEXT,
            message_ts TEXT, source TEXT NOT NULL, created_at REAL NOT NULL, plan_key TEXT)"""
    )
    db.execute("CREATE TABLE seen_events (id TEXT PRIMARY KEY, at REAL NOT NULL)")
    db.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, service TEXT, env TEXT,
            ref TEXT, actor TEXT, detail TEXT NOT NULL DEFAULT '{}')"""
    )
    db.execute("CREATE INDEX events_kind ON events(kind, service, at)")


class _Item:
    __slots__ = ("fn", "fut", "loop")

    def __init__(self, fn: Callable[[Database], Any], fut: asyncio.Future[Any], loop: asyncio.AbstractEventLoop):
        self.fn, self.fut, self.loop = fn, fut, loop


_STOP = object()


def _connect(path: str, *, readonly: bool = False, busy_timeout: float = 5.0) -> sqlite3.Connection:
    if readonly and path != ":memory:":
        conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout,
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a commit survives a crash of the process (not of the machine), which is
        # the failure we promise to survive, at a fraction of FULL's fsync cost.
        conn.execute("PRAGMA synchronous = NORMAL")
        # Every write runs in a savepoint of its batch; past 64 KiB its journal spilled to a temporary
        # file, which doubled the CPU of a write touching many pages (a delivery's 50 alert rows resolved:
        # 14 -> 7 µs per row). It holds at most the pages one batch changes.
        conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _explain(path: str, err: sqlite3.Error) -> StartupError:
    text = str(err)
    if "locked" in text or "busy" in text:
        return StartupError(f"The database {path} is locked by another process (is another opsloop running on it?).")
    if "readonly" in text or "unable to open" in text or "permission" in text.lower():
        return StartupError(
            f"Cannot write the database {path}: {text}. Point OPSLOOP_DB or storage.path at a writable file."
        )
    if "not a database" in text or "malformed" in text:
        return StartupError(f"{path} is not an opsloop database ({text}); move it away or set OPSLOOP_DB.")
    return StartupError(f"Cannot open the database {path}: {text}.")


class Store:
    """The SQLite store; see the module docstring."""

    def __init__(self, path: str | Path, *, readers: int = 2, batch_max: int = 512) -> None:
        self.path = str(path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._batch_max = batch_max
        self._memory = self.path == ":memory:"
        self._readers = None if self._memory else ThreadPoolExecutor(readers, thread_name_prefix="store-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.commits = 0

    # --- lifecycle

    async def open(self) -> None:
        """Open the file, apply migrations and start the writer; raise StartupError if it can't."""
        if not self._memory:
            parent = Path(self.path).parent
            if not parent.exists():
                raise StartupError(f"Cannot create the database {self.path}: the directory {parent} does not exist.")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writer = threading.Thread(
            target=self._run_writer, args=(ready, asyncio.get_running_loop()), name="store-writer", daemon=True
        )
        self._writer.start()
        await ready

    async def close(self) -> None:
        """Finish queued writes, then stop the writer and close every connection."""
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        with self._lock:
            for c in self._reader_conns:
                c.close()
            self._reader_conns.clear()

    # --- API

    async def write(self, fn: Callable[[Database], T]) -> T:
        """Run `fn(db)` on the writer thread; return once its transaction is committed."""
        return await self.submit(fn)

    def submit(self, fn: Callable[[Database], T]) -> asyncio.Future[T]:
        """Queue `fn(db)` for the writer thread; the future resolves once it is committed."""
        if self._writer is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Item(fn, fut, loop))
        return fut

    async def read(self, fn: Callable[[Database], T]) -> T:
        """Run `fn(db)` on a read-only connection (sees every committed write)."""
        if self._readers is None:
            return await self.write(fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_in_thread, fn)

    # --- threads

    def _read_in_thread(self, fn: Callable[[Database], T]) -> T:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            conn = _connect(self.path, readonly=True)
            with self._lock:
                self._reader_conns.append(conn)
            db = Database(conn, execute_plugins=False)
            self._local.db = db
        return fn(db)

    def _run_writer(self, ready: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        try:
            conn = _connect(self.path)
            db = Database(conn, execute_plugins=False)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
            MIGRATIONS.apply(db)
        except sqlite3.Error as err:
            exc = _explain(self.path, err)
            loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            self._writer_loop(conn, db)
        finally:
            conn.close()

    def _writer_loop(self, conn: sqlite3.Connection, db: Database) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Item] = [first]
            while len(batch) < self._batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            outcomes = self._commit_batch(conn, db, batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
            for item, (res, exc) in zip(batch, outcomes, strict=True):
                by_loop.setdefault(item.loop, []).append((item.fut, res, exc))
            for lp, settled in by_loop.items():
                try:
                    lp.call_soon_threadsafe(_settle_many, settled)
                except RuntimeError:  # that loop is closed; nobody is waiting any more
                    pass

    def _commit_batch(
        self, conn: sqlite3.Connection, db: Database, batch: list[_Item]
    ) -> list[tuple[Any, BaseException | None]]:
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            return [(None, err)] * len(batch)
        for i, item in enumerate(batch):
            sp = f"w{i}"
            conn.execute(f"SAVEPOINT {sp}")
            try:
                result = item.fn(db)
            except BaseException as exc:  # the caller gets it; the batch goes on
                if conn.in_transaction:
                    conn.execute(f"ROLLBACK TO {sp}")
                    conn.execute(f"RELEASE {sp}")
                else:
                    # The error took the whole transaction with it: the earlier writes of this batch
                    # are gone too, so their callers must hear it rather than believe them committed.
                    lost = sqlite3.OperationalError("write aborted with its batch; please retry")
                    outcomes = [(None, lost)] * len(outcomes)
                    conn.execute("BEGIN IMMEDIATE")
                outcomes.append((None, exc))
            else:
                conn.execute(f"RELEASE {sp}")
                outcomes.append((result, None))
        try:
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as err:
            log.error("store commit failed: %s", err)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(None, err)] * len(batch)
        return outcomes


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _settle_many(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, res, exc in settled:
        _settle(fut, res, exc)


def rows(db: Database, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
    """All rows of a query as dicts."""
    cur = db.execute(sql, params)
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def one(db: Database, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> dict[str, Any] | None:
    """The first row of a query as a dict, or None."""
    cur = db.execute(sql, params)
    r = cur.fetchone()
    if r is None:
        return None
    return dict(zip([c[0] for c in cur.description], r, strict=True))


@MIGRATIONS()
def m002_builds_and_tests(db: Database) -> None:
    db.execute(
        """CREATE TABLE builds (
            id INTEGER PRIMARY KEY, service TEXT, ci TEXT NOT NULL, job TEXT NOT NULL,
            queue_id TEXT, number INTEGER, label TEXT, state TEXT NOT NULL, requester TEXT,
            channel TEXT NOT NULL, params TEXT NOT NULL DEFAULT '{}', branch TEXT, commit_sha TEXT,
            cause TEXT, url TEXT, started_at REAL, finished_at REAL, duration_s REAL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, job_id INTEGER)"""
    )
    db.execute("CREATE UNIQUE INDEX builds_number ON builds(ci, job, number) WHERE number IS NOT NULL")
    db.execute("CREATE INDEX builds_service ON builds(service, id)")
    db.execute(
        """CREATE TABLE test_results (
            id INTEGER PRIMARY KEY, service TEXT NOT NULL, build_id INTEGER NOT NULL REFERENCES builds(id),
            commit_sha TEXT, test_id TEXT NOT NULL, suite TEXT, status TEXT NOT NULL, duration_s REAL,
            message TEXT, details TEXT, at REAL NOT NULL, UNIQUE (build_id, test_id))"""
    )
    db.execute("CREATE INDEX test_results_history ON test_results(service, test_id, id)")
    db.execute(
        "CREATE TABLE hook_deliveries (source TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,"
        " PRIMARY KEY (source, key))"
    )


@MIGRATIONS()
def m003_alerts(db: Database) -> None:
    db.execute(
        """CREATE TABLE alert_groups (
            id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, source TEXT NOT NULL, title TEXT NOT NULL,
            channel TEXT NOT NULL, status TEXT NOT NULL, severity TEXT NOT NULL, service TEXT, env TEXT,
            labels TEXT NOT NULL DEFAULT '{}', shown INTEGER NOT NULL DEFAULT 1, digest_id INTEGER,
            first_seen REAL NOT NULL, last_change REAL NOT NULL, resolved_at REAL,
            fire_count INTEGER NOT NULL DEFAULT 0, fire_window REAL,
            silence_id TEXT, silenced_by TEXT, silence_until REAL, acked_by TEXT, acked_at REAL,
            snoozed_until REAL, ticket TEXT, release TEXT, truncated INTEGER NOT NULL DEFAULT 0)"""
    )
    db.execute("CREATE INDEX alert_groups_channel ON alert_groups(channel, first_seen)")
    db.execute("CREATE INDEX alert_groups_status ON alert_groups(status, last_change)")
    db.execute(
        """CREATE TABLE alerts (
            id INTEGER PRIMARY KEY, source TEXT NOT NULL, fingerprint TEXT NOT NULL,
            group_id INTEGER REFERENCES alert_groups(id), status TEXT NOT NULL, name TEXT NOT NULL,
            severity TEXT NOT NULL, labels TEXT NOT NULL, annotations TEXT NOT NULL, summary TEXT NOT NULL,
            value TEXT, links TEXT NOT NULL DEFAULT '[]', generator_url TEXT, starts_at REAL, ends_at REAL,
            first_seen REAL NOT NULL, last_seen REAL NOT NULL, firings INTEGER NOT NULL DEFAULT 1,
            UNIQUE (source, fingerprint))"""
    )
    db.execute("CREATE INDEX alerts_group ON alerts(group_id, status)")
    db.execute("CREATE INDEX alerts_status ON alerts(status, last_seen)")
    db.execute(
        """CREATE TABLE alert_digests (
            id INTEGER PRIMARY KEY, channel TEXT NOT NULL, started_at REAL NOT NULL, last_at REAL NOT NULL)"""
    )
    db.execute("CREATE INDEX alert_digests_channel ON alert_digests(channel, last_at)")


@MIGRATIONS()
def m004_releases(db: Database) -> None:
    db.execute(
        """CREATE TABLE releases (
            id INTEGER PRIMARY KEY, action TEXT NOT NULL, service TEXT NOT NULL, env TEXT NOT NULL,
            version TEXT, image TEXT, digest TEXT, from_version TEXT, replicas INTEGER,
            requester TEXT NOT NULL, state TEXT NOT NULL, approval_id TEXT, channel TEXT NOT NULL,
            checks TEXT NOT NULL DEFAULT '[]', changelog TEXT NOT NULL DEFAULT '[]', tests TEXT,
            progress TEXT, message TEXT, break_glass TEXT, rollback_of INTEGER, job_id INTEGER,
            created_at REAL NOT NULL, started_at REAL, finished_at REAL, bake_until REAL, updated_at REAL NOT NULL)"""
    )
    db.execute("CREATE INDEX releases_target ON releases(service, env, id)")
    # One release in flight per service and environment: the database says no to a second one.
    db.execute(
        "CREATE UNIQUE INDEX releases_one_active ON releases(service, env)"
        " WHERE state IN ('approved', 'deploying', 'baking')"
    )
    db.execute("CREATE TABLE locks (env TEXT PRIMARY KEY, holder TEXT NOT NULL, reason TEXT, at REAL NOT NULL)")
    db.execute(
        """CREATE TABLE freezes (env TEXT PRIMARY KEY, until REAL NOT NULL, reason TEXT NOT NULL,
            by TEXT NOT NULL, at REAL NOT NULL, notice_key TEXT)"""
    )
    db.execute("ALTER TABLE feedback ADD COLUMN release_id INTEGER")
    db.execute("ALTER TABLE feedback ADD COLUMN rating TEXT")


@MIGRATIONS()
def m005_digests(db: Database) -> None:
    # One row per week a digest was sent: the primary key makes "once, even across restarts" a fact.
    db.execute("CREATE TABLE digests_sent (week TEXT PRIMARY KEY, at REAL NOT NULL)")
    db.execute("CREATE INDEX events_at ON events(at)")


@MIGRATIONS()
def m006_sent_hash(db: Database) -> None:
    # What Slack shows for a message now, so an edit that changes nothing is not sent.
    db.execute("ALTER TABLE message_refs ADD COLUMN sent_hash TEXT")
    db.execute("CREATE INDEX outbox_sent ON outbox(state, sent_at)")


@MIGRATIONS()
def m007_alert_digest_pages(db: Database) -> None:
    # A storm digest lists its groups by id, page by page, on every render.
    db.execute("CREATE INDEX alert_groups_digest ON alert_groups(digest_id, id)")


@MIGRATIONS()
def m008_dora(db: Database) -> None:
    # `/ops dora` over a year reads only these (bot/dora.py): the outcome of each release (its row holds
    # the changelog before bake_until), critical alert groups by time, and the commit times of each
    # release (release_commits, below). m009 replaced this index on the events with a table.
    db.execute("CREATE INDEX events_rollouts ON events(kind, env, at, service, detail) WHERE kind = 'deploy.finished'")
    db.execute("CREATE INDEX releases_outcome ON releases(id, state, bake_until)")
    db.execute("CREATE INDEX alert_groups_critical ON alert_groups(severity, first_seen, service, env)")
    db.execute("CREATE TABLE release_commits (release INTEGER PRIMARY KEY, times TEXT NOT NULL)")
    _release_commits(db)


def _release_commits(db: Database) -> None:
    # The commit times of each release in changelog order, as a JSON array, kept by triggers so that a
    # year of changelog JSON is not parsed again on every question: integer microseconds since the epoch
    # where SQLite converts the date exactly (the UTC form isoformat() writes, of a real date: one that
    # survives a round trip), else the date as written, for bot/dora.py to parse.
    date = "json_extract(j.value, '$.date')"
    day = f"substr({date}, 1, 19)"
    us = (
        f"CASE WHEN json_type(j.value, '$.date') = 'text' AND {day} GLOB"
        " '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]'"
        f" AND (substr({date}, 20) = '+00:00' OR substr({date}, 20) GLOB '.[0-9][0-9][0-9][0-9][0-9][0-9]+00:00')"
        f" AND substr({date}, 1, 4) > '0000'"
        f" AND strftime('%Y-%m-%dT%H:%M:%S', unixepoch({day}), 'unixepoch') = {day}"
        f" THEN unixepoch({day}) * 1000000"
        f" + iif(length({date}) = 32, CAST(substr({date}, 21, 6) AS INTEGER), 0) ELSE CAST({date} AS TEXT) END"
    )

    def times(release: str, changelog: str, source: str = "") -> str:
        # An aggregate over json_each without GROUP BY takes the commits in changelog order.
        valid = f"iif(json_valid({changelog}) AND json_type({changelog}) = 'array', {changelog}, '[]')"
        return (
            f"INSERT OR REPLACE INTO release_commits (release, times) SELECT {release}, (SELECT json_group_array({us})"
            f" FROM json_each({valid}) AS j WHERE j.type = 'object' AND json_type(j.value, '$.date') IS NOT NULL)"
            f"{source}"
        )

    for name in ("insert", "update", "delete"):
        db.execute(f"DROP TRIGGER IF EXISTS release_commits_{name}")
    db.execute(
        "CREATE TRIGGER release_commits_insert AFTER INSERT ON releases BEGIN"
        f" DELETE FROM release_commits WHERE release = NEW.id; {times('NEW.id', 'NEW.changelog')}; END"
    )
    db.execute(
        "CREATE TRIGGER release_commits_update AFTER UPDATE OF id, changelog ON releases BEGIN"
        f" DELETE FROM release_commits WHERE release IN (OLD.id, NEW.id); {times('NEW.id', 'NEW.changelog')}; END"
    )
    db.execute(
        "CREATE TRIGGER release_commits_delete AFTER DELETE ON releases BEGIN"
        " DELETE FROM release_commits WHERE release = OLD.id; END"
    )
    db.execute("DELETE FROM release_commits")
    db.execute(times("r.id", "r.changelog", " FROM releases AS r"))  # the releases there already


@MIGRATIONS()
def m009_dora_rollouts(db: Database) -> None:
    # Production rollouts for bot/dora.py without reading JSON: each deploy.finished event's release, ok
    # and action, kept by triggers, read through a covering index. And m008's commit times again, for a
    # database that took m008 before it checked that a date exists (2026-02-30).
    db.execute("DROP INDEX IF EXISTS events_rollouts")
    db.execute(
        "CREATE TABLE dora_rollouts (event INTEGER PRIMARY KEY, at REAL NOT NULL, service TEXT, env TEXT,"
        " release, ok, action)"
    )
    db.execute("CREATE INDEX dora_rollouts_env ON dora_rollouts(env, at, service, release, ok, action)")
    fields = (
        "json_extract(NEW.detail, '$.release'), json_extract(NEW.detail, '$.ok'),"
        " ifnull(json_extract(NEW.detail, '$.action'), iif(json_type(NEW.detail, '$.action') IS NULL, 'deploy', NULL))"
    )
    insert = (
        "INSERT INTO dora_rollouts (event, at, service, env, release, ok, action)"
        f" SELECT NEW.id, NEW.at, NEW.service, NEW.env, {fields} WHERE NEW.kind = 'deploy.finished'"
    )
    db.execute(f"CREATE TRIGGER dora_rollouts_insert AFTER INSERT ON events BEGIN {insert}; END")
    db.execute(
        "CREATE TRIGGER dora_rollouts_update AFTER UPDATE OF id, at, kind, service, env, detail ON events BEGIN"
        f" DELETE FROM dora_rollouts WHERE event IN (OLD.id, NEW.id); {insert}; END"
    )
    db.execute(
        "CREATE TRIGGER dora_rollouts_delete AFTER DELETE ON events BEGIN"
        " DELETE FROM dora_rollouts WHERE event = OLD.id; END"
    )
    db.execute(insert.replace("NEW.", "e.").replace(" WHERE e.kind", " FROM events AS e WHERE e.kind"))
    _release_commits(db)


@MIGRATIONS()
def m010_channel_ids(db: Database) -> None:
    # Config names channels (`#approvals`); Slack edits, pins and finds messages only by channel id. The
    # id a post answered with is kept, so every later row of that channel is queued (paced, ordered) as one.
    db.execute("CREATE TABLE channel_ids (name TEXT PRIMARY KEY, id TEXT NOT NULL)")


@MIGRATIONS()
def m011_release_ended_by(db: Database) -> None:
    # The rollback that ended a release (its bake, or the release as a whole), so a rollback that fails
    # finds the release it meant to undo by a number rather than by the words of its message.
    db.execute("ALTER TABLE releases ADD COLUMN ended_by INTEGER")
    backfill_ended_by(db)


@MIGRATIONS()
def m012_release_takes_out(db: Database) -> None:
    # The commits running now that the new version lacks (a downgrade, a rollback), for the reviewer. Not in
    # `changelog`: that column is what a release brought, and lead time is counted from it.
    db.execute("ALTER TABLE releases ADD COLUMN takes_out TEXT NOT NULL DEFAULT '[]'")


@MIGRATIONS()
def m013_release_reason(db: Database) -> None:
    # Why the requester deploys (`deploy api 1.4 to prod "fixes INC-7"`), for the approvers; a reason without
    # `force` was dropped before. `break_glass` keeps the reason of an override, as it did.
    db.execute("ALTER TABLE releases ADD COLUMN reason TEXT")


def backfill_ended_by(db: Database) -> None:
    """`ended_by` of releases rolled back before the column existed, read from the message that said so
    ("Rolled back by release N, requested by …", the one words opsloop wrote for it)."""
    number = "substr(message, 24, instr(message, ',') - 24)"  # after the 23 characters of "Rolled back by release "
    db.execute(
        f"UPDATE releases SET ended_by = CAST({number} AS INTEGER) WHERE ended_by IS NULL AND state = 'rolled_back'"
        f" AND message LIKE 'Rolled back by release %,%' AND {number} <> '' AND {number} NOT GLOB '*[^0-9]*'"
    )
