"""Plan on real trackers from chat (Jira, Trello, Asana emulators behind the real client libraries),
chosen per command and per service; reactions that file feedback or tickets; pasted keys answered
with a small card. Everything goes through signed HTTP into Bolt and out to the Slack emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.config import ConfigError, parse_config
from bot.store import rows
from tests.emulators.asana import AsanaEmulator
from tests.emulators.jira import JiraEmulator
from tests.emulators.slack import SlackEmulator
from tests.emulators.trello import TrelloEmulator
from tests.support import ALICE, BOB, CAROL, DAVE, EVE, SlackHarness, click, config_data, slack_ops, slack_workspace

JIRA_IDS = {ALICE: "5b10ac8d82e05b22cc7d4ef5", BOB: "557058:f58131cb-b67d"}


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator() as e:
        slack_workspace(e)
        yield e


@pytest_asyncio.fixture
async def jira(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[JiraEmulator]:
    async with JiraEmulator(deployment="Cloud") as j:
        j.add_user(JIRA_IDS[ALICE], "Alice Doe")
        j.add_user(JIRA_IDS[BOB], "Bob Smith")
        j.add_user("70121:carol", "Carol Unmapped")
        j.add_project("SHOP")
        monkeypatch.setenv("T_JIRA_TOKEN", j.token)
        yield j
        assert not j.server_errors


@pytest_asyncio.fixture
async def trello(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TrelloEmulator, Any]]:
    async with TrelloEmulator() as t:
        board = t.add_board("Ops")
        t.add_member("alice", board=board)
        monkeypatch.setenv("T_TRELLO_KEY", t.key)
        monkeypatch.setenv("T_TRELLO_TOKEN", t.token)
        yield t, board
        assert not t.server_errors


@pytest_asyncio.fixture
async def asana(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[AsanaEmulator, Any, Any]]:
    async with AsanaEmulator() as a:
        ws = a.add_workspace("Acme")
        project = a.add_project("Ops", ws)
        monkeypatch.setenv("T_ASANA_TOKEN", a.token)
        yield a, ws, project
        assert not a.server_errors


def overrides(jira: JiraEmulator, trello: tuple[TrelloEmulator, Any], asana: tuple[AsanaEmulator, Any, Any]) -> dict:
    t, board = trello
    a, ws, project = asana
    return {
        "plan": {"prefix": "OPS", "tracker": "jira"},
        "feedback": {"reactions": {"bug": "ticket", "bulb": "feedback"}},
        "services": {"shop": {"channel": "#ops", "tracker": "trello"}},
        "integrations": {
            "jira": {
                "url": jira.url,
                "user": jira.user,
                "token_env": "T_JIRA_TOKEN",
                "project": "SHOP",
                "users": JIRA_IDS,
                "timeout": 5,
            },
            "trello": {
                "url": t.url,
                "key_env": "T_TRELLO_KEY",
                "token_env": "T_TRELLO_TOKEN",
                "board": board.id,
                "timeout": 5,
            },
            "asana": {
                "url": a.host,
                "token_env": "T_ASANA_TOKEN",
                "workspace": ws.gid,
                "project": project.gid,
                "timeout": 5,
            },
        },
    }


def texts(h: SlackHarness, channel: str = "C0OPS") -> str:
    return "\n".join(m.text + json.dumps(m.blocks, ensure_ascii=False) for m in h.emu.messages(channel))


def ephemeral_text(h: SlackHarness, user: str) -> str:
    return "\n".join(e.text + json.dumps(e.blocks, ensure_ascii=False) for e in h.emu.ephemerals_for(user))


async def send_event(h: SlackHarness, event: dict[str, Any], event_id: str | None = None) -> None:
    res = await h.emu.send_event(h.url, event, event_id=event_id)
    assert res.status == 200
    await h.settle()


def message_event(msg: Any, user: str, channel: str = "C0OPS") -> dict[str, Any]:
    return {"type": "message", "channel": channel, "user": user, "text": msg.text, "ts": msg.ts} | {
        "channel_type": "channel"
    }


def reaction_event(msg: Any, user: str, reaction: str, channel: str = "C0OPS") -> dict[str, Any]:
    return {
        "type": "reaction_added",
        "user": user,
        "reaction": reaction,
        "item": {"type": "message", "channel": channel, "ts": msg.ts},
        "item_user": msg.user,
        "event_ts": "1700000000.000100",
    }


async def test_plan_words_work_on_jira_trello_and_asana_chosen_per_command(
    tmp_path: Path, emu: SlackEmulator, jira: JiraEmulator, trello: Any, asana: Any
) -> None:
    t, _ = trello
    a, _, _ = asana
    async with slack_ops(tmp_path, emu, **overrides(jira, trello, asana)) as h:
        # The default tracker is Jira: the issue is made there, with the Slack user mapped to Jira's.
        await h.command('plan new "Checkout is slow" <@U0BOB>')
        issue = jira.issue("SHOP-1")
        assert issue.summary == "Checkout is slow" and issue.assignee == JIRA_IDS[BOB]
        card = texts(h)
        assert "SHOP-1 · Checkout is slow" in card and "<@U0BOB>" in card and f"{jira.url}/browse/SHOP-1" in card

        # Named per command: a Trello card and an Asana task; their keys route back to them.
        await h.command('plan new "Rotate the TLS certs" trello')
        [card_t] = list(t.cards.values())
        await h.command('plan new "Write the runbook" asana')
        [task] = [x for x in a.tasks.values() if x.name == "Write the runbook"]
        await h.command(f"plan show {card_t.short_link}")
        await h.command(f"plan done https://trello.com/c/{card_t.short_link}/1-rotate")
        assert t.card(card_t.short_link).list_id == t.list_named(t.boards[card_t.board_id], "Done").id
        await h.command(f"plan assign {task.gid} <@U0ALICE>", user=ALICE)
        assert "no Asana user is mapped to Slack user" in ephemeral_text(h, ALICE)
        await h.command(f"plan done {task.gid}")
        assert a.tasks[task.gid].completed

        # Jira: assign and close through a transition; the built-in tracker keeps its own prefix.
        await h.command("plan assign SHOP-1 <@U0ALICE>")
        assert jira.issue("SHOP-1").assignee == JIRA_IDS[ALICE]
        await h.command("plan done SHOP-1")
        assert jira.issue("SHOP-1").status == "Done"
        await h.command('plan new "Local one" local')
        assert (await h.services.trackers["local"].get("OPS-1")).title == "Local one"
        await h.command("plan list all jira", user=BOB)
        listing = ephemeral_text(h, BOB)
        assert "SHOP-1" in listing and "OPS-1" not in listing


async def test_people_nobody_mapped_show_by_name_not_as_broken_mentions(
    tmp_path: Path, emu: SlackEmulator, jira: JiraEmulator, trello: Any, asana: Any
) -> None:
    jira.add_issue("SHOP", "Set up by hand", assignee="70121:carol")
    async with slack_ops(tmp_path, emu, **overrides(jira, trello, asana)) as h:
        await h.command("plan show SHOP-1", user=DAVE)
        shown = ephemeral_text(h, DAVE)
        assert "Carol Unmapped" in shown and "<@Carol" not in shown


async def test_a_reaction_files_a_ticket_in_the_service_tracker_once_with_a_link_back(
    tmp_path: Path, emu: SlackEmulator, jira: JiraEmulator, trello: Any, asana: Any
) -> None:
    t, _ = trello
    async with slack_ops(tmp_path, emu, **overrides(jira, trello, asana)) as h:
        said = emu.add_user_message("C0OPS", "The cart total is wrong after a coupon", user_id=DAVE)
        # #ops belongs to the service shop, whose tracker is Trello.
        await send_event(h, reaction_event(said, BOB, "bug"), event_id="Ev1")
        [card] = list(t.cards.values())
        assert card.name == "The cart total is wrong after a coupon"
        assert f"/archives/C0OPS/p{said.ts.replace('.', '')}" in card.desc
        thread = [m.text for m in emu.replies("C0OPS", said.ts)]
        assert thread == [f"Filed as plan item *{card.short_link}* by <@{BOB}>."]

        # Slack's retry of the event, a second person's reaction, and two at once: still one card.
        await send_event(h, reaction_event(said, BOB, "bug"), event_id="Ev1")
        await asyncio.gather(
            send_event(h, reaction_event(said, CAROL, "bug"), event_id="Ev2"),
            send_event(h, reaction_event(said, ALICE, "bug"), event_id="Ev3"),
        )
        assert len(t.cards) == 1 and len(emu.replies("C0OPS", said.ts)) == 1

        # In a channel no service owns, the default tracker (Jira) gets it.
        elsewhere = emu.add_user_message("C0FB", "Search ignores accents", user_id=DAVE)
        await send_event(h, reaction_event(elsewhere, ALICE, "bug", channel="C0FB"), event_id="Ev4")
        assert jira.issue("SHOP-1").summary == "Search ignores accents"

        # Other reactions are nobody's business: nothing filed, nothing audited.
        await send_event(h, reaction_event(said, ALICE, "tada"), event_id="Ev5")
        audit = await h.services.store.read(lambda db: rows(db, "SELECT action, outcome FROM audit"))
        assert [r for r in audit if r["action"].startswith("event:")] == [
            {"action": "event:feedback.reaction", "outcome": "ok"},
            {"action": "event:feedback.reaction", "outcome": "ok"},
        ]


async def test_a_reaction_needs_the_permission_of_what_it_files(
    tmp_path: Path, emu: SlackEmulator, jira: JiraEmulator, trello: Any, asana: Any
) -> None:
    t, _ = trello
    async with slack_ops(tmp_path, emu, **overrides(jira, trello, asana)) as h:
        said = emu.add_user_message("C0OPS", "Dark mode please", user_id=DAVE)
        await send_event(h, reaction_event(said, EVE, "bug"), event_id="Ev1")  # eve may not open items
        assert not t.cards
        assert "plan.new" in ephemeral_text(h, EVE)
        audit = await h.services.store.read(lambda db: rows(db, "SELECT actor, action, outcome, reason FROM audit"))
        refused = [r for r in audit if r["action"] == "event:feedback.reaction"]
        assert refused and refused[0]["outcome"] == "refused" and refused[0]["actor"] == EVE and refused[0]["reason"]

        # Feedback is open to everyone: the same person's :bulb: files it, once, credited to its author.
        await send_event(h, reaction_event(said, EVE, "bulb"), event_id="Ev2")
        await send_event(h, reaction_event(said, ALICE, "bulb"), event_id="Ev3")
        fb = await h.services.store.read(lambda db: rows(db, "SELECT author, source, text FROM feedback"))
        assert len(fb) == 1 and fb[0]["author"] == DAVE and fb[0]["source"] == "reaction:feedback"
        assert fb[0]["text"].startswith("Dark mode please")


async def test_a_pasted_key_or_link_gets_a_small_card_in_its_thread(
    tmp_path: Path, emu: SlackEmulator, jira: JiraEmulator, trello: Any, asana: Any
) -> None:
    t, _ = trello
    jira.add_issue("SHOP", "Payment retries")
    async with slack_ops(tmp_path, emu, **overrides(jira, trello, asana)) as h:
        await h.command('plan new "Cache warmup" trello')
        [card] = list(t.cards.values())
        said = emu.add_user_message(
            "C0OPS",
            f"is SHOP-1 related to <https://trello.com/c/{card.short_link}/3-cache|this card>? not HTTP-2 or SHOP-99",
            user_id=DAVE,
        )
        await send_event(h, message_event(said, DAVE), event_id="Ev1")
        await send_event(h, message_event(said, DAVE), event_id="Ev1")  # Slack's retry
        thread = emu.replies("C0OPS", said.ts)
        assert [m.text for m in thread] == ["SHOP-1: Payment retries", f"{card.short_link}: Cache warmup"]
        # Its buttons work like the item card's.
        await click(h, "C0OPS", thread[0].ts, "Assign to me", ALICE)
        assert jira.issue("SHOP-1").assignee == JIRA_IDS[ALICE]

        # A message addressed to opsloop is a command, not something to unfurl; bots are ignored.
        bot_id = emu.bot_user_id
        to_bot = emu.add_user_message("C0OPS", f"<@{bot_id}> plan show SHOP-1", user_id=DAVE)
        await send_event(h, message_event(to_bot, DAVE), event_id="Ev2")
        assert emu.replies("C0OPS", to_bot.ts) == []
        # Someone the policy keeps away from plan items gets no card (and no refusal noise).
        by_eve = emu.add_user_message("C0OPS", "SHOP-1 again", user_id=EVE)
        await send_event(h, message_event(by_eve, EVE), event_id="Ev3")
        assert emu.replies("C0OPS", by_eve.ts) == [] and not emu.ephemerals_for(EVE)


async def test_feedback_search_and_promotion_to_a_named_tracker(
    tmp_path: Path, emu: SlackEmulator, jira: JiraEmulator, trello: Any, asana: Any
) -> None:
    a, _, _ = asana
    async with slack_ops(tmp_path, emu, **overrides(jira, trello, asana)) as h:
        await h.command('feedback "The deploy card should show the diff"', user=DAVE)
        await h.command('feedback "Alerts at night are too noisy"', user=DAVE)
        await h.command('feedback "100% of deploys need a_diff"', user=DAVE)
        await h.command("feedback search deploy", user=BOB)
        found = ephemeral_text(h, BOB)
        assert "#1" in found and "#3" in found and "#2" not in found
        # LIKE wildcards typed by someone are literal characters.
        await h.command('feedback search "%"', user=CAROL)
        assert "#3" in ephemeral_text(h, CAROL) and "#1" not in ephemeral_text(h, CAROL)
        await h.command("feedback search a_d", user=EVE)
        assert "#3" in ephemeral_text(h, EVE) and "#1" not in ephemeral_text(h, EVE)

        await h.command("feedback promote 2 asana", user=ALICE)
        [task] = list(a.tasks.values())
        assert task.name == "Alerts at night are too noisy"
        await h.command("feedback promote 2 jira", user=ALICE)
        assert "already plan item" in ephemeral_text(h, ALICE)
        await h.command("feedback promote 1 asana", user=EVE)
        assert "plan.new" in ephemeral_text(h, EVE) and len(a.tasks) == 1


def test_a_tracker_named_without_its_integration_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"plan.tracker is `jira`, but there is no `integrations.jira` section"):
        parse_config(config_data(tmp_path / "x.db", plan={"tracker": "jira"}))
    with pytest.raises(ConfigError, match=r"services.api.tracker is `asana`"):
        parse_config(config_data(tmp_path / "x.db", services={"api": {"tracker": "asana"}}))
