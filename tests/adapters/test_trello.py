"""Contract tests of the Trello tracker (aiohttp, plain REST) against the Trello emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import pytest
import pytest_asyncio

from adapters.trello import TrelloTracker
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    ItemStatus,
    ListFilter,
    NewItem,
    PlanItem,
    Tracker,
)
from tests.emulators.trello import EmuBoard, EmuMember, TrelloEmulator
from tests.support import free_port

T = TypeVar("T")
ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"


class World:
    """The emulator with one board and its people."""

    def __init__(self, emu: TrelloEmulator) -> None:
        self.emu = emu
        self.board: EmuBoard = emu.add_board("Ops")
        self.alice: EmuMember = emu.add_member("alice", board=self.board)
        self.bob: EmuMember = emu.add_member("bob", board=self.board)
        self.zed: EmuMember = emu.add_member("zed", board=self.board)  # on the board, mapped to nobody

    def tracker(self, **kw: object) -> TrelloTracker:
        args: dict[str, object] = {
            "key": self.emu.key,
            "token": self.emu.token,
            "board": self.board.id,
            "todo_list": "To Do",
            "done_list": "Done",
            "users": {ALICE: self.alice.id, BOB: self.bob.id},
            "timeout": 2.0,
            "base_url": self.emu.url,
            "key_env": "OPS_TRELLO_KEY",
            "token_env": "OPS_TRELLO_TOKEN",
        }
        args.update(kw)
        return TrelloTracker(**args)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[TrelloEmulator]:
    async with TrelloEmulator() as e:
        yield e
        assert not e.server_errors


@pytest.fixture
def world(emu: TrelloEmulator) -> World:
    return World(emu)


@pytest_asyncio.fixture
async def trello(world: World) -> AsyncIterator[TrelloTracker]:
    t = world.tracker()
    yield t
    await t.aclose()


def keys(items: Sequence[PlanItem]) -> list[str]:
    return [i.key for i in items]


async def heartbeat_while(coro: Awaitable[T]) -> tuple[T | BaseException, int]:
    """Run `coro` while counting how often a 10 ms heartbeat got the loop; (result or error, beats)."""
    beats = 0
    stop = asyncio.Event()

    async def beat() -> None:
        nonlocal beats
        while not stop.is_set():
            await asyncio.sleep(0.01)
            beats += 1

    task = asyncio.create_task(beat())
    try:
        result: T | BaseException = await coro
    except BaseException as err:
        result = err
    stop.set()
    await task
    return result, beats


# --- wire format --------------------------------------------------------------------------------------


def test_trello_tracker_is_a_tracker() -> None:
    t: Tracker = TrelloTracker(key="k", token="t", board="b", todo_list="To Do", done_list="Done", users={}, timeout=1)
    assert t.name == "trello"


async def test_key_and_token_travel_as_query_parameters(trello: TrelloTracker, emu: TrelloEmulator) -> None:
    item = await trello.create(NewItem(title="Rotate certs", reporter=ALICE))
    await trello.get(item.key)
    await trello.list(ListFilter.OPEN, ALICE)
    await trello.close(item.key, ALICE)
    assert len(emu.requests) >= 6
    for seen in emu.requests:
        assert seen.path.startswith("/1/")
        assert seen.query["key"] == emu.key
        assert seen.query["token"] == emu.token
        assert seen.status == 200
        if isinstance(seen.body, dict):
            assert "key" not in seen.body and "token" not in seen.body


# --- create -------------------------------------------------------------------------------------------


async def test_create_puts_a_card_at_the_top_of_the_todo_list(
    trello: TrelloTracker, world: World, emu: TrelloEmulator
) -> None:
    item = await trello.create(
        NewItem(title="Fix login", reporter=BOB, assignee=ALICE, description="Users see a 500 after SSO.")
    )
    card = emu.card(item.key)
    assert card.list_id == emu.list_named(world.board, "To Do").id
    assert card.name == "Fix login"
    assert card.member_ids == [world.alice.id]
    assert card.desc == "Users see a 500 after SSO.\n\nOpened from Slack by <@U0BOB> (opsloop)"
    assert item.key == card.short_link
    assert item.url == f"https://trello.com/c/{card.short_link}"
    assert item.title == "Fix login"
    assert item.status is ItemStatus.OPEN
    assert item.reporter == BOB
    assert item.assignee == ALICE
    assert item.critical is False
    assert item.tracker == "trello"
    assert item.created_at == datetime(2026, 1, 1, tzinfo=UTC)  # from the card id, on the emulator's clock
    assert item.closed_at is None and item.closed_by is None
    (post,) = emu.seen("create_card")
    assert post.body["pos"] == "top"
    assert "labels" not in {s.route for s in emu.requests}  # no label work for a normal item


async def test_critical_items_get_a_red_critical_label_made_once(
    trello: TrelloTracker, world: World, emu: TrelloEmulator
) -> None:
    first = await trello.create(NewItem(title="Disk full on db01", reporter=ALICE, critical=True))
    second = await trello.create(NewItem(title="Disk full on db02", reporter=ALICE, critical=True))
    assert first.critical and second.critical
    (label,) = [x for x in emu.labels.values() if x.board_id == world.board.id]
    assert (label.name, label.color) == ("critical", "red")
    assert emu.card(first.key).label_ids == [label.id] == emu.card(second.key).label_ids
    assert len(emu.seen("create_label")) == 1
    assert len(emu.seen("labels")) == 1  # looked up once, then cached
    assert (await trello.get(first.key)).critical


async def test_an_existing_critical_label_is_reused(trello: TrelloTracker, world: World, emu: TrelloEmulator) -> None:
    emu.add_label(world.board, "bug", "green")
    existing = emu.add_label(world.board, "Critical", "orange")
    item = await trello.create(NewItem(title="Pager storm", reporter=ALICE, critical=True))
    assert emu.card(item.key).label_ids == [existing.id]
    assert not emu.seen("create_label")
    assert item.critical


async def test_create_for_an_unmapped_slack_user_says_how_to_map_them(
    trello: TrelloTracker, emu: TrelloEmulator
) -> None:
    with pytest.raises(AdapterError, match=r"^Trello: no Trello member is mapped to Slack user <@U0CAROL>") as err:
        await trello.create(NewItem(title="x", reporter=ALICE, assignee=CAROL))
    assert "integrations.trello.users" in str(err.value)
    assert not emu.requests


# --- get ----------------------------------------------------------------------------------------------


async def test_get_by_short_link_id_or_pasted_url(trello: TrelloTracker, world: World, emu: TrelloEmulator) -> None:
    card = emu.add_card(world.board, "Doing", "Upgrade Postgres", members=(world.zed,))
    for ref in (
        card.short_link,
        card.id,
        f"https://trello.com/c/{card.short_link}/12-upgrade-postgres",
        f"<https://trello.com/c/{card.short_link}>",
    ):
        item = await trello.get(ref)
        assert item.key == card.short_link
        assert item.title == "Upgrade Postgres"
        assert item.status is ItemStatus.OPEN
        assert item.assignee == "trello:zed"  # a member no Slack user maps to
        assert item.reporter == ""  # not opened from Slack


async def test_done_means_in_the_done_list_or_archived(
    trello: TrelloTracker, world: World, emu: TrelloEmulator
) -> None:
    in_done = emu.add_card(world.board, "Done", "Shipped")
    archived = emu.add_card(world.board, "Doing", "Abandoned", closed=True)
    emu.advance(60)
    doing = emu.add_card(world.board, "Doing", "Ongoing")
    assert (await trello.get(in_done.short_link)).status is ItemStatus.DONE
    done = await trello.get(archived.short_link)
    assert done.status is ItemStatus.DONE
    assert done.closed_at == datetime(2026, 1, 1, tzinfo=UTC)  # dateLastActivity
    ongoing = await trello.get(doing.short_link)
    assert ongoing.status is ItemStatus.OPEN
    assert ongoing.created_at == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


async def test_get_of_an_unknown_card_is_not_found(trello: TrelloTracker, emu: TrelloEmulator) -> None:
    with pytest.raises(AdapterNotFound, match=r"^Trello: no card ZZZZ9999$"):
        await trello.get("ZZZZ9999")
    assert emu.seen("card")[-1].status == 404
    # Something that is no Trello id at all is not sent.
    before = len(emu.requests)
    with pytest.raises(AdapterNotFound, match=r"^Trello: no card OPS-12$"):
        await trello.get("OPS-12")
    assert len(emu.requests) == before


async def test_a_card_of_another_board_is_not_ours(trello: TrelloTracker, emu: TrelloEmulator) -> None:
    other = emu.add_board("Marketing")
    card = emu.add_card(other, "To Do", "Launch party")
    with pytest.raises(AdapterNotFound, match=r"no card .* on board Ops"):
        await trello.get(card.short_link)
    with pytest.raises(AdapterNotFound):
        await trello.close(card.short_link, ALICE)
    assert emu.card(card.id).list_id == emu.list_named(other, "To Do").id


# --- list ---------------------------------------------------------------------------------------------


async def test_list_open_mine_and_all_newest_first(trello: TrelloTracker, world: World, emu: TrelloEmulator) -> None:
    a = emu.add_card(world.board, "To Do", "a: alice's", members=(world.alice,))
    emu.advance(10)
    b = emu.add_card(world.board, "Doing", "b: bob's", members=(world.bob,))
    emu.advance(10)
    c = emu.add_card(world.board, "Done", "c: alice's, done", members=(world.alice,))
    emu.advance(10)
    d = emu.add_card(world.board, "To Do", "d: archived", closed=True)
    emu.advance(10)
    e = await trello.create(NewItem(title="e: alice's, critical", reporter=BOB, assignee=ALICE, critical=True))
    gone = emu.add_list(world.board, "Old stuff", closed=True)
    emu.add_card(world.board, "Old stuff", "f: in an archived list")
    assert gone.closed

    opened = await trello.list(ListFilter.OPEN, ALICE)
    assert keys(opened) == [e.key, b.short_link, a.short_link]
    assert opened[0].critical and not opened[1].critical
    assert keys(await trello.list(ListFilter.MINE, ALICE)) == [e.key, a.short_link]
    assert keys(await trello.list(ListFilter.MINE, BOB)) == [b.short_link]
    everything = await trello.list(ListFilter.ALL, ALICE)
    assert keys(everything) == [e.key, c.short_link, b.short_link, a.short_link]
    assert [i.status for i in everything] == [ItemStatus.OPEN, ItemStatus.DONE, ItemStatus.OPEN, ItemStatus.OPEN]
    assert d.short_link not in keys(everything)
    assert keys(await trello.list(ListFilter.ALL, ALICE, limit=2)) == [e.key, c.short_link]


async def test_list_mine_for_an_unmapped_user_is_a_clear_error(trello: TrelloTracker, emu: TrelloEmulator) -> None:
    with pytest.raises(AdapterError, match="no Trello member is mapped to Slack user <@U0CAROL>"):
        await trello.list(ListFilter.MINE, CAROL)
    assert not emu.requests
    # Open and all need no mapping.
    assert await trello.list(ListFilter.OPEN, CAROL) == []


# --- assign and close ---------------------------------------------------------------------------------


async def test_assign_makes_the_mapped_member_the_only_member(
    trello: TrelloTracker, world: World, emu: TrelloEmulator
) -> None:
    card = emu.add_card(world.board, "To Do", "Renew domain", members=(world.zed,))
    item = await trello.assign(card.short_link, BOB)
    assert item.assignee == BOB
    assert emu.card(card.id).member_ids == [world.bob.id]
    assert (await trello.get(card.short_link)).assignee == BOB
    with pytest.raises(AdapterError, match="no Trello member is mapped to Slack user <@U0CAROL>"):
        await trello.assign(card.short_link, CAROL)
    with pytest.raises(AdapterNotFound, match="no card QQQQ1111"):
        await trello.assign("QQQQ1111", BOB)


async def test_close_moves_the_card_to_the_done_list_once(
    trello: TrelloTracker, world: World, emu: TrelloEmulator
) -> None:
    item = await trello.create(NewItem(title="Write postmortem", reporter=ALICE, assignee=BOB))
    emu.advance(120)
    closed = await trello.close(item.key, ALICE)
    assert closed.status is ItemStatus.DONE
    assert closed.closed_by == ALICE
    assert closed.closed_at == datetime(2026, 1, 1, 0, 2, tzinfo=UTC)
    assert closed.assignee == BOB
    assert emu.card(item.key).list_id == emu.list_named(world.board, "Done").id
    again = await trello.close(item.key, BOB)  # a double click: nothing more happens
    assert again.status is ItemStatus.DONE
    assert len(emu.seen("update_card")) == 1
    assert (await trello.get(item.key)).status is ItemStatus.DONE


# --- configuration ------------------------------------------------------------------------------------


async def test_lists_may_be_given_by_id_and_are_resolved_once(world: World, emu: TrelloEmulator) -> None:
    todo, done = emu.list_named(world.board, "Doing"), emu.list_named(world.board, "Done")
    t = world.tracker(todo_list=todo.id, done_list=done.id, board=world.board.short_link)
    try:
        item = await t.create(NewItem(title="a", reporter=ALICE))
        assert emu.card(item.key).list_id == todo.id
        await t.close(item.key, ALICE)
        await t.get(item.key)
        assert len(emu.seen("board")) == 1
        assert "board Ops" in await t.check()
    finally:
        await t.aclose()


async def test_list_names_ignore_case(world: World, emu: TrelloEmulator) -> None:
    t = world.tracker(todo_list="to do", done_list="DONE")
    try:
        item = await t.create(NewItem(title="a", reporter=ALICE))
        assert emu.card(item.key).list_id == emu.list_named(world.board, "To Do").id
    finally:
        await t.aclose()


async def test_an_unknown_list_names_the_option_and_the_lists(world: World) -> None:
    t = world.tracker(done_list="Finished")
    try:
        with pytest.raises(AdapterError, match=r"no open list `Finished` \(integrations.trello.done_list\)") as err:
            await t.get("AbCd1234")
        assert "`To Do`, `Doing`, `Done`" in str(err.value)
    finally:
        await t.aclose()


async def test_an_unknown_board_points_at_the_config(world: World) -> None:
    t = world.tracker(board="0" * 24)
    try:
        with pytest.raises(AdapterNotFound, match=r"no board `0{24}`.*integrations.trello.board"):
            await t.list(ListFilter.OPEN, ALICE)
    finally:
        await t.aclose()


async def test_check_says_who_we_are(trello: TrelloTracker) -> None:
    text = await trello.check()
    assert text == "logged in to Trello as @opsloopbot; board Ops: new cards go to `To Do`, done is `Done`"


# --- errors -------------------------------------------------------------------------------------------


async def test_an_invalid_key_names_the_key_variable(world: World) -> None:
    t = world.tracker(key="0" * 32)
    try:
        with pytest.raises(AdapterError, match=r"^Trello: rejected the API key \(invalid key\); check OPS_TRELLO_KEY$"):
            await t.get("AbCd1234")
    finally:
        await t.aclose()


async def test_an_invalid_token_names_the_token_variable(world: World) -> None:
    t = world.tracker(token="secret-token-value")
    try:
        with pytest.raises(AdapterError, match=r"invalid token\); check OPS_TRELLO_TOKEN$") as err:
            await t.list(ListFilter.OPEN, ALICE)
        assert "secret-token-value" not in str(err.value)
    finally:
        await t.aclose()


async def test_rate_limit_says_when_to_try_again(trello: TrelloTracker, emu: TrelloEmulator) -> None:
    await trello.list(ListFilter.OPEN, ALICE)  # resolve the board first
    emu.fail_next("cards", status=429, retry_after=7)
    with pytest.raises(AdapterError, match=r"rate-limited \(API_TOKEN_LIMIT_EXCEEDED\).*try again in 7 s") as err:
        await trello.list(ListFilter.OPEN, ALICE)
    assert not isinstance(err.value, AdapterUnavailable)
    emu.fail_next("create_card", status=429)
    with pytest.raises(AdapterError, match=r"rate-limited.*try again in a few seconds"):
        await trello.create(NewItem(title="x", reporter=ALICE))
    assert len(await trello.list(ListFilter.OPEN, ALICE)) == 0  # and it works again


async def test_server_errors(trello: TrelloTracker, emu: TrelloEmulator) -> None:
    emu.fail_next("board", status=503)
    with pytest.raises(AdapterUnavailable, match=r"answered 503 \(unavailable\)"):
        await trello.get("AbCd1234")
    emu.fail_next("board", status=500, body="something broke")
    with pytest.raises(AdapterError, match=r"answered 500 \(something broke\)") as err:
        await trello.get("AbCd1234")
    assert emu.token not in str(err.value) and emu.key not in str(err.value)


async def test_unreachable_trello(world: World) -> None:
    t = world.tracker(base_url=f"http://127.0.0.1:{free_port()}/1/")
    try:
        with pytest.raises(AdapterUnavailable, match=r"^Trello: can't reach http://127.0.0.1:\d+ ") as err:
            await t.get("AbCd1234")
        assert world.emu.token not in str(err.value)
    finally:
        await t.aclose()


async def test_trello_going_down_and_up(trello: TrelloTracker, emu: TrelloEmulator) -> None:
    item = await trello.create(NewItem(title="a", reporter=ALICE))
    await emu.down()
    with pytest.raises(AdapterUnavailable):
        await trello.get(item.key)
    await emu.up()
    assert (await trello.get(item.key)).key == item.key


async def test_a_slow_trello_times_out_while_the_loop_stays_responsive(world: World, emu: TrelloEmulator) -> None:
    t = world.tracker(timeout=0.3)
    try:
        await t.list(ListFilter.OPEN, ALICE)
        emu.slow("cards", 3)
        result, beats = await heartbeat_while(t.list(ListFilter.OPEN, ALICE))
        assert isinstance(result, AdapterTimeout)
        assert str(result).startswith("Trello: no answer within 0.3 s")
        assert beats >= 5  # the loop kept running while we waited
    finally:
        await t.aclose()


async def test_concurrent_critical_items_share_one_new_label(trello: TrelloTracker, emu: TrelloEmulator) -> None:
    emu.slow("labels", 0.1, count=1)  # both creates wait on the first label lookup
    items = await asyncio.gather(
        *(trello.create(NewItem(title=f"Outage {i}", reporter=ALICE, critical=True)) for i in range(3))
    )
    assert all(i.critical for i in items)
    assert len(emu.seen("create_label")) == 1
    assert len({tuple(emu.card(i.key).label_ids) for i in items}) == 1


async def test_a_board_reference_that_is_no_trello_id_points_at_the_config(world: World) -> None:
    t = world.tracker(board="Ops board")
    try:
        with pytest.raises(AdapterNotFound, match=r"no board `Ops board`.*integrations\.trello\.board"):
            await t.get("AbCd1234")
    finally:
        await t.aclose()
