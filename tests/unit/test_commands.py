"""The command grammar: tokens, typed arguments, usage and did-you-mean, and a fuzz for crashes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import commands as c
from bot.app import GROUPS
from bot.errors import UsageError


async def _noop(**_: object) -> None:
    return None


def spec(words: str, *params: c.Param) -> c.CommandSpec:
    return c.CommandSpec(words.replace(" ", "."), tuple(words.split()), params, _noop)


GRAMMAR = c.Grammar([s for g in GROUPS for s in g.commands])


def test_quotes_group_words_and_curly_quotes_work() -> None:
    assert [t.text for t in c.tokenize('plan new "Fix login" @bob')] == ["plan", "new", "Fix login", "@bob"]
    assert [t.text for t in c.tokenize("plan new “Fix login”")] == ["plan", "new", "Fix login"]


def test_unclosed_quote_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="never closed"):
        c.tokenize('plan new "Fix login')


def test_plan_new_binds_title_mention_and_flag_anywhere() -> None:
    p = GRAMMAR.parse('plan new "Fix login" <@U0BOB|bob> critical')
    assert p.command.id == "plan.new"
    assert p.args["title"] == "Fix login"
    assert p.args["who"] == c.Mention("U0BOB", "bob")
    assert p.args["critical"] is True
    p = GRAMMAR.parse("plan new critical Fix the login page @bob")
    assert p.args == {"title": "Fix the login page", "who": c.Mention(None, "bob"), "critical": True}


def test_unquoted_title_stops_at_a_mention() -> None:
    p = GRAMMAR.parse("plan new Fix login @dave")
    assert p.args["title"] == "Fix login"
    assert p.args["who"] == c.Mention(None, "dave")


def test_keys_are_normalised() -> None:
    assert GRAMMAR.parse("plan show ops-12").args["key"] == "OPS-12"
    assert GRAMMAR.parse("plan show 12").args["key"] == "12"
    with pytest.raises(UsageError, match="not an item key"):
        GRAMMAR.parse("plan show what")


def test_choice_default_and_refusal() -> None:
    assert GRAMMAR.parse("plan list").args["which"] == "open"
    assert GRAMMAR.parse("plan list MINE").args["which"] == "mine"
    with pytest.raises(UsageError) as err:
        GRAMMAR.parse("plan list everything")
    assert "Usage: `plan list [open|mine|all]`" in str(err.value)


def test_missing_and_extra_arguments_show_usage() -> None:
    with pytest.raises(UsageError, match=r"Missing KEY\.\nUsage: `plan done KEY`"):
        GRAMMAR.parse("plan done")
    with pytest.raises(UsageError, match="I don't understand `extra words`"):
        GRAMMAR.parse("plan done OPS-1 extra words")


def test_did_you_mean_for_typos_and_unknown_verbs() -> None:
    with pytest.raises(UsageError) as err:
        GRAMMAR.parse("plna list")
    assert "Did you mean" in str(err.value) and "plan list" in str(err.value)
    with pytest.raises(UsageError) as err:
        GRAMMAR.parse("plan lsit")
    assert "plan list" in str(err.value)
    with pytest.raises(UsageError, match="Try `help`"):
        GRAMMAR.parse("zzzzzz")


def test_numbers_pairs_durations_and_rest() -> None:
    s = spec(
        "x run",
        c.number("n", optional=True, default=5, max=10),
        c.pairs(),
        c.duration("d", optional=True),
        c.rest("query", optional=True),
    )
    g = c.Grammar([s])
    p = g.parse("x run 3 branch=main 2h30m up{job=x} > 1")
    assert p.args == {
        "n": 3,
        "params": {"branch": "main"},
        "d": timedelta(hours=2, minutes=30),
        "query": "up{job=x} > 1",
    }
    with pytest.raises(UsageError, match="between 1 and 10"):
        g.parse("x run 11")
    with pytest.raises(UsageError, match="not a duration"):
        g.parse("x run 3 soon")


def test_duplicate_words_are_rejected() -> None:
    with pytest.raises(ValueError, match="both answer to `a b`"):
        c.Grammar([spec("a b"), spec("a b")])


def test_usage_lines_are_generated_from_parameters() -> None:
    usages = {s.id: s.usage() for s in GRAMMAR.specs}
    assert usages["plan.new"] == 'plan new "TITLE" [@who] [critical]'
    assert usages["feedback.send"] == 'feedback "TEXT"'
    assert usages["insights.audit"] == "audit [N]"


# Any text at all gets either a parse or a UsageError: never another exception.
_words = st.sampled_from(
    [
        "plan",
        "new",
        "list",
        "show",
        "done",
        "assign",
        "feedback",
        "help",
        "audit",
        "whoami",
        "mine",
        "critical",
        "OPS-1",
        "@bob",
        "<@U1|x>",
        '"',
        "“",
        "k=v",
        "12",
        "-1",
        "#3",
    ]
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_words, max_size=8).map(" ".join)))
def test_fuzz_any_text_parses_or_gives_usage(text: str) -> None:
    try:
        parsed = GRAMMAR.parse(text)
    except UsageError as err:
        assert str(err)
    else:
        assert parsed.command in GRAMMAR.specs
