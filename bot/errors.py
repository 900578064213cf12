"""Errors whose text is shown to the user verbatim.

Handlers raise these; the router turns them into a reply. Anything else that escapes a handler is a
bug: the user gets a short apology with an error id and the traceback goes to the log.
"""

from __future__ import annotations

from bot.views import count


class UserError(Exception):
    """A problem the user can act on; `str(err)` is the whole message."""

    title = "Can't do that"


class UsageError(UserError):
    """The words did not parse; the message carries the usage line of the nearest command."""

    title = "Usage"


class NotAllowed(UserError):
    """A permission or policy refusal; the message always says why."""

    title = "Not allowed"


class NotConfigured(UserError):
    """A capability that has no configuration; the message says what to set."""

    title = "Not configured"


class NotFound(UserError):
    """The thing named does not exist."""

    title = "Not found"


class Conflict(UserError):
    """The request collides with current state (already done, locked, voided, expired)."""

    title = "Conflict"


class ToolFailed(UserError):
    """A tool refused or failed on the way to doing what was asked; the message names the tool and
    says what did not change."""

    title = "Tool failed"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every error with its path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {msg}" for path, msg in problems)
        super().__init__(f"{source}: {count(len(problems), 'problem')}\n{lines}")


class StartupError(Exception):
    """opsloop cannot start; the message is one clear sentence for the operator."""
