"""Neutral view models -> Block Kit, through slack_sdk.models so Slack's limits are checked before sending.

All truncation lives here: long texts are cut with a visible note (logs keep their tail), surplus
blocks are summarised in a last context line, repeated action ids get a `~n` suffix that the router
strips again. A message rendered here always passes Slack's validation.
"""

from __future__ import annotations

import json
import re
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    RadioButtonsElement,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot import views as v

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
TEXT_MAX = 3000
FIELD_MAX = 2000
FALLBACK_MAX = 3000
_SUFFIX = re.compile(r"~\d+$")


def clip(text: str, limit: int, *, keep: str = "head") -> str:
    """Cut `text` to `limit` characters with a note saying how much was cut."""
    if len(text) <= limit:
        return text
    note_len = len(f"… ({len(text)} more characters)")
    room = max(1, limit - note_len - 2)
    cut = len(text) - room
    if keep == "tail":
        return f"({cut} characters before) …{text[-room:]}"[:limit]
    return f"{text[:room]}… ({cut} more characters)"[:limit]


def base_action(action_id: str) -> str:
    """The registered action id of a rendered one (without the uniqueness suffix)."""
    return _SUFFIX.sub("", action_id)


def _plain(text: str, limit: int) -> PlainTextObject:
    return PlainTextObject(text=clip(text or " ", limit), emoji=True)


def _md(text: str, limit: int = TEXT_MAX) -> MarkdownTextObject:
    return MarkdownTextObject(text=clip(text or " ", limit))


class _Ids:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def unique(self, action: str) -> str:
        n = self.seen.get(action, 0) + 1
        self.seen[action] = n
        return action if n == 1 else f"{action}~{n}"


def _button(b: v.Button, ids: _Ids) -> ButtonElement:
    if len(b.value) > 2000:
        raise ValueError(f"button value for {b.action} is {len(b.value)} characters; Slack allows 2000")
    confirm = None
    if b.confirm:
        confirm = ConfirmObject(
            title=_plain(b.confirm.title, 100),
            text=_md(b.confirm.text, 300),
            confirm=_plain(b.confirm.confirm, 30),
            deny=_plain(b.confirm.deny, 30),
        )
    return ButtonElement(
        text=_plain(b.label, 75),
        action_id=ids.unique(b.action),
        value=b.value or None,
        style=b.style.value or None,
        confirm=confirm,
        url=b.url,
    )


def _blocks(blocks: tuple[v.Block, ...], ids: _Ids) -> list[Any]:
    out: list[Any] = []
    for b in blocks:
        if isinstance(b, v.Header):
            out.append(HeaderBlock(text=_plain(b.text, 150)))
        elif isinstance(b, v.Section):
            fields = [_md(f"*{k}*\n{val}", FIELD_MAX) for k, val in b.fields]
            chunks = [fields[i : i + 10] for i in range(0, len(fields), 10)] or [[]]
            for n, chunk in enumerate(chunks):
                kw: dict[str, Any] = {}
                if n == 0 and b.text:
                    kw["text"] = _md(b.text)
                if chunk:
                    kw["fields"] = chunk
                if not kw:
                    kw["text"] = _md(" ")
                if n == 0 and b.button:
                    kw["accessory"] = _button(b.button, ids)
                out.append(SectionBlock(**kw))
        elif isinstance(b, v.Context):
            if b.texts:
                out.append(ContextBlock(elements=[_md(t) for t in b.texts[:10]]))
        elif isinstance(b, v.Divider):
            out.append(DividerBlock())
        elif isinstance(b, v.Actions):
            if b.buttons:
                for i in range(0, len(b.buttons), 25):
                    out.append(ActionsBlock(elements=[_button(x, ids) for x in b.buttons[i : i + 25]]))
        elif isinstance(b, v.Code):
            body = b.text.replace("```", "`\u200b``")
            out.append(SectionBlock(text=_md("```" + clip(body, TEXT_MAX - 6, keep="tail") + "```")))
    return out


def _cap(blocks: list[Any], limit: int) -> list[Any]:
    if len(blocks) <= limit:
        return blocks
    hidden = len(blocks) - (limit - 1)
    return [*blocks[: limit - 1], ContextBlock(elements=[_md(f"… {hidden} more blocks not shown")])]


def message(msg: v.Message) -> dict[str, Any]:
    """A chat.postMessage / chat.update body: `text` plus `blocks`."""
    ids = _Ids()
    blocks = _cap(_blocks(msg.blocks, ids), MAX_MESSAGE_BLOCKS)
    return {"text": clip(msg.text or " ", FALLBACK_MAX), "blocks": [b.to_dict() for b in blocks]}


def reply(r: v.Reply) -> dict[str, Any]:
    """A slash-command ack body or response_url body."""
    return {**message(r.message), "response_type": r.visibility.value}


def modal(m: v.Modal) -> dict[str, Any]:
    """A views.open body."""
    if len(m.metadata) > 3000:
        raise ValueError("modal metadata is longer than Slack's 3000 characters")
    blocks: list[Any] = []
    if m.intro:
        blocks.append(SectionBlock(text=_md(m.intro)))
    for inp in m.inputs:
        if isinstance(inp, v.TextInput):
            blocks.append(
                InputBlock(
                    block_id=inp.name,
                    label=_plain(inp.label, 2000),
                    optional=inp.optional,
                    element=PlainTextInputElement(
                        action_id=inp.name,
                        multiline=inp.multiline,
                        initial_value=clip(inp.initial, 3000) if inp.initial else None,
                        placeholder=_plain(inp.placeholder, 150) if inp.placeholder else None,
                    ),
                )
            )
        else:
            options = [Option(value=val, label=clip(lbl, 75)) for val, lbl in inp.options]
            initial = next((o for o in options if o.value == inp.initial), None)
            blocks.append(
                InputBlock(
                    block_id=inp.name,
                    label=_plain(inp.label, 2000),
                    element=RadioButtonsElement(action_id=inp.name, options=options, initial_option=initial),
                )
            )
    view = View(
        type="modal",
        callback_id=m.callback,
        title=_plain(m.title, 24),
        submit=_plain(m.submit, 24),
        close=_plain("Cancel", 24),
        private_metadata=m.metadata or None,
        blocks=_cap(blocks, MAX_VIEW_BLOCKS),
    )
    return dict(view.to_dict())


def home(h: v.HomeView) -> dict[str, Any]:
    """A views.publish body for the App Home tab."""
    ids = _Ids()
    view = View(type="home", blocks=_cap(_blocks(h.blocks, ids), MAX_VIEW_BLOCKS))
    return dict(view.to_dict())


def dumps(payload: dict[str, Any]) -> str:
    """Compact JSON of a rendered payload (for golden files and size checks)."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False)
