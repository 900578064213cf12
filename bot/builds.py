"""Builds opsloop follows: the `builds` table, the events they feed, and where to find their CI.

Shared by the build stage (which starts and watches them) and the test stage (which reads their
results); the deploy stage asks it whether a version passed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.errors import NotConfigured, NotFound
from bot.ports import BuildState, CIServer
from bot.store import one

if TYPE_CHECKING:
    from bot.context import Services


@dataclass(frozen=True)
class BuildRow:
    """A build opsloop follows (the `builds` table)."""

    id: int
    service: str | None
    ci: str
    job: str
    queue_id: str | None
    number: int | None
    label: str | None
    state: str  # a BuildState, or `requested` / `triggering` / `lost` before or instead of one
    requester: str | None
    channel: str
    params: dict[str, str]
    branch: str | None
    commit: str | None
    cause: str | None
    url: str | None
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    created_at: float

    @property
    def key(self) -> str:
        return f"build:{self.id}"

    @property
    def finished(self) -> bool:
        return self.state in {s.value for s in BuildState if s.finished} or self.state == "lost"

    @property
    def name(self) -> str:
        return f"{self.service or self.job} {self.label or ''}".strip()


def row_from(r: dict[str, Any]) -> BuildRow:
    return BuildRow(
        id=r["id"],
        service=r["service"],
        ci=r["ci"],
        job=r["job"],
        queue_id=r["queue_id"],
        number=r["number"],
        label=r["label"],
        state=r["state"],
        requester=r["requester"],
        channel=r["channel"],
        params=json.loads(r["params"]),
        branch=r["branch"],
        commit=r["commit_sha"],
        cause=r["cause"],
        url=r["url"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        duration_s=r["duration_s"],
        created_at=r["created_at"],
    )


def inserted(db: Any, row_id: int) -> BuildRow:
    """The row just inserted (inside the same write)."""
    r = one(db, "SELECT * FROM builds WHERE id = ?", (row_id,))
    assert r is not None
    return row_from(r)


async def load(services: Services, build_id: int) -> BuildRow:
    """A build row by id; NotFound otherwise."""
    r = await services.store.read(lambda db: one(db, "SELECT * FROM builds WHERE id = ?", (build_id,)))
    if r is None:
        raise NotFound(f"There is no build {build_id}.")
    return row_from(r)


def ci_for(services: Services, ci: str) -> CIServer:
    """The configured CI server called `ci`."""
    server = services.ci.get(ci)
    if server is None:
        raise NotConfigured(f"{ci} isn't configured: add it under `integrations.{ci}` in the opsloop config.")
    return server


async def record_event(services: Services, row: BuildRow, kind: str) -> None:
    """Feed the events table (lead time, release threads) once per build and kind."""
    detail = json.dumps({"build": row.id, "number": row.number, "state": row.state, "duration_s": row.duration_s})
    at = services.clock.now()

    def tx(db: Any) -> None:
        seen = one(db, "SELECT id FROM events WHERE kind = ? AND json_extract(detail, '$.build') = ?", (kind, row.id))
        if seen is None:
            db.execute(
                "INSERT INTO events (at, kind, service, ref, actor, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (at, kind, row.service, row.commit, row.requester, detail),
            )

    await services.store.write(tx)
