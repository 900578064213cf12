"""The built-in tracker: plan items in opsloop's own SQLite store."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bot.ports import AdapterNotFound, ItemStatus, ListFilter, NewItem, PlanItem, SqlStore


def _item(r: dict[str, Any]) -> PlanItem:
    return PlanItem(
        key=r["key"],
        title=r["title"],
        status=ItemStatus(r["status"]),
        reporter=r["reporter"],
        assignee=r["assignee"],
        critical=bool(r["critical"]),
        created_at=datetime.fromtimestamp(r["created_at"], tz=UTC),
        closed_at=datetime.fromtimestamp(r["closed_at"], tz=UTC) if r["closed_at"] else None,
        closed_by=r["closed_by"],
        tracker="local",
    )


def _rows(db: Any, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    cur = db.execute(sql, params)
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


class LocalTracker:
    """Plan items with keys like OPS-12, stored in the `plan_items` table."""

    name = "local"

    def __init__(self, store: SqlStore, prefix: str = "OPS", now: Callable[[], float] | None = None) -> None:
        self._store = store
        self._prefix = prefix
        self._now = now or time.time

    def _key(self, key: str) -> str:
        return key if "-" in key else f"{self._prefix}-{key}"

    async def create(self, item: NewItem) -> PlanItem:
        """Store a new open item and give it the next key."""
        now = self._now()

        def tx(db: Any) -> dict[str, Any]:
            cur = db.execute(
                "INSERT INTO plan_items (key, title, description, status, reporter, assignee, critical, created_at)"
                " VALUES ('', ?, ?, 'open', ?, ?, ?, ?)",
                (item.title, item.description, item.reporter, item.assignee, int(item.critical), now),
            )
            key = f"{self._prefix}-{cur.lastrowid}"
            db.execute("UPDATE plan_items SET key = ? WHERE id = ?", (key, cur.lastrowid))
            return _rows(db, "SELECT * FROM plan_items WHERE id = ?", (cur.lastrowid,))[0]

        return _item(await self._store.write(tx))

    async def get(self, key: str) -> PlanItem:
        """The item, or AdapterNotFound."""
        k = self._key(key)
        found = await self._store.read(lambda db: _rows(db, "SELECT * FROM plan_items WHERE key = ?", (k,)))
        if not found:
            raise AdapterNotFound("tracker", f"there is no plan item {k}")
        return _item(found[0])

    async def list(self, which: ListFilter, user: str, limit: int = 20) -> Sequence[PlanItem]:
        """Open items, the user's open items, or all items; newest first."""
        params: tuple[Any, ...]
        if which is ListFilter.MINE:
            sql, params = "SELECT * FROM plan_items WHERE status = 'open' AND assignee = ?", (user,)
        elif which is ListFilter.OPEN:
            sql, params = "SELECT * FROM plan_items WHERE status = 'open'", ()
        else:
            sql, params = "SELECT * FROM plan_items WHERE 1", ()
        q = f"{sql} ORDER BY id DESC LIMIT ?"
        return [_item(r) for r in await self._store.read(lambda db: _rows(db, q, (*params, limit)))]

    async def _change(self, key: str, sql: str, params: tuple[Any, ...]) -> PlanItem:
        k = self._key(key)

        def tx(db: Any) -> list[dict[str, Any]]:
            db.execute(sql, (*params, k))
            return _rows(db, "SELECT * FROM plan_items WHERE key = ?", (k,))

        found = await self._store.write(tx)
        if not found:
            raise AdapterNotFound("tracker", f"there is no plan item {k}")
        return _item(found[0])

    async def assign(self, key: str, user: str) -> PlanItem:
        """Set the assignee."""
        return await self._change(key, "UPDATE plan_items SET assignee = ? WHERE key = ?", (user,))

    async def close(self, key: str, by: str) -> PlanItem:
        """Mark done (idempotent: closing a closed item keeps the first closer)."""
        return await self._change(
            key,
            "UPDATE plan_items SET status = 'done', closed_at = coalesce(closed_at, ?),"
            " closed_by = coalesce(closed_by, ?) WHERE key = ?",
            (self._now(), by),
        )
