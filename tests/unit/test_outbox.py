"""The outbox against the Slack emulator through the real SlackTransport (slack_sdk AsyncWebClient)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.metrics import Metrics
from bot.outbox import Outbox, Pacing
from bot.redact import Redactor
from bot.slack import SlackTransport, web_client
from bot.store import Store, rows
from tests.emulators.slack import SlackEmulator
from tests.support import slack_workspace

FAST = Pacing(
    post_per_channel=50,
    post_burst=5,
    update_per_second=100,
    update_burst=10,
    other_per_second=100,
    other_burst=10,
    backoff_base=0.02,
    backoff_max=0.2,
)


def msg(text: str) -> dict[str, object]:
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


@pytest.fixture
async def emu():
    async with SlackEmulator() as e:
        slack_workspace(e)
        yield e


@pytest.fixture
async def box(tmp_path: Path, emu: SlackEmulator):
    store = Store(tmp_path / "o.db")
    await store.open()
    metrics = Metrics()
    ob = Outbox(
        store,
        SlackTransport(web_client(emu.bot_token, emu.api_url)),
        metrics,
        SystemClock(),
        Redactor(["sekrit-token-value"]),
        FAST,
    )
    await ob.start()
    yield ob
    await ob.stop()
    await store.close()


async def test_posts_keep_their_order_within_a_channel(box: Outbox, emu: SlackEmulator) -> None:
    for i in range(12):
        await box.post("C0OPS", msg(f"m{i}"))
    assert await box.drain(10)
    assert [m.text for m in emu.messages("C0OPS")] == [f"m{i}" for i in range(12)]


async def test_a_key_posts_once_and_then_updates_in_place(box: Outbox, emu: SlackEmulator) -> None:
    await box.post("C0OPS", msg("v1"), key="card:1")
    assert await box.drain(10)
    await box.post("C0OPS", msg("v2"), key="card:1")  # same logical message: an update, not a second post
    await box.update("card:1", msg("v3"))
    assert await box.drain(10)
    posted = emu.messages("C0OPS")
    assert [m.text for m in posted] == ["v3"]
    ref = await box.ref("card:1")
    assert ref is not None and ref.ts == posted[0].ts and ref.channel == "C0OPS"


async def test_pending_updates_of_one_message_coalesce(box: Outbox, emu: SlackEmulator) -> None:
    emu.slow("chat.postMessage", 0.3, count=1)
    await box.post("C0OPS", msg("v0"), key="storm")
    await asyncio.sleep(0.05)  # the post is in flight now
    for i in range(1, 40):
        await box.update("storm", msg(f"v{i}"))
    assert await box.drain(10)
    assert emu.messages("C0OPS")[0].text == "v39"
    assert len(emu.calls_to("chat.update")) == 1  # 39 updates became one


async def test_replies_wait_for_their_parent_and_land_in_its_thread(box: Outbox, emu: SlackEmulator) -> None:
    emu.slow("chat.postMessage", 0.2, count=1)
    await box.post("C0OPS", msg("parent"), key="release:1")
    await box.post("C0OPS", msg("reply 1"), thread_key="release:1")
    await box.post("C0OPS", msg("reply 2"), thread_key="release:1")
    assert await box.drain(10)
    parent = emu.messages("C0OPS")[0]
    assert parent.text == "parent"
    assert [m.text for m in emu.replies("C0OPS", parent.ts)] == ["reply 1", "reply 2"]


async def test_dedupe_key_makes_a_write_happen_once(box: Outbox, emu: SlackEmulator) -> None:
    await asyncio.gather(*(box.post("C0OPS", msg("once"), dedupe="alert:abc") for _ in range(5)))
    assert await box.drain(10)
    assert [m.text for m in emu.messages("C0OPS")] == ["once"]


async def test_429_retry_after_is_honoured_and_nothing_is_lost(box: Outbox, emu: SlackEmulator) -> None:
    emu.fail_next("chat.postMessage", status=429, count=2, retry_after=1)
    for i in range(3):
        await box.post("C0OPS", msg(f"r{i}"))
    assert await box.drain(15)
    assert [m.text for m in emu.messages("C0OPS")] == ["r0", "r1", "r2"]
    calls = emu.calls_to("chat.postMessage")
    assert [c.status for c in calls[:2]] == [429, 429]
    # The retry after the second 429 waited for Retry-After (1 s), it did not hammer Slack.
    assert calls[2].at - calls[1].at >= 0.9


async def test_5xx_and_timeouts_are_retried_with_backoff(box: Outbox, emu: SlackEmulator) -> None:
    emu.fail_next("chat.postMessage", status=500, count=3)
    emu.fail_next("chat.update", status=503, count=2)
    await box.post("C0OPS", msg("a"), key="k")
    await box.update("k", msg("b"))
    assert await box.drain(15)
    assert [m.text for m in emu.messages("C0OPS")] == ["b"]
    assert sum(1 for c in emu.calls_to("chat.postMessage") if c.status == 500) == 3


async def test_permanent_errors_are_given_up_and_do_not_block_the_channel(box: Outbox, emu: SlackEmulator) -> None:
    bad = {"text": "bad", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]}
    await box.post("C0OPS", bad)
    await box.post("C0OPS", msg("after"))
    assert await box.drain(10)
    assert [m.text for m in emu.messages("C0OPS")] == ["after"]
    failed = await box._store.read(lambda db: rows(db, "SELECT error FROM outbox WHERE state = 'failed'"))
    assert len(failed) == 1 and "invalid_blocks" in failed[0]["error"]


async def test_channels_are_delivered_independently(box: Outbox, emu: SlackEmulator) -> None:
    emu.fail_for("chat.postMessage", 0.5, status=500)  # everything fails for a while …
    await box.post("C0OPS", msg("ops"))
    await box.post("C0FB", msg("fb"))
    assert await box.drain(15)  # … and then both channels catch up
    assert [m.text for m in emu.messages("C0OPS")] == ["ops"]
    assert [m.text for m in emu.messages("C0FB")] == ["fb"]


async def test_payloads_are_redacted_before_they_are_stored(box: Outbox, emu: SlackEmulator) -> None:
    await box.post("C0OPS", msg("token is sekrit-token-value and xoxb-1234-5678-abcdefghij"))
    stored = await box._store.read(lambda db: rows(db, "SELECT payload FROM outbox"))
    assert "sekrit" not in stored[0]["payload"] and "xoxb-1234" not in stored[0]["payload"]
    assert await box.drain(10)
    assert "sekrit" not in emu.messages("C0OPS")[0].text


async def test_pacing_stays_under_slacks_per_channel_limit(tmp_path: Path, emu: SlackEmulator) -> None:
    # The emulator enforces 1 post/s per channel with a burst of 5; paced at the real limits, opsloop
    # never sees a 429 even when 8 messages are queued at once.
    store = Store(tmp_path / "p.db")
    await store.open()
    ob = Outbox(
        store,
        SlackTransport(web_client(emu.bot_token, emu.api_url)),
        Metrics(),
        SystemClock(),
        Redactor(),
        Pacing(post_per_channel=1.0, post_burst=4),
    )
    await ob.start()
    try:
        for i in range(7):
            await ob.post("C0OPS", msg(f"p{i}"))
        assert await ob.drain(20)
    finally:
        await ob.stop()
        await store.close()
    assert len(emu.messages("C0OPS")) == 7
    assert emu.rate_limited_count == 0


async def test_a_post_that_reached_slack_before_a_crash_is_not_posted_again(tmp_path: Path, emu: SlackEmulator) -> None:
    # Simulate the crash window: the row is `sending` and Slack has the message (with our marker).
    store = Store(tmp_path / "c.db")
    await store.open()
    transport = SlackTransport(web_client(emu.bot_token, emu.api_url))
    ob = Outbox(store, transport, Metrics(), SystemClock(), Redactor(), FAST)
    await store.write(lambda db: ob.post_in(db, "C0OPS", msg("card"), key="card:9", dedupe="post:card:9"))
    rows_now = await store.read(lambda db: rows(db, "SELECT id, dedupe_key FROM outbox"))
    channel, ts = await transport.post("C0OPS", msg("card"), thread_ts=None, marker=rows_now[0]["dedupe_key"])
    await store.write(lambda db: db.execute("UPDATE outbox SET state = 'sending', started_at = created_at"))
    await ob.start()  # recovery finds the message by its metadata marker
    try:
        assert await ob.drain(10)
    finally:
        await ob.stop()
    assert [m.ts for m in emu.messages("C0OPS")] == [ts]
    ref = await ob.ref("card:9")
    assert ref is not None and ref.ts == ts and ref.channel == channel
    meta = emu.messages("C0OPS")[0].metadata
    assert meta is not None and json.dumps(meta).count("post:card:9") == 1
    await store.close()


async def test_a_row_is_claimed_once_and_with_its_newest_payload(tmp_path: Path, emu: SlackEmulator) -> None:
    # The worker reads the list of heads, then delivers; between the two the row may be delivered by a
    # delivery that just finished, or coalesced with a newer update. The claim sees the row as it is.
    store = Store(tmp_path / "claim.db")
    await store.open()
    ob = Outbox(store, SlackTransport(web_client(emu.bot_token, emu.api_url)), Metrics(), SystemClock(), Redactor())
    await store.write(lambda db: ob.post_in(db, "C0OPS", msg("v1"), key="k"))
    await store.write(lambda db: ob.update_in(db, "k", msg("v2")))
    [head] = await store.read(lambda db: rows(db, "SELECT * FROM outbox"))
    claimed = await store.write(lambda db: ob._claim(db, head["id"], 0.0))
    again = await store.write(lambda db: ob._claim(db, head["id"], 0.0))
    assert claimed is not None and json.loads(claimed["payload"])["text"] == "v2"
    assert again is None
    await store.close()


async def test_an_edit_that_changes_nothing_is_not_sent(box: Outbox, emu: SlackEmulator) -> None:
    await box.post("C0OPS", msg("same"), key="card:s")
    assert await box.drain(10)
    for _ in range(5):
        await box.update("card:s", msg("same"))
    await box.update("card:s", msg("new"))
    assert await box.drain(10)
    await box.update("card:s", msg("new"))
    assert await box.drain(10)
    assert len(emu.calls_to("chat.update")) == 1 and emu.messages("C0OPS")[0].text == "new"


async def test_a_channel_named_by_config_becomes_its_id_for_edits_pins_and_restarts(
    tmp_path: Path, emu: SlackEmulator
) -> None:
    # Config names channels (`#ops`); Slack edits, pins and reads history only by id (the emulator, like
    # Slack, answers channel_not_found to a name there).
    store = Store(tmp_path / "names.db")
    await store.open()
    transport = SlackTransport(web_client(emu.bot_token, emu.api_url))
    ob = Outbox(store, transport, Metrics(), SystemClock(), Redactor(), FAST)
    await ob.start()
    await ob.post("#ops", msg("notice v1"), key="notice")
    assert await ob.drain(10)
    await ob.post("#ops", msg("second"))  # queued by name: the outbox knows the id now
    await store.write(lambda db: ob.pin_in(db, "notice"))
    await ob.update("notice", msg("notice v2"))
    queued = await store.read(
        lambda db: {r["channel"] for r in rows(db, "SELECT channel FROM outbox WHERE state = 'pending'")}
    )
    assert queued == {"C0OPS"}  # one queue (one pace, one order) for the channel, whatever it was called
    assert await ob.drain(10)
    [notice] = emu.pinned("C0OPS")
    assert notice.text == "notice v2" and [m.text for m in emu.messages("C0OPS")] == ["notice v2", "second"]
    await ob.stop()

    # A restart: the crash left a post `sending` under the name; recovery finds it by id, and the ref and
    # every later edit and unpin use the id.
    ob2 = Outbox(
        store, SlackTransport(web_client(emu.bot_token, emu.api_url)), Metrics(), SystemClock(), Redactor(), FAST
    )
    await store.write(lambda db: db.execute("DELETE FROM channel_ids"))
    await store.write(lambda db: ob2.post_in(db, "#ops", msg("card"), key="card:1", dedupe="post:card:1"))
    [row] = await store.read(lambda db: rows(db, "SELECT dedupe_key FROM outbox WHERE ref_key = 'card:1'"))
    await transport.post("#ops", msg("card"), thread_ts=None, marker=row["dedupe_key"])
    await store.write(
        lambda db: db.execute("UPDATE outbox SET state = 'sending', started_at = created_at WHERE ref_key = 'card:1'")
    )
    await ob2.start()
    try:
        ref = await ob2.ref("card:1")
        assert ref is not None and ref.channel == "C0OPS"
        await ob2.update("card:1", msg("card v2"))
        await store.write(lambda db: ob2.pin_in(db, "notice", pinned=False))
        assert await ob2.drain(10)
    finally:
        await ob2.stop()
    assert [m.text for m in emu.messages("C0OPS")] == ["notice v2", "second", "card v2"]
    assert emu.pinned("C0OPS") == [] and not [c for c in emu.calls if c.error]
    await store.close()


async def test_the_configured_channels_are_queued_by_id_from_the_start(tmp_path: Path, emu: SlackEmulator) -> None:
    store = Store(tmp_path / "start.db")
    await store.open()
    ob = Outbox(
        store, SlackTransport(web_client(emu.bot_token, emu.api_url)), Metrics(), SystemClock(), Redactor(), FAST
    )
    await ob.start(["#ops", "#nowhere", "C0FB"])  # a channel the bot cannot see is learned later, if ever
    try:
        await ob.post("#ops", msg("card"))
        await ob.post("#nowhere", msg("lost"))
        queued = await store.read(lambda db: [r["channel"] for r in rows(db, "SELECT channel FROM outbox ORDER BY id")])
        assert queued == ["C0OPS", "#nowhere"]
        assert await store.read(lambda db: rows(db, "SELECT name, id FROM channel_ids")) == [
            {"name": "#ops", "id": "C0OPS"}
        ]
    finally:
        await ob.stop()
        await store.close()


def test_the_config_names_its_channels() -> None:
    from bot.config import Config

    cfg = Config.model_validate(
        {
            "channels": {"default": "#ops", "approvals": "#approvals"},
            "services": {"api": {"channel": "#team-api"}},
        }
    )
    assert cfg.channel_names() == {"#ops", "#approvals", "#team-api"}
