"""DORA at the edges the windowed rewrite could break: window and week boundaries, the 30-day horizon a
window looks ahead, rollbacks of rollbacks, incidents across the window's end, and the commit times the
store keeps from each release's changelog (expected values by hand in each comment)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from bot.dora import DAY, Dora, compute, compute_with_weeks, weekly
from bot.store import Store

H = 3600.0
T0 = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # a Monday


class History:
    """Writes releases and their events the way handlers/deploy.py does."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def release(
        self,
        rid: int,
        at: float,
        *,
        service: str = "api",
        action: str = "deploy",
        state: str = "succeeded",
        commits_ago_h: tuple[float, ...] = (),
        bake_until: float | None = None,
        ok: bool = True,
        rollback_of: int | None = None,
    ) -> None:
        changelog = [
            {"sha": f"{rid}-{i}", "author": "a", "subject": "s", "tickets": [], "date": _iso(at - h * H)}
            for i, h in enumerate(commits_ago_h)
        ]
        self.db.execute(
            "INSERT INTO releases (id, action, service, env, version, requester, state, channel, changelog,"
            " created_at, updated_at, bake_until, rollback_of) VALUES (?, ?, ?, 'prod', ?, 'U1', ?, '#d', ?, ?, ?,"
            " ?, ?)",
            (rid, action, service, f"v{rid}", state, json.dumps(changelog), at, at, bake_until, rollback_of),
        )
        self.event("deploy.finished", at, rid, service=service, action=action, ok=ok)

    def event(self, kind: str, at: float, rid: int, *, service: str = "api", action: str = "deploy", ok: bool) -> None:
        self.db.execute(
            "INSERT INTO events (at, kind, service, env, ref, detail) VALUES (?, ?, ?, 'prod', ?, ?)",
            (at, kind, service, f"v{rid}", json.dumps({"release": rid, "ok": ok, "action": action})),
        )

    def critical(self, at: float, service: str = "api", env: str | None = "prod") -> None:
        self.db.execute(
            "INSERT INTO alert_groups (key, source, title, channel, status, severity, service, env, first_seen,"
            " last_change) VALUES (?, 'alertmanager', 'Boom', '#a', 'resolved', 'critical', ?, ?, ?, ?)",
            (f"k{service}{at}", service, env, at, at),
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "dora.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def write(store: Store, fill: Any) -> None:
    await store.write(lambda db: fill(History(db)))


async def window(store: Store, start: float, end: float, service: str | None = None) -> Dora:
    return await store.read(lambda db: compute(db, production="prod", start=start, end=end, service=service))


def shape(d: Dora) -> list[tuple[int, bool, str | None, float | None]]:
    return [(x.release, x.failed, x.failure_reason, x.recovered_at) for x in d.deployments]


async def test_a_window_holds_its_start_and_not_its_end(store: Store) -> None:
    def fill(h: History) -> None:
        h.release(1, T0 - 0.001, commits_ago_h=(1,))  # just before: not counted
        h.release(2, T0, commits_ago_h=(2,))  # at the start: counted
        h.release(3, T0 + 7 * DAY - 0.001, commits_ago_h=(3,))  # just before the end: counted
        h.release(4, T0 + 7 * DAY, commits_ago_h=(4,))  # at the end: the next window's

    await write(store, fill)
    d = await window(store, T0, T0 + 7 * DAY)
    assert [x.release for x in d.deployments] == [2, 3]
    assert d.lead_time_s == 2.5 * H  # median of 2 h and 3 h
    nxt = await window(store, T0 + 7 * DAY, T0 + 14 * DAY)
    assert [x.release for x in nxt.deployments] == [4]


async def test_no_deploys_but_rollbacks_restarts_and_failed_rollouts(store: Store) -> None:
    def fill(h: History) -> None:
        h.release(1, T0 + H, action="rollback")  # not a deployment
        h.release(2, T0 + 2 * H, action="restart")  # not a deployment
        h.release(3, T0 + 3 * H, state="failed", ok=False, commits_ago_h=(1,))  # never rolled out
        h.critical(T0 + 3 * H + 60)

    await write(store, fill)
    d, weeks = await store.read(lambda db: compute_with_weeks(db, production="prod", start=T0, end=T0 + 14 * DAY))
    assert d.deployments == [] and d.lead_time_s is None and d.change_failure_rate is None
    assert d.rework_rate is None and set(d.level().values()) == {"no data"}
    assert [len(w.deployments) for _, w in weeks] == [0, 0]
    m = d.metrics()
    assert (m.lead_time_s, m.change_failure_rate, m.recovery_s, m.unrecovered) == (None, None, None, 0)


async def test_a_rollback_of_a_rollback(store: Store) -> None:
    def fill(h: History) -> None:
        h.release(1, T0 + 1 * H, commits_ago_h=(1,))  # good
        h.release(2, T0 + 2 * H, state="rolled_back", commits_ago_h=(2,), bake_until=T0 + 2 * H + 900)
        h.event("deploy.rolled_back", T0 + 2.5 * H, 2, ok=False)  # release 2 undone by release 3
        h.release(3, T0 + 2.5 * H, action="rollback", state="rolled_back", rollback_of=2)
        h.event("deploy.rolled_back", T0 + 3 * H, 3, action="rollback", ok=False)  # release 3 undone by 4
        h.release(4, T0 + 3 * H, action="rollback", rollback_of=3)  # back to release 2's version
        h.release(5, T0 + 5 * H, commits_ago_h=(1,))  # 3 h after the failure: rework

    await write(store, fill)
    d = await window(store, T0, T0 + DAY)
    # Only deploys count: 1, 2 (rolled back: failed) and 5. Release 2 recovered with the first good
    # rollout after it, the rollback at 2.5 h (the rollback of that rollback changes nothing).
    assert shape(d) == [(1, False, None, None), (2, True, "rolled back", T0 + 2.5 * H), (5, False, None, None)]
    assert d.change_failure_rate == 1 / 3 and d.recovery_s == 0.5 * H and d.rework_rate == 1 / 3


async def test_an_incident_across_the_end_of_the_window(store: Store) -> None:
    end = T0 + 7 * DAY

    def fill(h: History) -> None:
        h.release(1, end - 600, bake_until=end + 1200, commits_ago_h=(1,))  # baking over the end
        h.critical(end + 600)  # 20 min after its finish, after the window's end: still its failure
        h.release(2, end + 2 * H, commits_ago_h=(1,))  # the fix, in the next window: recovery 2 h 10 min
        h.release(3, T0 + 3 * DAY, commits_ago_h=(1,))
        h.critical(T0 + 3 * DAY + 2 * H)  # after release 3's hour without a bake: not its failure

    await write(store, fill)
    d = await window(store, T0, end)
    assert shape(d) == [(3, False, None, None), (1, True, "critical alert during the bake", end + 2 * H)]
    assert d.recovery_s == 2 * H + 600 and d.unrecovered == 0
    nxt = await window(store, end, end + 7 * DAY)
    assert shape(nxt) == [(2, False, None, None)]  # the fix is not a rework of a failure it cannot see


async def test_a_window_looks_30_days_past_its_end_and_each_week_past_its_own(store: Store) -> None:
    def fill(h: History) -> None:
        h.release(1, T0 + DAY, state="rolled_back", commits_ago_h=(1,))  # failed in week 1 ...
        h.release(2, T0 + 38 * DAY, action="rollback")  # ... recovered on day 38
        h.release(3, T0 + 8 * DAY, service="web", commits_ago_h=(1,))
        h.critical(T0 + 8 * DAY + 60, service="web", env=None)  # an alert without env counts for production
        h.release(4, T0 + 38 * DAY + 1800, service="web")  # recovers release 3 on day 38 too

    await write(store, fill)
    start, end = T0, T0 + 14 * DAY
    whole, weeks = await store.read(lambda db: compute_with_weeks(db, production="prod", start=start, end=end))
    # The two weeks' window reads until end + 30 days: both recoveries are in it.
    assert shape(whole) == [
        (1, True, "rolled back", T0 + 38 * DAY),
        (3, True, "critical alert during the bake", T0 + 38 * DAY + 1800),
    ]
    # Week 1 reads until day 37: release 1 has not recovered there; week 2 reads until day 44.
    assert [t for t, _ in weeks] == [start, start + 7 * DAY]
    assert shape(weeks[0][1]) == [(1, True, "rolled back", None)] and weeks[0][1].unrecovered == 1
    assert shape(weeks[1][1]) == [(3, True, "critical alert during the bake", T0 + 38 * DAY + 1800)]
    # Each week is the window it would be on its own, and `weekly` and `compute` agree with the pair.
    for t, w in weeks:
        alone = await window(store, t, min(end, t + 7 * DAY))
        assert (w.start, w.end, w.deployments) == (alone.start, alone.end, alone.deployments)
    apart = await store.read(
        lambda db: (
            compute(db, production="prod", start=start, end=end),
            weekly(db, production="prod", start=start, end=end),
        )
    )
    assert apart == (whole, weeks)


async def test_weeks_of_a_window_that_is_not_whole_weeks(store: Store) -> None:
    def fill(h: History) -> None:
        for i in range(10):
            h.release(i + 1, T0 + i * DAY + H, commits_ago_h=(i + 1,))

    await write(store, fill)
    whole, weeks = await store.read(lambda db: compute_with_weeks(db, production="prod", start=T0, end=T0 + 9.5 * DAY))
    assert [(t, w.end, len(w.deployments)) for t, w in weeks] == [
        (T0, T0 + 7 * DAY, 7),
        (T0 + 7 * DAY, T0 + 9.5 * DAY, 3),
    ]
    assert len(whole.deployments) == 10 and whole.lead_time_s == 5.5 * H


async def test_rework_needs_a_failure_of_the_same_service_within_a_day_before(store: Store) -> None:
    def fill(h: History) -> None:
        h.release(1, T0 + H, state="rolled_back")  # api fails
        h.release(2, T0 + 2 * H, service="web")  # another service: not rework
        h.release(3, T0 + H + DAY)  # exactly 24 h later: rework
        h.release(4, T0 + H + DAY + 1)  # 24 h and a second: not
        h.release(5, T0 + 3 * DAY, state="rolled_back")
        h.event("deploy.finished", T0 + 3 * DAY + 60, 5, ok=True)  # release 5 rolled out again: not rework

    await write(store, fill)
    d = await window(store, T0, T0 + 7 * DAY)
    assert [x.release for x in d.deployments] == [1, 2, 3, 4, 5, 5]
    assert d.rework_rate == 1 / 6


async def test_commit_times_follow_the_changelog(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    at = T0 + DAY

    def fill(h: History) -> None:
        h.release(1, at, commits_ago_h=(1, 2))
        dates = [
            datetime.fromtimestamp(at - 3 * H, tz=plus2).isoformat(),  # another offset: parsed by Python
            datetime.fromtimestamp(at - 4 * H + 0.25, tz=UTC).isoformat(),  # microseconds
            "2026-02-30T10:00:00+00:00",  # no such day: skipped
            "yesterday",  # skipped
        ]
        log = [{"sha": str(i), "date": d} for i, d in enumerate(dates)] + [{"sha": "x"}, "not a commit", 5]
        h.release(2, at + H)
        h.db.execute("UPDATE releases SET changelog = ? WHERE id = 2", (json.dumps(log),))
        h.release(3, at + 2 * H)
        h.db.execute("UPDATE releases SET changelog = 'not json' WHERE id = 3")  # written, no lead times

    await write(store, fill)
    d = await window(store, T0, T0 + 7 * DAY)
    leads = {x.release: x.lead_times for x in d.deployments}
    assert leads == {1: (1 * H, 2 * H), 2: (4 * H, 5 * H - 0.25), 3: ()}
    await store.write(
        lambda db: db.execute(
            "UPDATE releases SET changelog = ? WHERE id = 1", (json.dumps([{"sha": "y", "date": _iso(at - 6 * H)}]),)
        )
    )
    d = await window(store, T0, T0 + 7 * DAY)
    assert {x.release: x.lead_times for x in d.deployments}[1] == (6 * H,)
    await store.write(lambda db: db.execute("DELETE FROM releases WHERE id = 1"))
    kept = await store.read(lambda db: db.execute("SELECT release FROM release_commits ORDER BY release").fetchall())
    assert kept == [(2,), (3,)]


async def test_per_service_windows_see_only_their_service(store: Store) -> None:
    def fill(h: History) -> None:
        h.release(1, T0 + H, commits_ago_h=(1,))
        h.critical(T0 + H + 60, service="web")  # web's alert: not api's failure
        h.release(2, T0 + 2 * H, service="web", commits_ago_h=(2,))
        h.critical(T0 + 2 * H + 60, service="web")  # web's failure
        h.release(3, T0 + 5 * H, service="web")  # recovers web; not api's recovery

    await write(store, fill)
    api = await window(store, T0, T0 + DAY, "api")
    web = await window(store, T0, T0 + DAY, "web")
    every = await window(store, T0, T0 + DAY)
    assert shape(api) == [(1, False, None, None)]
    assert shape(web) == [(2, True, "critical alert during the bake", T0 + 5 * H), (3, False, None, None)]
    assert shape(every) == shape(api)[:1] + shape(web)


async def test_rollouts_follow_the_events_table(store: Store) -> None:
    def fill(h: History) -> None:
        h.release(1, T0 + H, commits_ago_h=(1,))
        h.release(2, T0 + 2 * H, commits_ago_h=(1,))
        h.release(3, T0 + 3 * H, commits_ago_h=(1,))
        h.db.execute(  # an event of another kind, with the same detail: not a rollout
            "INSERT INTO events (at, kind, service, env, detail) VALUES (?, 'deploy.started', 'api', 'prod', ?)",
            (T0 + 4 * H, json.dumps({"release": 3, "ok": True, "action": "deploy"})),
        )

    await write(store, fill)
    assert [x.release for x in (await window(store, T0, T0 + DAY)).deployments] == [1, 2, 3]

    def edit(db: Database) -> None:
        db.execute("DELETE FROM events WHERE kind = 'deploy.finished' AND ref = 'v1'")
        db.execute(  # release 2's rollout did not go well after all: not a deployment
            "UPDATE events SET detail = ? WHERE kind = 'deploy.finished' AND ref = 'v2'",
            (json.dumps({"release": 2, "ok": False, "action": "deploy"}),),
        )
        db.execute(  # release 3's event without an action: a deploy, as before
            "UPDATE events SET detail = ? WHERE kind = 'deploy.finished' AND ref = 'v3'",
            (json.dumps({"release": 3, "ok": True}),),
        )

    await store.write(edit)
    assert [x.release for x in (await window(store, T0, T0 + DAY)).deployments] == [3]
