"""Contract tests of the Asana tracker, through the real `asana` 5.x SDK, against the Asana emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import pytest
import pytest_asyncio

from adapters.asana import AsanaTracker
from bot.blocking import BlockingPool
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
from tests.emulators.asana import AsanaEmulator, EmuProject, EmuUser, EmuWorkspace
from tests.support import free_port

T = TypeVar("T")
ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"


class World:
    """The emulator with one workspace, the bot's project and its people."""

    def __init__(self, emu: AsanaEmulator, pool: BlockingPool) -> None:
        self.emu = emu
        self.pool = pool
        self.ws: EmuWorkspace = emu.add_workspace("Acme")
        self.project: EmuProject = emu.add_project("Ops", self.ws)
        self.alice: EmuUser = emu.add_user("Alice Liddell", self.ws)
        self.bob: EmuUser = emu.add_user("Bob Builder", self.ws)
        self.zed: EmuUser = emu.add_user("Zed Shaw", self.ws)  # in the workspace, mapped to nobody
        self.trackers: list[AsanaTracker] = []

    def tracker(self, **kw: object) -> AsanaTracker:
        args: dict[str, object] = {
            "token": self.emu.token,
            "workspace": self.ws.gid,
            "project": self.project.gid,
            "users": {ALICE: self.alice.gid, BOB: self.bob.gid},
            "pool": self.pool,
            "timeout": 2.0,
            "host": self.emu.host,
            "token_env": "OPS_ASANA_TOKEN",
            "retries": 0,  # the SDK's default would back off for seconds on every failure
        }
        args.update(kw)
        t = AsanaTracker(**args)  # type: ignore[arg-type]
        self.trackers.append(t)
        return t


@pytest.fixture
def pool() -> Iterator[BlockingPool]:
    p = BlockingPool(workers=4)
    yield p
    p.close()


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[AsanaEmulator]:
    async with AsanaEmulator() as e:
        yield e
        assert not e.server_errors


@pytest_asyncio.fixture
async def world(emu: AsanaEmulator, pool: BlockingPool) -> AsyncIterator[World]:
    w = World(emu, pool)
    yield w
    for t in w.trackers:
        await t.aclose()


@pytest.fixture
def asana_(world: World) -> AsanaTracker:
    return world.tracker()


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


async def test_asana_tracker_is_a_tracker(world: World) -> None:
    t: Tracker = world.tracker()
    assert t.name == "asana"


async def test_requests_carry_the_token_wrapped_bodies_and_opt_fields(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    item = await asana_.create(NewItem(title="Rotate certs", reporter=ALICE))
    await asana_.get(item.key)
    await asana_.list(ListFilter.OPEN, ALICE)
    await asana_.close(item.key, ALICE)
    assert len(emu.requests) >= 5
    for seen in emu.requests:
        assert seen.path.startswith("/api/1.0/")
        assert seen.headers["Authorization"] == f"Bearer {emu.token}"
        assert seen.status in (200, 201)
        assert "assignee.name" in seen.query["opt_fields"]
        if seen.method in ("POST", "PUT"):
            assert set(seen.body) == {"data"}
    assert not emu.seen("search")  # never the premium-only, eventually consistent search


# --- create -------------------------------------------------------------------------------------------


async def test_create_adds_a_task_to_the_project(asana_: AsanaTracker, world: World, emu: AsanaEmulator) -> None:
    emu.advance(90)
    item = await asana_.create(
        NewItem(title="Fix login", reporter=BOB, assignee=ALICE, description="Users see a 500 after SSO.")
    )
    task = emu.tasks[item.key]
    assert task.projects == [world.project.gid]
    assert task.name == "Fix login"
    assert task.assignee == world.alice.gid
    assert task.notes == "Users see a 500 after SSO.\n\nOpened from Slack by <@U0BOB> (opsloop)"
    assert task.tags == []
    assert item.key == task.gid
    assert item.url == f"https://app.asana.com/0/{world.project.gid}/{task.gid}"
    assert item.title == "Fix login"
    assert item.status is ItemStatus.OPEN
    assert item.reporter == BOB
    assert item.assignee == ALICE
    assert item.critical is False
    assert item.tracker == "asana"
    assert item.created_at == datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC)
    assert item.closed_at is None and item.closed_by is None
    assert not emu.seen("tags")  # no tag work for a normal item


async def test_critical_items_get_the_critical_tag_made_once(
    asana_: AsanaTracker, world: World, emu: AsanaEmulator
) -> None:
    first = await asana_.create(NewItem(title="Disk full on db01", reporter=ALICE, critical=True))
    second = await asana_.create(NewItem(title="Disk full on db02", reporter=ALICE, critical=True))
    assert first.critical and second.critical
    (tag,) = emu.tags.values()
    assert (tag.name, tag.color, tag.workspace) == ("critical", "dark-red", world.ws.gid)
    assert emu.tasks[first.key].tags == [tag.gid] == emu.tasks[second.key].tags
    assert len(emu.seen("create_tag")) == 1
    assert len(emu.seen("tags")) == 1  # looked up once, then cached
    assert (await asana_.get(first.key)).critical


async def test_an_existing_critical_tag_is_found_across_pages(world: World, emu: AsanaEmulator) -> None:
    for i in range(120):
        emu.add_tag(f"tag-{i:03d}", world.ws)
    existing = emu.add_tag("Critical", world.ws, "light-red")
    item = await world.tracker().create(NewItem(title="Pager storm", reporter=ALICE, critical=True))
    assert emu.tasks[item.key].tags == [existing.gid]
    assert not emu.seen("create_tag")
    pages = emu.seen("tags")
    assert len(pages) == 2 and "offset" in pages[1].query


async def test_create_for_an_unmapped_slack_user_says_how_to_map_them(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    with pytest.raises(AdapterError, match=r"^Asana: no Asana user is mapped to Slack user <@U0CAROL>") as err:
        await asana_.create(NewItem(title="x", reporter=ALICE, assignee=CAROL))
    assert "integrations.asana.users" in str(err.value)
    assert not emu.requests


# --- get ----------------------------------------------------------------------------------------------


async def test_get_by_gid_or_pasted_url(asana_: AsanaTracker, world: World, emu: AsanaEmulator) -> None:
    task = emu.add_task("Upgrade Postgres", world.project, assignee=world.zed, created_by=world.bob)
    p = world.project.gid
    for ref in (
        task.gid,
        f"https://app.asana.com/0/{p}/{task.gid}",
        f"https://app.asana.com/0/{p}/{task.gid}/f",
        f"<https://app.asana.com/1/{world.ws.gid}/project/{p}/task/{task.gid}?focus=true>",
    ):
        item = await asana_.get(ref)
        assert item.key == task.gid
        assert item.title == "Upgrade Postgres"
        assert item.status is ItemStatus.OPEN
        assert item.assignee == "asana:Zed Shaw"  # an Asana user no Slack user maps to
        assert item.reporter == BOB  # made in Asana by a mapped user


async def test_completed_tasks_are_done(asana_: AsanaTracker, world: World, emu: AsanaEmulator) -> None:
    task = emu.add_task("Shipped", world.project, completed=True, created_by=world.alice)
    item = await asana_.get(task.gid)
    assert item.status is ItemStatus.DONE
    assert item.closed_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert item.closed_by == ALICE  # completed_by, mapped back


async def test_get_of_an_unknown_task_is_not_found(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    with pytest.raises(AdapterNotFound, match=r"^Asana: no task 1299999999999999$"):
        await asana_.get("1299999999999999")
    assert emu.seen("task")[-1].status == 404
    # Something that is no Asana id at all is not sent.
    before = len(emu.requests)
    with pytest.raises(AdapterNotFound, match=r"^Asana: no task OPS-12 \(Asana task ids are numbers\)$"):
        await asana_.get("OPS-12")
    assert len(emu.requests) == before


async def test_a_task_of_another_project_is_not_ours(asana_: AsanaTracker, world: World, emu: AsanaEmulator) -> None:
    other = emu.add_project("Marketing", world.ws)
    task = emu.add_task("Launch party", other)
    with pytest.raises(AdapterNotFound, match=f"no task {task.gid} in project {world.project.gid}"):
        await asana_.get(task.gid)
    with pytest.raises(AdapterNotFound):
        await asana_.close(task.gid, ALICE)
    assert not task.completed


# --- list ---------------------------------------------------------------------------------------------


async def test_list_open_mine_and_all_newest_first(asana_: AsanaTracker, world: World, emu: AsanaEmulator) -> None:
    a = emu.add_task("a: alice's", world.project, assignee=world.alice)
    emu.advance(10)
    b = emu.add_task("b: bob's", world.project, assignee=world.bob)
    emu.advance(10)
    c = emu.add_task("c: alice's, done", world.project, assignee=world.alice, completed=True)
    emu.advance(10)
    e = await asana_.create(NewItem(title="e: alice's, critical", reporter=BOB, assignee=ALICE, critical=True))
    emu.add_task("elsewhere", emu.add_project("Marketing", world.ws))

    opened = await asana_.list(ListFilter.OPEN, ALICE)
    assert keys(opened) == [e.key, b.gid, a.gid]
    assert opened[0].critical and not opened[1].critical
    assert keys(await asana_.list(ListFilter.MINE, ALICE)) == [e.key, a.gid]
    assert keys(await asana_.list(ListFilter.MINE, BOB)) == [b.gid]
    everything = await asana_.list(ListFilter.ALL, ALICE)
    assert keys(everything) == [e.key, c.gid, b.gid, a.gid]
    assert [i.status for i in everything] == [ItemStatus.OPEN, ItemStatus.DONE, ItemStatus.OPEN, ItemStatus.OPEN]
    assert keys(await asana_.list(ListFilter.ALL, ALICE, limit=2)) == [e.key, c.gid]
    # open/mine ask Asana for incomplete tasks; all asks for everything
    queries = [s.query for s in emu.seen("tasks")]
    assert [q.get("completed_since") for q in queries] == ["now", "now", "now", None, None]
    assert all(q["project"] == world.project.gid for q in queries)


async def test_list_follows_next_page_offsets(world: World, emu: AsanaEmulator) -> None:
    made = []
    for i in range(7):
        made.append(emu.add_task(f"task {i}", world.project, assignee=world.bob if i % 3 == 0 else None))
        emu.advance(1)
    t = world.tracker(page_size=2)
    items = await t.list(ListFilter.OPEN, ALICE, limit=20)
    assert [i.key for i in items] == [x.gid for x in reversed(made)]
    pages = emu.seen("tasks")
    assert len(pages) == 4
    assert [p.query["limit"] for p in pages] == ["2", "2", "2", "2"]
    assert "offset" not in pages[0].query and all("offset" in p.query for p in pages[1:])
    assert [i.key for i in await t.list(ListFilter.MINE, BOB)] == [made[6].gid, made[3].gid, made[0].gid]


async def test_list_reads_its_own_writes(asana_: AsanaTracker) -> None:
    item = await asana_.create(NewItem(title="Just now", reporter=ALICE))
    assert [i.key for i in await asana_.list(ListFilter.OPEN, ALICE)] == [item.key]


async def test_list_mine_for_an_unmapped_user_is_a_clear_error(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    with pytest.raises(AdapterError, match="no Asana user is mapped to Slack user <@U0CAROL>"):
        await asana_.list(ListFilter.MINE, CAROL)
    assert not emu.requests
    assert await asana_.list(ListFilter.OPEN, CAROL) == []


# --- assign and close ---------------------------------------------------------------------------------


async def test_assign_sets_the_mapped_assignee(asana_: AsanaTracker, world: World, emu: AsanaEmulator) -> None:
    task = emu.add_task("Renew domain", world.project, assignee=world.zed)
    item = await asana_.assign(task.gid, BOB)
    assert item.assignee == BOB
    assert task.assignee == world.bob.gid
    (put,) = emu.seen("update_task")
    assert put.body == {"data": {"assignee": world.bob.gid}}
    with pytest.raises(AdapterError, match="no Asana user is mapped to Slack user <@U0CAROL>"):
        await asana_.assign(task.gid, CAROL)
    with pytest.raises(AdapterNotFound, match="no task 1299999999999999"):
        await asana_.assign("1299999999999999", BOB)


async def test_close_completes_the_task_once(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    item = await asana_.create(NewItem(title="Write postmortem", reporter=ALICE, assignee=BOB))
    emu.advance(120)
    closed = await asana_.close(item.key, ALICE)
    assert closed.status is ItemStatus.DONE
    assert closed.closed_by == ALICE
    assert closed.closed_at == datetime(2026, 1, 1, 0, 2, tzinfo=UTC)
    assert closed.assignee == BOB
    assert emu.tasks[item.key].completed
    again = await asana_.close(item.key, BOB)  # a double click: nothing more happens
    assert again.status is ItemStatus.DONE
    (put,) = emu.seen("update_task")
    assert put.body == {"data": {"completed": True}}
    assert [i.key for i in await asana_.list(ListFilter.OPEN, ALICE)] == []
    assert [i.key for i in await asana_.list(ListFilter.ALL, ALICE)] == [item.key]


async def test_check_says_who_we_are(asana_: AsanaTracker, world: World) -> None:
    assert await asana_.check() == "logged in to Asana as opsloop bot; new tasks go to Ops"
    other = world.emu.add_workspace("Elsewhere")
    with pytest.raises(AdapterError, match=f"is in workspace {world.ws.gid}, not {other.gid}"):
        await world.tracker(workspace=other.gid).check()


# --- errors -------------------------------------------------------------------------------------------


async def test_a_bad_token_names_the_variable(world: World) -> None:
    t = world.tracker(token="not-the-token")
    with pytest.raises(
        AdapterError, match=r"^Asana: refused the personal access token \(Not Authorized\); check OPS_ASANA_TOKEN$"
    ):
        await t.list(ListFilter.OPEN, ALICE)


async def test_rate_limit_says_when_to_try_again(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    emu.fail_next("tasks", status=429, retry_after=12)
    with pytest.raises(AdapterError, match=r"rate-limited \(You have made too many.*\); try again in 12 s$") as err:
        await asana_.list(ListFilter.OPEN, ALICE)
    assert not isinstance(err.value, AdapterUnavailable)
    assert len(emu.seen("tasks")) == 1  # not retried behind the user's back
    assert await asana_.list(ListFilter.OPEN, ALICE) == []


async def test_premium_only_answers_are_explained(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    emu.fail_next("tasks", status=402, message="This feature is only available to premium users.")
    with pytest.raises(AdapterError, match="answered 402 to list tasks: that needs a premium workspace"):
        await asana_.list(ListFilter.OPEN, ALICE)


async def test_server_errors_of_reads_are_retried_but_creates_are_not(world: World, emu: AsanaEmulator) -> None:
    t = world.tracker(retries=2)
    emu.fail_next("tasks", status=503, count=2)
    assert await t.list(ListFilter.OPEN, ALICE) == []
    assert [s.status for s in emu.seen("tasks")] == [503, 503, 200]
    emu.fail_next("create_task", status=500, message="Server Error")
    with pytest.raises(AdapterError, match=r"answered 500 \(Server Error\) to create a task"):
        await t.create(NewItem(title="x", reporter=ALICE))
    assert len(emu.seen("create_task")) == 1
    emu.fail_next("task", status=503, count=5)
    with pytest.raises(AdapterUnavailable, match=r"answered 503 \(unavailable\)"):
        await t.get("1299999999999999")


async def test_unreachable_asana(world: World) -> None:
    t = world.tracker(host=f"http://127.0.0.1:{free_port()}/api/1.0", retries=1)
    with pytest.raises(AdapterUnavailable, match=r"^Asana: can't reach http://127.0.0.1:\d+/api/1.0 \(.*refused"):
        await t.get("1200000000000001")


async def test_asana_going_down_and_up(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    item = await asana_.create(NewItem(title="a", reporter=ALICE))
    await emu.down()
    with pytest.raises(AdapterUnavailable):
        await asana_.get(item.key)
    await emu.up()
    assert (await asana_.get(item.key)).key == item.key


async def test_a_slow_asana_times_out_while_the_loop_stays_responsive(world: World, emu: AsanaEmulator) -> None:
    t = world.tracker(timeout=0.3)
    emu.slow("tasks", 3)
    result, beats = await heartbeat_while(t.list(ListFilter.OPEN, ALICE))
    assert isinstance(result, AdapterTimeout)
    assert str(result) == "Asana: no answer within 0.3 s (list tasks)"
    assert beats >= 5  # the loop kept running while the SDK blocked a pool thread


# --- the emulator keeps the adapter honest ------------------------------------------------------------


async def test_the_emulator_refuses_unwrapped_bodies_and_search_without_premium(
    world: World, emu: AsanaEmulator
) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {emu.token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(f"{emu.host}/tasks", json={"name": "x", "projects": [world.project.gid]}) as r:
            assert r.status == 400
            assert "data" in (await r.json())["errors"][0]["message"]
        async with s.get(f"{emu.host}/workspaces/{world.ws.gid}/tasks/search", params={"text": "x"}) as r:
            assert r.status == 402
        async with s.get(f"{emu.host}/tasks", params={"limit": "1"}) as r:
            assert r.status == 400  # no project, tag or assignee + workspace
        async with s.get(f"{emu.host}/tasks", params={"project": world.project.gid, "limit": "101"}) as r:
            assert r.status == 400
    assert json.loads(json.dumps(emu.requests[0].body))["name"] == "x"


async def test_concurrent_critical_items_share_one_new_tag(asana_: AsanaTracker, emu: AsanaEmulator) -> None:
    emu.slow("tags", 0.1, count=1)  # the others wait while the first looks the tag up
    items = await asyncio.gather(
        *(asana_.create(NewItem(title=f"Outage {i}", reporter=ALICE, critical=True)) for i in range(3))
    )
    assert all(i.critical for i in items)
    assert len(emu.seen("create_tag")) == 1
    assert len({tuple(emu.tasks[i.key].tags) for i in items}) == 1
