"""Neutral view models that handlers return; `rendering` turns them into Block Kit, `console` into text.

Text uses Slack's mrkdwn conventions (`*bold*`, `_italic_`, `` `code` ``, `<@U123>` mentions), the
common ground of both surfaces. Nothing here knows a length limit: rendering truncates.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


class Style(enum.StrEnum):
    DEFAULT = ""
    PRIMARY = "primary"
    DANGER = "danger"


@dataclass(frozen=True)
class Confirm:
    """An "are you sure" dialog shown before a button's click is sent."""

    title: str
    text: str
    confirm: str = "Yes"
    deny: str = "Cancel"


# Slack's limit on a button's url.
URL_MAX = 3000


@dataclass(frozen=True)
class Button:
    """A button; `action` is a `stage.verb` id and `value` the typed reference it acts on."""

    label: str
    action: str
    value: str = ""
    style: Style = Style.DEFAULT
    confirm: Confirm | None = None
    url: str | None = None

    @classmethod
    def link(cls, label: str, action: str, value: str, url: str | None) -> Button | None:
        """A button that opens `url`, or None where Slack would refuse it (longer than URL_MAX) or there
        is nothing to open: a tool's URL comes from outside and must not cost the card it sits on."""
        if not url or len(url) > URL_MAX:
            return None
        return cls(label, action, value, url=url)


@dataclass(frozen=True)
class Header:
    text: str


@dataclass(frozen=True)
class Section:
    text: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    button: Button | None = None


@dataclass(frozen=True)
class Context:
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Divider:
    pass


@dataclass(frozen=True)
class Actions:
    buttons: tuple[Button, ...]


@dataclass(frozen=True)
class Code:
    """Preformatted text (logs, tables)."""

    text: str


Block = Header | Section | Context | Divider | Actions | Code


@dataclass(frozen=True)
class Message:
    """A message: `text` is the notification/fallback line, `blocks` the body."""

    text: str
    blocks: tuple[Block, ...] = ()


class Visibility(enum.StrEnum):
    EPHEMERAL = "ephemeral"
    IN_CHANNEL = "in_channel"


@dataclass(frozen=True)
class Reply:
    """What a command answers to the person who typed it."""

    message: Message
    visibility: Visibility = Visibility.EPHEMERAL

    @classmethod
    def text(cls, text: str, *, public: bool = False) -> Reply:
        """A one-section reply."""
        vis = Visibility.IN_CHANNEL if public else Visibility.EPHEMERAL
        return cls(Message(text, (Section(text),)), vis)


@dataclass(frozen=True)
class TextInput:
    """One field of a modal; `name` is its block and action id."""

    name: str
    label: str
    multiline: bool = False
    initial: str = ""
    optional: bool = False
    placeholder: str = ""


@dataclass(frozen=True)
class Choice:
    """A single choice among options, shown as radio buttons in Slack."""

    name: str
    label: str
    options: tuple[tuple[str, str], ...]  # (value, label)
    initial: str | None = None


Input = TextInput | Choice


@dataclass(frozen=True)
class Modal:
    """A form; submitting it calls the submit handler registered for `callback`."""

    title: str
    callback: str
    inputs: tuple[Input, ...]
    submit: str = "Submit"
    intro: str = ""
    metadata: str = ""


@dataclass(frozen=True)
class HomeView:
    """The App Home tab of one user."""

    blocks: tuple[Block, ...] = field(default_factory=tuple)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 approval`, `2 approvals` (`plural` for nouns that don't take an s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def esc(text: str) -> str:
    """Escape user-supplied text for mrkdwn, so `<!channel>` or `<@U1>` typed by someone stays text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_SLACK_ID = re.compile(r"^[UWB][A-Z0-9]{2,}$")


def person(who: str) -> str:
    """A mention when `who` is a Slack user id; otherwise the name a tracker gave, as plain text
    (someone nobody mapped to a Slack user)."""
    return f"<@{who}>" if _SLACK_ID.match(who) else esc(who)


_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]+$")


def is_channel_id(ref: str) -> bool:
    """Whether `ref` is the id Slack gives a channel (C…, G…, D…), not a configured `#name`."""
    return bool(_CHANNEL_ID.match(ref))


def channel(ref: str) -> str:
    """A channel as mrkdwn: its id as Slack's link to it, a configured `#name` as written."""
    return f"<#{ref}>" if is_channel_id(ref) else ref


def unesc(text: str) -> str:
    """Undo `esc` (for surfaces that show plain text)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
