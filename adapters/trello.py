"""Trello through its REST API with aiohttp: the `Tracker` port (name "trello").

Plain REST rather than py-trello: py-trello hard-codes https://api.trello.com/1/, wants the token as
`api_secret`, and raises on every non-200 status; here the base URL is configurable (an emulator in
tests) and errors are mapped from Trello's own answers. Auth is Trello's: `key` and `token` as query
parameters on every request (they never appear in error messages).

Choices, where Trello leaves room:

* The item key is the card's **shortLink** (`AbCd1234`), what people paste from
  `https://trello.com/c/AbCd1234/...`. `get`/`assign`/`close` also take the card's full id or a pasted
  card URL. A card of another board counts as not found: the bot only touches its own board.
* The board, and the `todo_list`/`done_list` (each a name or an id), are resolved once and cached; a
  renamed list needs a restart. `list` reads the board's open lists on every call, so cards of an
  archived list never show.
* Done = the card is in the done list, or archived (closed). `close` moves it to the top of the done
  list and is idempotent.
* Assignee = the card's members: `create`/`assign` set `idMembers` to the one mapped member (assigning
  *replaces* the members, so the item has one owner, as a plan item does). Reading maps members back to
  Slack ids; a member that no Slack user maps to shows as `trello:<username>`.
* `critical` = a red label named "critical" (created on the board the first time it is needed).
* The reporter is written as the last line of the description (`Opened from Slack by <@U…> (opsloop)`),
  since every card is created by the bot's own member; reading parses it back ("" when absent).
* `created_at` comes from the card id (its first 8 hex digits are the creation time, as Trello
  documents); `closed_at` of a done card is its `dateLastActivity` (Trello keeps no "moved at" field on
  the card), `closed_by` is only known to the `close` call that did it.
* `list` is newest first; `mine` = open cards with the caller's mapped member.
* No automatic retry: a 429 (Trello allows 100 requests per 10 s per token) is reported at once, with
  Retry-After when Trello sends it; the chat user can simply ask again.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    ItemStatus,
    ListFilter,
    NewItem,
    PlanItem,
)

TOOL = "Trello"
DEFAULT_URL = "https://api.trello.com/1/"
CRITICAL = "critical"
_CARD_FIELDS = "name,desc,closed,idBoard,idList,idMembers,idLabels,labels,shortLink,shortUrl,dateLastActivity"
_MEMBER_FIELDS = "username"
_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")
_SHORT = re.compile(r"^[A-Za-z0-9]{8}$")
_FOOTER = "Opened from Slack by <@{user}> (opsloop)"
_FOOTER_RE = re.compile(r"Opened from Slack by <@([A-Z0-9]+)> \(opsloop\)\s*$")


@dataclass(frozen=True)
class _Board:
    """The configured board as resolved once: its id and the two lists that matter."""

    id: str
    name: str
    todo: str
    done: str


class TrelloTracker:
    """`bot.ports.Tracker` for one Trello board."""

    name = "trello"

    def __init__(
        self,
        *,
        key: str,
        token: str,
        board: str,
        todo_list: str,
        done_list: str,
        users: Mapping[str, str],
        timeout: float,
        base_url: str = DEFAULT_URL,
        session: aiohttp.ClientSession | None = None,
        key_env: str = "TRELLO_KEY",
        token_env: str = "TRELLO_TOKEN",
    ) -> None:
        """`users` maps Slack user ids to Trello member ids; `key_env`/`token_env` name the variables the
        key and token came from, for error messages."""
        self._key = key
        self._token = token
        self._board_ref = board
        self._todo_ref = todo_list
        self._done_ref = done_list
        self._users = dict(users)
        self._slack_of = {member: slack for slack, member in self._users.items()}
        self._timeout = timeout
        self._url = base_url if base_url.endswith("/") else base_url + "/"
        self._session = session
        self._owns_session = session is None
        self._key_env = key_env
        self._token_env = token_env
        self._resolved: _Board | None = None
        self._list_names: dict[str, str] = {}  # open lists of the board at resolution: id -> name
        self._label: str | None = None
        self._label_lock = asyncio.Lock()  # two critical items at once must not make two labels

    async def aclose(self) -> None:
        """Close the HTTP session if this adapter created it (`close` is the port's: it closes cards)."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None

    # ------------------------------------------------------------------ the port

    async def create(self, item: NewItem) -> PlanItem:
        """A card at the top of the todo list; the assignee as its member, `critical` as a red label."""
        member = self._member(item.assignee) if item.assignee else None  # before any request
        board = await self._board()
        body: dict[str, Any] = {
            "idList": board.todo,
            "name": item.title,
            "desc": _with_footer(item.description, item.reporter),
            "pos": "top",
        }
        if member:
            body["idMembers"] = member
        if item.critical:
            body["idLabels"] = await self._critical_label(board)
        card = _obj(await self._call("POST", "cards", body=body, what="create a card"))
        return self._item(card, board)

    async def get(self, key: str) -> PlanItem:
        """The card with that shortLink (or id, or URL); AdapterNotFound if the board has no such card."""
        board = await self._board()
        return self._item(await self._card(key, board), board)

    async def list(self, which: ListFilter, user: str, limit: int = 20) -> Sequence[PlanItem]:
        """Cards of the board's open lists, newest first: open ones, the user's open ones, or all."""
        member = self._member(user) if which is ListFilter.MINE else None
        board = await self._board()
        lists = await self._call("GET", f"boards/{board.id}/lists", query={"filter": "open", "fields": "name"})
        open_lists = {str(x.get("id")) for x in _records(lists, "the lists")}
        cards = await self._call(
            "GET",
            f"boards/{board.id}/cards",
            query={"fields": _CARD_FIELDS, "members": "true", "member_fields": _MEMBER_FIELDS},
        )
        items: list[tuple[str, PlanItem]] = []
        for card in _records(cards, "the cards"):
            if card.get("idList") not in open_lists:
                continue
            item = self._item(card, board)
            if which is not ListFilter.ALL and item.status is ItemStatus.DONE:
                continue
            if member is not None and member not in _strs(card.get("idMembers")):
                continue
            items.append((str(card.get("id", "")), item))
        # Card ids start with their creation time, so sorting ids is sorting by age.
        items.sort(key=lambda pair: pair[0], reverse=True)
        return [item for _, item in items[: max(limit, 0)]]

    async def assign(self, key: str, user: str) -> PlanItem:
        """Make the user's mapped member the card's only member."""
        member = self._member(user)
        board = await self._board()
        card = await self._card(key, board)
        short = str(card.get("shortLink") or key)
        updated = _obj(
            await self._call(
                "PUT", f"cards/{card['id']}", body={"idMembers": member}, what=f"assign card {short}", key=short
            )
        )
        return self._item(updated, board)

    async def close(self, key: str, by: str) -> PlanItem:
        """Move the card to the top of the done list (nothing happens when it is done already)."""
        board = await self._board()
        card = await self._card(key, board)
        if card.get("idList") == board.done or card.get("closed") is True:
            return self._item(card, board)
        short = str(card.get("shortLink") or key)
        updated = _obj(
            await self._call(
                "PUT",
                f"cards/{card['id']}",
                body={"idList": board.done, "pos": "top"},
                what=f"move card {short} to the done list",
                key=short,
            )
        )
        # Keep the member names we already read: the PUT answer has ids only.
        updated.setdefault("members", card.get("members", []))
        return self._item(updated, board, closed_by=by)

    async def check(self) -> str:
        """Reach Trello with the key and token and resolve the board and its lists."""
        me = _obj(await self._call("GET", "members/me", query={"fields": "username"}))
        board = await self._board()
        todo, done = self._list_names.get(board.todo, board.todo), self._list_names.get(board.done, board.done)
        return (
            f"logged in to {TOOL} as @{me.get('username', '?')}; board {board.name}: "
            f"new cards go to `{todo}`, done is `{done}`"
        )

    # ------------------------------------------------------------------ helpers

    async def _board(self) -> _Board:
        """The board and its todo/done lists, resolved on first use."""
        if self._resolved is not None:
            return self._resolved
        b = _obj(
            await self._call(
                "GET",
                f"boards/{quote(self._board_ref, safe='')}",
                query={"fields": "name"},
                missing=f"no board `{self._board_ref}` (or the token can't see it); check integrations.trello.board",
            )
        )
        lists = _records(
            await self._call(
                "GET", f"boards/{b['id']}/lists", query={"filter": "open", "fields": "name"}, what="read the lists"
            ),
            "the lists",
        )
        names = {str(x.get("id")): str(x.get("name", "")) for x in lists}
        resolved = _Board(
            id=str(b["id"]),
            name=str(b.get("name") or self._board_ref),
            todo=_find_list(self._todo_ref, names, "todo_list", b),
            done=_find_list(self._done_ref, names, "done_list", b),
        )
        self._list_names = names
        self._resolved = resolved
        return resolved

    async def _critical_label(self, board: _Board) -> str:
        """The id of the board's "critical" label, creating a red one when the board has none."""
        async with self._label_lock:
            if self._label is None:
                self._label = await self._find_or_make_label(board)
            return self._label

    async def _find_or_make_label(self, board: _Board) -> str:
        labels = await self._call(
            "GET", f"boards/{board.id}/labels", query={"fields": "name,color", "limit": "1000"}, what="read labels"
        )
        found = [x for x in _records(labels, "the labels") if str(x.get("name", "")).strip().casefold() == CRITICAL]
        # Prefer a red one when a board has several labels called "critical".
        found.sort(key=lambda x: x.get("color") != "red")
        if found:
            return str(found[0]["id"])
        made = _obj(
            await self._call(
                "POST", f"boards/{board.id}/labels", body={"name": CRITICAL, "color": "red"}, what="create a label"
            )
        )
        return str(made["id"])

    async def _card(self, key: str, board: _Board) -> dict[str, Any]:
        ref = _card_ref(key)
        if ref is None:
            raise AdapterNotFound(TOOL, f"no card {key}")
        card = _obj(
            await self._call(
                "GET",
                f"cards/{ref}",
                query={"fields": _CARD_FIELDS, "members": "true", "member_fields": _MEMBER_FIELDS},
                key=ref,
            )
        )
        if card.get("idBoard") != board.id:
            raise AdapterNotFound(TOOL, f"no card {ref} on board {board.name}")
        return card

    def _member(self, user: str) -> str:
        member = self._users.get(user)
        if member is None:
            raise AdapterError(
                TOOL,
                f"no Trello member is mapped to Slack user <@{user}>; add `{user}: <member id>` "
                "under integrations.trello.users",
            )
        return member

    def _item(self, card: Mapping[str, Any], board: _Board, closed_by: str | None = None) -> PlanItem:
        done = card.get("idList") == board.done or card.get("closed") is True
        names = {str(m.get("id")): str(m.get("username") or "") for m in _dicts(card.get("members"))}
        members = _strs(card.get("idMembers"))
        mapped = [self._slack_of[m] for m in members if m in self._slack_of]
        assignee: str | None
        if mapped:
            assignee = mapped[0]
        elif members:
            assignee = f"trello:{names.get(members[0]) or members[0]}"
        else:
            assignee = None
        labels = _dicts(card.get("labels"))
        desc = str(card.get("desc") or "")
        footer = _FOOTER_RE.search(desc)
        card_id = str(card.get("id", ""))
        short = str(card.get("shortLink") or card_id)
        return PlanItem(
            key=short,
            title=str(card.get("name", "")),
            status=ItemStatus.DONE if done else ItemStatus.OPEN,
            reporter=footer.group(1) if footer else "",
            assignee=assignee,
            critical=any(str(x.get("name", "")).strip().casefold() == CRITICAL for x in labels),
            created_at=_created(card_id),
            closed_at=_time(card.get("dateLastActivity")) if done else None,
            closed_by=closed_by if done else None,
            url=str(card.get("shortUrl") or f"https://trello.com/c/{short}"),
            tracker=self.name,
        )

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            # trust_env: honour HTTPS_PROXY / NO_PROXY like the other tools' clients do.
            self._session = aiohttp.ClientSession(trust_env=True)
            self._owns_session = True
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        what: str | None = None,
        key: str | None = None,
        missing: str | None = None,
    ) -> Any:
        """One API call with the time limit; Trello's errors become the AdapterError family.

        `key` names the card the call is about (its 404 becomes "no card <key>"); `missing` is the
        message of any other 404."""
        params = {**(query or {}), "key": self._key, "token": self._token}
        doing = what or f"{method} /1/{path}"
        try:
            async with self._session_now().request(
                method,
                self._url + path,
                params=params,
                json=dict(body) if body is not None else None,
                headers={"Accept": "application/json", "User-Agent": "opsloop"},
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                status = resp.status
                text = await resp.text(errors="replace")
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise AdapterTimeout(TOOL, f"no answer within {self._timeout:g} s ({doing})") from None
        except aiohttp.ClientConnectorError as err:
            reason = err.os_error.strerror or str(err.os_error)
            raise AdapterUnavailable(TOOL, f"can't reach {self._host()} ({reason})") from err
        except aiohttp.ClientError as err:
            # Never str(err): aiohttp's messages may carry the URL, and with it the key and token.
            raise AdapterUnavailable(TOOL, f"the connection to {self._host()} broke ({type(err).__name__})") from err
        if status < 400:
            try:
                return json.loads(text)
            except ValueError:
                raise AdapterError(
                    TOOL, f"answered {status} with something that is not JSON to {doing} (is {self._host()} the API?)"
                ) from None
        raise self._error(status, text, retry_after, doing, key, missing)

    def _error(
        self, status: int, text: str, retry_after: str | None, doing: str, key: str | None, missing: str | None
    ) -> AdapterError:
        message = text.strip()
        try:
            data = json.loads(message)
        except ValueError:
            data = None
        if isinstance(data, dict):
            message = str(data.get("message") or data.get("error") or message)
        short = message[:200]
        if status == 401:
            if message == "invalid key":
                return AdapterError(TOOL, f"rejected the API key (invalid key); check {self._key_env}")
            if message == "invalid token":
                return AdapterError(TOOL, f"rejected the API token (invalid token); check {self._token_env}")
            return AdapterError(
                TOOL,
                f"refused access ({short or 401}) to {doing}: the token in {self._token_env} may not use "
                f"board `{self._board_ref}`",
            )
        if status == 404 or (status == 400 and message == "invalid id" and (key or missing)):
            if key is not None:
                return AdapterNotFound(TOOL, f"no card {key}")
            return AdapterNotFound(TOOL, missing or f"found nothing for {doing} ({short})")
        if status == 429:
            code = f" ({data['error']})" if isinstance(data, dict) and data.get("error") else ""
            wait = f"try again in {retry_after} s" if retry_after else "try again in a few seconds"
            return AdapterError(TOOL, f"rate-limited{code}: Trello allows 100 requests per 10 s per token; {wait}")
        if status in (502, 503, 504):
            return AdapterUnavailable(TOOL, f"answered {status} (unavailable) to {doing}")
        return AdapterError(TOOL, f"answered {status} ({short or 'no details'}) to {doing}")

    def _host(self) -> str:
        parts = urlsplit(self._url)
        return f"{parts.scheme}://{parts.netloc}"


# ---------------------------------------------------------------------------------------------------------


def _find_list(ref: str, names: Mapping[str, str], option: str, board: Mapping[str, Any]) -> str:
    """The id of the open list `ref` names: its id, else its exact name, else its name ignoring case."""
    if ref in names:
        return ref
    exact = [i for i, n in names.items() if n == ref]
    loose = [i for i, n in names.items() if n.casefold() == ref.strip().casefold()]
    for hits in (exact, loose):
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise AdapterError(
                TOOL,
                f"board {board.get('name')} has {len(hits)} open lists named `{ref}`; "
                f"use the list id in integrations.trello.{option}",
            )
    known = ", ".join(f"`{n}`" for n in names.values()) or "none"
    raise AdapterError(
        TOOL,
        f"board {board.get('name')} has no open list `{ref}` (integrations.trello.{option}); its lists: {known}",
    )


def _card_ref(key: str) -> str | None:
    """What to put in /cards/{…}: a shortLink or id, also from a pasted card URL; None if it can be neither."""
    text = key.strip().strip("<>")
    if "/" in text:
        parts = [p for p in urlsplit(text if "://" in text else f"https://{text}").path.split("/") if p]
        text = parts[1] if len(parts) >= 2 and parts[0] == "c" else ""
    if _SHORT.match(text) or _HEX24.match(text):
        return text
    return None


def _with_footer(description: str, reporter: str) -> str:
    footer = _FOOTER.format(user=reporter)
    return f"{description.rstrip()}\n\n{footer}" if description.strip() else footer


def _created(card_id: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(card_id[:8], 16), tz=UTC)
    except ValueError:
        return datetime.fromtimestamp(0, tz=UTC)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _obj(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AdapterError(TOOL, "answered with unexpected JSON (an object was expected)")
    return value


def _dicts(value: object) -> list[dict[str, Any]]:
    return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []


def _records(value: object, what: str) -> list[dict[str, Any]]:
    """A whole answer that must be a list of objects with ids (lists, cards, labels). Anything else is
    not Trello talking (a proxy's page, a cut-off body): reading it as "none" would hide the fault."""
    if not isinstance(value, list) or not all(isinstance(x, dict) and x.get("id") for x in value):
        raise AdapterError(TOOL, f"answered with unexpected JSON ({what}: a list of objects with ids was expected)")
    return value


def _strs(value: object) -> list[str]:
    return [str(x) for x in value] if isinstance(value, list) else []
