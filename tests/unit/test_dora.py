"""DORA on a constructed history, with the expected values worked out by hand (see each comment)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bot.dora import DAY, compute
from bot.store import Store

H = 3600.0
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


async def history(store: Store) -> None:
    def tx(db) -> None:
        def release(
            rid: int,
            service: str,
            action: str,
            at: float,
            commits_ago_h: list[float],
            state: str = "succeeded",
            bake: float | None = None,
        ) -> None:
            changelog = [
                {
                    "sha": f"{rid}{i}",
                    "author": "a",
                    "subject": "s",
                    "tickets": [],
                    "date": datetime.fromtimestamp(at - h * H, tz=UTC).isoformat(),
                }
                for i, h in enumerate(commits_ago_h)
            ]
            db.execute(
                "INSERT INTO releases (id, action, service, env, version, requester, state, channel,"
                " changelog, created_at, updated_at, bake_until) VALUES (?, ?, ?, 'prod', ?, 'U1', ?, '#d',"
                " ?, ?, ?, ?)",
                (rid, action, service, f"v{rid}", state, json.dumps(changelog), at, at, bake),
            )
            db.execute(
                "INSERT INTO events (at, kind, service, env, ref, detail) VALUES (?, 'deploy.finished', ?,"
                " 'prod', ?, ?)",
                (at, service, f"v{rid}", json.dumps({"release": rid, "ok": True, "action": action})),
            )

        def critical(service: str, at: float) -> None:
            db.execute(
                "INSERT INTO alert_groups (key, source, title, channel, status, severity, service, env,"
                " first_seen, last_change) VALUES (?, 'alertmanager', 'Boom', '#a', 'resolved', 'critical',"
                " ?, 'prod', ?, ?)",
                (f"k{at}", service, at, at),
            )

        release(100, "api", "deploy", T0 - DAY, [1])  # before the window: not counted
        release(1, "api", "deploy", T0 + 1 * DAY, [2, 4])  # good; leads 2 h, 4 h
        release(2, "api", "deploy", T0 + 3 * DAY, [10])  # lead 10 h; a critical alert 30 min later: failed
        critical("api", T0 + 3 * DAY + 0.5 * H)
        release(3, "api", "rollback", T0 + 3 * DAY + 2 * H, [])  # recovers release 2 after 2 h
        release(4, "api", "deploy", T0 + 3 * DAY + 5 * H, [1])  # 5 h after a failure: rework; lead 1 h
        release(5, "web", "deploy", T0 + 10 * DAY, [24], state="rolled_back")  # failed (rolled back); lead 24 h
        db.execute(
            "INSERT INTO events (at, kind, service, env, detail) VALUES (?, 'deploy.rolled_back', 'web', 'prod', ?)",
            (T0 + 10 * DAY + 3 * H, json.dumps({"release": 5, "ok": False})),
        )
        release(6, "web", "rollback", T0 + 10 * DAY + 3 * H, [])  # recovers release 5 after 3 h
        release(7, "web", "rollback", T0 + 10 * DAY + 4 * H, [])  # a rollback of the rollback: not a deploy
        release(8, "api", "deploy", T0 + 29 * DAY + 20 * H, [0.5])  # near the edge; lead 30 min
        critical("api", T0 + 29 * DAY + 20 * H + 600)  # failed ...
        release(9, "api", "deploy", T0 + 30 * DAY + 2 * H, [1])  # ... and recovered after the window: 6 h

    await store.write(tx)


async def test_the_four_keys_and_rework_by_hand(tmp_path: Path) -> None:
    store = Store(tmp_path / "d.db")
    await store.open()
    await history(store)
    d = await store.read(lambda db: compute(db, production="prod", start=T0, end=T0 + 30 * DAY))
    assert [x.release for x in d.deployments] == [1, 2, 4, 5, 8]
    assert d.frequency_per_day == 5 / 30
    assert d.lead_time_s == 3 * H  # median of 2, 4, 10, 1, 24, 0.5 hours
    assert d.change_failure_rate == 3 / 5  # releases 2 (alert), 5 (rolled back), 8 (alert)
    assert {x.release: x.failure_reason for x in d.deployments if x.failed} == {
        2: "critical alert during the bake",
        5: "rolled back",
        8: "critical alert during the bake",
    }
    assert d.recovery_s == 3 * H  # median of 2, 3 and 6 hours
    assert d.rework_rate == 1 / 5  # release 4
    assert d.level() == {"frequency": "high", "lead_time": "elite", "change_failure_rate": "low", "recovery": "high"}
    per_service = await store.read(
        lambda db: compute(db, production="prod", start=T0, end=T0 + 30 * DAY, service="web")
    )
    assert [x.release for x in per_service.deployments] == [5]
    await store.close()


async def test_no_deployments_is_no_data_not_zero(tmp_path: Path) -> None:
    store = Store(tmp_path / "e.db")
    await store.open()
    d = await store.read(lambda db: compute(db, production="prod", start=T0, end=T0 + 30 * DAY))
    assert d.deployments == [] and d.change_failure_rate is None and d.lead_time_s is None
    assert set(d.level().values()) == {"no data"}
    await store.close()
