"""Neutral view models -> Block Kit payloads; all truncation and every Slack limit live here.

Long texts are cut with a visible note (logs keep their tail), surplus blocks are summarised in a last
context line, repeated action ids get a `~n` suffix that the router strips again. The payloads are
built as plain dicts: building them through slack_sdk.models cost ~150 µs per reply on the ack path
(its reflective validation), most of the command's budget. Validity is proven instead by the tests,
which run every rendered shape (and a property test of arbitrary view models) through the Slack
emulator's strict Block Kit validator.
"""

from __future__ import annotations

import json
import re
from typing import Any

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


Obj = dict[str, Any]


def _plain(text: str, limit: int) -> Obj:
    return {"type": "plain_text", "text": clip(text or " ", limit), "emoji": True}


def _md(text: str, limit: int = TEXT_MAX) -> Obj:
    return {"type": "mrkdwn", "text": clip(text or " ", limit)}


def _plain_bare(text: str, limit: int) -> Obj:
    # Views and dialogs: the same text object, without the emoji flag (as Slack echoes them).
    return {"type": "plain_text", "text": clip(text or " ", limit)}


class _Ids:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def unique(self, action: str) -> str:
        n = self.seen.get(action, 0) + 1
        self.seen[action] = n
        return action if n == 1 else f"{action}~{n}"


def _button(b: v.Button, ids: _Ids) -> Obj:
    if len(b.value) > 2000:
        raise ValueError(f"button value for {b.action} is {len(b.value)} characters; Slack allows 2000")
    el: Obj = {"type": "button", "text": _plain(b.label, 75), "action_id": ids.unique(b.action)}
    if b.value:
        el["value"] = b.value
    if b.style.value:
        el["style"] = b.style.value
    if b.confirm:
        el["confirm"] = {
            "title": _plain(b.confirm.title, 100),
            "text": _md(b.confirm.text, 300),
            "confirm": _plain(b.confirm.confirm, 30),
            "deny": _plain(b.confirm.deny, 30),
        }
    if b.url:
        if len(b.url) > v.URL_MAX:
            raise ValueError(f"button url for {b.action} is longer than Slack's 3000 characters")
        el["url"] = b.url
    return el


def _blocks(blocks: tuple[v.Block, ...], ids: _Ids) -> list[Obj]:
    out: list[Obj] = []
    for b in blocks:
        if isinstance(b, v.Header):
            out.append({"type": "header", "text": _plain(b.text, 150)})
        elif isinstance(b, v.Section):
            fields = [_md(f"*{k}*\n{val}", FIELD_MAX) for k, val in b.fields]
            chunks = [fields[i : i + 10] for i in range(0, len(fields), 10)] or [[]]
            for n, chunk in enumerate(chunks):
                sec: Obj = {"type": "section"}
                if n == 0 and b.text:
                    sec["text"] = _md(b.text)
                if chunk:
                    sec["fields"] = chunk
                if "text" not in sec and "fields" not in sec:
                    sec["text"] = _md(" ")
                if n == 0 and b.button:
                    sec["accessory"] = _button(b.button, ids)
                out.append(sec)
        elif isinstance(b, v.Context):
            if b.texts:
                out.append({"type": "context", "elements": [_md(t) for t in b.texts[:10]]})
        elif isinstance(b, v.Divider):
            out.append({"type": "divider"})
        elif isinstance(b, v.Actions):
            for i in range(0, len(b.buttons), 25):
                out.append({"type": "actions", "elements": [_button(x, ids) for x in b.buttons[i : i + 25]]})
        elif isinstance(b, v.Code):
            body = b.text.replace("```", "`\u200b``")
            out.append({"type": "section", "text": _md("```" + clip(body, TEXT_MAX - 6, keep="tail") + "```")})
    return out


def _cap(blocks: list[Obj], limit: int) -> list[Obj]:
    if len(blocks) <= limit:
        return blocks
    hidden = len(blocks) - (limit - 1)
    return [*blocks[: limit - 1], {"type": "context", "elements": [_md(f"… {hidden} more blocks not shown")]}]


def message(msg: v.Message) -> dict[str, Any]:
    """A chat.postMessage / chat.update body: `text` plus `blocks`."""
    blocks = _cap(_blocks(msg.blocks, _Ids()), MAX_MESSAGE_BLOCKS)
    return {"text": clip(msg.text or " ", FALLBACK_MAX), "blocks": blocks}


def reply(r: v.Reply) -> dict[str, Any]:
    """A slash-command ack body or response_url body."""
    return {**message(r.message), "response_type": r.visibility.value}


def _input(inp: v.Input) -> Obj:
    element: Obj
    if isinstance(inp, v.TextInput):
        element = {"type": "plain_text_input", "action_id": inp.name, "multiline": inp.multiline}
        if inp.initial:
            element["initial_value"] = clip(inp.initial, 3000)
        if inp.placeholder:
            element["placeholder"] = _plain_bare(inp.placeholder, 150)
        return {
            "type": "input",
            "block_id": inp.name,
            "label": _plain_bare(inp.label, 2000),
            "element": element,
            "optional": inp.optional,
        }
    if not 1 <= len(inp.options) <= 10:
        raise ValueError(f"choice {inp.name} has {len(inp.options)} options; radio buttons take 1 to 10")
    options = [{"text": _plain(label, 75), "value": val[:150]} for val, label in inp.options]
    element = {"type": "radio_buttons", "action_id": inp.name, "options": options}
    initial = next((o for o in options if o["value"] == inp.initial), None)
    if initial is not None:
        element["initial_option"] = initial
    return {"type": "input", "block_id": inp.name, "label": _plain_bare(inp.label, 2000), "element": element}


def modal(m: v.Modal) -> dict[str, Any]:
    """A views.open body."""
    if len(m.metadata) > 3000:
        raise ValueError("modal metadata is longer than Slack's 3000 characters")
    blocks: list[Obj] = [{"type": "section", "text": _md(m.intro)}] if m.intro else []
    blocks.extend(_input(inp) for inp in m.inputs)
    view: Obj = {
        "type": "modal",
        "callback_id": m.callback[:255],
        "title": _plain_bare(m.title, 24),
        "submit": _plain_bare(m.submit, 24),
        "close": _plain_bare("Cancel", 24),
        "blocks": _cap(blocks, MAX_VIEW_BLOCKS),
    }
    if m.metadata:
        view["private_metadata"] = m.metadata
    return view


def home(h: v.HomeView) -> dict[str, Any]:
    """A views.publish body for the App Home tab."""
    return {"type": "home", "blocks": _cap(_blocks(h.blocks, _Ids()), MAX_VIEW_BLOCKS)}


def dumps(payload: dict[str, Any]) -> str:
    """Compact JSON of a rendered payload (for golden files and size checks)."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False)
