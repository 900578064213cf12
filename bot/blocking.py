"""Sync client libraries off the event loop: one bounded thread pool, and a time limit on every call.

python-jenkins, kubernetes, gitpython, jira, selenium and friends block; a blocking call on the loop
delays every Slack ack. Adapters call `await pool.run(tool, fn, *args, timeout=...)`; a call that
overruns raises AdapterTimeout naming the tool. Its thread cannot be killed, so the pool stays bounded:
when every thread is busy, further calls wait their turn instead of piling up threads.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bot.ports import AdapterTimeout

T = TypeVar("T")


class BlockingPool:
    """A bounded pool for sync libraries."""

    def __init__(self, workers: int = 8, default_timeout: float = 30.0) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blocking")
        self.workers = workers
        self.default_timeout = default_timeout

    async def run(self, tool: str, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kw: Any) -> T:
        """Run `fn(*args, **kw)` on the pool; AdapterTimeout after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))
        limit = self.default_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(fut, limit)
        except TimeoutError:
            raise AdapterTimeout(tool, f"no answer within {limit:g} s") from None

    def close(self) -> None:
        """Stop taking work; running calls finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)
