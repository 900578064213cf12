"""The store: group commit, isolation of failing writes, read-after-write, and clear start-up errors."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from bot.errors import StartupError
from bot.store import Store, rows


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(tmp_path / "s.db")
    await s.open()
    yield s
    await s.close()


async def test_concurrent_writes_share_commits_and_all_land(store: Store) -> None:
    def ins(i: int):
        return lambda db: db.execute("INSERT INTO events (at, kind) VALUES (?, 'x')", (i,)).lastrowid

    ids = await asyncio.gather(*(store.write(ins(i)) for i in range(500)))
    assert len(set(ids)) == 500
    n = await store.read(lambda db: db.execute("SELECT count(*) FROM events").fetchone()[0])
    assert n == 500
    assert store.commits < 500  # batched: fewer commits than writes


async def test_a_failing_write_rolls_back_alone(store: Store) -> None:
    def bad(db):
        db.execute("INSERT INTO events (at, kind) VALUES (1, 'bad')")
        raise RuntimeError("boom")

    good = store.write(lambda db: db.execute("INSERT INTO events (at, kind) VALUES (2, 'good')"))
    results = await asyncio.gather(store.write(bad), good, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    kinds = await store.read(lambda db: [r["kind"] for r in rows(db, "SELECT kind FROM events")])
    assert kinds == ["good"]


async def test_reopening_keeps_data_and_skips_applied_migrations(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db")
    await s.open()
    await s.write(lambda db: db.execute("INSERT INTO events (at, kind) VALUES (1, 'kept')"))
    await s.close()
    s2 = Store(tmp_path / "s.db")
    await s2.open()
    assert await s2.read(lambda db: rows(db, "SELECT kind FROM events")) == [{"kind": "kept"}]
    mode = await s2.write(lambda db: db.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"
    await s2.close()


async def test_missing_directory_is_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        await Store(tmp_path / "nope" / "x.db").open()


async def test_locked_database_is_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, timeout=0.1)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    s = Store(path)
    s_busy = 0.2
    import bot.store as store_mod

    orig = store_mod._connect
    store_mod._connect = lambda p, readonly=False, busy_timeout=5.0: orig(p, readonly=readonly, busy_timeout=s_busy)
    try:
        with pytest.raises(StartupError, match="locked by another process"):
            await s.open()
    finally:
        store_mod._connect = orig
        holder.rollback()
        holder.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
async def test_unwritable_database_is_a_sentence(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StartupError, match="Cannot write the database"):
            await Store(ro / "x.db").open()
    finally:
        ro.chmod(0o700)


async def test_readonly_file_is_a_sentence(tmp_path: Path) -> None:
    # As root, file permissions don't stop writes; a corrupt file is a refusal every user meets.
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StartupError, match="not an opsloop database"):
        await Store(bad).open()


def test_an_upgrade_numbers_the_rollback_that_ended_each_release(tmp_path: Path) -> None:
    # m011 adds `ended_by`; releases rolled back before it get the number their message gave, so a rollback
    # in flight across the upgrade that then fails still finds the release it meant to undo.
    from sqlite_utils import Database

    from bot.store import MIGRATIONS, _connect

    db = Database(_connect(str(tmp_path / "old.db")), execute_plugins=False)
    MIGRATIONS.apply(db, stop_before="m011_release_ended_by")
    for state, message in [
        ("rolled_back", "Rolled back by release 7, requested by <@U0BOB>."),
        ("rolled_back", "Rolled back to 1.1.0: the health check failed."),
        ("succeeded", "Baked without trouble."),
        ("failed", "Release 12 tried to roll this back and failed; this version may still be running."),
        ("rolled_back", "Rolled back by release x, requested by <@U0BOB>."),
    ]:
        db.execute(
            "INSERT INTO releases (action, service, env, requester, state, channel, message, created_at, updated_at)"
            " VALUES ('deploy', 'shop', 'prod', 'U0BOB', ?, 'C1', ?, 1, 1)",
            (state, message),
        )
    db.conn.commit()
    MIGRATIONS.apply(db)
    ended = [r["ended_by"] for r in rows(db, "SELECT ended_by FROM releases ORDER BY id")]
    assert ended == [7, None, None, None, None]
