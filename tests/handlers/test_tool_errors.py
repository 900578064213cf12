"""A tool that fails is named as the tool that failed, not shown as a conflict with opsloop's state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.emulators.slack import SlackEmulator
from tests.support import ALICE, free_port, slack_ops, slack_workspace


@pytest.fixture
async def emu():
    async with SlackEmulator() as e:
        slack_workspace(e)
        yield e


@pytest.mark.parametrize(
    ("integration", "command", "tool"),
    [
        ("prometheus", "query up", "prometheus"),
        ("alertmanager", 'silence alertname=Down 1h "maintenance"', "alertmanager"),
    ],
)
async def test_a_tool_that_is_down_is_named_under_tool_failed(
    tmp_path: Path, emu: SlackEmulator, integration: str, command: str, tool: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = {"integrations": {integration: {"url": down, "timeout": 2}}}
    async with slack_ops(tmp_path, emu, **cfg) as h:
        res = await h.command(command, user=ALICE)
        assert res.status == 200
        shown = res.body_text + json.dumps([r.body for r in emu.responses])  # the ack, or the late answer
        assert "Tool failed" in shown and tool in shown.lower()
        assert "Conflict" not in shown


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ('silence alertname=Down 99y "maintenance"', "`99y` is not a duration: write it like 90s, 30m, 2h"),
        ('silence alertname=Down 0h "maintenance"', "`0h` is not a positive duration"),
        ("silence alertname=Down 2h", "I need a reason in quotes."),
        ('silence 2h "maintenance"', "I need label matchers (like `alertname=HighLatency`)."),
        ('silence alertname=Down "maintenance"', "I need a duration (like `2h`)."),
        ("silence alertname=Down", "I need a duration (like `2h`) and a reason in quotes."),
    ],
)
async def test_a_silence_that_cannot_be_made_says_what_is_missing_or_wrong(
    tmp_path: Path, emu: SlackEmulator, command: str, said: str
) -> None:
    # Alertmanager is never asked (nothing listens there): the command is refused before, saying why.
    cfg = {"integrations": {"alertmanager": {"url": f"http://127.0.0.1:{free_port()}", "timeout": 2}}}
    async with slack_ops(tmp_path, emu, **cfg) as h:
        res = await h.command(command, user=ALICE)
        text = json.loads(res.body_text)["text"]
        assert said in text and 'Usage: `silence MATCHERS DURATION "REASON"`' in text
        assert "Tool failed" not in text
