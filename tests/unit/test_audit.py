"""The audit chain: every edit, deletion or truncation is found and named."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.audit import AuditEntry, AuditLog, Outcome
from bot.clock import FakeClock
from bot.redact import Redactor
from bot.store import Store, rows


@pytest.fixture
async def log(tmp_path: Path):
    store = Store(tmp_path / "a.db")
    await store.open()
    audit = AuditLog(store, Redactor(["s3cr3t-value"]), FakeClock())
    for i in range(6):
        await audit.record(AuditEntry(f"U{i}", "plan.new", Outcome.OK, "C1", f"OPS-{i}", None, {"i": i}))
    yield audit, store
    await store.close()


async def test_an_intact_log_verifies(log) -> None:
    audit, _ = log
    result = await audit.verify()
    assert result.ok and result.checked == 6


@pytest.mark.parametrize(
    ("tamper", "bad_row", "words"),
    [
        ("UPDATE audit SET outcome = 'refused' WHERE id = 3", 3, "edited"),
        ("UPDATE audit SET detail = '{\"i\": 99}' WHERE id = 5", 5, "edited"),
        ("DELETE FROM audit WHERE id = 2", 3, "deleted"),
        ("DELETE FROM audit WHERE id >= 5", 5, "removed from the end"),
    ],
)
async def test_tampering_is_found(log, tamper: str, bad_row: int, words: str) -> None:
    audit, store = log
    await store.write(lambda db: db.execute(tamper))
    result = await audit.verify()
    assert not result.ok
    assert result.first_bad == bad_row
    assert words in result.problem


async def test_a_forged_row_with_a_recomputed_hash_still_breaks_the_link(log) -> None:
    audit, store = log
    # Rewrite row 3 and its own hash consistently: the next row's prev_hash no longer matches.
    from bot.audit import _digest, _fields

    def forge(db):
        r = rows(db, "SELECT * FROM audit WHERE id = 3")[0]
        r["actor"] = "UMALLORY"
        db.execute(
            "UPDATE audit SET actor = ?, hash = ? WHERE id = 3", (r["actor"], _digest(r["prev_hash"], _fields(r)))
        )

    await store.write(forge)
    result = await audit.verify()
    assert not result.ok and result.first_bad == 4


async def test_secrets_are_redacted_before_they_are_written(log) -> None:
    audit, _ = log
    await audit.record(
        AuditEntry(
            "U1",
            "feedback.send",
            Outcome.OK,
            "C1",
            'feedback "password=hunter2 and s3cr3t-value"',
            "token=abc123",
            {"k": "s3cr3t-value"},
        )
    )
    last = (await audit.recent(1))[0]
    text = f"{last.target} {last.reason} {last.detail}"
    assert "hunter2" not in text and "s3cr3t" not in text and "abc123" not in text
    assert (await audit.verify()).ok


async def test_entries_recorded_over_many_passes_of_the_loop_are_each_committed_before_their_caller_returns(
    log,
) -> None:
    audit, store = log

    async def one(i: int) -> int:
        for _ in range(i % 7):  # arrive over several passes of the loop, while earlier writes are on their way
            await asyncio.sleep(0)
        await audit.record(AuditEntry(f"U{i}", "core.help", Outcome.OK, "C1", None, None, {"n": i}))
        # Returned: the entry is committed, so a reader sees it.
        seen = await store.read(lambda db: rows(db, "SELECT COUNT(*) AS n FROM audit WHERE actor = ?", (f"U{i}",)))
        return int(seen[0]["n"])

    assert await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(6, 306))), 30) == [1] * 300
    result = await audit.verify()
    assert result.ok and result.checked == 306


async def test_recording_into_a_closed_store_fails_instead_of_waiting_forever(log) -> None:
    audit, store = log
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await asyncio.wait_for(audit.record(AuditEntry("U1", "core.help", Outcome.OK)), 5)


async def test_rows_of_any_text_link_and_verify_as_written(log) -> None:
    # The hashed text of a row is made in two parts around its id; verify makes it whole: they must agree.
    audit, store = log
    odd = [
        AuditEntry("U1", "plan.new", Outcome.OK, None, None, None, {}),
        AuditEntry(
            "U2", "plan.new", Outcome.REFUSED, "C1", 'quote " and \\ back\nslash', "ünïcode ✓ 🚀", {"a": [1, 2.5]}
        ),
        AuditEntry(
            "U3", "deploy.run", Outcome.ERROR, "C1", "token s3cr3t-value here", "\u2028\x00", {"n": {"x": None}}
        ),
        AuditEntry("Ü4", "x.y", Outcome.APPROVED, "C\u00e9", "", "", {"ms": 1e-7, "big": 10**18, "t": True}),
    ]
    for e in odd:
        await audit.record(e)
    await store.write(lambda db: audit.append_in(db, odd[1]))
    result = await audit.verify()
    assert result.ok and result.checked == 6 + len(odd) + 1, result.problem
    stored = await store.read(lambda db: rows(db, "SELECT target, reason FROM audit WHERE action = 'deploy.run'"))
    assert stored == [{"target": "token [redacted] here", "reason": "\u2028\x00"}]
    # Rows written before the text was made by hand were hashed over the JSON encoder's text: it is the same.
    from bot.audit import _around_id, _fields

    for r in await store.read(lambda db: rows(db, "SELECT * FROM audit")):
        f = _fields(r)
        before, after = _around_id(
            f["action"], f["actor"], f["at"], f["channel"], f["detail"], f["outcome"], f["reason"], f["target"]
        )
        assert f"{before}{f['id']}{after}" == json.dumps(f, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


async def test_details_are_stored_as_json_dumps_writes_them(log) -> None:
    # The detail is encoded by the JSON encoder's C core made once; its text must be json.dumps's, the one
    # older rows hold, for any value a caller passes (nested, unicode, non-finite, not JSON at all).
    audit, store = log
    import datetime

    details = [
        {},
        {"source": "slash", "ms": 0.05},
        {"b": [1, 2, {"z": None, "a": True}], "a": 'ünï ✓\n"q"', "n": -0.0},
        {"when": datetime.date(2026, 11, 26), "inf": float("inf"), "nan": float("nan"), "big": 10**20},
        {"nested": {"deep": [[[]], {"k": ("t", 1)}]}},
    ]
    for i, d in enumerate(details):
        await audit.record(AuditEntry("U1", "x.detail", Outcome.OK, "C1", str(i), None, d))
    stored = await store.read(lambda db: rows(db, "SELECT detail FROM audit WHERE action = 'x.detail' ORDER BY id"))
    assert [r["detail"] for r in stored] == [json.dumps(d, sort_keys=True, default=str) for d in details]
    assert (await audit.verify()).ok


async def test_long_targets_and_reasons_are_masked_whole_then_cut(log) -> None:
    # A secret across the cut must not leave its first characters behind (cut first, "s3cr3t-va" would).
    audit, store = log
    from bot.audit import REASON_CHARS, TARGET_CHARS

    target = "x" * (TARGET_CHARS - 4) + "s3cr3t-value and more"
    reason = "y" * (REASON_CHARS - 3) + "s3cr3t-value"
    await audit.record(AuditEntry("U1", "x.long", Outcome.ERROR, "C1", target, reason))
    [row] = await store.read(lambda db: rows(db, "SELECT target, reason FROM audit WHERE action = 'x.long'"))
    assert len(row["target"]) == TARGET_CHARS and len(row["reason"]) == REASON_CHARS
    assert "s3c" not in row["target"] and "s3c" not in row["reason"]
    assert row["target"].startswith("x" * (TARGET_CHARS - 4) + "[red")
    assert (await audit.verify()).ok
