"""The blocking pool: sync calls leave the loop free, overrun calls time out, the pool stays bounded."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bot.blocking import BlockingPool
from bot.ports import AdapterTimeout


async def test_sync_work_does_not_block_the_loop_and_times_out_by_name() -> None:
    pool = BlockingPool(workers=2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    assert await pool.run("jenkins", time.sleep, 0.3) is None
    assert ticks >= 5  # the loop kept running while the thread slept
    with pytest.raises(AdapterTimeout, match=r"jenkins: no answer within 0\.05 s"):
        await pool.run("jenkins", time.sleep, 1, timeout=0.05)
    t.cancel()
    pool.close()


async def test_the_pool_is_bounded() -> None:
    pool = BlockingPool(workers=2)
    running = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    await asyncio.gather(*(pool.run("git", work) for _ in range(8)))
    assert peak == 2
    pool.close()
