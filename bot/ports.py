"""Ports: one Protocol per capability, the value types that cross them, and the AdapterError family.

Handlers see only these; adapters implement them and import nothing else from the core. Values that
cross a port are our own frozen dataclasses, never raw JSON or client-library objects.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


# --- errors -----------------------------------------------------------------------------------------


class AdapterError(Exception):
    """A tool failed; the message names the tool and what it answered."""

    def __init__(self, tool: str, message: str) -> None:
        self.tool = tool
        super().__init__(f"{tool}: {message}")


class AdapterUnavailable(AdapterError):
    """The tool could not be reached (connection refused, DNS, TLS)."""


class AdapterTimeout(AdapterError):
    """The tool did not answer in time."""


class AdapterNotFound(AdapterError):
    """The tool answered that the named thing does not exist."""


# --- storage ---------------------------------------------------------------------------------------


class SqlStore(Protocol):
    """Transactional access to the SQLite store; functions run on the store's own threads.

    The argument handed to `fn` is a `sqlite_utils.Database`; `write` runs `fn` in a transaction that
    is committed before the call returns.
    """

    async def read(self, fn: Callable[[Any], T]) -> T: ...

    async def write(self, fn: Callable[[Any], T]) -> T: ...

    def submit(self, fn: Callable[[Any], T]) -> asyncio.Future[T]:
        """Queue a write without waiting; the future resolves when it is committed."""
        ...


# --- plan -------------------------------------------------------------------------------------------


class ItemStatus(enum.StrEnum):
    OPEN = "open"
    DONE = "done"


@dataclass(frozen=True)
class PlanItem:
    """One work item of a tracker."""

    key: str
    title: str
    status: ItemStatus
    reporter: str
    assignee: str | None
    critical: bool
    created_at: datetime
    closed_at: datetime | None = None
    closed_by: str | None = None
    url: str | None = None
    tracker: str = "local"


@dataclass(frozen=True)
class NewItem:
    """What is needed to create a plan item."""

    title: str
    reporter: str
    assignee: str | None = None
    critical: bool = False
    description: str = ""


class ListFilter(enum.StrEnum):
    OPEN = "open"
    MINE = "mine"
    ALL = "all"


class Tracker(Protocol):
    """A work tracker: the built-in one, Jira, Trello or Asana."""

    name: str

    async def create(self, item: NewItem) -> PlanItem: ...

    async def get(self, key: str) -> PlanItem:
        """Raise `AdapterNotFound` when there is no such item."""
        ...

    async def list(self, which: ListFilter, user: str, limit: int = 20) -> Sequence[PlanItem]: ...

    async def assign(self, key: str, user: str) -> PlanItem: ...

    async def close(self, key: str, by: str) -> PlanItem: ...


# --- people -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A chat user as the directory knows them."""

    id: str
    name: str
    is_bot: bool = False
    is_guest: bool = False
    deleted: bool = False


class Directory(Protocol):
    """Who is who: user names and user-group membership (cached by the implementation)."""

    async def person(self, user_id: str) -> Person: ...

    async def group_members(self, group: str) -> frozenset[str]:
        """Members of a user group given as `@handle` or its id; empty when unknown."""
        ...

    async def find(self, name: str) -> str | None:
        """The user id for a name typed in chat (`@alice` without Slack's escaping), if known."""
        ...
