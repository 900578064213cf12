"""Append-only, hash-chained audit log of every command, click, approval and refusal.

Each row stores the hash of the row before it and its own hash over its fields; `audit_head` keeps the
newest id and hash in the same transaction. `verify` walks the chain and names the first row that was
edited, removed or added out of band, including rows cut from the end.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from bot.clock import Clock
from bot.ports import SqlStore
from bot.redact import Redactor
from bot.store import one, rows

GENESIS = "0" * 64
TARGET_CHARS = 500  # of a row's target (a command line, a button's value) and reason, as stored
REASON_CHARS = 1000


class Outcome(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"
    ERROR = "error"
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    VOIDED = "voided"
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True)
class AuditEntry:
    """One decision: who did what, where, on what, with what outcome and why."""

    actor: str
    action: str
    outcome: Outcome
    channel: str | None = None
    target: str | None = None
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Row:
    """A row to append: its column values from `at` to `detail`, and its canonical text around the id."""

    values: tuple[Any, ...]
    before: str
    after: str


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: float
    actor: str
    channel: str | None
    action: str
    target: str | None
    outcome: str
    reason: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_bad: int | None = None
    problem: str = ""


# One encoder each, made once: json.dumps with options builds a new encoder at every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_DETAIL = json.JSONEncoder(sort_keys=True, default=str)
# The same encoder's C core, made once: JSONEncoder.encode makes a new one at every call, a third of the time
# of preparing a row. No cycle check (markers None): a detail is the redactor's fresh copy, which would have
# failed on a cycle already.
_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)  # CPython's; not in the type stubs
_DETAIL_CHUNKS = (
    _C_ENCODER(None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", True, False, True)
    if _C_ENCODER is not None
    else None
)
_JSON_STRING = json.encoder.encode_basestring  # what an encoder with ensure_ascii=False writes for a str


def _detail(v: Any) -> str:
    """A detail as `_DETAIL` writes it."""
    return "".join(_DETAIL_CHUNKS(v, 0)) if _DETAIL_CHUNKS is not None else _DETAIL.encode(v)


def _str(s: str | None) -> str:
    """A string (or None) as `_CANONICAL` writes it."""
    return "null" if s is None else _JSON_STRING(s)


def _num(x: float) -> str:
    """A time as `_CANONICAL` writes it (float and int repr; anything else through the encoder)."""
    return repr(x) if type(x) in (float, int) and math.isfinite(x) else _CANONICAL.encode(x)


def _around_id(
    action: str,
    actor: str,
    at: float,
    channel: str | None,
    detail: str,
    outcome: str,
    reason: str | None,
    target: str | None,
) -> tuple[str, str]:
    """A row's canonical text, the one its hash covers, in two parts around its id: JSON with sorted keys and no
    spaces (as `_CANONICAL` writes the row), field by field, so a row can be hashed once its id is known."""
    return (
        f'{{"action":{_str(action)},"actor":{_str(actor)},"at":{_num(at)},"channel":{_str(channel)},'
        f'"detail":{_str(detail)},"id":',
        f',"outcome":{_str(outcome)},"reason":{_str(reason)},"target":{_str(target)}}}',
    )


def _hash(prev: str, before: str, row_id: int, after: str) -> str:
    return hashlib.sha256(f"{prev}\n{before}{row_id}{after}".encode()).hexdigest()


def _digest(prev: str, fields: Mapping[str, Any]) -> str:
    """The hash of a stored row (`_fields`), linked to the hash before it."""
    f = fields
    before, after = _around_id(
        f["action"], f["actor"], f["at"], f["channel"], f["detail"], f["outcome"], f["reason"], f["target"]
    )
    return _hash(prev, before, f["id"], after)


def _fields(r: Mapping[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("id", "at", "actor", "channel", "action", "target", "outcome", "reason", "detail")}


class AuditLog:
    """Writes and verifies the audit chain.

    Entries recorded in the same pass of the event loop share one write (one transaction, one read of
    the chain head, one executemany); each caller still waits until its entry is committed.
    """

    def __init__(self, store: SqlStore, redactor: Redactor, clock: Clock) -> None:
        self._store = store
        self._redact = redactor
        self._clock = clock
        self._pending: list[tuple[_Row, asyncio.Future[None]]] = []

    def append_in(self, db: Database, entry: AuditEntry) -> None:
        """Append inside a write that is already running, so the decision and its record commit together."""
        self._append_many(db, [self._prepare(entry, self._clock.now())])

    def _prepare(self, entry: AuditEntry, at: float) -> _Row:
        """Everything of a row but its place in the chain: redacted, and its hashed text but for the id.

        Made where the entry is recorded (the event loop), so the writer thread only links rows: every caller
        waits for the writer's round trip, so its share is on each request's path (paired runs: more
        throughput with the work here than on the writer)."""
        # Masked whole, then cut: cut first, a secret across the cut would keep its first part.
        target = self._redact.text(entry.target)[:TARGET_CHARS] if entry.target else entry.target
        reason = self._redact.text(entry.reason)[:REASON_CHARS] if entry.reason else entry.reason
        detail = _detail(self._redact.value(dict(entry.detail)))
        outcome = str(entry.outcome)
        return _Row(
            (at, entry.actor, entry.channel, entry.action, target, outcome, reason, detail),
            *_around_id(entry.action, entry.actor, at, entry.channel, detail, outcome, reason, target),
        )

    def _append_many(self, db: Database, prepared: Sequence[_Row]) -> None:
        head = one(db, "SELECT id, hash FROM audit_head WHERE one = 1")
        prev_id, prev_hash = (head["id"], head["hash"]) if head else (0, GENESIS)
        out = []
        for r in prepared:
            prev_id += 1
            digest = _hash(prev_hash, r.before, prev_id, r.after)
            out.append((prev_id, *r.values, prev_hash, digest))
            prev_hash = digest
        db.conn.executemany(
            "INSERT INTO audit (id, at, actor, channel, action, target, outcome, reason, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            out,
        )
        db.execute(
            "INSERT INTO audit_head (one, id, hash) VALUES (1, ?, ?)"
            " ON CONFLICT(one) DO UPDATE SET id = excluded.id, hash = excluded.hash",
            (prev_id, prev_hash),
        )

    async def record(self, entry: AuditEntry) -> None:
        """Append one entry; returns once it is committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((self._prepare(entry, self._clock.now()), fut))
        await fut

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        prepared = [r for r, _ in batch]
        try:
            written = self._store.submit(lambda db: self._append_many(db, prepared))
        except Exception as err:  # the store is closed: nobody may wait forever
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return

        def settle(done: asyncio.Future[None]) -> None:
            err = done.exception()
            for _, fut in batch:
                if fut.done():  # that caller was cancelled; the entry is written all the same
                    continue
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result(None)

        written.add_done_callback(settle)

    async def recent(self, n: int = 10) -> list[AuditRow]:
        """The newest `n` rows, newest first."""

        def q(db: Database) -> list[dict[str, Any]]:
            return rows(db, "SELECT * FROM audit ORDER BY id DESC LIMIT ?", (n,))

        return [
            AuditRow(
                id=r["id"],
                at=r["at"],
                actor=r["actor"],
                channel=r["channel"],
                action=r["action"],
                target=r["target"],
                outcome=r["outcome"],
                reason=r["reason"],
                detail=json.loads(r["detail"]),
            )
            for r in await self._store.read(q)
        ]

    async def verify(self) -> Verification:
        """Walk the chain; report the first row that breaks it."""
        return await self._store.read(verify_chain)


def verify_chain(db: Database) -> Verification:
    """Check every row's link and hash, and the head; see the module docstring."""
    expected_prev = GENESIS
    last_id = 0
    checked = 0
    head = one(db, "SELECT id, hash FROM audit_head WHERE one = 1")
    head_id, head_hash = (head["id"], head["hash"]) if head else (0, GENESIS)
    cur = db.execute(
        "SELECT id, at, actor, channel, action, target, outcome, reason, detail, prev_hash, hash FROM audit ORDER BY id"
    )
    cols = [c[0] for c in cur.description]
    for raw in cur:
        r = dict(zip(cols, raw, strict=True))
        checked += 1
        if r["id"] != last_id + 1:
            return Verification(
                False, checked, r["id"], f"row {r['id']} follows row {last_id}: rows in between were deleted"
            )
        if r["prev_hash"] != expected_prev:
            return Verification(
                False,
                checked,
                r["id"],
                f"row {r['id']} does not link to row {last_id}: row {last_id} was replaced, "
                "or rows were inserted or reordered here",
            )
        if _digest(r["prev_hash"], _fields(r)) != r["hash"]:
            if r["id"] > head_id:
                what = f"row {r['id']} was added after row {head_id}, the last one opsloop wrote"
            else:
                what = f"row {r['id']} was edited after it was written"
            return Verification(False, checked, r["id"], what)
        expected_prev, last_id = r["hash"], r["id"]
    if head_id > last_id:
        return Verification(
            False,
            checked,
            last_id + 1,
            f"the log ends at row {last_id} but its head says row {head_id}: rows were removed from the end",
        )
    if head_id < last_id:
        return Verification(
            False,
            checked,
            head_id + 1,
            f"the head says row {head_id} but the log goes on to row {last_id}: rows {head_id + 1}-{last_id} "
            "were added out of band",
        )
    if head_hash != expected_prev:
        return Verification(False, checked, head_id, f"row {head_id} was replaced after it was written")
    return Verification(True, checked)
