"""A strict Trello REST API emulator for tests: boards, lists, labels, members and cards.

One aiohttp server on 127.0.0.1 (port 0, read back) answering the part of ``https://api.trello.com/1/``
a chat-ops tracker uses. Facts come from the reference sheet (``reference/operate-monitor-plan-apis.md``
section 6.2) and Trello's REST docs (api-group-cards, api-group-boards, the rate-limits guide).

Use::

    async with TrelloEmulator() as emu:
        board = emu.add_board("Ops")                    # lists "To Do", "Doing", "Done"
        alice = emu.add_member("alice", board=board)
        t = TrelloTracker(key=emu.key, token=emu.token, board=board.id, todo_list="To Do",
                          done_list="Done", users={"U0ALICE": alice.id}, timeout=2, base_url=emu.url)

Routes (the names that fault injection and ``seen`` use), all under ``/1/``:

* ``me``: ``GET /members/me``;
* ``board``: ``GET /boards/{id}``; ``lists``: ``GET /boards/{id}/lists`` (``filter`` open (default),
  closed, all); ``labels``: ``GET /boards/{id}/labels`` (``limit``, default 50 as on Trello);
  ``create_label``: ``POST /boards/{id}/labels`` (``name``, ``color``);
* ``cards``: ``GET /boards/{id}/cards`` and ``/boards/{id}/cards/{filter}`` (``visible`` (default):
  open cards of open lists; ``open``; ``closed``; ``all``);
* ``card``: ``GET /cards/{id}``; ``create_card``: ``POST /cards``; ``update_card``: ``PUT /cards/{id}``.

A board or card is found by its 24-hex id or its 8-character shortLink, as on Trello. ``fields``
(``all`` or a comma list; ``id`` always comes back) and ``members=true`` + ``member_fields`` shape the
answer. Card parameters may come in the query or as a JSON body (Trello takes both); ``idMembers`` and
``idLabels`` are comma-separated strings (JSON lists are accepted too).

Strict where Trello is strict:

* ``key`` and ``token`` must be *query* parameters (the emulator ignores them in a body or in headers):
  no or another key -> 401 ``invalid key``; no token -> 401 ``unauthorized permission requested``;
  another token -> 401 ``invalid token``. Error bodies are plain text, as on Trello (429 excepted);
* an id that is neither 24 hex digits nor a shortLink -> 400 ``invalid id``; an unknown one -> 404
  ``The requested resource was not found.``;
* ``POST /cards`` needs ``idList`` (400 ``invalid value for idList``); ``idMembers`` must be members of
  the board and ``idLabels`` labels of the board (400 ``invalid value for idMembers``/``idLabels``);
  a label ``color`` must be one of Trello's colours (400 ``invalid value for color``); success is
  **200** with the card (not 201);
* ``PUT /cards/{id}``: ``idList`` must be an open list of the card's board; ``closed`` is ``true`` or
  ``false``; ``pos`` is ``top``, ``bottom`` or a number.

Emulator choices where Trello leaves room: card ids start with the creation time in hex (as Trello's
ids do) from ``emu.now`` (a virtual clock, ``advance(s)`` moves it); ``dateLastActivity`` is set on
every change; ``pos`` is kept but card order in answers is by list, then position.

Fault injection: ``fail_next(route, status=500, count=1, body=None, retry_after=None)`` (429 answers
Trello's JSON ``{"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}`` and, when
``retry_after`` is given, a ``Retry-After`` header), ``slow(route, seconds, count=None)``,
``down()``/``up()`` (connection refused, state kept). Records: ``requests`` (method, path, query,
body, status, route), ``server_errors``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

__all__ = ["EmuBoard", "EmuCard", "EmuLabel", "EmuList", "EmuMember", "Seen", "TrelloEmulator"]

Json = dict[str, Any]

_HEX24 = re.compile(r"^[0-9a-f]{24}$")
_SHORT = re.compile(r"^[A-Za-z0-9]{8}$")
COLORS = frozenset(
    c + suffix
    for c in ("green", "yellow", "orange", "red", "purple", "blue", "sky", "lime", "pink", "black")
    for suffix in ("", "_dark", "_light")
)
NOT_FOUND = "The requested resource was not found."


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# ----------------------------------------------------------------------------------------------
# Records visible to tests
# ----------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One HTTP request as the emulator received and answered it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0
    route: str = ""


@dataclass
class EmuMember:
    id: str
    username: str
    full_name: str


@dataclass
class EmuList:
    id: str
    name: str
    board_id: str
    pos: float
    closed: bool = False


@dataclass
class EmuLabel:
    id: str
    board_id: str
    name: str
    color: str | None


@dataclass
class EmuBoard:
    id: str
    short_link: str
    name: str
    member_ids: list[str] = field(default_factory=list)
    closed: bool = False


@dataclass
class EmuCard:
    id: str
    short_link: str
    board_id: str
    list_id: str
    name: str
    desc: str = ""
    member_ids: list[str] = field(default_factory=list)
    label_ids: list[str] = field(default_factory=list)
    closed: bool = False
    pos: float = 65535.0
    last_activity: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class _Fault:
    status: int
    body: str | None
    retry_after: int | None
    remaining: int


@dataclass
class _Slow:
    seconds: float
    remaining: int | None


class _Error(Exception):
    """A Trello-shaped error: plain text, or JSON for 429."""

    def __init__(self, status: int, text: str, *, retry_after: int | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        if self.status == 429:
            body = {"error": "API_TOKEN_LIMIT_EXCEEDED", "message": self.text}
            return web.json_response(body, status=429, headers=headers)
        return web.Response(status=self.status, text=self.text, content_type="text/plain", headers=headers)


Handler = Callable[[web.Request, list[str], dict[str, Any]], Awaitable[Any]]


class TrelloEmulator:
    """See the module docstring. Use ``async with TrelloEmulator() as emu:``."""

    def __init__(
        self,
        *,
        key: str = "0123456789abcdef0123456789abcdef",
        token: str = "f" * 64,
        me: str = "opsloopbot",
        start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    ) -> None:
        self.key = key
        self.token = token
        self.now = start
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._down = False
        self._counter = itertools.count(1)

        self.members: dict[str, EmuMember] = {}
        self.boards: dict[str, EmuBoard] = {}
        self.lists: dict[str, EmuList] = {}
        self.labels: dict[str, EmuLabel] = {}
        self.cards: dict[str, EmuCard] = {}
        self.me = self.add_member(me, "opsloop bot")

        self.requests: list[Seen] = []
        self.server_errors: list[str] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._slow: dict[str, _Slow] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> TrelloEmulator:
        """Listen on 127.0.0.1 on a free port (read back into ``port``)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown: handlers held by ``slow`` are cut off instead of delaying ``stop``.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> TrelloEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The API base, as ``https://api.trello.com/1/`` is on Trello."""
        if not self.port:
            raise RuntimeError("TrelloEmulator is not started")
        return f"http://127.0.0.1:{self.port}/1/"

    def advance(self, seconds: float) -> None:
        """Move the virtual clock (card creation times, ``dateLastActivity``)."""
        self.now += timedelta(seconds=seconds)

    # ------------------------------------------------------------------ set-up

    def _new_id(self) -> str:
        # Like Trello: the first 4 bytes are the creation time, so ids sort by age.
        return f"{int(self.now.timestamp()):08x}{next(self._counter):016x}"

    def _short_link(self) -> str:
        alphabet = string.ascii_letters + string.digits
        while True:
            link = "".join(secrets.choice(alphabet) for _ in range(8))
            if not _HEX24.match(link) and all(c.short_link != link for c in self.cards.values()):
                return link

    def add_member(self, username: str, full_name: str | None = None, *, board: EmuBoard | None = None) -> EmuMember:
        """A Trello member (made a member of ``board`` when given)."""
        m = EmuMember(self._new_id(), username, full_name or username.title())
        self.members[m.id] = m
        if board is not None:
            board.member_ids.append(m.id)
        return m

    def add_board(self, name: str = "Ops", lists: tuple[str, ...] = ("To Do", "Doing", "Done")) -> EmuBoard:
        """A board the bot's member belongs to, with open ``lists`` in that order."""
        b = EmuBoard(self._new_id(), self._short_link(), name, member_ids=[self.me.id])
        self.boards[b.id] = b
        for name_ in lists:
            self.add_list(b, name_)
        return b

    def add_list(self, board: EmuBoard, name: str, *, closed: bool = False) -> EmuList:
        pos = 16384.0 * (1 + sum(1 for x in self.lists.values() if x.board_id == board.id))
        lst = EmuList(self._new_id(), name, board.id, pos, closed)
        self.lists[lst.id] = lst
        return lst

    def add_label(self, board: EmuBoard, name: str, color: str | None = "red") -> EmuLabel:
        lab = EmuLabel(self._new_id(), board.id, name, color)
        self.labels[lab.id] = lab
        return lab

    def add_card(
        self,
        board: EmuBoard,
        list_name: str,
        name: str,
        *,
        desc: str = "",
        members: tuple[EmuMember, ...] = (),
        labels: tuple[EmuLabel, ...] = (),
        closed: bool = False,
    ) -> EmuCard:
        """Seed a card in the list called ``list_name`` of ``board``."""
        lst = self.list_named(board, list_name)
        return self._store_card(
            board.id, lst.id, name, desc, [m.id for m in members], [x.id for x in labels], closed=closed
        )

    def list_named(self, board: EmuBoard, name: str) -> EmuList:
        return next(x for x in self.lists.values() if x.board_id == board.id and x.name == name)

    def card(self, ref: str) -> EmuCard:
        """A card by id or shortLink (KeyError if none)."""
        for c in self.cards.values():
            if ref in (c.id, c.short_link):
                return c
        raise KeyError(ref)

    def _store_card(
        self,
        board_id: str,
        list_id: str,
        name: str,
        desc: str,
        member_ids: list[str],
        label_ids: list[str],
        *,
        closed: bool = False,
        pos: float | None = None,
    ) -> EmuCard:
        same = [c.pos for c in self.cards.values() if c.list_id == list_id]
        c = EmuCard(
            id=self._new_id(),
            short_link=self._short_link(),
            board_id=board_id,
            list_id=list_id,
            name=name,
            desc=desc,
            member_ids=member_ids,
            label_ids=label_ids,
            closed=closed,
            pos=pos if pos is not None else (max(same) + 65536 if same else 65535.0),
            last_activity=self.now,
        )
        self.cards[c.id] = c
        return c

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        route: str = "*",
        *,
        status: int = 500,
        count: int = 1,
        body: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next ``count`` requests to ``route`` answer ``status`` (429: Trello's rate-limit JSON)."""
        self._faults.setdefault(route, []).append(_Fault(status, body, retry_after, count))

    def slow(self, route: str, seconds: float, count: int | None = None) -> None:
        """Delay the answers of ``route`` (``"*"``: every route) by ``seconds``."""
        self._slow[route] = _Slow(seconds, count)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._slow.clear()

    async def down(self) -> None:
        """Stop listening (connection refused); requests on kept-alive connections are dropped."""
        self._down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def up(self) -> None:
        """Listen again on the same port; all state is kept."""
        self._down = False
        if self._site is None and self._runner is not None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

    def _take_fault(self, route: str) -> _Fault | None:
        for key in (route, "*"):
            faults = self._faults.get(key, [])
            if faults:
                f = faults[0]
                f.remaining -= 1
                if f.remaining <= 0:
                    faults.pop(0)
                return f
        return None

    def _take_slow(self, route: str) -> _Slow | None:
        for key in (route, "*"):
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

    def seen(self, route: str | None = None, method: str | None = None) -> list[Seen]:
        """Logged requests, optionally only those of one route and/or method."""
        return [
            s for s in self.requests if (route is None or s.route == route) and (method is None or s.method == method)
        ]

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._down:
            # Kept-alive connections survive a closed listening socket; cut them like a dead host.
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()
        raw_path = request.raw_path.split("?", 1)[0]
        query = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        body: Any = None
        raw = await request.read()
        if raw:
            if request.content_type == "application/json":
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
            elif request.content_type == "application/x-www-form-urlencoded":
                body = dict(parse_qsl(raw.decode(), keep_blank_values=True))
            else:
                body = raw.decode("utf-8", "replace")
        seen = Seen(request.method, raw_path, query, body)
        self.requests.append(seen)
        try:
            self._check_auth(query)
            if isinstance(body, str):
                raise _Error(400, "Invalid JSON")  # what Trello's parser answers (as plain text)
            route, handler, parts = self._resolve(request.method, raw_path)
            seen.route = route
            slow = self._take_slow(route)
            if slow is not None:
                await asyncio.sleep(slow.seconds)
            fault = self._take_fault(route)
            if fault is not None:
                text = fault.body or ("Rate limit exceeded" if fault.status == 429 else f"emulated {fault.status}")
                raise _Error(fault.status, text, retry_after=fault.retry_after)
            # Trello reads parameters from the query or the body; the body wins.
            params: dict[str, Any] = {k: v for k, v in query.items() if k not in ("key", "token")}
            if isinstance(body, dict):
                params.update(body)
            result = await handler(request, parts, params)
            response: web.StreamResponse = web.json_response(result)
        except _Error as err:
            response = err.response()
        except Exception as err:  # an emulator bug: answer 500 and keep it for the test to see
            self.server_errors.append(f"{request.method} {raw_path}: {type(err).__name__}: {err}")
            response = web.Response(status=500, text="emulator error")
        seen.status = response.status
        return response

    def _check_auth(self, query: Mapping[str, str]) -> None:
        if query.get("key") != self.key:
            raise _Error(401, "invalid key")
        if "token" not in query:
            raise _Error(401, "unauthorized permission requested")
        if query["token"] != self.token:
            raise _Error(401, "invalid token")

    def _resolve(self, method: str, raw_path: str) -> tuple[str, Handler, list[str]]:
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        if not parts or parts[0] != "1":
            raise _Error(404, f"Cannot {method} {raw_path}")
        p = parts[1:]
        n = len(p)
        table: list[tuple[str, str, bool, Handler]] = [
            ("GET", "me", p == ["members", "me"], self._get_me),
            ("GET", "board", n == 2 and p[0] == "boards", self._get_board),
            ("GET", "lists", n == 3 and p[0] == "boards" and p[2] == "lists", self._get_lists),
            ("GET", "labels", n == 3 and p[0] == "boards" and p[2] == "labels", self._get_labels),
            ("POST", "create_label", n == 3 and p[0] == "boards" and p[2] == "labels", self._post_label),
            ("GET", "cards", n in (3, 4) and p[0] == "boards" and p[2] == "cards", self._get_board_cards),
            ("GET", "card", n == 2 and p[0] == "cards", self._get_card),
            ("PUT", "update_card", n == 2 and p[0] == "cards", self._put_card),
            ("POST", "create_card", p == ["cards"], self._post_card),
        ]
        for m, name, ok, handler in table:
            if ok and m == method:
                return name, handler, p
        raise _Error(404, f"Cannot {method} {raw_path}")

    # ------------------------------------------------------------------ lookups

    def _board(self, ref: str) -> EmuBoard:
        if not (_HEX24.match(ref) or _SHORT.match(ref)):
            raise _Error(400, "invalid id")
        for b in self.boards.values():
            if ref in (b.id, b.short_link) and self.me.id in b.member_ids:
                return b
        raise _Error(404, NOT_FOUND)

    def _card(self, ref: str) -> EmuCard:
        if not (_HEX24.match(ref) or _SHORT.match(ref)):
            raise _Error(400, "invalid id")
        for c in self.cards.values():
            if ref in (c.id, c.short_link) and self.me.id in self.boards[c.board_id].member_ids:
                return c
        raise _Error(404, NOT_FOUND)

    # ------------------------------------------------------------------ representations

    @staticmethod
    def _project(full: Json, fields: str | None, default: str = "all") -> Json:
        chosen = (fields or default).split(",")
        if "all" in chosen:
            return full
        return {"id": full["id"], **{k: full[k] for k in chosen if k in full}}

    def _member_json(self, m: EmuMember, fields: str | None) -> Json:
        full = {"id": m.id, "username": m.username, "fullName": m.full_name, "initials": m.full_name[:1]}
        return self._project(full, fields, "fullName,initials,username")

    def _board_json(self, b: EmuBoard) -> Json:
        return {
            "id": b.id,
            "name": b.name,
            "desc": "",
            "closed": b.closed,
            "shortLink": b.short_link,
            "shortUrl": f"https://trello.com/b/{b.short_link}",
            "url": f"https://trello.com/b/{b.short_link}/{_slug(b.name)}",
        }

    def _list_json(self, lst: EmuList) -> Json:
        return {"id": lst.id, "name": lst.name, "closed": lst.closed, "idBoard": lst.board_id, "pos": lst.pos}

    def _label_json(self, lab: EmuLabel) -> Json:
        uses = sum(1 for c in self.cards.values() if lab.id in c.label_ids)
        return {"id": lab.id, "idBoard": lab.board_id, "name": lab.name, "color": lab.color, "uses": uses}

    def _card_json(self, c: EmuCard, params: Mapping[str, Any]) -> Json:
        number = 1 + sorted(x.id for x in self.cards.values() if x.board_id == c.board_id).index(c.id)
        full: Json = {
            "id": c.id,
            "name": c.name,
            "desc": c.desc,
            "closed": c.closed,
            "idBoard": c.board_id,
            "idList": c.list_id,
            "idMembers": list(c.member_ids),
            "idLabels": list(c.label_ids),
            "labels": [self._label_json(self.labels[i]) for i in c.label_ids if i in self.labels],
            "pos": c.pos,
            "shortLink": c.short_link,
            "shortUrl": f"https://trello.com/c/{c.short_link}",
            "url": f"https://trello.com/c/{c.short_link}/{number}-{_slug(c.name)}",
            "dateLastActivity": _iso(c.last_activity),
            "due": None,
            "badges": {"comments": 0},
        }
        out = self._project(full, params.get("fields"))
        if str(params.get("members", "false")).lower() == "true":
            out["members"] = [
                self._member_json(self.members[i], params.get("member_fields"))
                for i in c.member_ids
                if i in self.members
            ]
        return out

    # ------------------------------------------------------------------ handlers

    async def _get_me(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        return self._member_json(self.me, params.get("fields", "all"))

    async def _get_board(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        return self._project(self._board_json(self._board(p[1])), params.get("fields"))

    async def _get_lists(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        board = self._board(p[1])
        which = params.get("filter", "open")
        if which not in ("open", "closed", "all", "none"):
            raise _Error(400, "invalid value for filter")
        lists = sorted((x for x in self.lists.values() if x.board_id == board.id), key=lambda x: x.pos)
        keep: Callable[[EmuList], bool] = {
            "open": lambda x: not x.closed,
            "closed": lambda x: x.closed,
            "all": lambda x: True,
            "none": lambda x: False,
        }[which]
        return [self._project(self._list_json(x), params.get("fields")) for x in lists if keep(x)]

    async def _get_labels(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        board = self._board(p[1])
        try:
            limit = int(params.get("limit", 50))
        except ValueError:
            raise _Error(400, "invalid value for limit") from None
        if not 0 <= limit <= 1000:
            raise _Error(400, "invalid value for limit")
        labels = [x for x in self.labels.values() if x.board_id == board.id]
        return [self._project(self._label_json(x), params.get("fields")) for x in labels[:limit]]

    async def _post_label(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        board = self._board(p[1])
        name = params.get("name")
        if not isinstance(name, str):
            raise _Error(400, "invalid value for name")
        color = params.get("color")
        if color in ("", "null"):
            color = None
        if color is not None and color not in COLORS:
            raise _Error(400, "invalid value for color")
        return self._label_json(self.add_label(board, name, color))

    async def _get_board_cards(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        board = self._board(p[1])
        which = p[3] if len(p) == 4 else params.get("filter", "visible")
        open_lists = {x.id for x in self.lists.values() if x.board_id == board.id and not x.closed}
        keep: dict[str, Callable[[EmuCard], bool]] = {
            "visible": lambda c: not c.closed and c.list_id in open_lists,
            "open": lambda c: not c.closed,
            "closed": lambda c: c.closed,
            "all": lambda c: True,
            "none": lambda c: False,
        }
        if which not in keep:
            raise _Error(400, "invalid value for filter")
        order = {x.id: x.pos for x in self.lists.values()}
        cards = sorted(
            (c for c in self.cards.values() if c.board_id == board.id and keep[which](c)),
            key=lambda c: (order.get(c.list_id, 0.0), c.pos),
        )
        return [self._card_json(c, params) for c in cards]

    async def _get_card(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        return self._card_json(self._card(p[1]), params)

    def _ids(self, value: Any, valid: set[str], what: str) -> list[str]:
        if value is None or value == "":
            return []
        items = value if isinstance(value, list) else str(value).split(",")
        ids = [str(i).strip() for i in items if str(i).strip()]
        if any(i not in valid for i in ids):
            raise _Error(400, f"invalid value for {what}")
        return list(dict.fromkeys(ids))

    def _pos(self, value: Any, list_id: str, current: EmuCard | None = None) -> float:
        others = [c.pos for c in self.cards.values() if c.list_id == list_id and c is not current]
        if value in (None, "bottom"):
            return max(others) + 65536 if others else 65535.0
        if value == "top":
            return min(others) / 2 if others else 65535.0
        try:
            pos = float(value)
        except (TypeError, ValueError):
            raise _Error(400, "invalid value for pos") from None
        if pos <= 0:
            raise _Error(400, "invalid value for pos")
        return pos

    async def _post_card(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        list_id = params.get("idList")
        lst = self.lists.get(str(list_id)) if list_id else None
        if lst is None or lst.closed or self.me.id not in self.boards[lst.board_id].member_ids:
            raise _Error(400, "invalid value for idList")
        board = self.boards[lst.board_id]
        members = self._ids(params.get("idMembers"), set(board.member_ids), "idMembers")
        board_labels = {x.id for x in self.labels.values() if x.board_id == board.id}
        labels = self._ids(params.get("idLabels"), board_labels, "idLabels")
        name = params.get("name", "")
        desc = params.get("desc", "")
        if not isinstance(name, str) or not isinstance(desc, str):
            raise _Error(400, "invalid value for name")
        if len(desc) > 16384:
            raise _Error(400, "invalid value for desc")
        card = self._store_card(board.id, lst.id, name, desc, members, labels, pos=self._pos(params.get("pos"), lst.id))
        return self._card_json(card, {})

    async def _put_card(self, request: web.Request, p: list[str], params: dict[str, Any]) -> Any:
        card = self._card(p[1])
        board = self.boards[card.board_id]
        if "idList" in params:
            lst = self.lists.get(str(params["idList"]))
            if lst is None or lst.closed or lst.board_id != card.board_id:
                raise _Error(400, "invalid value for idList")
            if lst.id != card.list_id and "pos" not in params:
                card.pos = self._pos("bottom", lst.id, card)
            card.list_id = lst.id
        if "pos" in params:
            card.pos = self._pos(params["pos"], card.list_id, card)
        if "idMembers" in params:
            card.member_ids = self._ids(params["idMembers"], set(board.member_ids), "idMembers")
        if "idLabels" in params:
            valid = {x.id for x in self.labels.values() if x.board_id == board.id}
            card.label_ids = self._ids(params["idLabels"], valid, "idLabels")
        if "closed" in params:
            closed = params["closed"]
            if closed not in (True, False, "true", "false"):
                raise _Error(400, "invalid value for closed")
            card.closed = closed in (True, "true")
        if "name" in params:
            if not isinstance(params["name"], str) or not params["name"]:
                raise _Error(400, "invalid value for name")
            card.name = params["name"]
        if "desc" in params:
            card.desc = str(params["desc"])
        card.last_activity = self.now
        return self._card_json(card, {})


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
