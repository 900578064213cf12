"""The ack deadline: one timer for all unanswered requests of a transport, each fired at its own deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import bot.slack as slack
from bot.slack import AckDeadlines, AckGuard
from tests.support import wait_until


async def test_each_unanswered_request_gets_its_early_ack_and_an_answered_one_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slack, "ACK_DEADLINE", 0.05)
    deadlines = AckDeadlines()
    sent: list[tuple[str, Any]] = []

    def guard(name: str, kind: str = "command") -> AckGuard:
        async def send(payload: Any) -> None:
            sent.append((name, payload))

        return AckGuard(kind, send, deadlines)

    answered, slow, slower, click = guard("answered"), guard("slow"), guard("slower"), guard("click", "block_actions")
    answered.arm()  # the oldest: the timer is set for it
    await asyncio.sleep(0.01)
    slow.arm()
    slower.arm()
    click.arm()
    assert await answered.disarm() is False  # answered in time: the timer moves on to the next
    assert await click.disarm() is False
    await wait_until(lambda: len(sent) == 2, 5, "the two early acks")
    assert sent == [("slow", {"text": "Working on it…", "response_type": "ephemeral"}), ("slower", sent[0][1])]
    assert await slow.disarm() and await slower.disarm()
    assert not answered.early and not click.early and slow.fired_at is not None
    # Armed again later (a new request): the idle timer is set again.
    late = guard("late")
    late.arm()
    await wait_until(lambda: len(sent) == 3, 5, "the next early ack")
    assert await late.disarm() and sent[-1][0] == "late"
