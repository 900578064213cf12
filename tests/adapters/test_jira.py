"""Contract tests of the Jira tracker: the real `jira` client against the Jira emulator, Cloud and Server.

Every test that takes the `emu` fixture runs twice, once per deployment type, because the client
takes different paths on each (search endpoint and pagination, user identifiers, auth).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from jira import JIRAError

from adapters.jira import JiraTracker
from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    ItemStatus,
    ListFilter,
    NewItem,
    Tracker,
)
from tests.emulators.jira import EmuTransition, JiraEmulator
from tests.support import free_port

ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"
# Jira's own ids: accountIds on Cloud, user names on Server/DC.
JIRA_IDS = {
    "Cloud": {ALICE: "5b10ac8d82e05b22cc7d4ef5", BOB: "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077"},
    "Server": {ALICE: "alice", BOB: "bob.smith"},
}


@pytest.fixture
def pool() -> Iterator[BlockingPool]:
    p = BlockingPool(workers=4, default_timeout=5.0)
    yield p
    p.close()


@pytest_asyncio.fixture(params=["Cloud", "Server"])
async def emu(request: pytest.FixtureRequest) -> AsyncIterator[JiraEmulator]:
    async with JiraEmulator(deployment=request.param) as e:
        ids = JIRA_IDS[e.deployment]
        e.add_user(ids[ALICE], "Alice Doe")
        e.add_user(ids[BOB], "Bob Smith")
        e.add_user("carol" if e.deployment == "Server" else "70121:carol", "Carol Unmapped")
        e.add_project("OPS")
        yield e
        assert not e.server_errors


def jira_id(emu: JiraEmulator, slack_id: str) -> str:
    return JIRA_IDS[emu.deployment][slack_id]


def make_tracker(emu: JiraEmulator, pool: BlockingPool, **kw: Any) -> JiraTracker:
    """Cloud: email + API token (basic); Server: a personal access token (bearer), no user."""
    options: dict[str, Any] = {
        "user": emu.user if emu.cloud else None,
        "token": emu.token,
        "project": "OPS",
        "users": {ALICE: jira_id(emu, ALICE), BOB: jira_id(emu, BOB)},
        "pool": pool,
        "timeout": 5.0,
        "token_env": "JIRA_TOKEN",
    }
    options.update(kw)
    return JiraTracker(emu.url, **options)


@pytest_asyncio.fixture
async def jira(emu: JiraEmulator, pool: BlockingPool) -> AsyncIterator[JiraTracker]:
    t = make_tracker(emu, pool)
    yield t
    t.shutdown()


def user_ref(emu: JiraEmulator, slack_id: str) -> dict[str, str]:
    return {"accountId" if emu.cloud else "name": jira_id(emu, slack_id)}


# --- shape and construction ------------------------------------------------------------------------------


def test_jira_tracker_is_a_tracker(pool: BlockingPool) -> None:
    t: Tracker = JiraTracker(
        "https://x.atlassian.net/", user="a@b.c", token="t", project="ops", users={}, pool=pool, timeout=1
    )
    assert t.name == "jira"
    assert isinstance(t, JiraTracker) and t.url == "https://x.atlassian.net" and t.project == "OPS"


async def test_a_dead_jira_does_not_break_construction_only_the_calls(emu: JiraEmulator, pool: BlockingPool) -> None:
    await emu.down()
    jira = make_tracker(emu, pool)  # builds no client: the client's constructor would call serverInfo
    assert emu.requests == []
    with pytest.raises(AdapterUnavailable, match=r"^Jira: cannot reach http://127\.0\.0\.1:\d+ \(connection refused\)"):
        await jira.get("OPS-1")
    # The failed client is not kept: once Jira is back, the next call builds one and works.
    await emu.up()
    emu.add_issue("OPS", "back again")
    assert (await jira.get("OPS-1")).title == "back again"
    jira.shutdown()


async def test_a_jira_that_never_listened_is_unavailable(pool: BlockingPool) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    jira = JiraTracker(url, user="u@example.com", token="t", project="OPS", users={}, pool=pool, timeout=3)
    with pytest.raises(AdapterUnavailable, match=r"cannot reach http://127\.0\.0\.1:\d+ \(connection refused\)"):
        await jira.list(ListFilter.OPEN, ALICE)


async def test_the_client_learns_the_deployment_and_uses_rest_api_v2(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    await jira.get("OPS-1")
    await jira.list(ListFilter.ALL, ALICE)
    assert emu.requests[0].path == "/rest/api/2/serverInfo"
    assert all(s.path.startswith("/rest/api/2/") for s in emu.requests)
    search = "/rest/api/2/search/jql" if emu.cloud else "/rest/api/2/search"
    assert [s.path for s in emu.requests if "/search" in s.path] == [search]


async def test_auth_is_basic_on_cloud_and_a_bearer_pat_on_server(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    await jira.get("OPS-1")
    for s in emu.requests:
        scheme = s.headers["Authorization"].split(" ")[0]
        assert scheme == ("Basic" if emu.cloud else "Bearer")
        assert s.user == emu.bot.id


async def test_server_also_takes_basic_auth_with_a_user(pool: BlockingPool) -> None:
    async with JiraEmulator(deployment="Server") as emu:
        emu.add_project("OPS")
        emu.add_issue("OPS", "basic")
        jira = JiraTracker(emu.url, user=emu.user, token=emu.password, project="OPS", users={}, pool=pool, timeout=5)
        assert (await jira.get("OPS-1")).title == "basic"
        assert emu.requests[-1].headers["Authorization"].startswith("Basic ")
        assert await jira.check() == f"Jira Server at {emu.url} as opsloop bot"
        jira.shutdown()


async def test_check_names_the_deployment_and_the_account(jira: JiraTracker, emu: JiraEmulator) -> None:
    assert await jira.check() == f"Jira {emu.deployment} at {emu.url} as opsloop bot"


# --- create -------------------------------------------------------------------------------------------


async def test_create_maps_the_assignee_and_returns_the_issue(jira: JiraTracker, emu: JiraEmulator) -> None:
    item = await jira.create(NewItem(title="Disk full on web01", reporter=BOB, assignee=ALICE, description="df -h"))
    assert item.key == "OPS-1"
    assert item.title == "Disk full on web01"
    assert item.status is ItemStatus.OPEN
    assert item.assignee == ALICE  # mapped back from Jira's id
    assert item.reporter == "opsloop bot"  # Jira's reporter is the bot account, shown by display name
    assert item.critical is False
    assert item.tracker == "jira"
    assert item.url == f"{emu.url}/browse/OPS-1"
    assert item.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert item.closed_at is None
    issue = emu.issue("OPS-1")
    assert issue.assignee == jira_id(emu, ALICE)
    assert issue.description == "df -h"  # API v2: a plain string
    (post,) = emu.seen("create", "POST")
    assert post.body["fields"] == {
        "project": {"key": "OPS"},
        "issuetype": {"name": "Task"},
        "summary": "Disk full on web01",
        "description": "df -h",
        "assignee": user_ref(emu, ALICE),
    }
    # No project or issue type lookups: both are sent as objects.
    assert not emu.seen("project")


async def test_create_without_assignee_or_description(jira: JiraTracker, emu: JiraEmulator) -> None:
    item = await jira.create(NewItem(title="Rotate certs", reporter=ALICE))
    assert item.assignee is None
    (post,) = emu.seen("create", "POST")
    assert set(post.body["fields"]) == {"project", "issuetype", "summary"}


async def test_create_uses_the_configured_issue_type(emu: JiraEmulator, pool: BlockingPool) -> None:
    jira = make_tracker(emu, pool, issue_type="Bug")
    await jira.create(NewItem(title="Crash", reporter=ALICE))
    assert emu.issue("OPS-1").issue_type == "Bug"
    jira.shutdown()


async def test_critical_becomes_priority_highest(jira: JiraTracker, emu: JiraEmulator) -> None:
    item = await jira.create(NewItem(title="Prod down", reporter=ALICE, critical=True))
    assert item.critical is True
    assert emu.issue(item.key).priority == "Highest"
    assert emu.issue(item.key).labels == []
    # The site's priorities are read once.
    await jira.create(NewItem(title="Prod down again", reporter=ALICE, critical=True))
    assert len(emu.seen("priority")) == 1


async def test_critical_becomes_a_label_when_the_site_has_no_highest(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.priorities.remove("Highest")
    item = await jira.create(NewItem(title="Prod down", reporter=ALICE, critical=True))
    assert item.critical is True
    assert emu.issue(item.key).labels == ["critical"]
    assert emu.issue(item.key).priority == "Medium"


@pytest.mark.parametrize(
    "project_options",
    [{"priority_on_screen": False}, {"priorities": ("High", "Medium", "Low")}],
    ids=["no-priority-on-screen", "scheme-without-highest"],
)
async def test_critical_falls_back_to_a_label_when_the_project_refuses_the_priority(
    emu: JiraEmulator, pool: BlockingPool, project_options: dict[str, Any]
) -> None:
    emu.add_project("LBL", **project_options)
    jira = make_tracker(emu, pool, project="LBL")
    first = await jira.create(NewItem(title="Prod down", reporter=ALICE, critical=True))
    assert first.key == "LBL-1" and first.critical is True
    assert emu.issue("LBL-1").labels == ["critical"]
    refused, created = emu.seen("create", "POST")
    assert refused.status == 400 and "priority" in refused.body["fields"]
    assert created.status == 201 and "priority" not in created.body["fields"]
    # Remembered: the next critical issue goes straight to the label.
    await jira.create(NewItem(title="Prod down again", reporter=ALICE, critical=True))
    assert [s.status for s in emu.seen("create", "POST")] == [400, 201, 201]
    jira.shutdown()


async def test_a_long_or_multiline_title_fits_jiras_summary(jira: JiraTracker, emu: JiraEmulator) -> None:
    title = "Investigate " + "very " * 60 + "slow\nlogin"
    item = await jira.create(NewItem(title=title, reporter=ALICE, description="details"))
    issue = emu.issue(item.key)
    assert len(issue.summary) == 255 and issue.summary.endswith("…")
    assert "\n" not in issue.summary
    assert issue.description is not None
    assert issue.description.startswith("Investigate very") and issue.description.endswith("slow login\n\ndetails")


async def test_create_with_an_unmapped_assignee_says_where_to_map_them(jira: JiraTracker, emu: JiraEmulator) -> None:
    with pytest.raises(AdapterError) as err:
        await jira.create(NewItem(title="x", reporter=ALICE, assignee=CAROL))
    assert str(err.value) == "Jira: no Jira user is mapped to <@U0CAROL>; add it under integrations.jira.users"
    assert emu.requests == []  # refused before talking to Jira


async def test_create_refused_by_jira_says_why(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.users[jira_id(emu, ALICE)].assignable = False
    with pytest.raises(AdapterError, match=r"refused creating an issue in project OPS \(400: assignee: .*cannot be"):
        await jira.create(NewItem(title="x", reporter=ALICE, assignee=ALICE))


async def test_create_in_a_missing_project(emu: JiraEmulator, pool: BlockingPool) -> None:
    jira = make_tracker(emu, pool, project="NOPE")
    with pytest.raises(AdapterError, match=r"refused creating an issue in project NOPE \(400: project: "):
        await jira.create(NewItem(title="x", reporter=ALICE))
    jira.shutdown()


# --- get ---------------------------------------------------------------------------------------------------


async def test_get_maps_people_back_to_slack_or_display_names(jira: JiraTracker, emu: JiraEmulator) -> None:
    carol = next(u.id for u in emu.users.values() if u.display_name == "Carol Unmapped")
    emu.add_issue("OPS", "Upgrade db", assignee=jira_id(emu, BOB), reporter=carol, labels=["db"])
    item = await jira.get("OPS-1")
    assert item.assignee == BOB
    assert item.reporter == "Carol Unmapped"
    assert item.critical is False
    (read,) = emu.seen("issue", "GET")
    # Only the fields a plan item needs.
    assert set(read.query["fields"].split(",")) == {
        "summary",
        "status",
        "assignee",
        "reporter",
        "priority",
        "labels",
        "created",
        "resolutiondate",
    }


async def test_get_reads_done_and_critical(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "by priority", priority="Highest")
    emu.add_issue("OPS", "by label", labels=["critical"])
    emu.advance(3600)
    emu.add_issue("OPS", "finished", status="Done")
    assert (await jira.get("OPS-1")).critical is True
    assert (await jira.get("OPS-2")).critical is True
    done = await jira.get("OPS-3")
    assert done.status is ItemStatus.DONE
    assert done.closed_at == datetime(2026, 1, 1, 1, 0, 2, tzinfo=UTC)  # its resolutiondate


async def test_get_accepts_lower_case_and_bare_numbers(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    assert (await jira.get("ops-1")).key == "OPS-1"
    assert (await jira.get("1")).key == "OPS-1"


async def test_get_a_missing_issue_names_the_key(jira: JiraTracker, emu: JiraEmulator) -> None:
    with pytest.raises(AdapterNotFound) as err:
        await jira.get("OPS-99")
    assert str(err.value) == "Jira: no issue OPS-99"


async def test_get_something_that_is_no_key_sends_nothing(jira: JiraTracker, emu: JiraEmulator) -> None:
    with pytest.raises(AdapterNotFound, match=re.escape("Jira: no issue '../myself': a Jira key looks like OPS-12")):
        await jira.get("../myself")
    assert emu.requests == []


# --- list ---------------------------------------------------------------------------------------------------


def seed_for_lists(emu: JiraEmulator) -> None:
    """OPS-1..8: 3, 5, 8 done; 2, 4, 7 assigned to Alice (7 of them open); 6 to Bob."""
    alice, bob = jira_id(emu, ALICE), jira_id(emu, BOB)
    for n in range(1, 9):
        emu.add_issue(
            "OPS",
            f"item {n}",
            status="Done" if n in (3, 5, 8) else ("In Progress" if n == 6 else "To Do"),
            assignee=alice if n in (2, 4, 7) else (bob if n == 6 else None),
        )
    emu.add_project("OTHER")
    emu.add_issue("OTHER", "not ours", assignee=alice)


async def test_list_open_pages_beyond_one_page_newest_first(jira: JiraTracker, emu: JiraEmulator) -> None:
    seed_for_lists(emu)
    emu.page_cap = 2
    items = await jira.list(ListFilter.OPEN, ALICE)
    assert [i.key for i in items] == ["OPS-7", "OPS-6", "OPS-4", "OPS-2", "OPS-1"]
    assert all(i.status is ItemStatus.OPEN for i in items)
    searches = [s for s in emu.requests if "/search" in s.path]
    assert len(searches) == 3
    assert {s.query["jql"] for s in searches} == {'project = "OPS" AND statusCategory != Done ORDER BY created DESC'}
    if emu.cloud:  # token pagination: the first page has no token, the later ones carry one
        assert "nextPageToken" not in searches[0].query
        assert all(s.query["nextPageToken"] for s in searches[1:])
    else:
        assert [s.query["startAt"] for s in searches] == ["0", "2", "4"]


async def test_list_stops_at_the_limit(jira: JiraTracker, emu: JiraEmulator) -> None:
    seed_for_lists(emu)
    emu.page_cap = 2
    items = await jira.list(ListFilter.ALL, ALICE, limit=3)
    assert [i.key for i in items] == ["OPS-8", "OPS-7", "OPS-6"]
    searches = [s for s in emu.requests if "/search" in s.path]
    assert [s.query["maxResults"] for s in searches] == ["3", "1"]


async def test_list_mine_uses_the_mapped_jira_user(jira: JiraTracker, emu: JiraEmulator) -> None:
    seed_for_lists(emu)
    items = await jira.list(ListFilter.MINE, ALICE)
    assert [i.key for i in items] == ["OPS-7", "OPS-4", "OPS-2"]
    assert all(i.assignee == ALICE for i in items)
    (search,) = [s for s in emu.requests if "/search" in s.path]
    assert search.query["jql"] == (
        f'project = "OPS" AND statusCategory != Done AND assignee = "{jira_id(emu, ALICE)}" ORDER BY created DESC'
    )


async def test_list_all_includes_done_items(jira: JiraTracker, emu: JiraEmulator) -> None:
    seed_for_lists(emu)
    emu.page_cap = 3
    items = await jira.list(ListFilter.ALL, ALICE, limit=50)
    assert [i.key for i in items] == [f"OPS-{n}" for n in range(8, 0, -1)]
    assert [i.key for i in items if i.status is ItemStatus.DONE] == ["OPS-8", "OPS-5", "OPS-3"]


async def test_list_of_an_empty_project(jira: JiraTracker, emu: JiraEmulator) -> None:
    assert await jira.list(ListFilter.OPEN, ALICE) == []


async def test_list_mine_for_an_unmapped_user(jira: JiraTracker, emu: JiraEmulator) -> None:
    with pytest.raises(AdapterError, match=r"no Jira user is mapped to <@U0CAROL>; add it under integrations\.jira"):
        await jira.list(ListFilter.MINE, CAROL)
    assert emu.requests == []


async def test_the_emulator_serves_only_the_deployments_search(emu: JiraEmulator) -> None:
    """Cloud removed /search (410); Server has no /search/jql. The client must pick the right one."""
    secret = emu.token if emu.cloud else emu.password  # Server: basic auth takes the password
    basic = base64.b64encode(f"{emu.user}:{secret}".encode()).decode()
    params = {"jql": "project = OPS"}
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {basic}"}) as s:
        async with s.get(f"{emu.url}/rest/api/2/search", params=params) as r:
            assert r.status == (410 if emu.cloud else 200)
            if emu.cloud:
                assert "CHANGE-2046" in (await r.json())["errorMessages"][0]
        async with s.get(f"{emu.url}/rest/api/2/search/jql", params=params) as r:
            assert r.status == (200 if emu.cloud else 404)
        async with s.get(f"{emu.url}/rest/api/2/search", params={"jql": "project = OPS OR text ~ x"}) as r:
            assert r.status == (410 if emu.cloud else 400)
        path = "search/jql" if emu.cloud else "search"
        async with s.get(f"{emu.url}/rest/api/2/{path}", params={"jql": "summary ~ disk"}) as r:
            assert r.status == 400
            body = await r.json()
            assert body["errorMessages"] and body["errors"] == {}


async def test_the_emulators_jql_subset(pool: BlockingPool) -> None:
    """What the emulator understands besides the adapter's queries, checked through the real client."""
    async with JiraEmulator(deployment="Server") as emu:
        emu.add_user("bob", "Bob")
        emu.add_project("OPS")
        emu.add_issue("OPS", "a", assignee="bob", labels=["db"])
        emu.add_issue("OPS", "b", status="In Progress", assignee=emu.bot.id, priority="High")
        emu.add_issue("OPS", "c", status="Done")
        jira = make_tracker(emu, pool)

        def keys(jql: str) -> list[str]:
            return [i["key"] for i in jira._client().search_issues(jql, fields=["summary"], json_result=True)["issues"]]

        async def search(jql: str) -> list[str]:
            return await asyncio.to_thread(keys, jql)

        assert await search("project = OPS AND assignee IS EMPTY") == ["OPS-3"]
        assert await search("project = OPS AND assignee is not empty ORDER BY key DESC") == ["OPS-2", "OPS-1"]
        assert await search("assignee = currentUser()") == ["OPS-2"]
        assert await search("project = 'OPS' AND status IN (\"To Do\", Done) ORDER BY created") == ["OPS-1", "OPS-3"]
        assert await search("statusCategory = indeterminate") == ["OPS-2"]
        assert await search("priority = High AND labels IS EMPTY") == ["OPS-2"]
        assert await search("project = OPS AND labels != db") == []  # as in Jira, != never matches EMPTY
        assert await search("project = OPS AND statusCategory NOT IN (Done)") == ["OPS-1", "OPS-2"]
        for bad, message in [
            ("project = OPS OR project = X", "does not understand 'OR'"),
            ("(project = OPS)", "does not understand '('"),
            ("summary ~ disk", "Field 'summary' does not exist"),
            ("assignee = nobody", "The value 'nobody' does not exist for the field 'assignee'."),
            ("project = OPS ORDER BY rank", "Not able to sort using field 'rank'."),
        ]:
            with pytest.raises(JIRAError) as err:
                await search(bad)
            assert err.value.status_code == 400
            assert message in err.value.response.json()["errorMessages"][0]
        jira.shutdown()


# --- assign ----------------------------------------------------------------------------------------------------


async def test_assign_puts_the_mapped_user(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one", assignee=jira_id(emu, ALICE))
    item = await jira.assign("OPS-1", BOB)
    assert item.assignee == BOB
    assert emu.issue("OPS-1").assignee == jira_id(emu, BOB)
    (put,) = emu.seen("assignee", "PUT")
    assert put.path == "/rest/api/2/issue/OPS-1/assignee"
    assert put.body == user_ref(emu, BOB)
    assert not [s for s in emu.requests if "/user" in s.path]  # no user search


async def test_assign_to_an_unmapped_user(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    with pytest.raises(AdapterError, match="no Jira user is mapped to <@U0CAROL>"):
        await jira.assign("OPS-1", CAROL)


async def test_assign_a_user_jira_refuses(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    emu.users[jira_id(emu, BOB)].assignable = False
    with pytest.raises(AdapterError, match=r"refused assigning OPS-1 \(400: assignee: User '.+' cannot be assigned"):
        await jira.assign("OPS-1", BOB)


async def test_assign_a_missing_issue(jira: JiraTracker, emu: JiraEmulator) -> None:
    with pytest.raises(AdapterNotFound, match=r"^Jira: no issue OPS-7$"):
        await jira.assign("OPS-7", BOB)


# --- close ----------------------------------------------------------------------------------------------------


async def test_close_applies_the_done_transition(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one", status="In Progress")
    item = await jira.close("OPS-1", ALICE)
    assert item.status is ItemStatus.DONE
    assert item.closed_by == ALICE
    assert item.closed_at is not None
    issue = emu.issue("OPS-1")
    assert issue.status == "Done" and issue.resolution == "Done"
    assert issue.transitions_done == ["Done"]
    (post,) = emu.seen("transition", "POST")
    assert str(post.body["transition"]["id"]) == "31"
    assert (await jira.get("OPS-1")).status is ItemStatus.DONE


async def test_closing_a_done_issue_returns_it(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one", status="Done")
    item = await jira.close("OPS-1", ALICE)
    assert item.status is ItemStatus.DONE
    assert item.closed_by is None  # Jira does not say who; we did not close it
    assert not emu.seen("transitions") and not emu.seen("transition")


async def test_close_without_the_transition_lists_what_is_available(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.project("OPS").workflow = {
        "To Do": [EmuTransition("4", "Start Progress", "In Progress")],
        "In Progress": [EmuTransition("301", "Stop Progress", "To Do"), EmuTransition("5", "Resolve", "Done")],
    }
    emu.add_issue("OPS", "one")
    with pytest.raises(AdapterError) as err:
        await jira.close("OPS-1", ALICE)
    assert str(err.value) == (
        "Jira: cannot close OPS-1: no transition 'Done' from status 'To Do'; available: "
        "'Start Progress' (to In Progress). Set integrations.jira.done to one of them"
    )
    assert emu.issue("OPS-1").status == "To Do"
    assert not emu.seen("transition", "POST")


async def test_close_with_no_transitions_at_all(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.project("OPS").workflow = {}
    emu.add_issue("OPS", "one")
    with pytest.raises(AdapterError, match="no transitions are available from status 'To Do'"):
        await jira.close("OPS-1", ALICE)


async def test_close_by_target_status_and_filling_a_required_resolution(emu: JiraEmulator, pool: BlockingPool) -> None:
    # A classic Server workflow: "Resolve Issue" leads to Done and its screen requires a resolution.
    emu.project("OPS").workflow = {
        "To Do": [
            EmuTransition("4", "Start Progress", "In Progress"),
            EmuTransition("5", "Resolve Issue", "Done", required=("resolution",)),
        ]
    }
    emu.add_issue("OPS", "one")
    jira = make_tracker(emu, pool, done="done")  # the status name, in any case
    item = await jira.close("OPS-1", BOB)
    assert item.status is ItemStatus.DONE and item.closed_by == BOB
    (post,) = emu.seen("transition", "POST")
    assert post.body["fields"] == {"resolution": {"name": "Done"}}
    assert emu.issue("OPS-1").resolution == "Done"
    jira.shutdown()


async def test_close_when_the_transition_does_not_reach_done(emu: JiraEmulator, pool: BlockingPool) -> None:
    emu.add_status("In Review", "indeterminate")
    emu.project("OPS").workflow = {"*": [EmuTransition("41", "Review", "In Review")]}
    emu.add_issue("OPS", "one")
    jira = make_tracker(emu, pool, done="Review")
    with pytest.raises(AdapterError, match="moved OPS-1 to 'In Review', which Jira does not count as done"):
        await jira.close("OPS-1", ALICE)
    jira.shutdown()


async def test_close_a_missing_issue(jira: JiraTracker, emu: JiraEmulator) -> None:
    with pytest.raises(AdapterNotFound, match=r"^Jira: no issue OPS-3$"):
        await jira.close("OPS-3", ALICE)


# --- comment ---------------------------------------------------------------------------------------------------


async def test_comment_adds_plain_text_and_returns_its_link(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    link = await jira.comment("OPS-1", "Deployed *v1.2* from chat")
    (c,) = emu.issue("OPS-1").comments
    assert c.body == "Deployed *v1.2* from chat"
    assert link == f"{emu.url}/browse/OPS-1?focusedCommentId={c.id}"


async def test_comment_on_a_missing_issue(jira: JiraTracker, emu: JiraEmulator) -> None:
    with pytest.raises(AdapterNotFound, match="no issue OPS-5"):
        await jira.comment("OPS-5", "hello")


# --- errors ------------------------------------------------------------------------------------------------------


async def test_rejected_credentials_name_the_user_and_the_variable(emu: JiraEmulator, pool: BlockingPool) -> None:
    jira = make_tracker(emu, pool, token="wrong")
    with pytest.raises(AdapterError) as err:
        await jira.get("OPS-1")
    who = emu.user if emu.cloud else "the personal access token"
    assert str(err.value) == f"Jira: rejected the credentials of {who} (401; check the JIRA_TOKEN variable)"
    assert "wrong" not in str(err.value)
    jira.shutdown()


async def test_a_cloud_api_token_is_no_bearer_token(pool: BlockingPool) -> None:
    async with JiraEmulator(deployment="Cloud") as emu:
        jira = JiraTracker(emu.url, user=None, token=emu.token, project="OPS", users={}, pool=pool, timeout=5)
        with pytest.raises(AdapterError, match="rejected the credentials of the personal access token"):
            await jira.check()


async def test_rate_limiting_is_reported_at_once(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    await jira.get("OPS-1")  # the client exists
    emu.fail_next("issue", status=429, retry_after=30)
    with pytest.raises(AdapterError) as err:
        await jira.get("OPS-1")
    assert not isinstance(err.value, AdapterUnavailable)
    assert str(err.value) == "Jira: is rate limiting opsloop (429) on reading OPS-1; try again in 30 s"
    # No retry: the client would have slept 2 × Retry-After before asking again.
    assert [s.status for s in emu.seen("issue")] == [200, 429]
    assert (await jira.get("OPS-1")).key == "OPS-1"


async def test_rate_limiting_while_connecting(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.fail_next("serverInfo", status=429)
    with pytest.raises(AdapterError, match=r"rate limiting opsloop \(429\) on the search of project OPS; try again in"):
        await jira.list(ListFilter.OPEN, ALICE)
    assert len(emu.seen("serverInfo")) == 1


async def test_server_errors(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    emu.fail_next("issue", status=500, message="NullPointerException")
    with pytest.raises(AdapterError, match=r"^Jira: answered 500 on reading OPS-1: NullPointerException$"):
        await jira.get("OPS-1")
    emu.fail_next("issue", status=503, retry_after=1)
    with pytest.raises(AdapterUnavailable, match="answered 503 on reading OPS-1"):
        await jira.get("OPS-1")
    assert [s.status for s in emu.seen("issue")] == [500, 503]  # a 503 with Retry-After is not retried


async def test_forbidden_transition(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    emu.fail_next("transition", status=403, message="You do not have permission to transition this issue.")
    with pytest.raises(AdapterError, match=r"refused closing OPS-1 to .+ \(403: You do not have permission"):
        await jira.close("OPS-1", ALICE)


async def test_a_concurrent_transition_conflict(jira: JiraTracker, emu: JiraEmulator) -> None:
    emu.add_issue("OPS", "one")
    emu.fail_next("transition", status=409)
    with pytest.raises(AdapterError, match=r"busy with another change of closing OPS-1 \(409\); try again"):
        await jira.close("OPS-1", ALICE)


async def test_a_slow_jira_times_out_naming_the_issue(emu: JiraEmulator, pool: BlockingPool) -> None:
    emu.add_issue("OPS", "one")
    jira = make_tracker(emu, pool, timeout=0.5)
    emu.slow("create", 2.0, count=1)
    with pytest.raises(AdapterTimeout) as err:
        await jira.create(NewItem(title="slow", reporter=ALICE))
    assert "within 0.5 s (creating an issue in project OPS); the issue may have been created anyway" in str(err.value)
    emu.slow("issue", 2.0, count=1)
    with pytest.raises(AdapterTimeout, match=r"within 0\.5 s \(reading OPS-1\)$"):
        await jira.get("OPS-1")
    jira.shutdown()


async def test_something_that_is_not_jira(pool: BlockingPool) -> None:
    async def page(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="<html>login</html>", content_type="text/html")

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        jira = JiraTracker(url, user="u", token="t", project="OPS", users={}, pool=pool, timeout=5)
        with pytest.raises(AdapterError, match=r"answered something that is not JSON .+; is it the Jira base URL\?"):
            await jira.get("OPS-1")
    finally:
        await runner.cleanup()


# --- threads --------------------------------------------------------------------------------------------------------


async def test_one_client_per_pool_thread(jira: JiraTracker, emu: JiraEmulator, pool: BlockingPool) -> None:
    for n in range(8):
        emu.add_issue("OPS", f"item {n}")
    emu.slow("issue", 0.05)  # keep the threads busy so several of them take calls
    items = await asyncio.gather(*(jira.get(f"OPS-{n}") for n in range(1, 9)))
    assert [i.title for i in items] == [f"item {n}" for n in range(8)]
    # Each thread built its own client once (serverInfo), never more than the pool has threads.
    assert 1 <= len(emu.seen("serverInfo")) <= pool.workers
    await asyncio.gather(*(jira.get(f"OPS-{n}") for n in range(1, 9)))
    assert len(emu.seen("serverInfo")) <= pool.workers
