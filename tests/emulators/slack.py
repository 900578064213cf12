"""A strict, in-process Slack emulator for tests.

One aiohttp server on 127.0.0.1 (port 0, read back) that plays every part of Slack a chat-ops
bot talks to:

* the Web API under ``/api/<method>`` (and ``/<method>``), spoken to by the real
  ``slack_sdk.web.async_client.AsyncWebClient`` with ``base_url=emu.api_url``;
* the raw upload route of the files v2 flow (``/upload/v1/<key>``);
* ``response_url`` endpoints (``/commands/...`` and ``/actions/...``);
* the Socket Mode websocket (``/link``), reached through ``apps.connections.open``;
* incoming webhooks (``/services/<team>/<bot>/<secret>``, made with ``add_incoming_webhook``), as
  Alertmanager's ``slack_configs`` and other tools post to them;
* the *sender* side of HTTP mode: it builds, signs and POSTs slash commands, interactivity
  payloads and events to the bot's ``/slack/events`` URL.

It is strict where Slack is strict (Block Kit limits, trigger_id lifetime, response_url use
limits, rate limits with 429 + ``Retry-After``) and records everything it sees so tests can
assert on the resulting workspace state (``messages()``, ``ephemerals``, ``views``, ``calls``...).

Choices where Slack is silent or where the emulator is deliberately stricter (documented on
purpose, tests rely on them):

* ``thread_ts`` must name an existing message of the channel, otherwise ``thread_not_found``
  (Slack silently accepts unknown parents). A ``thread_ts`` naming a reply is resolved to that
  reply's parent.
* ``action_id`` must be unique within a whole *message* (Slack only requires it per block);
  in modals and Home tabs it must be unique per block.
* Unknown properties on blocks, buttons, text objects, confirm and option objects are rejected
  (``invalid additional property: <name>``). Blocks are stored exactly as sent (Slack would add
  ``block_id`` values); views get the usual server-side fields (id, hash, state, ...).
* ``response_url`` errors: unknown URL -> 404 ``{"ok":false,"error":"invalid_token"}``;
  more than 5 uses -> 404 ``used_url``; older than 30 minutes -> 404 ``expired_url``; a bad body
  -> 400 (``invalid_payload``, ``no_text``, ``invalid_blocks`` with ``errors``). Success is
  200 ``{"ok":true}``. Only successful posts count as uses.
* ``chat.postMessage`` truncates text above 40,000 characters (as Slack does); ``chat.update``
  answers ``msg_too_long`` above 4,000.
* Channels added with an empty member list accept every user (``chat.postEphemeral``).
* ``files.completeUploadExternal`` with a channel also stores a file-share message
  (text = ``initial_comment``) in the channel or thread, as Slack does.
* Events built by ``app_mention_body``/``event_body`` (``message``/``app_mention`` with a known
  channel) also store the user's message, so the bot can reply in its thread.
* ``fail_next(..., status=200, error=X)`` injects a plain ``{"ok":false,"error":X}``. Fault
  injection and ``slow`` also accept the pseudo-methods ``"upload"`` and ``"response_url"`` and
  the wildcard ``"*"``.
* The rate-limit buckets, trigger lifetimes, response_url ages, fault windows and ``Call.at``
  use ``emu.clock`` (``time.monotonic`` unless replaced); request signing uses ``time.time()``.
* ``rate_limited_count`` counts every 429 answered, including injected ones.
* A channel is named by its id everywhere except where a message is posted: ``chat.update``,
  ``chat.delete``, ``conversations.*``, ``reactions.*`` and ``pins.*`` answer ``channel_not_found``
  to a ``#name`` (as Slack does); ``chat.postMessage``, ``chat.postEphemeral`` and files take both.
* ``conversations.list`` lists private channels only where the bot is a member.
* ``pins.add`` / ``pins.remove`` / ``pins.list`` keep a pin per message (``already_pinned``,
  ``no_pin``, ``no_item_specified``, ``too_many_pins`` past 100); ``pinned(channel)`` shows them.
* Incoming webhooks answer like Slack's: 200 ``text/plain`` ``ok``; plain-text errors
  (400 ``invalid_payload`` / ``no_text`` / ``invalid_blocks``, 404 ``no_service`` for an unknown URL).
  The URL fixes the channel: the body's ``channel``, ``username`` and icon fields are ignored, as
  for app webhooks. A webhook post is a message post: it takes a token from the same per-channel
  bucket as ``chat.postMessage`` (1/s with a burst) and answers 429 ``rate_limited`` with
  ``Retry-After`` when it is empty. Recorded in ``calls`` as method ``"incoming-webhook"`` (fault
  injection and ``slow`` accept that name too).
* Socket Mode: ``/link`` URLs from ``apps.connections.open`` carry a single-use ticket; an unknown
  ticket is refused (HTTP 401), a URL without a ticket is accepted (tests may point a client at
  ``ws://127.0.0.1:PORT/link`` directly, as Bolt's own tests do).
* Slash-command acks (HTTP body or socket ack payload) are shown the way Slack shows them:
  recorded in ``ephemerals`` (source ``"ack"``), or posted when ``response_type`` is ``in_channel``.
  view_submission acks are applied to ``views``/``view_stacks``/``view_errors``. Ack bodies Slack
  would refuse land in ``invalid_acks``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import itertools
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp import web

Surface = Literal["message", "modal", "home"]

__all__ = [
    "Call",
    "Ephemeral",
    "InboundResult",
    "Message",
    "ResponseUrlPost",
    "SlackEmulator",
    "SlackError",
    "UploadedFile",
    "validate_blocks",
    "validate_view",
]


# ----------------------------------------------------------------------------------------------
# Records visible to tests
# ----------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One Web API call as the emulator answered it."""

    method: str
    params: dict[str, Any]
    status: int
    error: str | None
    at: float
    response: dict[str, Any] | None = None


@dataclass
class Message:
    """A message in a channel (top level or thread reply)."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None  # parent ts for replies, None for top-level messages
    user: str | None = None
    bot_id: str | None = None
    metadata: dict[str, Any] | None = None
    edited_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier versions, oldest first
    attachments: list[dict[str, Any]] = field(default_factory=list)
    reactions: dict[str, list[str]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    reply_broadcast: bool = False
    app_id: str | None = None
    pinned_by: str | None = None  # who pinned it (pins.add), None when it is not pinned

    @property
    def updates(self) -> list[dict[str, Any]]:
        """Alias of ``history``: the versions this message had before each update."""
        return self.history

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    def to_api(self, *, include_metadata: bool = False, replies: list[Message] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.user:
            out["user"] = self.user
        if self.bot_id:
            out["bot_id"] = self.bot_id
            out["app_id"] = self.app_id
        if self.blocks:
            out["blocks"] = copy.deepcopy(self.blocks)
        if self.attachments:
            out["attachments"] = copy.deepcopy(self.attachments)
        if self.files:
            out["files"] = copy.deepcopy(self.files)
            out["upload"] = False
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if self.reply_broadcast:
            out["subtype"] = "thread_broadcast"
        if replies:
            out["thread_ts"] = self.ts
            out["reply_count"] = len(replies)
            out["reply_users"] = sorted({r.user for r in replies if r.user})
            out["reply_users_count"] = len(out["reply_users"])
            out["latest_reply"] = replies[-1].ts
        if self.edited_count:
            out["edited"] = {"user": self.user, "ts": self.history[-1]["edited_ts"] if self.history else self.ts}
        if self.reactions:
            out["reactions"] = [{"name": n, "users": list(u), "count": len(u)} for n, u in self.reactions.items()]
        if self.pinned_by:
            out["pinned_to"] = [self.channel]
        if include_metadata and self.metadata is not None:
            out["metadata"] = copy.deepcopy(self.metadata)
        return out


@dataclass
class Ephemeral:
    """An ephemeral message (chat.postEphemeral, a response_url post, or a slash-command ack)."""

    channel: str
    user: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    message_ts: str = ""
    source: str = "api"  # "api" | "response_url" | "ack"
    deleted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class UploadedFile:
    id: str
    filename: str
    title: str | None
    content: bytes
    channel: str | None
    thread_ts: str | None
    initial_comment: str | None
    length: int = 0
    alt_txt: str | None = None
    snippet_type: str | None = None


@dataclass
class ResponseUrlPost:
    url: str
    body: dict[str, Any]
    at: float
    status: int = 200
    error: str | None = None


@dataclass
class InboundResult:
    """The bot's answer to a request the emulator sent it."""

    status: int
    body_text: str
    json: Any
    elapsed_seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    trigger_id: str | None = None
    response_url: str | None = None
    retry_num: int = 0


class SlackError(Exception):
    """Raised inside method handlers; becomes ``{"ok": false, "error": ...}``."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


# ----------------------------------------------------------------------------------------------
# Block Kit validation
# ----------------------------------------------------------------------------------------------

_BLOCK_LIMIT: dict[str, int] = {"message": 50, "modal": 100, "home": 100}

_BLOCK_KEYS: dict[str, set[str]] = {
    "section": {"type", "block_id", "text", "fields", "accessory", "expand"},
    "header": {"type", "block_id", "text"},
    "divider": {"type", "block_id"},
    "context": {"type", "block_id", "elements"},
    "actions": {"type", "block_id", "elements"},
    "input": {"type", "block_id", "label", "element", "dispatch_action", "hint", "optional"},
    "image": {
        "type",
        "block_id",
        "image_url",
        "slack_file",
        "alt_text",
        "title",
        # fields Slack itself adds when it hands a stored image block back
        "image_width",
        "image_height",
        "image_bytes",
        "fallback",
        "is_animated",
    },
    "rich_text": {"type", "block_id", "elements"},
    "markdown": {"type", "block_id", "text"},
}

_SELECTS = {"static_select", "external_select", "users_select", "conversations_select", "channels_select"}
_MULTI_SELECTS = {"multi_" + s for s in _SELECTS}
_PICKERS = {"datepicker", "timepicker", "datetimepicker"}
_CHOICES = {"checkboxes", "radio_buttons"}
_ACTIONS_ELEMENTS = (
    {"button", "overflow", "workflow_button", "rich_text_input"} | _SELECTS | _MULTI_SELECTS | _PICKERS | _CHOICES
)
_ACCESSORY_ELEMENTS = (
    {"button", "overflow", "image", "workflow_button"} | _SELECTS | _MULTI_SELECTS | _PICKERS | _CHOICES
)
_INPUT_ELEMENTS = (
    {"plain_text_input", "number_input", "email_text_input", "url_text_input", "rich_text_input", "file_input"}
    | _SELECTS
    | _MULTI_SELECTS
    | _PICKERS
    | _CHOICES
)
_BUTTON_KEYS = {"type", "text", "action_id", "url", "value", "style", "confirm", "accessibility_label"}
_CONFIRM_KEYS = {"title", "text", "confirm", "deny", "style"}
_OPTION_KEYS = {"text", "value", "description", "url"}
_TEXT_KEYS = {"plain_text": {"type", "text", "emoji"}, "mrkdwn": {"type", "text", "verbatim"}}


class _BlockValidator:
    def __init__(self, surface: Surface) -> None:
        self.surface = surface
        self.errors: list[str] = []
        self.block_ids: set[str] = set()
        self.message_action_ids: set[str] = set()
        self.markdown_chars = 0

    def err(self, ptr: str, msg: str) -> None:
        self.errors.append(f"{msg} [json-pointer:{ptr}]")

    # -- generic helpers
    def keys(self, obj: Mapping[str, Any], allowed: set[str], ptr: str) -> None:
        for k in obj:
            if k not in allowed:
                self.err(f"{ptr}/{k}", f"invalid additional property: {k}")

    def string(
        self, obj: Mapping[str, Any], key: str, ptr: str, *, max_len: int, required: bool = False, min_len: int = 0
    ) -> None:
        if key not in obj or obj[key] is None:
            if required:
                self.err(ptr, f"missing required field: {key}")
            return
        value = obj[key]
        if not isinstance(value, str):
            self.err(f"{ptr}/{key}", "must be a string")
        elif len(value) < min_len:
            self.err(f"{ptr}/{key}", f"must be more than {min_len - 1} characters")
        elif len(value) > max_len:
            self.err(f"{ptr}/{key}", f"must be less than {max_len + 1} characters")

    def boolean(self, obj: Mapping[str, Any], key: str, ptr: str) -> None:
        if key in obj and not isinstance(obj[key], bool):
            self.err(f"{ptr}/{key}", "must be a boolean")

    def text(self, obj: Any, ptr: str, *, max_len: int = 3000, plain_only: bool = False) -> None:
        if not isinstance(obj, dict):
            self.err(ptr, "must be a text object")
            return
        t = obj.get("type")
        if t not in _TEXT_KEYS:
            self.err(f"{ptr}/type", "must be one of: plain_text, mrkdwn")
            return
        if plain_only and t != "plain_text":
            self.err(f"{ptr}/type", "must be plain_text")
        self.keys(obj, _TEXT_KEYS[t], ptr)
        if "text" not in obj:
            self.err(ptr, "missing required field: text")
            return
        self.string(obj, "text", ptr, max_len=max_len, min_len=1)
        self.boolean(obj, "emoji", ptr)
        self.boolean(obj, "verbatim", ptr)

    def list_of(
        self, obj: Mapping[str, Any], key: str, ptr: str, *, max_items: int, min_items: int = 1, required: bool = True
    ) -> list[Any]:
        if key not in obj:
            if required:
                self.err(ptr, f"missing required field: {key}")
            return []
        items = obj[key]
        if not isinstance(items, list):
            self.err(f"{ptr}/{key}", "must be an array")
            return []
        if len(items) > max_items:
            self.err(f"{ptr}/{key}", f"no more than {max_items} items allowed")
        if len(items) < min_items:
            self.err(f"{ptr}/{key}", f"must provide at least {min_items} items")
        return items

    # -- blocks
    def blocks(self, blocks: Any, ptr: str) -> None:
        if not isinstance(blocks, list):
            self.err(ptr, "must be an array")
            return
        limit = _BLOCK_LIMIT[self.surface]
        if len(blocks) > limit:
            self.err(ptr, f"no more than {limit} items allowed")
        for i, block in enumerate(blocks):
            self.block(block, f"{ptr}/{i}")

    def block(self, b: Any, ptr: str) -> None:
        if not isinstance(b, dict):
            self.err(ptr, "must be an object")
            return
        t = b.get("type")
        if "type" not in b:
            self.err(ptr, "missing required field: type")
            return
        if t not in _BLOCK_KEYS:
            self.err(f"{ptr}/type", f"unsupported block type: {t}")
            return
        self.keys(b, _BLOCK_KEYS[t], ptr)
        if "block_id" in b:
            bid = b["block_id"]
            if not isinstance(bid, str) or not bid:
                self.err(f"{ptr}/block_id", "must be a non-empty string")
            elif len(bid) > 255:
                self.err(f"{ptr}/block_id", "must be less than 256 characters")
            elif bid in self.block_ids:
                self.err(f"{ptr}/block_id", f"duplicate block_id: {bid}")
            else:
                self.block_ids.add(bid)
        action_ids = self.message_action_ids if self.surface == "message" else set()
        getattr(self, f"block_{t}")(b, ptr, action_ids)

    def block_section(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        if b.get("text") is None and b.get("fields") is None:
            self.err(ptr, "must provide either text or fields")
        if b.get("text") is not None:
            self.text(b["text"], f"{ptr}/text", max_len=3000)
        if b.get("fields") is not None:
            for i, f in enumerate(self.list_of(b, "fields", ptr, max_items=10)):
                self.text(f, f"{ptr}/fields/{i}", max_len=2000)
        if b.get("accessory") is not None:
            self.element(b["accessory"], f"{ptr}/accessory", _ACCESSORY_ELEMENTS, action_ids)
        self.boolean(b, "expand", ptr)

    def block_header(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        if "text" not in b:
            self.err(ptr, "missing required field: text")
        else:
            self.text(b["text"], f"{ptr}/text", max_len=150, plain_only=True)

    def block_divider(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        return None

    def block_context(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        for i, el in enumerate(self.list_of(b, "elements", ptr, max_items=10)):
            p = f"{ptr}/elements/{i}"
            if isinstance(el, dict) and el.get("type") == "image":
                self.image_element(el, p)
            else:
                self.text(el, p, max_len=3000)

    def block_actions(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        for i, el in enumerate(self.list_of(b, "elements", ptr, max_items=25)):
            self.element(el, f"{ptr}/elements/{i}", _ACTIONS_ELEMENTS, action_ids)

    def block_input(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        if "label" not in b:
            self.err(ptr, "missing required field: label")
        else:
            self.text(b["label"], f"{ptr}/label", max_len=2000, plain_only=True)
        if "hint" in b:
            self.text(b["hint"], f"{ptr}/hint", max_len=2000, plain_only=True)
        if "element" not in b:
            self.err(ptr, "missing required field: element")
        else:
            self.element(b["element"], f"{ptr}/element", _INPUT_ELEMENTS, action_ids)
        self.boolean(b, "optional", ptr)
        self.boolean(b, "dispatch_action", ptr)

    def block_image(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        self.image_element(b, ptr)
        if "title" in b:
            self.text(b["title"], f"{ptr}/title", max_len=2000, plain_only=True)

    def block_rich_text(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        for i, el in enumerate(self.list_of(b, "elements", ptr, max_items=10_000, min_items=0)):
            if not isinstance(el, dict) or "type" not in el:
                self.err(f"{ptr}/elements/{i}", "must be an object with a type")

    def block_markdown(self, b: dict[str, Any], ptr: str, action_ids: set[str]) -> None:
        if self.surface != "message":
            self.err(f"{ptr}/type", "markdown blocks are only allowed in messages")
        self.string(b, "text", ptr, max_len=12_000, min_len=1, required=True)
        if isinstance(b.get("text"), str):
            self.markdown_chars += len(b["text"])
            if self.markdown_chars > 12_000:
                self.err(f"{ptr}/text", "cumulative markdown text must be less than 12001 characters")

    # -- elements
    def image_element(self, el: dict[str, Any], ptr: str) -> None:
        if "image_url" not in el and "slack_file" not in el:
            self.err(ptr, "missing required field: image_url")
        self.string(el, "image_url", ptr, max_len=3000, min_len=1)
        self.string(el, "alt_text", ptr, max_len=2000, min_len=1, required=True)

    def element(self, el: Any, ptr: str, allowed: set[str], action_ids: set[str]) -> None:
        if not isinstance(el, dict):
            self.err(ptr, "must be an object")
            return
        t = el.get("type")
        if t not in allowed:
            self.err(f"{ptr}/type", f"unsupported element type here: {t}")
            return
        if "action_id" in el:
            aid = el["action_id"]
            if not isinstance(aid, str) or not aid:
                self.err(f"{ptr}/action_id", "must be a non-empty string")
            elif len(aid) > 255:
                self.err(f"{ptr}/action_id", "must be less than 256 characters")
            elif aid in action_ids:
                self.err(f"{ptr}/action_id", f"duplicate action_id: {aid}")
            else:
                action_ids.add(aid)
        if "confirm" in el:
            self.confirm(el["confirm"], f"{ptr}/confirm")
        if "placeholder" in el:
            self.text(el["placeholder"], f"{ptr}/placeholder", max_len=150, plain_only=True)
        if t == "button":
            self.keys(el, _BUTTON_KEYS, ptr)
            if "text" not in el:
                self.err(ptr, "missing required field: text")
            else:
                self.text(el["text"], f"{ptr}/text", max_len=75, plain_only=True)
            self.string(el, "value", ptr, max_len=2000)
            self.string(el, "url", ptr, max_len=3000, min_len=1)
            self.string(el, "accessibility_label", ptr, max_len=75, min_len=1)
            if "style" in el and el["style"] not in ("primary", "danger"):
                self.err(f"{ptr}/style", "must be one of: primary, danger")
        elif t == "image":
            self.image_element(el, ptr)
        elif t == "overflow":
            for i, o in enumerate(self.list_of(el, "options", ptr, max_items=5)):
                self.option(o, f"{ptr}/options/{i}", allow_url=True)
        elif t in _CHOICES:
            for i, o in enumerate(self.list_of(el, "options", ptr, max_items=10)):
                self.option(o, f"{ptr}/options/{i}", allow_mrkdwn=True)
        elif t in ("static_select", "multi_static_select"):
            has_options, has_groups = "options" in el, "option_groups" in el
            if has_options == has_groups:
                self.err(ptr, "must provide exactly one of options, option_groups")
            for i, o in enumerate(self.list_of(el, "options", ptr, max_items=100, required=False)):
                self.option(o, f"{ptr}/options/{i}")
            for gi, g in enumerate(self.list_of(el, "option_groups", ptr, max_items=100, required=False)):
                gp = f"{ptr}/option_groups/{gi}"
                if not isinstance(g, dict):
                    self.err(gp, "must be an object")
                    continue
                if "label" not in g:
                    self.err(gp, "missing required field: label")
                else:
                    self.text(g["label"], f"{gp}/label", max_len=75, plain_only=True)
                for i, o in enumerate(self.list_of(g, "options", gp, max_items=100)):
                    self.option(o, f"{gp}/options/{i}")
        elif t == "plain_text_input":
            self.string(el, "initial_value", ptr, max_len=3000)
            for key in ("min_length", "max_length"):
                if key in el and (not isinstance(el[key], int) or not 0 <= el[key] <= 3000):
                    self.err(f"{ptr}/{key}", "must be an integer between 0 and 3000")

    def option(self, o: Any, ptr: str, *, allow_mrkdwn: bool = False, allow_url: bool = False) -> None:
        if not isinstance(o, dict):
            self.err(ptr, "must be an object")
            return
        self.keys(o, _OPTION_KEYS if allow_url else _OPTION_KEYS - {"url"}, ptr)
        if "text" not in o:
            self.err(ptr, "missing required field: text")
        else:
            self.text(o["text"], f"{ptr}/text", max_len=75, plain_only=not allow_mrkdwn)
        self.string(o, "value", ptr, max_len=150, min_len=1, required=True)
        if "description" in o:
            self.text(o["description"], f"{ptr}/description", max_len=75, plain_only=not allow_mrkdwn)
        self.string(o, "url", ptr, max_len=3000, min_len=1)

    def confirm(self, c: Any, ptr: str) -> None:
        if not isinstance(c, dict):
            self.err(ptr, "must be an object")
            return
        self.keys(c, _CONFIRM_KEYS, ptr)
        for key, limit, plain in (
            ("title", 100, True),
            ("text", 300, False),
            ("confirm", 30, True),
            ("deny", 30, True),
        ):
            if key not in c:
                self.err(ptr, f"missing required field: {key}")
            else:
                self.text(c[key], f"{ptr}/{key}", max_len=limit, plain_only=plain)
        if "style" in c and c["style"] not in ("primary", "danger"):
            self.err(f"{ptr}/style", "must be one of: primary, danger")


def validate_blocks(blocks: Any, *, surface: Surface = "message", pointer: str = "/blocks") -> list[str]:
    """Check ``blocks`` against Slack's Block Kit limits for ``surface``.

    Returns a list of error strings such as
    ``"must be less than 3001 characters [json-pointer:/blocks/3/text/text]"``; empty when valid.
    """
    v = _BlockValidator(surface)
    v.blocks(blocks, pointer)
    return v.errors


_VIEW_KEYS = {
    "type",
    "title",
    "blocks",
    "close",
    "submit",
    "private_metadata",
    "callback_id",
    "clear_on_close",
    "notify_on_close",
    "external_id",
    "submit_disabled",
    # server-side fields of a view handed back by Slack (bots round-trip body["view"])
    "id",
    "team_id",
    "state",
    "hash",
    "previous_view_id",
    "root_view_id",
    "app_id",
    "app_installed_team_id",
    "bot_id",
}


def validate_view(view: Any, *, surface: Literal["modal", "home"] | None = None) -> list[str]:
    """Check a modal or Home tab view. Errors carry ``/view/...`` json-pointers."""
    v = _BlockValidator("modal")
    ptr = "/view"
    if not isinstance(view, dict):
        return [f"must be an object [json-pointer:{ptr}]"]
    t = view.get("type")
    if t not in ("modal", "home"):
        v.err(f"{ptr}/type", "must be one of: modal, home")
        return v.errors
    if surface is not None and t != surface:
        v.err(f"{ptr}/type", f"must be {surface}")
        return v.errors
    v.surface = t
    v.keys(view, _VIEW_KEYS, ptr)
    if t == "modal":
        if "title" not in view:
            v.err(ptr, "missing required field: title")
        else:
            v.text(view["title"], f"{ptr}/title", max_len=24, plain_only=True)
        for key in ("submit", "close"):
            if view.get(key) is not None:
                v.text(view[key], f"{ptr}/{key}", max_len=24, plain_only=True)
    else:
        for key in ("submit", "close"):
            if key in view:
                v.err(f"{ptr}/{key}", f"home views cannot have {key}")
        if view.get("title") is not None:
            v.text(view["title"], f"{ptr}/title", max_len=24, plain_only=True)
    v.string(view, "private_metadata", ptr, max_len=3000)
    v.string(view, "callback_id", ptr, max_len=255)
    v.string(view, "external_id", ptr, max_len=255)
    for key in ("clear_on_close", "notify_on_close", "submit_disabled"):
        v.boolean(view, key, ptr)
    if "blocks" not in view:
        v.err(ptr, "missing required field: blocks")
    else:
        v.blocks(view["blocks"], f"{ptr}/blocks")
        if (
            t == "modal"
            and isinstance(view["blocks"], list)
            and any(isinstance(b, dict) and b.get("type") == "input" for b in view["blocks"])
            and view.get("submit") is None
        ):
            v.err(ptr, "missing required field: submit (required when a modal has input blocks)")
    return v.errors


# ----------------------------------------------------------------------------------------------
# Internal state
# ----------------------------------------------------------------------------------------------


@dataclass
class _Channel:
    id: str
    name: str
    members: set[str]
    is_private: bool = False
    bot_member: bool = True
    is_im: bool = False
    im_user: str | None = None


@dataclass
class _Usergroup:
    id: str
    handle: str
    users: list[str]
    name: str


@dataclass
class _Trigger:
    id: str
    created: float
    user_id: str | None
    used: bool = False


@dataclass
class _ResponseUrl:
    url: str
    kind: str
    channel: str
    user: str
    created: float
    message_ts: str | None = None
    is_ephemeral: bool = False
    thread_ts: str | None = None
    uses: int = 0
    last_ephemeral: Ephemeral | None = None


@dataclass
class _Bucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float
    updated: float

    def take(self, now: float) -> float | None:
        """Take a token; None when allowed, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else 3600.0


@dataclass
class _Fault:
    status: int
    error: str
    retry_after: int | None
    remaining: int | None = None
    until: float | None = None


@dataclass
class _Slow:
    seconds: float
    remaining: int | None
    process_first: bool


@dataclass
class _PendingUpload:
    file_id: str
    key: str
    filename: str
    length: int
    alt_txt: str | None
    snippet_type: str | None
    content: bytes | None = None


class _Args:
    """Merged request parameters with typed accessors."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.headers_out: dict[str, str] = {}

    def get(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name)
        return default if value is None else value

    def s(self, name: str, *, required: bool = False, error: str | None = None) -> str | None:
        value = self.data.get(name)
        if value is None or value == "":
            if required:
                if error:
                    raise SlackError(error)
                raise _missing(name)
            return None
        return value if isinstance(value, str) else str(value)

    def req(self, name: str, *, error: str | None = None) -> str:
        value = self.s(name, required=True, error=error)
        assert value is not None
        return value

    def flag(self, name: str) -> bool:
        value = self.data.get(name)
        if isinstance(value, bool):
            return value
        if value is None:
            return False
        return str(value).lower() in ("1", "true", "yes")

    def integer(self, name: str, default: int) -> int:
        value = self.data.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise SlackError(
                "invalid_arguments",
                response_metadata={"messages": [f"[ERROR] must be an integer [json-pointer:/{name}]"]},
            ) from None

    def jsonish(self, name: str, *, error: str) -> Any:
        value = self.data.get(name)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise SlackError(error) from None
        return value


def _missing(name: str) -> SlackError:
    return SlackError("invalid_arguments", response_metadata={"messages": [f"[ERROR] missing required field: {name}"]})


_TIER_PER_MINUTE = {1: 1.0, 2: 20.0, 3: 50.0, 4: 100.0}

# chat.postMessage has its own per-channel bucket; auth.test and chat.getPermalink are "Special"
# (hundreds per minute) and are not limited here.
_METHOD_TIER: dict[str, int] = {
    "api.test": 4,
    "apps.connections.open": 3,
    "chat.delete": 3,
    "chat.postEphemeral": 4,
    "chat.update": 3,
    "conversations.history": 3,
    "conversations.info": 3,
    "conversations.list": 2,
    "conversations.members": 4,
    "conversations.open": 3,
    "conversations.replies": 3,
    "files.completeUploadExternal": 4,
    "files.getUploadURLExternal": 4,
    "pins.add": 2,
    "pins.list": 2,
    "pins.remove": 2,
    "reactions.add": 3,
    "reactions.get": 3,
    "reactions.remove": 2,
    "usergroups.list": 2,
    "usergroups.users.list": 2,
    "users.info": 4,
    "views.open": 4,
    "views.publish": 4,
    "views.push": 4,
    "views.update": 4,
}

_REACTION_NAME = re.compile(r"^[a-z0-9_+'\-]+(::skin-tone-[2-6])?$")

DEFAULT_SCOPES = [
    "app_mentions:read",
    "channels:history",
    "channels:read",
    "chat:write",
    "chat:write.public",
    "commands",
    "files:write",
    "groups:history",
    "groups:read",
    "im:history",
    "im:write",
    "pins:write",
    "reactions:read",
    "reactions:write",
    "usergroups:read",
    "users:read",
]


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------


class SlackEmulator:
    """See the module docstring. Use ``async with SlackEmulator() as emu:``."""

    max_socket_connections = 10

    def __init__(
        self,
        *,
        signing_secret: str = "test-signing-secret",
        bot_token: str = "xoxb-test-token",
        app_token: str = "xapp-test-token",
        team_id: str = "T0TEST",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        app_id: str = "A0TEST",
        enforce_rate_limits: bool = True,
        post_rate_per_channel: float = 1.0,
        post_burst: int = 5,
        clock: Callable[[], float] | None = None,
        team_domain: str = "emulator",
        trigger_ttl: float = 3.0,
        response_url_max_uses: int = 5,
        response_url_ttl: float = 30 * 60,
    ) -> None:
        self.signing_secret = signing_secret
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.enforce_rate_limits = enforce_rate_limits
        self.post_rate_per_channel = post_rate_per_channel
        self.post_burst = post_burst
        self.clock: Callable[[], float] = clock or time.monotonic
        self.trigger_ttl = trigger_ttl
        self.response_url_max_uses = response_url_max_uses
        self.response_url_ttl = response_url_ttl
        self.scopes: list[str] = list(DEFAULT_SCOPES)
        self.verification_token = "emulator-verification-token"

        # network
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

        # workspace
        self._channels: dict[str, _Channel] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._usergroups: dict[str, _Usergroup] = {}
        self._store: dict[str, dict[str, Message]] = {}

        # observed state
        self.calls: list[Call] = []
        self.ephemerals: list[Ephemeral] = []
        self.home_views: dict[str, dict[str, Any]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.view_stacks: dict[str, list[str]] = {}  # user_id -> open modal view ids (root first)
        self.view_errors: dict[str, dict[str, str]] = {}  # view_id -> errors from response_action=errors
        self.files: list[UploadedFile] = []
        self.responses: list[ResponseUrlPost] = []
        self.deleted: list[Message] = []
        self.inbound: list[InboundResult] = []
        self.invalid_acks: list[dict[str, Any]] = []  # ack bodies Slack would have refused
        self.server_errors: list[str] = []  # emulator bugs (unexpected exceptions)
        self.rate_limited_count = 0

        # faults and limits
        self._faults: dict[str, list[_Fault]] = {}
        self._slow: dict[str, _Slow] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._limit_overrides: dict[str, tuple[float, float]] = {}

        # ids, triggers, response_urls, uploads
        self._last_ts_us = 0
        self._ids = itertools.count(1)
        self._triggers: dict[str, _Trigger] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._uploads: dict[str, _PendingUpload] = {}
        self._upload_keys: dict[str, str] = {}
        self._incoming_webhooks: dict[str, str] = {}  # URL path -> channel id
        self.last_trigger_id: str | None = None
        self.last_response_url: str | None = None

        # socket mode
        self._sockets: list[web.WebSocketResponse] = []
        self._socket_rr = 0
        self._tickets: set[str] = set()
        self._pending_acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.socket_envelopes: list[dict[str, Any]] = []
        self.socket_acks: list[dict[str, Any]] = []
        self.socket_frames: list[Any] = []  # other frames received from clients

        self._methods: dict[str, Callable[[_Args], dict[str, Any]]] = {
            "api.test": self._api_test,
            "apps.connections.open": self._apps_connections_open,
            "auth.test": self._auth_test,
            "chat.delete": self._chat_delete,
            "chat.getPermalink": self._chat_get_permalink,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "conversations.history": self._conversations_history,
            "conversations.info": self._conversations_info,
            "conversations.list": self._conversations_list,
            "conversations.members": self._conversations_members,
            "conversations.open": self._conversations_open,
            "conversations.replies": self._conversations_replies,
            "files.completeUploadExternal": self._files_complete_upload_external,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "pins.add": self._pins_add,
            "pins.list": self._pins_list,
            "pins.remove": self._pins_remove,
            "reactions.add": self._reactions_add,
            "reactions.get": self._reactions_get,
            "reactions.remove": self._reactions_remove,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "users.info": self._users_info,
            "views.open": self._views_open,
            "views.publish": self._views_publish,
            "views.push": self._views_push,
            "views.update": self._views_update,
        }
        self.add_user(bot_user_id, "opsloop-bot", real_name="opsloop", is_bot=True)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> SlackEmulator:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_route("POST", "/upload/v1/{key}", self._handle_upload)
        app.router.add_route("POST", "/commands/{team}/{n}/{token}", self._handle_response_url)
        app.router.add_route("POST", "/actions/{team}/{n}/{token}", self._handle_response_url)
        app.router.add_route("POST", "/services/{team}/{bot}/{secret}", self._handle_incoming_webhook)
        app.router.add_route("GET", "/link", self._handle_link)
        app.router.add_route("GET", "/link/", self._handle_link)
        app.router.add_route("*", r"/{method:[A-Za-z]+\.[A-Za-z.]+}", self._handle_api)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession(trust_env=False)
        return self

    async def stop(self) -> None:
        for fut in self._pending_acks.values():
            if not fut.done():
                fut.cancel()
        self._pending_acks.clear()
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"emulator stopping")
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("SlackEmulator is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    # ------------------------------------------------------------------ workspace set-up

    def add_channel(
        self,
        channel_id: str,
        name: str,
        members: Iterable[str] = (),
        is_private: bool = False,
        *,
        bot_member: bool = True,
    ) -> None:
        """Add a channel. An empty ``members`` means every user is a member."""
        self._channels[channel_id] = _Channel(
            id=channel_id, name=name.lstrip("#"), members=set(members), is_private=is_private, bot_member=bot_member
        )
        self._store.setdefault(channel_id, {})

    def add_user(
        self,
        user_id: str,
        name: str,
        *,
        real_name: str | None = None,
        is_bot: bool = False,
        is_restricted: bool = False,
        deleted: bool = False,
        is_admin: bool = False,
        is_owner: bool = False,
        is_ultra_restricted: bool = False,
        email: str | None = None,
        tz: str = "Europe/London",
    ) -> None:
        real = real_name or name
        profile: dict[str, Any] = {
            "real_name": real,
            "display_name": name,
            "real_name_normalized": real,
            "display_name_normalized": name,
            "team": self.team_id,
        }
        if email:
            profile["email"] = email
        self._users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "deleted": deleted,
            "real_name": real,
            "tz": tz,
            "is_admin": is_admin,
            "is_owner": is_owner,
            "is_primary_owner": False,
            "is_restricted": is_restricted or is_ultra_restricted,
            "is_ultra_restricted": is_ultra_restricted,
            "is_bot": is_bot,
            "is_app_user": False,
            "updated": int(time.time()),
            "profile": profile,
        }

    def add_usergroup(self, usergroup_id: str, handle: str, users: Iterable[str], *, name: str | None = None) -> None:
        self._usergroups[usergroup_id] = _Usergroup(usergroup_id, handle, list(users), name or handle)

    def set_usergroup_users(self, usergroup_id: str, users: Iterable[str]) -> None:
        self._usergroups[usergroup_id].users = list(users)

    def set_rate_limit(self, method: str, per_minute: float, burst: float | None = None) -> None:
        """Override a method's limit (``chat.postMessage`` stays per channel: use post_rate_per_channel)."""
        self._limit_overrides[method] = (per_minute / 60.0, burst if burst is not None else per_minute)
        for key in [k for k in self._buckets if k == method]:
            del self._buckets[key]

    # ------------------------------------------------------------------ observed state

    def add_incoming_webhook(self, channel: str) -> str:
        """A new incoming-webhook URL that posts into ``channel`` (an id or ``#name``); see the module docstring."""
        ch = self._channel_ref(channel)
        path = f"/services/{self.team_id}/B{next(self._ids):08d}/{secrets.token_hex(12)}"
        self._incoming_webhooks[path] = ch.id
        return f"{self.base_url}{path}"

    def _channel_ref(self, channel: str) -> _Channel:
        ch = self._lookup_channel(channel)
        if ch is None:
            raise KeyError(f"unknown channel {channel!r}; known: {sorted(self._channels)}")
        return ch

    def messages(self, channel: str) -> list[Message]:
        """All messages of a channel (id, ``#name`` or a user id for the DM), top level and replies, by ts."""
        ch = self._channel_ref(channel)
        return sorted(self._store.get(ch.id, {}).values(), key=lambda m: m.ts)

    def top_level(self, channel: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts is None]

    def message(self, channel: str, ts: str) -> Message:
        ch = self._channel_ref(channel)
        try:
            return self._store[ch.id][ts]
        except KeyError:
            known = [m.ts for m in self.messages(ch.id)]
            raise KeyError(f"no message {ts} in {ch.id}; messages there: {known}") from None

    def replies(self, channel: str, thread_ts: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts == thread_ts]

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def ephemerals_for(self, user: str) -> list[Ephemeral]:
        return [e for e in self.ephemerals if e.user == user and not e.deleted]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, message: str | None = None) -> None:
        """Poll ``predicate`` every 10 ms; AssertionError with the recent Slack traffic on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(self._describe_timeout(predicate, timeout, message))
            await asyncio.sleep(0.01)

    def _describe_timeout(self, predicate: Callable[[], bool], timeout: float, message: str | None) -> str:
        name = getattr(predicate, "__qualname__", repr(predicate))
        lines = [f"condition {message or name} not met within {timeout}s"]
        lines.append(f"last Web API calls ({len(self.calls)} total):")
        for c in self.calls[-12:]:
            brief = {
                k: (str(v)[:60]) for k, v in c.params.items() if k in ("channel", "ts", "text", "user", "thread_ts")
            }
            lines.append(f"  {c.method} -> {c.status} {c.error or 'ok'} {brief}")
        for cid in self._store:
            msgs = self.messages(cid)
            if msgs:
                lines.append(f"channel {cid}: {len(msgs)} messages; last: {msgs[-1].text[:80]!r}")
        if self.ephemerals:
            lines.append(f"ephemerals: {[e.text[:60] for e in self.ephemerals[-5:]]}")
        if self.responses:
            lines.append(f"response_url posts: {[(r.status, r.error) for r in self.responses[-5:]]}")
        if self.server_errors:
            lines.append(f"EMULATOR ERRORS: {self.server_errors[-3:]}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        method: str,
        *,
        status: int = 500,
        count: int = 1,
        error: str = "internal_error",
        retry_after: int | None = None,
    ) -> None:
        """The next ``count`` calls of ``method`` answer HTTP ``status`` (429 => ``ratelimited``)."""
        self._faults.setdefault(method, []).append(_Fault(status, error, retry_after, remaining=count))

    def fail_for(
        self,
        method: str,
        seconds: float,
        *,
        status: int = 500,
        retry_after: int | None = None,
        error: str = "internal_error",
    ) -> None:
        self._faults.setdefault(method, []).append(_Fault(status, error, retry_after, until=self.clock() + seconds))

    def slow(self, method: str, seconds: float, count: int | None = None, *, process_first: bool = False) -> None:
        """Delay answers. With ``process_first`` the call takes effect before the delay (a timed-out
        request that Slack nevertheless carried out)."""
        self._slow[method] = _Slow(seconds, count, process_first)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._slow.clear()

    def reset_rate_limits(self) -> None:
        """Refill every rate-limit bucket (overrides from set_rate_limit stay)."""
        self._buckets.clear()

    def _take_fault(self, method: str) -> _Fault | None:
        now = self.clock()
        for key in (method, "*"):
            faults = self._faults.get(key, [])
            for f in list(faults):
                if f.until is not None:
                    if now < f.until:
                        return f
                    faults.remove(f)
                    continue
                if f.remaining is not None and f.remaining > 0:
                    f.remaining -= 1
                    if f.remaining == 0:
                        faults.remove(f)
                    return f
        return None

    def _take_slow(self, method: str) -> _Slow | None:
        for key in (method, "*"):
            s = self._slow.get(key)
            if s is None:
                continue
            if s.remaining is not None:
                if s.remaining <= 0:
                    del self._slow[key]
                    continue
                s.remaining -= 1
            return s
        return None

    def _fault_response(self, fault: _Fault) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers: dict[str, str] = {}
        if fault.status == 429:
            headers["Retry-After"] = str(fault.retry_after if fault.retry_after is not None else 1)
            self.rate_limited_count += 1
            return 429, {"ok": False, "error": "ratelimited"}, headers
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return fault.status, {"ok": False, "error": fault.error}, headers

    # ------------------------------------------------------------------ rate limits

    def _rate_check(self, method: str, args: _Args) -> int | None:
        """Return Retry-After seconds when over the limit."""
        if not self.enforce_rate_limits:
            return None
        now = self.clock()
        if method == "chat.postMessage":
            ref = args.s("channel") or ""
            ch = self._lookup_channel(ref)
            return self._post_rate_check(ch.id if ch else ref)
        elif method in self._limit_overrides:
            key = method
            rate, burst = self._limit_overrides[method]
        elif method in _METHOD_TIER:
            key = method
            per_minute = _TIER_PER_MINUTE[_METHOD_TIER[method]]
            rate, burst = per_minute / 60.0, per_minute
        else:
            return None
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(capacity=burst, rate=rate, tokens=burst, updated=now)
        wait = bucket.take(now)
        if wait is None:
            return None
        return max(1, math.ceil(wait))

    def _post_rate_check(self, channel_id: str) -> int | None:
        """Retry-After seconds when the channel's message bucket (chat.postMessage and webhooks) is empty."""
        if not self.enforce_rate_limits:
            return None
        now = self.clock()
        key = f"chat.postMessage:{channel_id}"
        bucket = self._buckets.get(key)
        if bucket is None:
            burst = float(self.post_burst)
            bucket = self._buckets[key] = _Bucket(
                capacity=burst, rate=self.post_rate_per_channel, tokens=burst, updated=now
            )
        wait = bucket.take(now)
        return None if wait is None else max(1, math.ceil(wait))

    # ------------------------------------------------------------------ ids and clocks

    def _next_ts(self) -> str:
        us = max(int(time.time() * 1_000_000), self._last_ts_us + 1)
        self._last_ts_us = us
        return f"{us // 1_000_000:010d}.{us % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08X}"

    def mint_trigger(self, user_id: str | None = None) -> str:
        trigger_id = f"{next(self._ids)}.{int(time.time())}.{secrets.token_hex(16)}"
        self._triggers[trigger_id] = _Trigger(trigger_id, self.clock(), user_id)
        self.last_trigger_id = trigger_id
        return trigger_id

    def _mint_response_url(
        self,
        kind: str,
        *,
        channel: str,
        user: str,
        message_ts: str | None = None,
        is_ephemeral: bool = False,
        thread_ts: str | None = None,
    ) -> str:
        n = next(self._ids)
        url = f"{self.base_url}/{kind}/{self.team_id}/{n}/{secrets.token_urlsafe(18)}"
        self._response_urls[urlsplit(url).path] = _ResponseUrl(
            url=url,
            kind=kind,
            channel=channel,
            user=user,
            created=self.clock(),
            message_ts=message_ts,
            is_ephemeral=is_ephemeral,
            thread_ts=thread_ts,
        )
        self.last_response_url = url
        return url

    # ------------------------------------------------------------------ channel helpers

    def _lookup_channel(self, ref: str | None) -> _Channel | None:
        if not ref:
            return None
        if ref.startswith("#"):
            name = ref[1:]
            return next((c for c in self._channels.values() if c.name == name), None)
        if ref in self._channels:
            return self._channels[ref]
        if ref in self._users:  # posting to a user id opens the App Home DM
            return self._dm_channel(ref)
        return next((c for c in self._channels.values() if c.name == ref and not c.is_im), None)

    def _channel_by_id(self, ref: str | None) -> _Channel | None:
        """The channel of an id. Slack takes a `#name` only where a message is posted (chat.postMessage,
        chat.postEphemeral, files); methods that read or change what is there (chat.update, chat.delete,
        conversations.*, reactions.*, pins.*) answer `channel_not_found` to a name."""
        return self._channels.get(ref) if ref else None

    def _dm_channel(self, user_id: str) -> _Channel:
        for c in self._channels.values():
            if c.is_im and c.im_user == user_id:
                return c
        cid = "D" + user_id[1:]
        ch = _Channel(id=cid, name=cid, members={user_id, self.bot_user_id}, is_im=True, im_user=user_id)
        self._channels[cid] = ch
        self._store.setdefault(cid, {})
        return ch

    def _is_member(self, ch: _Channel, user: str) -> bool:
        return not ch.members or user in ch.members

    def _channel_for_write(self, ref: str | None) -> _Channel:
        ch = self._lookup_channel(ref)
        if ch is None:
            raise SlackError("channel_not_found")
        if not ch.bot_member:
            raise SlackError("not_in_channel")
        return ch

    def _resolve_thread(self, ch: _Channel, thread_ts: str | None) -> str | None:
        if not thread_ts:
            return None
        parent = self._store.get(ch.id, {}).get(thread_ts)
        if parent is None:
            raise SlackError("thread_not_found")
        return parent.thread_ts or parent.ts

    def _message_content(
        self, a: Mapping[str, Any], *, require: bool = True
    ) -> tuple[str | None, list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
        blocks = a.get("blocks")
        if blocks is not None:
            if isinstance(blocks, str):
                try:
                    blocks = json.loads(blocks)
                except ValueError:
                    raise SlackError("invalid_blocks_format") from None
            if not isinstance(blocks, list):
                raise SlackError("invalid_blocks_format")
            errors = validate_blocks(blocks, surface="message")
            if errors:
                raise SlackError(
                    "invalid_blocks", errors=errors, response_metadata={"messages": [f"[ERROR] {e}" for e in errors]}
                )
        attachments = a.get("attachments")
        if attachments is not None:
            if isinstance(attachments, str):
                try:
                    attachments = json.loads(attachments)
                except ValueError:
                    raise SlackError("invalid_attachments") from None
            if not isinstance(attachments, list):
                raise SlackError("invalid_attachments")
            if len(attachments) > 100:
                raise SlackError("too_many_attachments")
            errors = []
            for i, att in enumerate(attachments):
                if isinstance(att, dict) and "blocks" in att:
                    errors += validate_blocks(att["blocks"], surface="message", pointer=f"/attachments/{i}/blocks")
            if errors:
                raise SlackError(
                    "invalid_blocks", errors=errors, response_metadata={"messages": [f"[ERROR] {e}" for e in errors]}
                )
        text = a.get("text")
        if text is not None and not isinstance(text, str):
            text = str(text)
        if require and not text and not blocks and not attachments:
            raise SlackError("no_text")
        return text, blocks, attachments

    def _parse_metadata(self, a: _Args) -> dict[str, Any] | None:
        if a.get("metadata") is None:
            return None
        md = a.jsonish("metadata", error="invalid_metadata_format")
        if not isinstance(md, dict):
            raise SlackError("invalid_metadata_format")
        if not isinstance(md.get("event_type"), str) or not isinstance(md.get("event_payload"), dict):
            raise SlackError("invalid_metadata_schema")
        return md

    def _store_message(self, msg: Message) -> Message:
        self._store.setdefault(msg.channel, {})[msg.ts] = msg
        return msg

    def _replies_of(self, channel: str, ts: str) -> list[Message]:
        return sorted((m for m in self._store.get(channel, {}).values() if m.thread_ts == ts), key=lambda m: m.ts)

    def _api_message(self, msg: Message, *, include_metadata: bool = False) -> dict[str, Any]:
        replies = self._replies_of(msg.channel, msg.ts) if msg.thread_ts is None else None
        return msg.to_api(include_metadata=include_metadata, replies=replies)

    def _bot_message(
        self,
        ch: _Channel,
        text: str,
        blocks: list[dict[str, Any]] | None,
        attachments: list[dict[str, Any]] | None,
        thread_ts: str | None,
        metadata: dict[str, Any] | None = None,
        reply_broadcast: bool = False,
    ) -> Message:
        return self._store_message(
            Message(
                channel=ch.id,
                ts=self._next_ts(),
                text=text,
                blocks=blocks or [],
                thread_ts=thread_ts,
                user=self.bot_user_id,
                bot_id=self.bot_id,
                metadata=metadata,
                attachments=attachments or [],
                reply_broadcast=reply_broadcast and thread_ts is not None,
                app_id=self.app_id,
            )
        )

    def add_user_message(
        self, channel: str, text: str, *, user_id: str, thread_ts: str | None = None, ts: str | None = None
    ) -> Message:
        """Put a human's message into a channel (as if typed in Slack)."""
        ch = self._channel_ref(channel)
        parent = self._resolve_thread(ch, thread_ts) if thread_ts else None
        return self._store_message(
            Message(channel=ch.id, ts=ts or self._next_ts(), text=text, thread_ts=parent, user=user_id)
        )

    def _edit(
        self,
        msg: Message,
        *,
        text: str | None,
        blocks: list[dict[str, Any]] | None,
        attachments: list[dict[str, Any]] | None,
        metadata: dict[str, Any] | None,
        via: str,
        text_removes_blocks: bool = True,
    ) -> None:
        msg.history.append(
            {
                "text": msg.text,
                "blocks": copy.deepcopy(msg.blocks),
                "attachments": copy.deepcopy(msg.attachments),
                "metadata": copy.deepcopy(msg.metadata),
                "via": via,
                "at": self.clock(),
                "edited_ts": self._next_ts(),
            }
        )
        if text is not None:
            msg.text = text
        if blocks is not None:
            msg.blocks = blocks
        elif text is not None and text_removes_blocks:
            msg.blocks = []
        if attachments is not None:
            msg.attachments = attachments
        if metadata is not None:
            msg.metadata = metadata
        msg.edited_count += 1

    # ------------------------------------------------------------------ HTTP plumbing

    @staticmethod
    def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers=dict(headers or {}))

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], str | None]:
        data: dict[str, Any] = {}
        for k, v in request.query.items():
            data.setdefault(k, v)
        data.pop("token", None)  # Slack refuses tokens in the query string
        form_token: str | None = None
        if request.method == "POST" and request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                raw = await request.text()
                if raw.strip():
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise SlackError("invalid_json") from None
                    if not isinstance(body, dict):
                        raise SlackError("json_not_object")
                    body.pop("token", None)
                    data.update(body)
            elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                for k in form:
                    fv = form.get(k)
                    if isinstance(fv, web.FileField):
                        continue
                    if k == "token":
                        form_token = str(fv)
                        continue
                    data[k] = fv
            else:
                await request.read()
        return data, form_token

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        try:
            status, body, headers = await self._dispatch(request, method, params)
        except Exception as exc:  # an emulator bug: make it loud
            self.server_errors.append(f"{method}: {exc!r}")
            status, body, headers = 500, {"ok": False, "error": "emulator_error", "detail": repr(exc)}, {}
        self.calls.append(
            Call(
                method=method,
                params=params,
                status=status,
                error=None if body.get("ok") else body.get("error"),
                at=self.clock(),
                response=body,
            )
        )
        return self._json(status, body, headers)

    async def _dispatch(
        self, request: web.Request, method: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            data, form_token = await self._read_params(request)
        except SlackError as e:
            return 200, {"ok": False, "error": e.error}, {}
        params.update(data)
        handler = self._methods.get(method)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        slow = self._take_slow(method)
        if slow is not None and not slow.process_first:
            await asyncio.sleep(slow.seconds)
        fault = self._take_fault(method)
        if fault is not None:
            if fault.status == 200:
                return 200, {"ok": False, "error": fault.error}, {}
            return self._fault_response(fault)
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token is None and method != "apps.connections.open":
            token = form_token
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if method == "apps.connections.open":
            if token != self.app_token:
                return 200, {"ok": False, "error": "invalid_auth"}, {}
        elif token == self.app_token:
            return 200, {"ok": False, "error": "not_allowed_token_type"}, {}
        elif token != self.bot_token:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        args = _Args(data)
        retry_after = self._rate_check(method, args)
        if retry_after is not None:
            self.rate_limited_count += 1
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
        try:
            body = {"ok": True, **handler(args)}
        except SlackError as e:
            body = {"ok": False, "error": e.error, **e.extra}
        if slow is not None and slow.process_first:
            await asyncio.sleep(slow.seconds)
        return 200, body, args.headers_out

    # ------------------------------------------------------------------ Web API methods

    def _api_test(self, a: _Args) -> dict[str, Any]:
        return {"args": {k: v for k, v in a.data.items() if isinstance(v, str)}}

    def _auth_test(self, a: _Args) -> dict[str, Any]:
        a.headers_out["x-oauth-scopes"] = ",".join(self.scopes)
        return {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": "Emulated Team",
            "user": "opsloop-bot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, a: _Args) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"}

    def _chat_post_message(self, a: _Args) -> dict[str, Any]:
        ch = self._channel_for_write(a.req("channel", error="channel_not_found"))
        text, blocks, attachments = self._message_content(a.data)
        thread_ts = self._resolve_thread(ch, a.s("thread_ts"))
        metadata = self._parse_metadata(a)
        msg = self._bot_message(
            ch,
            (text or "")[:40_000],
            blocks,
            attachments,
            thread_ts,
            metadata,
            reply_broadcast=a.flag("reply_broadcast"),
        )
        return {"channel": ch.id, "ts": msg.ts, "message": self._api_message(msg, include_metadata=True)}

    def _find_message(self, a: _Args, ts_param: str = "ts") -> tuple[_Channel, Message]:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        if ch is None:
            raise SlackError("channel_not_found")
        ts = a.req(ts_param, error="message_not_found")
        msg = self._store.get(ch.id, {}).get(ts)
        if msg is None:
            raise SlackError("message_not_found")
        return ch, msg

    def _chat_update(self, a: _Args) -> dict[str, Any]:
        ch, msg = self._find_message(a)
        if msg.bot_id != self.bot_id:
            raise SlackError("cant_update_message")
        text, blocks, attachments = self._message_content(a.data)
        if text is not None and len(text) > 4000:
            raise SlackError("msg_too_long")
        metadata = self._parse_metadata(a)
        self._edit(msg, text=text, blocks=blocks, attachments=attachments, metadata=metadata, via="chat.update")
        return {"channel": ch.id, "ts": msg.ts, "text": msg.text, "message": self._api_message(msg)}

    def _chat_post_ephemeral(self, a: _Args) -> dict[str, Any]:
        ch = self._channel_for_write(a.req("channel", error="channel_not_found"))
        user = a.req("user", error="user_not_found")
        if not self._is_member(ch, user):
            raise SlackError("user_not_in_channel")
        text, blocks, _ = self._message_content(a.data)
        thread_ts = self._resolve_thread(ch, a.s("thread_ts"))
        eph = Ephemeral(
            channel=ch.id,
            user=user,
            text=text or "",
            blocks=blocks or [],
            thread_ts=thread_ts,
            message_ts=self._next_ts(),
            source="api",
        )
        self.ephemerals.append(eph)
        return {"message_ts": eph.message_ts}

    def _chat_delete(self, a: _Args) -> dict[str, Any]:
        ch, msg = self._find_message(a)
        if msg.bot_id != self.bot_id:
            raise SlackError("cant_delete_message")
        del self._store[ch.id][msg.ts]
        self.deleted.append(msg)
        return {"channel": ch.id, "ts": msg.ts}

    def _chat_get_permalink(self, a: _Args) -> dict[str, Any]:
        ch, msg = self._find_message(a, "message_ts")
        link = f"https://{self.team_domain}.slack.com/archives/{ch.id}/p{msg.ts.replace('.', '')}"
        if msg.thread_ts:
            link += f"?thread_ts={msg.thread_ts}&cid={ch.id}"
        return {"channel": ch.id, "permalink": link}

    def _paginate(self, a: _Args, items: list[Any], key: str) -> dict[str, Any]:
        limit = max(1, min(a.integer("limit", 100), 1000))
        cursor = a.s("cursor")
        offset = 0
        if cursor:
            try:
                offset = int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)[1])
            except (ValueError, IndexError):
                raise SlackError("invalid_cursor") from None
        page = items[offset : offset + limit]
        more = offset + limit < len(items)
        next_cursor = base64.urlsafe_b64encode(f"offset:{offset + limit}".encode()).decode() if more else ""
        return {key: page, "has_more": more, "response_metadata": {"next_cursor": next_cursor}}

    @staticmethod
    def _ts_filter(a: _Args, msgs: list[Message]) -> list[Message]:
        oldest, latest, inclusive = a.s("oldest"), a.s("latest"), a.flag("inclusive")

        def keep(m: Message) -> bool:
            t = float(m.ts)
            if oldest is not None and (t < float(oldest) or (t == float(oldest) and not inclusive)):
                return False
            return latest is None or t < float(latest) or (t == float(latest) and inclusive)

        return [m for m in msgs if keep(m)]

    def _conversations_history(self, a: _Args) -> dict[str, Any]:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        if ch is None:
            raise SlackError("channel_not_found")
        if not ch.bot_member:
            raise SlackError("not_in_channel")
        msgs = [m for m in self._store.get(ch.id, {}).values() if m.thread_ts is None or m.reply_broadcast]
        msgs = sorted(self._ts_filter(a, msgs), key=lambda m: m.ts, reverse=True)
        md = a.flag("include_all_metadata")
        return self._paginate(a, [self._api_message(m, include_metadata=md) for m in msgs], "messages")

    def _conversations_replies(self, a: _Args) -> dict[str, Any]:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        if ch is None:
            raise SlackError("channel_not_found")
        ts = a.req("ts", error="thread_not_found")
        parent = self._store.get(ch.id, {}).get(ts)
        if parent is None:
            raise SlackError("thread_not_found")
        root = parent.thread_ts or parent.ts
        root_msg = self._store[ch.id].get(root)
        msgs = ([root_msg] if root_msg else []) + self._replies_of(ch.id, root)
        msgs = self._ts_filter(a, msgs) if (a.s("oldest") or a.s("latest")) else msgs
        md = a.flag("include_all_metadata")
        return self._paginate(a, [self._api_message(m, include_metadata=md) for m in msgs], "messages")

    def _conversation_obj(self, ch: _Channel) -> dict[str, Any]:
        return {
            "id": ch.id,
            "name": ch.name,
            "is_channel": not ch.is_im and not ch.is_private,
            "is_group": ch.is_private,
            "is_im": ch.is_im,
            "is_private": ch.is_private or ch.is_im,
            "is_member": ch.bot_member,
            "is_archived": False,
            "user": ch.im_user,
            "num_members": len(ch.members),
        }

    def _conversations_info(self, a: _Args) -> dict[str, Any]:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        if ch is None:
            raise SlackError("channel_not_found")
        return {"channel": self._conversation_obj(ch)}

    def _conversations_list(self, a: _Args) -> dict[str, Any]:
        # Private channels only where the bot is a member (and with groups:read), as Slack lists them.
        types = set((a.s("types") or "public_channel").split(","))
        chans = [
            c
            for c in self._channels.values()
            if not c.is_im
            and (
                ("public_channel" in types and not c.is_private)
                or ("private_channel" in types and c.is_private and c.bot_member and "groups:read" in self.scopes)
            )
        ]
        return self._paginate(a, [self._conversation_obj(c) for c in sorted(chans, key=lambda c: c.id)], "channels")

    def _conversations_members(self, a: _Args) -> dict[str, Any]:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        if ch is None:
            raise SlackError("channel_not_found")
        members = sorted(ch.members) if ch.members else sorted(u for u in self._users)
        return self._paginate(a, members, "members")

    def _conversations_open(self, a: _Args) -> dict[str, Any]:
        users = [u for u in (a.s("users") or "").split(",") if u]
        if len(users) != 1:
            raise SlackError("users_list_not_supplied" if not users else "not_supported")
        if users[0] not in self._users:
            raise SlackError("user_not_found")
        return {"channel": {"id": self._dm_channel(users[0]).id}}

    def _pin_target(self, a: _Args) -> Message:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        if ch is None:
            raise SlackError("channel_not_found")
        if not ch.bot_member:
            raise SlackError("not_in_channel")
        ts = a.s("timestamp")
        if not ts:
            raise SlackError("no_item_specified")
        msg = self._store.get(ch.id, {}).get(ts)
        if msg is None:
            raise SlackError("message_not_found")
        return msg

    def _pins_add(self, a: _Args) -> dict[str, Any]:
        msg = self._pin_target(a)
        if msg.pinned_by is not None:
            raise SlackError("already_pinned")
        if sum(1 for m in self._store.get(msg.channel, {}).values() if m.pinned_by) >= 100:
            raise SlackError("too_many_pins")  # Slack's limit of pinned items per channel
        msg.pinned_by = self.bot_user_id
        return {}

    def _pins_remove(self, a: _Args) -> dict[str, Any]:
        msg = self._pin_target(a)
        if msg.pinned_by is None:
            raise SlackError("no_pin")
        msg.pinned_by = None
        return {}

    def _pins_list(self, a: _Args) -> dict[str, Any]:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        if ch is None:
            raise SlackError("channel_not_found")
        pinned = sorted((m for m in self._store.get(ch.id, {}).values() if m.pinned_by), key=lambda m: m.ts)
        return {
            "items": [
                {
                    "type": "message",
                    "channel": ch.id,
                    "created_by": m.pinned_by,
                    "message": self._api_message(m, include_metadata=False),
                }
                for m in pinned
            ]
        }

    def pinned(self, channel: str) -> list[Message]:
        """The messages pinned in ``channel`` (an id or ``#name``), oldest first."""
        ch = self._channel_ref(channel)
        return sorted((m for m in self._store.get(ch.id, {}).values() if m.pinned_by), key=lambda m: m.ts)

    def _reaction_target(self, a: _Args) -> tuple[Message, str]:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        if ch is None:
            raise SlackError("channel_not_found")
        ts = a.req("timestamp", error="message_not_found")
        msg = self._store.get(ch.id, {}).get(ts)
        if msg is None:
            raise SlackError("message_not_found")
        name = (a.s("name") or "").strip(":")
        if not name or not _REACTION_NAME.match(name):
            raise SlackError("invalid_name")
        return msg, name

    def _reactions_add(self, a: _Args) -> dict[str, Any]:
        msg, name = self._reaction_target(a)
        users = msg.reactions.setdefault(name, [])
        if self.bot_user_id in users:
            raise SlackError("already_reacted")
        if len(msg.reactions) > 23 and not users:
            raise SlackError("too_many_reactions")
        users.append(self.bot_user_id)
        return {}

    def _reactions_remove(self, a: _Args) -> dict[str, Any]:
        msg, name = self._reaction_target(a)
        users = msg.reactions.get(name, [])
        if self.bot_user_id not in users:
            raise SlackError("no_reaction")
        users.remove(self.bot_user_id)
        if not users:
            del msg.reactions[name]
        return {}

    def _reactions_get(self, a: _Args) -> dict[str, Any]:
        ch = self._channel_by_id(a.req("channel", error="channel_not_found"))
        msg = self._store.get(ch.id, {}).get(a.s("timestamp") or "") if ch else None
        if ch is None:
            raise SlackError("channel_not_found")
        if msg is None:
            raise SlackError("message_not_found")
        return {"type": "message", "channel": ch.id, "message": self._api_message(msg)}

    def _users_info(self, a: _Args) -> dict[str, Any]:
        user = self._users.get(a.req("user", error="user_not_found"))
        if user is None:
            raise SlackError("user_not_found")
        return {"user": copy.deepcopy(user)}

    def _usergroups_list(self, a: _Args) -> dict[str, Any]:
        groups = []
        for g in self._usergroups.values():
            item: dict[str, Any] = {
                "id": g.id,
                "team_id": self.team_id,
                "handle": g.handle,
                "name": g.name,
                "is_usergroup": True,
                "date_delete": 0,
                "user_count": len(g.users),
            }
            if a.flag("include_users"):
                item["users"] = list(g.users)
            groups.append(item)
        return {"usergroups": groups}

    def _usergroups_users_list(self, a: _Args) -> dict[str, Any]:
        g = self._usergroups.get(a.req("usergroup", error="no_such_subteam"))
        if g is None:
            raise SlackError("no_such_subteam")
        return {"users": list(g.users)}

    # -- files v2

    def _files_get_upload_url_external(self, a: _Args) -> dict[str, Any]:
        filename = a.req("filename")
        length = a.integer("length", -1)
        if length < 0:
            raise _missing("length")
        file_id = self._next_id("F")
        key = secrets.token_urlsafe(12)
        self._uploads[file_id] = _PendingUpload(file_id, key, filename, length, a.s("alt_txt"), a.s("snippet_type"))
        self._upload_keys[key] = file_id
        return {"upload_url": f"{self.base_url}/upload/v1/{key}", "file_id": file_id}

    async def _handle_upload(self, request: web.Request) -> web.StreamResponse:
        slow = self._take_slow("upload")
        if slow is not None:
            await asyncio.sleep(slow.seconds)
        fault = self._take_fault("upload")
        if fault is not None:
            return web.Response(status=fault.status if fault.status != 200 else 500, text=fault.error)
        file_id = self._upload_keys.get(request.match_info["key"])
        data = await request.read()
        if file_id is None:
            return web.Response(status=404, text="Not Found", content_type="text/plain")
        self._uploads[file_id].content = data
        return web.Response(status=200, text=f"OK - {len(data)}", content_type="text/plain")

    def _files_complete_upload_external(self, a: _Args) -> dict[str, Any]:
        items = a.jsonish("files", error="invalid_arguments")
        if not isinstance(items, list) or not items:
            raise _missing("files")
        channel_ref = a.s("channel_id") or (a.s("channels") or "").split(",")[0] or None
        ch = self._channel_for_write(channel_ref) if channel_ref else None
        thread_ts = self._resolve_thread(ch, a.s("thread_ts")) if ch else None
        comment = a.s("initial_comment")
        out: list[dict[str, Any]] = []
        for item in items:
            if not isinstance(item, dict) or item.get("id") not in self._uploads:
                raise SlackError("file_not_found")
            pending = self._uploads[item["id"]]
            if pending.content is None:
                raise SlackError("file_not_found")
        for item in items:
            pending = self._uploads.pop(item["id"])
            self._upload_keys.pop(pending.key, None)
            assert pending.content is not None
            title = item.get("title") or pending.filename
            self.files.append(
                UploadedFile(
                    id=pending.file_id,
                    filename=pending.filename,
                    title=title,
                    content=pending.content,
                    channel=ch.id if ch else None,
                    thread_ts=thread_ts,
                    initial_comment=comment,
                    length=pending.length,
                    alt_txt=pending.alt_txt,
                    snippet_type=pending.snippet_type,
                )
            )
            out.append(
                {
                    "id": pending.file_id,
                    "name": pending.filename,
                    "title": title,
                    "size": len(pending.content),
                    "user": self.bot_user_id,
                    "permalink": f"https://{self.team_domain}.slack.com/files/{self.bot_user_id}/{pending.file_id}",
                    "channels": [ch.id] if ch else [],
                }
            )
        if ch is not None:
            msg = self._bot_message(ch, comment or "", None, None, thread_ts)
            msg.files = [{"id": f["id"], "name": f["name"], "title": f["title"]} for f in out]
        return {"files": out}

    # -- views

    def _view_arg(self, a: _Args, surface: Literal["modal", "home"] | None) -> dict[str, Any]:
        view = a.jsonish("view", error="invalid_arguments")
        if view is None:
            raise _missing("view")
        errors = validate_view(view, surface=surface)
        if errors:
            raise SlackError(
                "invalid_arguments", errors=errors, response_metadata={"messages": [f"[ERROR] {e}" for e in errors]}
            )
        assert isinstance(view, dict)
        return view

    def _use_trigger(self, a: _Args) -> _Trigger:
        trigger_id = a.s("trigger_id") or a.s("interactivity_pointer")
        if not trigger_id:
            raise _missing("trigger_id")
        trig = self._triggers.get(trigger_id)
        if trig is None:
            raise SlackError("invalid_trigger_id")
        if trig.used:
            raise SlackError("exchanged_trigger_id")
        if self.clock() - trig.created > self.trigger_ttl:
            raise SlackError("expired_trigger_id")
        return trig

    def _check_external_id(self, view: dict[str, Any], own_id: str | None = None) -> None:
        ext = view.get("external_id")
        if ext and any(v.get("external_id") == ext and vid != own_id for vid, v in self.views.items()):
            raise SlackError("duplicate_external_id")

    def _make_view(
        self,
        view: dict[str, Any],
        *,
        view_id: str | None = None,
        root_view_id: str | None = None,
        previous_view_id: str | None = None,
    ) -> dict[str, Any]:
        vid = view_id or self._next_id("V")
        out = {
            "id": vid,
            "team_id": self.team_id,
            "type": view["type"],
            "title": copy.deepcopy(view.get("title")),
            "submit": copy.deepcopy(view.get("submit")),
            "close": copy.deepcopy(view.get("close")),
            "blocks": copy.deepcopy(view.get("blocks", [])),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "external_id": view.get("external_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "submit_disabled": bool(view.get("submit_disabled", False)),
            "previous_view_id": previous_view_id,
            "root_view_id": root_view_id or vid,
            "app_id": self.app_id,
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }
        if view["type"] == "home":
            for key in ("submit", "close"):
                del out[key]
        return out

    def _views_open(self, a: _Args) -> dict[str, Any]:
        trig = self._use_trigger(a)
        view = self._view_arg(a, "modal")
        self._check_external_id(view)
        trig.used = True
        stored = self._make_view(view)
        self.views[stored["id"]] = stored
        if trig.user_id:
            self.view_stacks[trig.user_id] = [stored["id"]]
        return {"view": copy.deepcopy(stored)}

    def _views_push(self, a: _Args) -> dict[str, Any]:
        trig = self._use_trigger(a)
        view = self._view_arg(a, "modal")
        self._check_external_id(view)
        stack = self.view_stacks.setdefault(trig.user_id or "", [])
        if len(stack) >= 3:
            raise SlackError("push_limit_reached")
        trig.used = True
        stored = self._make_view(
            view, root_view_id=stack[0] if stack else None, previous_view_id=stack[-1] if stack else None
        )
        self.views[stored["id"]] = stored
        stack.append(stored["id"])
        return {"view": copy.deepcopy(stored)}

    def _views_update(self, a: _Args) -> dict[str, Any]:
        view_id, external_id = a.s("view_id"), a.s("external_id")
        if not view_id and not external_id:
            raise _missing("view_id")
        current = None
        if view_id:
            current = self.views.get(view_id) or next((v for v in self.home_views.values() if v["id"] == view_id), None)
        else:
            current = next((v for v in self.views.values() if v.get("external_id") == external_id), None)
        if current is None:
            raise SlackError("not_found")
        view = self._view_arg(a, current["type"])
        h = a.s("hash")
        if h and h != current["hash"]:
            raise SlackError("hash_conflict")
        self._check_external_id(view, current["id"])
        stored = self._make_view(
            view,
            view_id=current["id"],
            root_view_id=current["root_view_id"],
            previous_view_id=current["previous_view_id"],
        )
        if current["type"] == "home":
            user = next(u for u, v in self.home_views.items() if v["id"] == current["id"])
            self.home_views[user] = stored
        else:
            self.views[stored["id"]] = stored
        return {"view": copy.deepcopy(stored)}

    def _views_publish(self, a: _Args) -> dict[str, Any]:
        user = a.req("user_id")
        view = self._view_arg(a, "home")
        current = self.home_views.get(user)
        h = a.s("hash")
        if h and current is not None and h != current["hash"]:
            raise SlackError("hash_conflict")
        stored = self._make_view(view, view_id=current["id"] if current else None)
        self.home_views[user] = stored
        return {"view": copy.deepcopy(stored)}

    # ------------------------------------------------------------------ response_url

    async def _handle_incoming_webhook(self, request: web.Request) -> web.StreamResponse:
        method = "incoming-webhook"
        raw = await request.text()
        params: dict[str, Any] = {}
        headers: dict[str, str] = {}
        slow = self._take_slow(method)
        if slow is not None:
            await asyncio.sleep(slow.seconds)
        try:
            status, text = self._incoming_webhook(request, raw, params, headers)
        except Exception as exc:  # an emulator bug: make it loud
            self.server_errors.append(f"{method}: {exc!r}")
            status, text = 500, "emulator_error"
        ok = status == 200
        self.calls.append(
            Call(method, params, status, None if ok else text, self.clock(), {"ok": ok} if ok else {"ok": False})
        )
        return web.Response(status=status, text=text, headers=headers)

    def _incoming_webhook(
        self, request: web.Request, raw: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, str]:
        fault = self._take_fault("incoming-webhook")
        if fault is not None:
            if fault.status == 429:
                self.rate_limited_count += 1
                headers["Retry-After"] = str(fault.retry_after if fault.retry_after is not None else 1)
                return 429, "rate_limited"
            return fault.status, fault.error
        channel_id = self._incoming_webhooks.get(request.path)
        if channel_id is None:
            return 404, "no_service"
        if request.content_type == "application/x-www-form-urlencoded":
            raw = (parse_qs(raw).get("payload") or [""])[0]
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, "invalid_payload"
        if not isinstance(body, dict):
            return 400, "invalid_payload"
        params.update(body, channel=channel_id)
        retry_after = self._post_rate_check(channel_id)
        if retry_after is not None:
            self.rate_limited_count += 1
            headers["Retry-After"] = str(retry_after)
            return 429, "rate_limited"
        ch = self._channels[channel_id]
        try:
            text, blocks, attachments = self._message_content(body)
            thread_ts = self._resolve_thread(ch, body.get("thread_ts") or None)
        except SlackError as e:
            return (404 if e.error == "thread_not_found" else 400), e.error
        self._bot_message(ch, (text or "")[:40_000], blocks, attachments, thread_ts)
        return 200, "ok"

    async def _handle_response_url(self, request: web.Request) -> web.StreamResponse:
        url = str(request.url)
        raw = await request.text()
        at = self.clock()

        def answer(status: int, body: dict[str, Any], parsed: dict[str, Any]) -> web.Response:
            self.responses.append(
                ResponseUrlPost(
                    url=url, body=parsed, at=at, status=status, error=None if body.get("ok") else body.get("error")
                )
            )
            return self._json(status, body)

        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return answer(400, {"ok": False, "error": "invalid_payload"}, {"_raw": raw})
        if not isinstance(parsed, dict):
            return answer(400, {"ok": False, "error": "invalid_payload"}, {"_raw": raw})
        slow = self._take_slow("response_url")
        if slow is not None:
            await asyncio.sleep(slow.seconds)
        fault = self._take_fault("response_url")
        if fault is not None:
            status, body, headers = self._fault_response(fault)
            self.responses.append(ResponseUrlPost(url=url, body=parsed, at=at, status=status, error=body["error"]))
            return self._json(status, body, headers)
        ru = self._response_urls.get(request.path)
        if ru is None:
            return answer(404, {"ok": False, "error": "invalid_token"}, parsed)
        if self.clock() - ru.created > self.response_url_ttl:
            return answer(404, {"ok": False, "error": "expired_url"}, parsed)
        if ru.uses >= self.response_url_max_uses:
            return answer(404, {"ok": False, "error": "used_url"}, parsed)
        try:
            self._apply_response(ru, parsed)
        except SlackError as e:
            return answer(400, {"ok": False, "error": e.error, **e.extra}, parsed)
        ru.uses += 1
        return answer(200, {"ok": True}, parsed)

    def _apply_response(self, ru: _ResponseUrl, body: dict[str, Any]) -> None:
        ch = self._lookup_channel(ru.channel)
        if body.get("delete_original"):
            if ru.is_ephemeral or ru.kind == "commands":
                eph = self._find_ephemeral(ru)
                if eph is not None:
                    eph.deleted = True
                return
            msg = self._store.get(ch.id, {}).get(ru.message_ts or "") if ch else None
            if msg is None:
                raise SlackError("message_not_found")
            del self._store[msg.channel][msg.ts]
            self.deleted.append(msg)
            return
        text, blocks, attachments = self._message_content(body)
        if body.get("replace_original"):
            if ru.is_ephemeral or ru.kind == "commands":
                eph = self._find_ephemeral(ru)
                if eph is not None:
                    eph.history.append({"text": eph.text, "blocks": eph.blocks, "at": self.clock()})
                    eph.text, eph.blocks = text or "", blocks or []
                    return
            else:
                msg = self._store.get(ch.id, {}).get(ru.message_ts or "") if ch else None
                if msg is None:
                    raise SlackError("message_not_found")
                self._edit(
                    msg,
                    text=text if text is not None else "",
                    blocks=blocks if blocks is not None else [],
                    attachments=attachments,
                    metadata=None,
                    via="response_url",
                )
                return
        thread_ts = body.get("thread_ts") or ru.thread_ts
        if body.get("response_type") == "in_channel":
            if ch is None:
                raise SlackError("channel_not_found")
            thread = self._resolve_thread(ch, thread_ts) if thread_ts else None
            self._bot_message(ch, text or "", blocks, attachments, thread)
            return
        eph = Ephemeral(
            channel=ru.channel,
            user=ru.user,
            text=text or "",
            blocks=blocks or [],
            thread_ts=thread_ts,
            message_ts=self._next_ts(),
            source="response_url",
        )
        self.ephemerals.append(eph)
        ru.last_ephemeral = eph

    def _find_ephemeral(self, ru: _ResponseUrl) -> Ephemeral | None:
        if ru.is_ephemeral and ru.message_ts:
            found = next((e for e in self.ephemerals if e.message_ts == ru.message_ts), None)
            if found is not None:
                return found
        return ru.last_ephemeral

    # ------------------------------------------------------------------ inbound payloads (to the bot)

    def sign(self, body: str, timestamp: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if timestamp is None else int(timestamp)
        base = f"v0:{ts}:{body}".encode()
        sig = "v0=" + hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sig}

    def _user_obj(self, user_id: str) -> dict[str, Any]:
        name = self._users.get(user_id, {}).get("name", user_id.lower())
        return {"id": user_id, "username": name, "name": name, "team_id": self.team_id}

    def _channel_name(self, channel_id: str) -> str:
        ch = self._lookup_channel(channel_id)
        if ch is None:
            return channel_id
        return "directmessage" if ch.is_im else ch.name

    def _channel_id(self, channel: str) -> str:
        ch = self._lookup_channel(channel)
        return ch.id if ch else channel

    def command_payload(
        self, text: str, *, user_id: str, channel_id: str = "C0OPS", command: str = "/ops"
    ) -> dict[str, str]:
        cid = self._channel_id(channel_id)
        return {
            "token": self.verification_token,
            "team_id": self.team_id,
            "team_domain": self.team_domain,
            "channel_id": cid,
            "channel_name": self._channel_name(cid),
            "user_id": user_id,
            "user_name": self._user_obj(user_id)["name"],
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": self._mint_response_url("commands", channel=cid, user=user_id),
            "trigger_id": self.mint_trigger(user_id),
        }

    def command_body(self, text: str, *, user_id: str, channel_id: str = "C0OPS", command: str = "/ops") -> str:
        return urlencode(self.command_payload(text, user_id=user_id, channel_id=channel_id, command=command))

    @staticmethod
    def _find_element(blocks: list[dict[str, Any]], action_id: str) -> tuple[str | None, dict[str, Any] | None]:
        for b in blocks:
            candidates: list[Any] = []
            if b.get("type") == "actions":
                candidates = list(b.get("elements") or [])
            elif b.get("type") == "section" and b.get("accessory"):
                candidates = [b["accessory"]]
            elif b.get("type") == "input" and b.get("element"):
                candidates = [b["element"]]
            for el in candidates:
                if isinstance(el, dict) and el.get("action_id") == action_id:
                    return b.get("block_id"), el
        return None, None

    def _action_entry(
        self, element: dict[str, Any] | None, *, action_id: str, block_id: str, value: str
    ) -> dict[str, Any]:
        el = element or {"type": "button", "text": {"type": "plain_text", "text": action_id}}
        entry: dict[str, Any] = {
            "action_id": action_id,
            "block_id": block_id,
            "type": el.get("type", "button"),
            "action_ts": self._next_ts(),
        }
        if entry["type"] == "button":
            entry["text"] = copy.deepcopy(el.get("text"))
            entry["value"] = value
            if "style" in el:
                entry["style"] = el["style"]
        else:
            options = list(el.get("options") or [])
            for g in el.get("option_groups") or []:
                options += g.get("options") or []
            option = next((o for o in options if o.get("value") == value), None)
            entry["selected_option"] = (
                copy.deepcopy(option) if option else {"text": {"type": "plain_text", "text": value}, "value": value}
            )
        return entry

    def action_payload(
        self,
        *,
        user_id: str,
        action_id: str,
        value: str,
        channel_id: str,
        message_ts: str,
        block_id: str | None = None,
        is_ephemeral: bool = False,
    ) -> dict[str, Any]:
        cid = self._channel_id(channel_id)
        msg = None if is_ephemeral else self._store.get(cid, {}).get(message_ts)
        eph = next((e for e in self.ephemerals if e.message_ts == message_ts), None) if is_ephemeral else None
        blocks = msg.blocks if msg else (eph.blocks if eph else [])
        found_block_id, element = self._find_element(blocks, action_id)
        bid = block_id or found_block_id or "b1"
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": cid,
            "is_ephemeral": is_ephemeral,
        }
        thread_ts = msg.thread_ts if msg else (eph.thread_ts if eph else None)
        if thread_ts:
            container["thread_ts"] = thread_ts
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": self._user_obj(user_id),
            "api_app_id": self.app_id,
            "token": self.verification_token,
            "container": container,
            "trigger_id": self.mint_trigger(user_id),
            "team": {"id": self.team_id, "domain": self.team_domain},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": cid, "name": self._channel_name(cid)},
            "state": {"values": {}},
            "response_url": self._mint_response_url(
                "actions",
                channel=cid,
                user=user_id,
                message_ts=message_ts,
                is_ephemeral=is_ephemeral,
                thread_ts=thread_ts,
            ),
            "actions": [self._action_entry(element, action_id=action_id, block_id=bid, value=value)],
        }
        if msg is not None:
            payload["message"] = {**self._api_message(msg), "team": self.team_id}
        return payload

    def action_body(
        self,
        *,
        user_id: str,
        action_id: str,
        value: str,
        channel_id: str,
        message_ts: str,
        block_id: str | None = None,
        is_ephemeral: bool = False,
    ) -> str:
        return urlencode(
            {
                "payload": json.dumps(
                    self.action_payload(
                        user_id=user_id,
                        action_id=action_id,
                        value=value,
                        channel_id=channel_id,
                        message_ts=message_ts,
                        block_id=block_id,
                        is_ephemeral=is_ephemeral,
                    )
                )
            }
        )

    @staticmethod
    def _state_values(values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for block_id, actions in values.items():
            out[block_id] = {}
            for action_id, v in actions.items():
                out[block_id][action_id] = (
                    copy.deepcopy(v) if isinstance(v, dict) else {"type": "plain_text_input", "value": v}
                )
        return out

    def view_submission_payload(
        self,
        *,
        user_id: str,
        view_id: str | None = None,
        callback_id: str,
        values: Mapping[str, Mapping[str, Any]],
        private_metadata: str = "",
    ) -> dict[str, Any]:
        """``values`` maps block_id -> action_id -> value dict (or a plain string for a text input)."""
        stored = self.views.get(view_id) if view_id else None
        if stored is not None:
            view = copy.deepcopy(stored)
        else:
            vid = view_id or self._next_id("V")
            view = self._make_view(
                {
                    "type": "modal",
                    "blocks": [],
                    "callback_id": callback_id,
                    "title": {"type": "plain_text", "text": "Modal"},
                },
                view_id=vid,
            )
        view["callback_id"] = callback_id
        if private_metadata or stored is None:
            view["private_metadata"] = private_metadata
        view["state"] = {"values": self._state_values(values)}
        return {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": self.team_domain},
            "user": self._user_obj(user_id),
            "api_app_id": self.app_id,
            "token": self.verification_token,
            "trigger_id": self.mint_trigger(user_id),
            "view": view,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }

    def view_submission_body(
        self,
        *,
        user_id: str,
        view_id: str | None = None,
        callback_id: str,
        values: dict[str, dict[str, Any]],
        private_metadata: str = "",
    ) -> str:
        return urlencode(
            {
                "payload": json.dumps(
                    self.view_submission_payload(
                        user_id=user_id,
                        view_id=view_id,
                        callback_id=callback_id,
                        values=values,
                        private_metadata=private_metadata,
                    )
                )
            }
        )

    def message_shortcut_payload(
        self, *, user_id: str, callback_id: str, channel_id: str, message_ts: str
    ) -> dict[str, Any]:
        cid = self._channel_id(channel_id)
        msg = self._store.get(cid, {}).get(message_ts)
        return {
            "type": "message_action",
            "token": self.verification_token,
            "action_ts": self._next_ts(),
            "team": {"id": self.team_id, "domain": self.team_domain},
            "user": self._user_obj(user_id),
            "channel": {"id": cid, "name": self._channel_name(cid)},
            "callback_id": callback_id,
            "trigger_id": self.mint_trigger(user_id),
            "message_ts": message_ts,
            "message": self._api_message(msg) if msg else {"type": "message", "ts": message_ts, "text": ""},
            "response_url": self._mint_response_url(
                "actions", channel=cid, user=user_id, message_ts=message_ts, thread_ts=msg.thread_ts if msg else None
            ),
            "api_app_id": self.app_id,
            "is_enterprise_install": False,
            "enterprise": None,
        }

    def message_shortcut_body(self, *, user_id: str, callback_id: str, channel_id: str, message_ts: str) -> str:
        return urlencode(
            {
                "payload": json.dumps(
                    self.message_shortcut_payload(
                        user_id=user_id, callback_id=callback_id, channel_id=channel_id, message_ts=message_ts
                    )
                )
            }
        )

    def shortcut_body(self, *, user_id: str, callback_id: str) -> str:
        """A global shortcut (no channel, no response_url)."""
        return urlencode(
            {
                "payload": json.dumps(
                    {
                        "type": "shortcut",
                        "token": self.verification_token,
                        "action_ts": self._next_ts(),
                        "team": {"id": self.team_id, "domain": self.team_domain},
                        "user": self._user_obj(user_id),
                        "callback_id": callback_id,
                        "trigger_id": self.mint_trigger(user_id),
                        "api_app_id": self.app_id,
                        "is_enterprise_install": False,
                        "enterprise": None,
                    }
                )
            }
        )

    def event_envelope(self, event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
        event = dict(event)
        event.setdefault("event_ts", event.get("ts") or self._next_ts())
        if event.get("type") in ("message", "app_mention") and not event.get("subtype"):
            ch = self._lookup_channel(event.get("channel"))
            if ch is not None and event.get("ts") and event["ts"] not in self._store.get(ch.id, {}):
                parent = event.get("thread_ts")
                parent_msg = self._store.get(ch.id, {}).get(parent) if parent else None
                self._store_message(
                    Message(
                        channel=ch.id,
                        ts=event["ts"],
                        text=event.get("text", ""),
                        user=event.get("user"),
                        bot_id=event.get("bot_id"),
                        blocks=list(event.get("blocks") or []),
                        thread_ts=(parent_msg.thread_ts or parent_msg.ts) if parent_msg else None,
                    )
                )
        return {
            "token": self.verification_token,
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):010d}{secrets.token_hex(2).upper()}",
            "event_time": int(time.time()),
            "event_context": f"4-{secrets.token_hex(12)}",
            "is_ext_shared_channel": False,
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
        }

    def event_body(self, event: dict[str, Any], *, event_id: str | None = None) -> str:
        return json.dumps(self.event_envelope(event, event_id=event_id))

    def app_mention_event(
        self, text: str, *, user_id: str, channel_id: str = "C0OPS", thread_ts: str | None = None
    ) -> dict[str, Any]:
        ts = self._next_ts()
        event: dict[str, Any] = {
            "client_msg_id": str(uuid.uuid4()),
            "type": "app_mention",
            "text": text,
            "user": user_id,
            "ts": ts,
            "team": self.team_id,
            "channel": self._channel_id(channel_id),
            "event_ts": ts,
            "blocks": [
                {
                    "type": "rich_text",
                    "block_id": secrets.token_hex(2),
                    "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}],
                }
            ],
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def app_mention_body(
        self, text: str, *, user_id: str, channel_id: str = "C0OPS", thread_ts: str | None = None
    ) -> str:
        return self.event_body(
            self.app_mention_event(text, user_id=user_id, channel_id=channel_id, thread_ts=thread_ts)
        )

    # ------------------------------------------------------------------ sending to the bot (HTTP mode)

    @staticmethod
    def _events_url(url: str) -> str:
        parts = urlsplit(url)
        if parts.path in ("", "/"):
            parts = parts._replace(path="/slack/events")
        return urlunsplit(parts)

    async def send(
        self,
        url: str,
        body: str,
        *,
        content_type: str | None = None,
        signed: bool = True,
        timestamp: int | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = 30.0,
    ) -> InboundResult:
        """POST a (signed) body to the bot. A bare base URL gets ``/slack/events`` appended."""
        if self._session is None:
            raise RuntimeError("SlackEmulator is not started")
        ctype = content_type or (
            "application/json" if body.lstrip().startswith("{") else "application/x-www-form-urlencoded"
        )
        hdrs = {"Content-Type": ctype, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}
        if signed:
            hdrs.update(self.sign(body, timestamp))
        hdrs.update(headers or {})
        started = time.perf_counter()
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with self._session.post(
            self._events_url(url), data=body.encode(), headers=hdrs, timeout=client_timeout
        ) as resp:
            text = await resp.text()
            status, resp_headers = resp.status, {k: v for k, v in resp.headers.items()}
        elapsed = time.perf_counter() - started
        parsed: Any = None
        if text.strip()[:1] in ("{", "["):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
        retry_num = int(hdrs.get("X-Slack-Retry-Num", hdrs.get("x-slack-retry-num", "0")) or 0)
        result = InboundResult(
            status=status,
            body_text=text,
            json=parsed,
            elapsed_seconds=elapsed,
            headers=resp_headers,
            retry_num=retry_num,
        )
        self.inbound.append(result)
        return result

    def _record_command_ack(self, channel_id: str, user_id: str, ack: Any) -> None:
        """Show a slash-command ack body the way Slack would (ephemeral unless in_channel)."""
        if ack is None or ack == "" or ack == {}:
            return
        body = ack if isinstance(ack, dict) else {"text": str(ack)}
        try:
            text, blocks, attachments = self._message_content(body)
        except SlackError as e:
            self.invalid_acks.append({"body": body, "error": e.error, **e.extra})
            return
        ch = self._lookup_channel(channel_id)
        if body.get("response_type") == "in_channel" and ch is not None:
            self._bot_message(ch, text or "", blocks, attachments, None)
        else:
            self.ephemerals.append(
                Ephemeral(
                    channel=channel_id,
                    user=user_id,
                    text=text or "",
                    blocks=blocks or [],
                    message_ts=self._next_ts(),
                    source="ack",
                )
            )

    async def send_command(
        self, url: str, text: str, user_id: str, channel_id: str = "C0OPS", command: str = "/ops", **kw: Any
    ) -> InboundResult:
        payload = self.command_payload(text, user_id=user_id, channel_id=channel_id, command=command)
        result = await self.send(url, urlencode(payload), **kw)
        result.trigger_id, result.response_url = payload["trigger_id"], payload["response_url"]
        if result.status == 200 and result.body_text.strip():
            self._record_command_ack(
                payload["channel_id"], user_id, result.json if isinstance(result.json, dict) else result.body_text
            )
        return result

    async def send_action(
        self,
        url: str,
        *,
        user_id: str,
        action_id: str,
        value: str,
        channel_id: str,
        message_ts: str,
        block_id: str | None = None,
        is_ephemeral: bool = False,
        **kw: Any,
    ) -> InboundResult:
        payload = self.action_payload(
            user_id=user_id,
            action_id=action_id,
            value=value,
            channel_id=channel_id,
            message_ts=message_ts,
            block_id=block_id,
            is_ephemeral=is_ephemeral,
        )
        result = await self.send(url, urlencode({"payload": json.dumps(payload)}), **kw)
        result.trigger_id, result.response_url = payload["trigger_id"], payload["response_url"]
        return result

    async def send_view_submission(
        self,
        url: str,
        *,
        user_id: str,
        callback_id: str,
        values: dict[str, dict[str, Any]],
        view_id: str | None = None,
        private_metadata: str = "",
        **kw: Any,
    ) -> InboundResult:
        payload = self.view_submission_payload(
            user_id=user_id, view_id=view_id, callback_id=callback_id, values=values, private_metadata=private_metadata
        )
        result = await self.send(url, urlencode({"payload": json.dumps(payload)}), **kw)
        result.trigger_id = payload["trigger_id"]
        if result.status == 200:
            self._apply_view_ack(user_id, payload["view"]["id"], result.json if result.body_text.strip() else None)
        return result

    async def send_message_shortcut(
        self, url: str, *, user_id: str, callback_id: str, channel_id: str, message_ts: str, **kw: Any
    ) -> InboundResult:
        payload = self.message_shortcut_payload(
            user_id=user_id, callback_id=callback_id, channel_id=channel_id, message_ts=message_ts
        )
        result = await self.send(url, urlencode({"payload": json.dumps(payload)}), **kw)
        result.trigger_id, result.response_url = payload["trigger_id"], payload["response_url"]
        return result

    async def send_event(
        self,
        url: str,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        max_retries: int = 0,
        retry_delays: tuple[float, ...] = (0.0, 0.0, 0.0),
        timeout: float = 3.0,
        **kw: Any,
    ) -> InboundResult:
        """Deliver an event like Slack: a non-2xx answer or no answer within ``timeout`` is retried up
        to ``max_retries`` times (Slack: 3, after ~0 s, 1 min, 5 min; compressed by ``retry_delays``),
        with ``X-Slack-Retry-Num``/``X-Slack-Retry-Reason``; ``X-Slack-No-Retry: 1`` stops retries.
        Returns the last attempt's result (all attempts are in ``inbound``)."""
        body = self.event_body(event, event_id=event_id)
        attempt = 0
        reason = ""
        extra_headers = dict(kw.pop("headers", None) or {})
        while True:
            headers = dict(extra_headers)
            if attempt:
                headers.update({"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": reason})
            try:
                result = await self.send(url, body, headers=headers, timeout=timeout, **kw)
                ok = 200 <= result.status < 300
                reason = "http_error"
            except TimeoutError:
                result = InboundResult(status=0, body_text="", json=None, elapsed_seconds=timeout, retry_num=attempt)
                self.inbound.append(result)
                ok, reason = False, "http_timeout"
            except aiohttp.ClientConnectionError:
                result = InboundResult(status=0, body_text="", json=None, elapsed_seconds=0.0, retry_num=attempt)
                self.inbound.append(result)
                ok, reason = False, "connection_failed"
            if ok or attempt >= max_retries or result.headers.get("X-Slack-No-Retry") == "1":
                return result
            delay = retry_delays[min(attempt, len(retry_delays) - 1)] if retry_delays else 0.0
            attempt += 1
            await asyncio.sleep(delay)

    async def send_app_mention(
        self, url: str, text: str, *, user_id: str, channel_id: str = "C0OPS", thread_ts: str | None = None, **kw: Any
    ) -> InboundResult:
        event = self.app_mention_event(text, user_id=user_id, channel_id=channel_id, thread_ts=thread_ts)
        return await self.send_event(url, event, **kw)

    def _apply_view_ack(self, user_id: str, view_id: str, ack: Any) -> None:
        """Apply a view_submission ack (``response_action``) to the user's modal stack."""
        stack = self.view_stacks.setdefault(user_id, [])
        if not isinstance(ack, dict) or not ack:
            if view_id in stack:
                stack.remove(view_id)
            return
        action = ack.get("response_action")
        if action == "errors":
            self.view_errors[view_id] = dict(ack.get("errors") or {})
            return
        if action == "clear":
            stack.clear()
            return
        if action in ("update", "push"):
            errors = validate_view(ack.get("view"), surface="modal")
            if errors:
                self.invalid_acks.append({"body": ack, "error": "invalid_arguments", "errors": errors})
                return
            if action == "update":
                current = self.views.get(view_id, {})
                stored = self._make_view(
                    ack["view"],
                    view_id=view_id,
                    root_view_id=current.get("root_view_id"),
                    previous_view_id=current.get("previous_view_id"),
                )
                self.views[view_id] = stored
            else:
                if len(stack) >= 3:
                    self.invalid_acks.append({"body": ack, "error": "push_limit_reached"})
                    return
                stored = self._make_view(
                    ack["view"], root_view_id=stack[0] if stack else None, previous_view_id=stack[-1] if stack else None
                )
                self.views[stored["id"]] = stored
                stack.append(stored["id"])
            return
        self.invalid_acks.append({"body": ack, "error": "unknown_response_action"})

    # ------------------------------------------------------------------ Socket Mode

    @property
    def socket_connections(self) -> int:
        return sum(1 for ws in self._sockets if not ws.closed)

    async def _handle_link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket")
        if ticket is not None:
            if ticket not in self._tickets:
                return web.Response(status=401, text="invalid ticket")
            self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        debug = {
            "host": "applink-emulator",
            "build_number": 1,
            "approximate_connection_time": 18060,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if self.socket_connections >= self.max_socket_connections:
            await ws.send_json({"type": "disconnect", "reason": "too_many_websockets", "debug_info": debug})
            await ws.close()
            return ws
        self._sockets.append(ws)
        try:
            await ws.send_json(
                {
                    "type": "hello",
                    "num_connections": self.socket_connections,
                    "debug_info": debug,
                    "connection_info": {"app_id": self.app_id},
                }
            )
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_socket_text(msg.data)
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
        return ws

    def _on_socket_text(self, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            self.socket_frames.append(data)
            return
        if isinstance(frame, dict) and "envelope_id" in frame:
            self.socket_acks.append(frame)
            fut = self._pending_acks.get(frame["envelope_id"])
            if fut is not None and not fut.done():
                fut.set_result(frame)
        else:
            self.socket_frames.append(frame)

    async def wait_socket_connected(self, timeout: float = 5.0, count: int = 1) -> None:
        await self.wait_for(
            lambda: self.socket_connections >= count, timeout, message=f"{count} socket mode connection(s)"
        )

    async def socket_disconnect(self, reason: str = "refresh_requested", *, close: bool = False) -> None:
        """Send ``{"type":"disconnect","reason":...}`` to every client (then close them if ``close``)."""
        for ws in list(self._sockets):
            if ws.closed:
                continue
            await ws.send_json(
                {"type": "disconnect", "reason": reason, "debug_info": {"host": "wss-emulator.slack.com"}}
            )
            if close:
                await ws.close()

    @staticmethod
    def _default_accepts(envelope_type: str, payload: Mapping[str, Any]) -> bool:
        if envelope_type == "slash_commands":
            return True
        if envelope_type == "interactive":
            return payload.get("type") in ("block_actions", "view_submission", "block_suggestion")
        return False

    async def socket_send(
        self,
        envelope_type: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        timeout: float = 3.0,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
    ) -> dict[str, Any] | None:
        """Push one envelope to a connected client (round robin) and wait for its ack.

        Returns the ack frame (``{"envelope_id", "payload"?}``) or None when none came within
        ``timeout``. AssertionError if no client is connected within ``timeout``."""
        await self.wait_for(lambda: self.socket_connections > 0, timeout, message="a socket mode connection")
        live = [ws for ws in self._sockets if not ws.closed]
        ws = live[self._socket_rr % len(live)]
        self._socket_rr += 1
        envelope: dict[str, Any] = {
            "envelope_id": str(uuid.uuid4()),
            "type": envelope_type,
            "payload": payload,
            "accepts_response_payload": (
                self._default_accepts(envelope_type, payload)
                if accepts_response_payload is None
                else accepts_response_payload
            ),
        }
        if envelope_type == "events_api" or retry_attempt is not None:
            envelope["retry_attempt"] = retry_attempt or 0
            envelope["retry_reason"] = retry_reason or ""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending_acks[envelope["envelope_id"]] = fut
        self.socket_envelopes.append(envelope)
        try:
            await ws.send_json(envelope)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            self._pending_acks.pop(envelope["envelope_id"], None)

    async def socket_command(
        self, text: str, *, user_id: str, channel_id: str = "C0OPS", command: str = "/ops", timeout: float = 3.0
    ) -> dict[str, Any] | None:
        payload = self.command_payload(text, user_id=user_id, channel_id=channel_id, command=command)
        ack = await self.socket_send("slash_commands", dict(payload), timeout=timeout)
        if ack is not None:
            self._record_command_ack(payload["channel_id"], user_id, ack.get("payload"))
        return ack

    async def socket_action(
        self,
        *,
        user_id: str,
        action_id: str,
        value: str,
        channel_id: str,
        message_ts: str,
        block_id: str | None = None,
        is_ephemeral: bool = False,
        timeout: float = 3.0,
    ) -> dict[str, Any] | None:
        payload = self.action_payload(
            user_id=user_id,
            action_id=action_id,
            value=value,
            channel_id=channel_id,
            message_ts=message_ts,
            block_id=block_id,
            is_ephemeral=is_ephemeral,
        )
        return await self.socket_send("interactive", payload, timeout=timeout)

    async def socket_view_submission(
        self,
        *,
        user_id: str,
        callback_id: str,
        values: dict[str, dict[str, Any]],
        view_id: str | None = None,
        private_metadata: str = "",
        timeout: float = 3.0,
    ) -> dict[str, Any] | None:
        payload = self.view_submission_payload(
            user_id=user_id, view_id=view_id, callback_id=callback_id, values=values, private_metadata=private_metadata
        )
        ack = await self.socket_send("interactive", payload, timeout=timeout)
        if ack is not None:
            self._apply_view_ack(user_id, payload["view"]["id"], ack.get("payload"))
        return ack

    async def socket_event(
        self, event: dict[str, Any], *, event_id: str | None = None, max_retries: int = 0, timeout: float = 3.0
    ) -> dict[str, Any] | None:
        """Deliver an events_api envelope; redeliver unacked ones with retry_attempt + 1."""
        envelope = self.event_envelope(event, event_id=event_id)
        for attempt in range(max_retries + 1):
            ack = await self.socket_send(
                "events_api",
                envelope,
                timeout=timeout,
                retry_attempt=attempt,
                retry_reason="timeout" if attempt else "",
            )
            if ack is not None:
                return ack
        return None
