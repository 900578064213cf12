"""Rendering: whatever a handler builds, Slack accepts it (checked by the emulator's strict validator),
long content is cut visibly, and the cards people see are pinned by golden files.

Regenerate the golden files after an intended change with `OPSLOOP_GOLDEN=update pytest tests/unit/test_rendering.py`.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import rendering
from bot import views as v
from bot.approvals import Approval, ApprovalState, Vote, card
from bot.cards import card as plan_card
from bot.ports import ItemStatus, PlanItem
from tests.emulators.slack import validate_blocks, validate_view

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


def golden(name: str, payload: dict[str, object]) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("OPSLOOP_GOLDEN") == "update":
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}; create it with OPSLOOP_GOLDEN=update"
    assert path.read_text() == text, f"{name} changed; if intended, regenerate with OPSLOOP_GOLDEN=update"


ITEM = PlanItem(
    "OPS-7", "Rotate <!channel> certs", ItemStatus.OPEN, "U0ALICE", None, True, datetime(2026, 1, 2, tzinfo=UTC)
)
APPROVAL = Approval(
    "abc123",
    "plan.done",
    "plan:OPS-7",
    "fp",
    "Close *OPS-7*",
    "U0ALICE",
    ApprovalState.PENDING,
    2,
    "approvers",
    False,
    1_800_003_600.0,
    1_800_000_000.0,
    None,
    None,
    "C1",
    None,
    {},
    (Vote("U0BOB", "approve", 1_800_000_100.0),),
)


def test_plan_card_golden_and_valid() -> None:
    payload = rendering.message(plan_card(ITEM))
    assert validate_blocks(payload["blocks"]) == []
    golden("plan_card_open", payload)
    done = PlanItem(
        "OPS-7",
        "Rotate certs",
        ItemStatus.DONE,
        "U0ALICE",
        "U0BOB",
        False,
        datetime(2026, 1, 2, tzinfo=UTC),
        datetime(2026, 1, 3, tzinfo=UTC),
        "U0BOB",
    )
    golden("plan_card_done", rendering.message(plan_card(done)))


def test_approval_card_golden_and_valid() -> None:
    payload = rendering.message(card(APPROVAL, now=1_800_000_200.0))
    assert validate_blocks(payload["blocks"]) == []
    golden("approval_card_pending", payload)


def test_long_content_is_cut_visibly_and_stays_valid() -> None:
    msg = v.Message(
        "x" * 10_000,
        (
            v.Header("h" * 500),
            v.Section("s" * 5000, fields=tuple((f"k{i}", "f" * 3000) for i in range(13))),
            v.Code("line\n" * 2000 + "LAST LINE"),
            v.Actions(tuple(v.Button("b" * 100, "plan.done", "{}") for _ in range(30))),
            *(v.Section(f"row {i}") for i in range(80)),
        ),
    )
    payload = rendering.message(msg)
    assert validate_blocks(payload["blocks"]) == []
    assert len(payload["blocks"]) == 50
    assert "more blocks not shown" in json.dumps(payload["blocks"][-1])
    text = json.dumps(payload)
    assert "more characters" in text and "LAST LINE" in text  # logs keep their tail
    ids = [e["action_id"] for b in payload["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert len(ids) == len(set(ids)) == 30 and {rendering.base_action(i) for i in ids} == {"plan.done"}


def test_user_text_cannot_ping_the_channel() -> None:
    payload = rendering.message(v.Message("t", (v.Section(f"Title: {v.esc('<!channel> <@U1> & co')}"),)))
    assert "<!channel>" not in json.dumps(payload) and "&lt;!channel&gt;" in json.dumps(payload)


def test_modal_and_home_are_valid_views() -> None:
    modal = rendering.modal(
        v.Modal(
            "A very long title that Slack would refuse",
            "feedback.message_submit",
            (
                v.TextInput("text", "Text", multiline=True, initial="x" * 5000),
                v.Choice("as", "As", (("a", "A"), ("b", "B")), "b"),
            ),
            intro="intro",
            metadata='{"channel": "C1"}',
        )
    )
    assert validate_view(modal, surface="modal") == []
    home = rendering.home(v.HomeView(tuple(v.Section(f"item {i}") for i in range(150))))
    assert validate_view(home, surface="home") == []
    with pytest.raises(ValueError, match="metadata"):
        rendering.modal(v.Modal("t", "c", (), metadata="x" * 3001))


_text = st.text(min_size=0, max_size=4000)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            _text.map(v.Header),
            _text.map(v.Section),
            _text.map(v.Code),
            st.lists(_text, max_size=12).map(lambda xs: v.Context(tuple(xs))),
            st.lists(st.tuples(_text, _text), max_size=14).map(lambda fs: v.Section(fields=tuple(fs))),
            st.lists(_text.map(lambda t: v.Button(t, "plan.take", "{}")), max_size=30).map(
                lambda bs: v.Actions(tuple(bs))
            ),
        ),
        max_size=70,
    ),
    _text,
)
def test_any_view_model_renders_to_blocks_slack_accepts(blocks: list[v.Block], text: str) -> None:
    payload = rendering.message(v.Message(text, tuple(blocks)))
    assert validate_blocks(payload["blocks"]) == []
    assert 1 <= len(payload["text"]) <= 3000


def test_counts_agree_with_their_number() -> None:
    from bot import views as v

    assert [v.count(n, "approval") for n in (0, 1, 2)] == ["0 approvals", "1 approval", "2 approvals"]
    assert v.count(3, "person", "people") == "3 people" and v.count(1, "person", "people") == "1 person"
