"""One loop that polls many watched things (builds, rollouts), each at its own pace, with backoff.

A watch registers a poll function and awaits its final value. The loop sleeps until the earliest watch
is due (or a webhook nudges one), runs the due polls with bounded concurrency, and stretches the
interval of a watch whose poll saw no change, up to a ceiling; a change resets it. A poll that fails
(the tool is down) backs off the same way and is retried. A hundred watches cost one task and a
hundred futures, not a hundred loops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bot.ports import AdapterError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress(Generic[T]):
    """What one poll saw: the final value when done, and whether anything changed since last time."""

    final: T | None = None
    changed: bool = False


Poll = Callable[[], Awaitable[Progress[Any]]]


@dataclass
class _Watch:
    key: str
    poll: Poll
    interval: float
    base: float
    ceiling: float
    next_at: float
    done: asyncio.Future[Any]
    errors: int = 0
    polls: int = 0
    running: bool = False
    last_error: str = field(default="")


class Poller:
    """See the module docstring."""

    def __init__(self, *, concurrency: int = 8, backoff: float = 1.5) -> None:
        self._watches: dict[str, _Watch] = {}
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(concurrency)
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.polls = 0

    @property
    def watching(self) -> int:
        return len(self._watches)

    async def watch(self, key: str, poll: Poll, *, interval: float, ceiling: float = 60.0) -> Any:
        """Poll until `poll` reports a final value and return it. One watch per key at a time."""
        if key in self._watches:
            return await asyncio.shield(self._watches[key].done)
        self.start()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._watches[key] = _Watch(key, poll, interval, interval, max(ceiling, interval), time.monotonic(), fut)
        self._wake.set()
        try:
            return await fut
        finally:
            w = self._watches.get(key)
            if w is not None and w.done is fut:
                del self._watches[key]

    def nudge(self, key: str) -> bool:
        """Poll `key` now (a webhook said something happened); False if nothing watches it."""
        w = self._watches.get(key)
        if w is None:
            return False
        w.next_at = time.monotonic()
        w.interval = w.base
        self._wake.set()
        return True

    def start(self) -> None:
        """Start the loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="poller")

    async def stop(self) -> None:
        """Stop polling; watchers waiting on a result are cancelled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for t in list(self._inflight):
            t.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        for w in self._watches.values():
            if not w.done.done():
                w.done.cancel()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            soonest: float | None = None
            for w in list(self._watches.values()):
                if w.running or w.done.done():
                    continue
                if w.next_at <= now:
                    w.running = True
                    t = asyncio.create_task(self._poll_one(w))
                    self._inflight.add(t)
                    t.add_done_callback(self._inflight.discard)
                else:
                    soonest = w.next_at if soonest is None else min(soonest, w.next_at)
            timeout = None if soonest is None else max(0.0, soonest - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _poll_one(self, w: _Watch) -> None:
        try:
            async with self._sem:
                w.polls += 1
                self.polls += 1
                progress = await w.poll()
            w.errors = 0
            if progress.final is not None:
                if not w.done.done():
                    w.done.set_result(progress.final)
                return
            w.interval = w.base if progress.changed else min(w.ceiling, w.interval * self._backoff)
        except AdapterError as err:
            w.errors += 1
            w.last_error = str(err)
            w.interval = min(w.ceiling, w.interval * self._backoff)
            log.warning("polling %s failed (%s); retrying in %.0f s", w.key, err, w.interval)
        except Exception as err:  # a bug in the poll function: end the watch with it
            if not w.done.done():
                w.done.set_exception(err)
            return
        finally:
            w.running = False
        w.next_at = time.monotonic() + w.interval
        self._wake.set()
