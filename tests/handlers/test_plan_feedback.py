"""plan and feedback through the router, on the console transport (what `make demo` shows)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.ports import ListFilter
from bot.router import Invocation
from bot.store import rows
from tests.support import ALICE, BOB, DAVE, console_ops


async def test_plan_lifecycle_with_cards_updated_in_place(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        out = await h.say('plan new "Fix login" @dave')
        assert "Created OPS-1: Fix login" in out
        assert "OPS-1 · Fix login" in out and "@dave" in out
        out = await h.say("plan list mine", as_user="dave")
        assert "OPS-1" in out
        out = await h.say("plan assign OPS-1 @bob")
        assert "assigned to @bob" in out and "(updated)" in out
        out = await h.say(f"click {h.button('Done')}", as_user="bob")
        assert "OPS-1 is done." in out
        item = await h.services.tracker().get("OPS-1")
        assert item.status.value == "done" and item.closed_by == BOB and item.assignee == BOB
        refs = await h.services.store.read(lambda db: rows(db, "SELECT key FROM message_refs"))
        assert [r["key"] for r in refs] == ["plan:OPS-1"]  # one card, edited in place
        out = await h.say("plan done OPS-1")
        assert "already done" in out


async def test_assign_to_me_button_and_unknown_items(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        await h.say('plan new "Write runbook"')
        out = await h.say(f"click {h.button('Assign to me')}", as_user="dave")
        assert "OPS-1 is yours now." in out
        assert (await h.services.tracker().get("OPS-1")).assignee == DAVE
        out = await h.say("plan show OPS-99")
        assert "There is no plan item OPS-99" in out


async def test_permissions_are_checked_with_a_reason(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        out = await h.say('plan new "x"', as_user="eve")
        assert "Not allowed" in out and "developers" in out
        out = await h.say("audit", as_user="dave")
        assert "needs the role admins" in out
        out = await h.say("audit", as_user="alice")
        assert "Audit log" in out and "plan.new" in out


async def test_help_is_generated_and_typos_get_suggestions(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        out = await h.say("help")
        usages = (
            'plan new "TITLE" [@who] [local|jira|trello|asana] [critical]',
            'feedback "TEXT"',
            "audit [N]",
            "whoami",
        )
        for usage in usages:
            assert usage in out
        out = await h.say("help plan")
        assert "critical items need an approval" in out
        # The console's own keys refuse what they can't mean, rather than make a channel "#@bob".
        out = await h.say("/in @bob")
        assert "Usage: /in #channel" in out
        assert not h.session.channel.startswith("#@")
        # One command's help: just it (and where the rest of its stage is), not the whole stage.
        out = await h.say("help audit")
        assert "audit [N]" in out and "help insights" in out
        assert "dora" not in out and "digest" not in out
        out = await h.say("help operate")  # the loop's name for status, scale and restart
        assert "scale SERVICE ENV REPLICAS" in out and "restart SERVICE ENV" in out
        out = await h.say("help auidt")
        assert "Did you mean help audit" in out and "Stages: core" in out
        out = await h.say("help plan new")  # a command of more than one word: that one alone
        assert 'plan new "TITLE"' in out and "plan list" not in out and "help plan shows the rest" in out
        out = await h.say("help plan nwe")
        assert "There is no stage or command plan nwe. Did you mean help plan new," in out
        out = await h.say("plan lsit")
        assert "Did you mean" in out and "plan list" in out
        out = await h.say("whoami", as_user="bob")
        assert "approvers" in out and "plan.done" in out


async def test_whoami_names_the_environments_whose_releases_one_may_approve(tmp_path: Path) -> None:
    environments = {
        "staging": {},
        "prod": {"approvals": {"required": 2, "from": "approvers"}},
        "dr": {"approvals": {"required": 1, "from": "admins"}},
    }
    async with console_ops(tmp_path, environments=environments) as h:
        out = await h.say("whoami", as_user="carol")  # an approver through @sre
        assert "plan.done" in out and "releases to prod" in out
        assert "releases to dr" not in out and "releases to staging" not in out
        out = await h.say("whoami", as_user="alice")
        assert "releases to dr" in out and "releases to prod" not in out and "plan.done" not in out
        out = await h.say("whoami", as_user="eve")
        assert "May approve" in out and "nothing" in out


async def test_feedback_is_kept_and_promoted_once(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        out = await h.say('feedback "Deploy cards should show the diff"', as_user="eve")
        assert "Recorded as feedback #1" in out
        assert "#feedback" in out
        out = await h.say("feedback list", as_user="alice")
        assert "Deploy cards should show the diff" in out
        on_card, in_list = h.button("Make it a plan item", last=False), h.button("Make it a plan item")
        out = await h.say(f"click {in_list}")
        assert "now plan item OPS-1" in out
        out = await h.say(f"click {in_list}", as_user="bob")  # a stale copy of the button
        assert "already plan item OPS-1" in out
        out = await h.say(f"click {on_card}", as_user="bob")  # the card was updated: its button is gone
        assert "There is no button" in out
        items = await h.services.tracker().list(ListFilter.ALL, ALICE)
        assert [i.title for i in items] == ["Deploy cards should show the diff"]


async def test_message_shortcut_form_becomes_a_plan_item(tmp_path: Path) -> None:
    from bot.router import ShortcutCall

    async with console_ops(tmp_path) as h:
        call = ShortcutCall(
            actor=ALICE,
            callback="feedback.message",
            channel="#ops",
            message_ts="1.2",
            message_text="Login is slow since Tuesday",
            message_user=DAVE,
        )
        await h.ops.router.shortcut(call, h.ops.surface)
        # The console turns the form into prompts: keep the text, choose "A plan item".
        h.session._reader = _Scripted(["", "2"])  # type: ignore[assignment]
        await h.session._fill_forms()
        await h.session.settle()
        item = await h.services.tracker().get("OPS-1")
        assert item.title == "Login is slow since Tuesday"
        fb = await h.services.store.read(lambda db: rows(db, "SELECT source, plan_key FROM feedback"))
        assert fb == [{"source": "shortcut", "plan_key": "OPS-1"}]


async def test_a_console_choice_asks_again_after_an_answer_that_is_none_of_its_options(tmp_path: Path) -> None:
    # It took any wrong answer for the initial choice in silence: a note typed one prompt early turned a
    # "plan item" choice into "keep as feedback", and the note itself went nowhere.
    from bot.router import ShortcutCall

    async with console_ops(tmp_path) as h:
        call = ShortcutCall(
            actor=ALICE, callback="feedback.message", channel="#ops", message_ts="1.2",
            message_text="Login is slow since Tuesday", message_user=DAVE,
        )  # fmt: skip
        await h.ops.router.shortcut(call, h.ops.surface)
        h.session._reader = _Scripted(["", "make it a ticket please", "2"])  # type: ignore[assignment]
        await h.session._fill_forms()
        await h.session.settle()
        assert "`make it a ticket please` is not one of the choices: answer 1–2." in h.text()
        fb = await h.services.store.read(lambda db: rows(db, "SELECT plan_key FROM feedback"))
        assert fb == [{"plan_key": "OPS-1"}]


async def test_app_home_shows_open_items_and_feedback(tmp_path: Path) -> None:
    async with console_ops(tmp_path) as h:
        await h.say('plan new "Mine" @alice')
        await h.say('feedback "More charts"')
        out = await h.say("home")
        assert "App Home of @alice" in out and "Mine" in out and "you" in out and "More charts" in out


class _Scripted:
    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)

    def ask(self, prompt: str, fut) -> None:
        fut.set_result(self.lines.pop(0) if self.lines else None)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(text=st.text(max_size=60))
def test_fuzz_any_command_gets_an_answer_never_a_crash(tmp_path_factory, text: str) -> None:
    import asyncio

    async def run() -> None:
        async with console_ops(tmp_path_factory.mktemp("fuzz")) as h:
            reply = await h.ops.router.command(Invocation(ALICE, "#ops", text, source="console"), h.ops.surface)
            assert reply.message.text
            assert "Something went wrong" not in reply.message.text

    asyncio.run(run())
