"""The poller: one loop for many watches, backoff when nothing changes, nudges, errors retried."""

from __future__ import annotations

import asyncio

import pytest

from bot.poller import Poller, Progress
from bot.ports import AdapterUnavailable


async def test_many_watches_finish_with_one_loop() -> None:
    poller = Poller(concurrency=4)
    counts = dict.fromkeys(range(100), 0)

    def make(i: int):
        async def poll() -> Progress[str]:
            counts[i] += 1
            return Progress(final=f"done {i}" if counts[i] >= 3 else None, changed=True)

        return poll

    before = len(asyncio.all_tasks())
    results = await asyncio.gather(*(poller.watch(f"b{i}", make(i), interval=0.01) for i in range(100)))
    assert results == [f"done {i}" for i in range(100)]
    assert set(counts.values()) == {3}
    assert poller.watching == 0
    assert len(asyncio.all_tasks()) <= before + 1  # the poller's own loop, no task per watch left behind
    await poller.stop()


async def test_unchanged_watches_back_off_and_a_nudge_polls_at_once() -> None:
    poller = Poller(backoff=4.0)
    seen: list[float] = []
    loop = asyncio.get_running_loop()
    finish = asyncio.Event()

    async def poll() -> Progress[bool]:
        seen.append(loop.time())
        return Progress(final=True if finish.is_set() else None)

    task = asyncio.create_task(poller.watch("k", poll, interval=0.05, ceiling=10))
    await asyncio.sleep(0.5)
    polls_in_half_second = len(seen)
    assert 2 <= polls_in_half_second <= 4  # 0.05, then 0.2, then 0.8: backing off, not every 50 ms
    finish.set()
    assert poller.nudge("k")
    assert await asyncio.wait_for(task, 1) is True
    assert not poller.nudge("k")
    await poller.stop()


async def test_tool_errors_are_retried_and_bugs_end_the_watch() -> None:
    poller = Poller()
    calls = 0

    async def flaky() -> Progress[int]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise AdapterUnavailable("Jenkins", "down")
        return Progress(final=calls)

    assert await asyncio.wait_for(poller.watch("j", flaky, interval=0.01), 5) == 3

    async def broken() -> Progress[int]:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await asyncio.wait_for(poller.watch("b", broken, interval=0.01), 5)
    await poller.stop()
