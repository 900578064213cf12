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
    assert p.args == {"title": "Fix the login page", "who": c.Mention(None, "bob"), "tracker": "", "critical": True}


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
    assert "Usage: `plan list [open|mine|all] [local|jira|trello|asana]`" in str(err.value)


def test_missing_and_extra_arguments_show_usage() -> None:
    with pytest.raises(UsageError, match=r"Missing KEY\.\nUsage: `plan done KEY`"):
        GRAMMAR.parse("plan done")
    with pytest.raises(UsageError, match="I don't understand `extra words`"):
        GRAMMAR.parse("plan done OPS-1 extra words")


def test_a_word_an_optional_parameter_passed_over_is_named_with_why() -> None:
    # Errors name a parameter as the usage line does (N), not by its name in the code (n).
    with pytest.raises(UsageError, match=r"`abc` is not a number; N is a whole number\.\nUsage: `audit \[N\]`"):
        GRAMMAR.parse("audit abc")
    with pytest.raises(UsageError, match=r"^N must be between 1 and 100\."):
        GRAMMAR.parse("audit 0")
    with pytest.raises(UsageError, match=r"`everything` is not one of open, mine, all\."):
        GRAMMAR.parse("plan list everything")
    with pytest.raises(UsageError, match=r"`bob` is not a person for @who"):
        GRAMMAR.parse('plan new "title" bob')


def test_did_you_mean_for_typos_and_unknown_verbs() -> None:
    with pytest.raises(UsageError) as err:
        GRAMMAR.parse("plna list")
    assert "Did you mean" in str(err.value) and "plan list" in str(err.value)
    with pytest.raises(UsageError) as err:
        GRAMMAR.parse("plan lsit")
    assert "plan list" in str(err.value)
    with pytest.raises(UsageError, match="Try `help`"):
        GRAMMAR.parse("zzzzzz")


def test_a_stage_name_alone_or_with_an_unknown_verb_is_told_as_such() -> None:
    # `plan` is a stage with no command of its own: "I don't know `plan`" would be wrong.
    with pytest.raises(UsageError, match=r"^`plan` needs a command after it:\n• `plan new") as err:
        GRAMMAR.parse("plan")
    assert "plan list" in str(err.value)
    with pytest.raises(UsageError, match=r"^`plan` has no `zap`\. Did you mean:\n• `plan new"):
        GRAMMAR.parse("plan zap")
    with pytest.raises(UsageError, match=r"^`plan` needs a command after it"):
        GRAMMAR.parse('plan "title"')


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


def test_the_longest_command_words_win_and_a_quoted_word_is_never_one() -> None:
    g = c.Grammar([spec("x", c.rest("what", optional=True)), spec("x run", c.rest("what", optional=True))])
    assert (g.parse("X Run fast").command.id, g.parse("X Run fast").args) == ("x.run", {"what": "fast"})
    assert (g.parse('x "run" fast').command.id, g.parse('x "run" fast').args) == ("x", {"what": '"run" fast'})
    with pytest.raises(UsageError):
        g.parse('"x" run')


def test_duplicate_words_are_rejected() -> None:
    with pytest.raises(ValueError, match="both answer to `a b`"):
        c.Grammar([spec("a b"), spec("a b")])


def test_usage_lines_are_generated_from_parameters() -> None:
    usages = {s.id: s.usage() for s in GRAMMAR.specs}
    assert usages["plan.new"] == 'plan new "TITLE" [@who] [local|jira|trello|asana] [critical]'
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


@pytest.mark.parametrize(
    ("typed", "key"),
    [
        ("ops-12", "OPS-12"),
        ("#7", "7"),
        ("AbCd1234", "AbCd1234"),  # a Trello short link keeps its case
        ("1200000000000042", "1200000000000042"),  # an Asana gid
        ("<https://acme.atlassian.net/browse/SHOP-3>", "SHOP-3"),
        ("<https://trello.com/c/AbCd1234/7-fix-it|the card>", "AbCd1234"),
        ("https://app.asana.com/0/1200000000000001/1200000000000042/f", "1200000000000042"),
    ],
)
def test_item_keys_of_every_tracker_and_pasted_links(typed: str, key: str) -> None:
    assert GRAMMAR.parse(f"plan show {typed}").args["key"] == key


@pytest.mark.parametrize("typed", ["12345678901234567890123", "abc", "OPS-", "https://example.com/x", "a-b-1"])
def test_what_is_not_an_item_key_is_refused_with_the_usage(typed: str) -> None:
    with pytest.raises(UsageError, match="not an item key"):
        GRAMMAR.parse(f"plan show {typed}")


def test_the_tracker_of_a_key_is_told_by_its_shape(tmp_path) -> None:
    from types import SimpleNamespace

    from bot.config import parse_config
    from bot.context import Services
    from tests.support import config_data

    cfg = parse_config(
        config_data(
            tmp_path / "x.db",
            plan={"prefix": "OPS", "tracker": "jira"},
            integrations={
                "jira": {"url": "https://j", "token_env": "J", "project": "SHOP"},
                "trello": {"key_env": "K", "token_env": "T", "board": "b"},
                "asana": {"token_env": "A", "workspace": "1", "project": "2"},
            },
        )
    )
    names = {n: SimpleNamespace(name=n) for n in ("local", "jira", "trello", "asana")}
    services = Services.__new__(Services)
    services.config, services.trackers = cfg, names  # only what tracker_for reads
    keys = ("OPS-1", "SHOP-2", "ABC-3", "AbCd1234", "1200000000000042", "12")
    owner = {k: services.tracker_for(k).name for k in keys}
    assert owner == {
        "OPS-1": "local",
        "SHOP-2": "jira",
        "ABC-3": "jira",  # another project of the same Jira site
        "AbCd1234": "trello",
        "1200000000000042": "asana",
        "12": "jira",  # a bare number: the default tracker
    }
    # When the built-in prefix and the Jira project are the same, the default tracker decides.
    jira = cfg.integrations.jira.model_copy(update={"project": "OPS"})  # type: ignore[union-attr]
    services.config = cfg.model_copy(update={"integrations": cfg.integrations.model_copy(update={"jira": jira})})
    assert services.tracker_for("OPS-1").name == "jira"


def test_help_details_are_paragraphs_not_the_source_wrapping() -> None:
    # Chat breaks a line at every newline: a docstring wrapped at 110 columns must read as sentences.
    doc = """Deploy a service.

    `force "reason"` breaks glass over a freeze; only roles in the
    environment's `break_glass` may.

    Steps:
    - checks run first,
      then approvals
    - the rollout
    1. one
    2) two"""
    spec = c.CommandSpec("deploy.run", ("deploy",), (), _noop, doc)
    assert spec.summary == "Deploy a service."
    assert spec.details == (
        '`force "reason"` breaks glass over a freeze; only roles in the environment\'s `break_glass` may.\n'
        "Steps:\n- checks run first, then approvals\n- the rollout\n1. one\n2) two"
    )
    assert c.CommandSpec("x", ("x",), (), _noop, "Only a summary.").details == ""


def test_a_left_out_word_before_a_keyword_is_named_not_the_keyword_blamed() -> None:
    # `deploy api to prod`: `to` was read as the version, then `prod` is not `to`; the version is what's missing.
    with pytest.raises(UsageError, match=r"Missing VERSION\.") as err:
        GRAMMAR.parse("deploy api to prod")
    assert "is not one of" not in str(err.value)
    with pytest.raises(UsageError, match=r"^Expected `to` before `staging`\."):
        GRAMMAR.parse("deploy api 1.2 staging")  # not "`staging` is not one of to"
    assert GRAMMAR.parse("deploy api 1.2 to prod").args["version"] == "1.2"


def test_a_duration_longer_than_its_command_takes_is_refused_with_the_limit() -> None:
    with pytest.raises(UsageError, match=r"^DURATION can be at most 90d; `400d` is longer\.\nUsage: `freeze ENV"):
        GRAMMAR.parse('freeze prod 400d "quarter end"')
    assert GRAMMAR.parse('freeze prod 90d "quarter end"').args["duration"].days == 90
