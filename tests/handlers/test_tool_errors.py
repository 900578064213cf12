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
