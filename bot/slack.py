"""Slack: Bolt AsyncApp wiring (HTTP and Socket Mode), the Web API transport of the outbox, the directory.

Slack payloads are parsed here into the router's typed values; nothing Slack-shaped goes further in.
Every command, click and submit is answered within Slack's 3 seconds: the router gets 2.5 s, and if it
needs longer the ack says so and the answer follows through the response_url (via the outbox).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import send_async_response
from slack_bolt.adapter.socket_mode.internals import build_headers
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot import rendering
from bot import views as v
from bot.context import Quoted, Services
from bot.metrics import Metrics
from bot.outbox import MARKER_EVENT, DeliveryError, Payload
from bot.ports import AdapterError, AdapterNotFound, AdapterUnavailable, Person
from bot.redact import Redactor
from bot.router import ChatEvent, Click, Invocation, Router, ShortcutCall, Submission, SubmitErrors

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

ACK_DEADLINE = 2.5
SLASH_COMMAND = "/ops"
# Errors after which a retry can succeed; everything else Slack answers is permanent for that write.
_RETRYABLE = {
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "team_added_to_org",
}
# What comes before a command typed in chat: the mention that addressed opsloop, or `/ops` typed out of
# habit in a direct message (Slack does not run slash commands written mid-message).
_SAID_PREFIX = re.compile(r"^\s*(?:<@[UW][A-Z0-9]+(?:\|[^>]*)?>[\s:,]*)?(?:/ops\b\s*)?")


def web_client(token: str, api_url: str, timeout: int = 10) -> AsyncWebClient:
    """The one Web API client: explicit base URL (SLACK_API_URL), connection retries only (the outbox
    does the rest)."""
    return AsyncWebClient(
        token=token,
        base_url=api_url,
        timeout=timeout,
        retry_handlers=[AsyncConnectionErrorRetryHandler(max_retry_count=1)],
    )


def _delivery_error(method: str, err: Exception) -> DeliveryError:
    if isinstance(err, SlackApiError):
        status = err.response.status_code
        code = str(err.response.get("error", "")) if err.response is not None else ""
        if status == 429:
            try:
                after = float(err.response.headers.get("Retry-After", "1"))
            except (TypeError, ValueError):
                after = 1.0
            return DeliveryError(f"{method}: rate limited", retryable=True, retry_after=after, method=method)
        if status >= 500:
            return DeliveryError(f"{method}: Slack answered HTTP {status}", retryable=True, method=method)
        detail = ""
        meta = err.response.get("response_metadata") if err.response is not None else None
        if isinstance(meta, dict) and meta.get("messages"):
            detail = " " + "; ".join(str(m) for m in meta["messages"])[:500]
        return DeliveryError(f"{method}: {code}{detail}", retryable=code in _RETRYABLE, method=method)
    if isinstance(err, asyncio.TimeoutError | aiohttp.ClientError | OSError):
        return DeliveryError(f"{method}: {type(err).__name__} {err}".strip(), retryable=True, method=method)
    return DeliveryError(f"{method}: {type(err).__name__}: {err}", retryable=True, method=method)


class SlackTransport:
    """The outbox's delivery to Slack's Web API."""

    paced = True

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._ids: dict[str, str] = {}

    async def channel_id(self, channel: str) -> str:
        """The id of a channel given as `#name` (Slack edits, pins and reads history only by id); an id as is.

        Names are looked up once with conversations.list (public and private channels the bot can see)."""
        if not channel.startswith("#"):
            return channel
        if channel in self._ids:
            return self._ids[channel]
        cursor: str | None = None
        for _ in range(50):  # 50 pages of 200 channels
            resp = await self._call(
                "conversations.list",
                partial(
                    self.client.conversations_list,
                    types="public_channel,private_channel",
                    exclude_archived=True,
                    limit=200,
                    cursor=cursor,
                ),
            )
            for c in resp.get("channels", []):
                self._ids[f"#{c['name']}"] = str(c["id"])
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if channel in self._ids or not cursor:
                break
        if channel not in self._ids:
            raise DeliveryError(f"no channel {channel} is visible to the bot (invite it there)", retryable=False)
        return self._ids[channel]

    async def _call(self, method: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await fn()
        except Exception as err:  # mapped to retryable or permanent
            raise _delivery_error(method, err) from err

    async def post(self, channel: str, payload: Payload, *, thread_ts: str | None, marker: str) -> tuple[str, str]:
        resp = await self._call(
            "chat.postMessage",
            lambda: self.client.chat_postMessage(
                channel=channel,
                text=payload.get("text"),
                blocks=payload.get("blocks"),
                thread_ts=thread_ts,
                metadata={"event_type": MARKER_EVENT, "event_payload": {"id": marker}},
                unfurl_links=False,
                unfurl_media=False,
            ),
        )
        if channel.startswith("#"):
            self._ids[channel] = str(resp["channel"])
        return str(resp["channel"]), str(resp["ts"])

    async def update(self, channel: str, ts: str, payload: Payload) -> None:
        cid = await self.channel_id(channel)
        await self._call(
            "chat.update",
            lambda: self.client.chat_update(channel=cid, ts=ts, text=payload.get("text"), blocks=payload.get("blocks")),
        )

    async def pin(self, channel: str, ts: str, *, pinned: bool) -> None:
        cid = await self.channel_id(channel)
        method = "pins.add" if pinned else "pins.remove"
        call = self.client.pins_add if pinned else self.client.pins_remove
        try:
            await self._call(method, partial(call, channel=cid, timestamp=ts))
        except DeliveryError as err:
            if not err.reason.endswith(("already_pinned", "no_pin")):  # already as asked: done
                raise

    async def ephemeral(self, channel: str, user: str, payload: Payload, *, thread_ts: str | None) -> None:
        if channel.startswith(("U", "W", "home:")):
            # No channel to be private in (a click on the App Home): the app's DM carries it.
            await self._call(
                "chat.postMessage",
                lambda: self.client.chat_postMessage(
                    channel=user, text=payload.get("text"), blocks=payload.get("blocks")
                ),
            )
            return
        await self._call(
            "chat.postEphemeral",
            lambda: self.client.chat_postEphemeral(
                channel=channel, user=user, text=payload.get("text"), blocks=payload.get("blocks"), thread_ts=thread_ts
            ),
        )

    async def publish_home(self, user: str, view: Payload) -> None:
        await self._call("views.publish", lambda: self.client.views_publish(user_id=user, view=dict(view)))

    async def respond(self, url: str, payload: Payload) -> None:
        hook = AsyncWebhookClient(url, timeout=10, session=None)
        resp = await self._call("response_url", lambda: hook.send_dict(dict(payload)))
        if resp.status_code == 429 or resp.status_code >= 500:
            raise DeliveryError(f"response_url answered {resp.status_code}", retryable=True)
        if resp.status_code != 200:
            raise DeliveryError(f"response_url answered {resp.status_code}: {resp.body[:200]}", retryable=False)

    async def upload(self, channel: str, payload: Payload, *, thread_ts: str | None) -> None:
        content: str | bytes = (
            base64.b64decode(payload["content_b64"]) if "content_b64" in payload else payload["content"]
        )
        await self._call(
            "files.upload",
            lambda: self.client.files_upload_v2(
                channel=channel,
                filename=payload["filename"],
                content=content,
                title=payload.get("title") or payload["filename"],
                initial_comment=payload.get("comment"),
                thread_ts=thread_ts,
            ),
        )

    async def find_posted(
        self, channel: str, thread_ts: str | None, marker: str, since: float
    ) -> tuple[str, str] | None:
        cid = await self.channel_id(channel)
        cursor: str | None = None
        for _ in range(10):  # a few pages of recent history are plenty for "just before the crash"
            common: dict[str, Any] = {
                "channel": cid,
                "oldest": str(since),
                "include_all_metadata": True,
                "cursor": cursor,
                "limit": 200,
            }
            if thread_ts:
                resp = await self._call(
                    "conversations.replies", partial(self.client.conversations_replies, ts=thread_ts, **common)
                )
            else:
                resp = await self._call("conversations.history", partial(self.client.conversations_history, **common))
            for m in resp.get("messages", []):
                meta = m.get("metadata") or {}
                if meta.get("event_type") == MARKER_EVENT and (meta.get("event_payload") or {}).get("id") == marker:
                    return cid, str(m["ts"])
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None


class SlackDirectory:
    """Users and user groups from Slack, cached (usergroups.* is Tier 2: never call it per click)."""

    def __init__(self, client: AsyncWebClient, group_ttl: float = 600.0, user_ttl: float = 3600.0) -> None:
        self.client = client
        self.group_ttl = group_ttl
        self.user_ttl = user_ttl
        self._people: dict[str, tuple[float, Person]] = {}
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._handles: tuple[float, dict[str, str]] | None = None
        self._lock = asyncio.Lock()

    async def person(self, user_id: str) -> Person:
        hit = self._people.get(user_id)
        if hit and time.monotonic() - hit[0] < self.user_ttl:
            return hit[1]
        try:
            resp = await self.client.users_info(user=user_id)
        except SlackApiError as err:
            code = err.response.get("error") if err.response is not None else "error"
            if code in ("user_not_found", "user_not_visible"):
                raise AdapterNotFound("Slack", f"no user {user_id}") from err
            raise AdapterUnavailable("Slack", f"users.info failed: {code}") from err
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise AdapterUnavailable("Slack", f"users.info failed: {err}") from err
        u = resp["user"]
        p = Person(
            id=u["id"],
            name=u.get("real_name") or u.get("name") or u["id"],
            is_bot=bool(u.get("is_bot")),
            is_guest=bool(u.get("is_restricted") or u.get("is_ultra_restricted")),
            deleted=bool(u.get("deleted")),
        )
        self._people[user_id] = (time.monotonic(), p)
        return p

    async def _group_id(self, ref: str) -> str | None:
        if not ref.startswith("@"):
            return ref
        if self._handles is None or time.monotonic() - self._handles[0] > self.group_ttl:
            resp = await self.client.usergroups_list()
            groups: list[dict[str, Any]] = resp.get("usergroups", [])
            self._handles = (time.monotonic(), {str(g["handle"]): str(g["id"]) for g in groups})
        return self._handles[1].get(ref[1:])

    async def group_members(self, group: str) -> frozenset[str]:
        hit = self._groups.get(group)
        if hit and time.monotonic() - hit[0] < self.group_ttl:
            return hit[1]
        async with self._lock:
            hit = self._groups.get(group)
            if hit and time.monotonic() - hit[0] < self.group_ttl:
                return hit[1]
            try:
                gid = await self._group_id(group)
                members: frozenset[str] = frozenset()
                if gid:
                    resp = await self.client.usergroups_users_list(usergroup=gid)
                    members = frozenset(resp.get("users", []))
            except SlackApiError as err:
                code = err.response.get("error") if err.response is not None else "error"
                if code == "no_such_subteam":
                    members = frozenset()
                elif hit:  # keep serving the last known members while Slack is unhappy
                    return hit[1]
                else:
                    raise AdapterError("Slack", f"could not read user group {group}: {code}") from err
            self._groups[group] = (time.monotonic(), members)
            return members

    async def find(self, name: str) -> str | None:
        # Slack escapes mentions (`<@U123|name>`), so a bare `@name` is text someone typed by hand.
        return None


class SlackSurface:
    """Modals through views.open; messages read back with conversations.replies."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def quote(self, channel: str, ts: str) -> Quoted | None:
        # conversations.replies finds a message by its ts whether it is top level or in a thread.
        try:
            res = await self.client.conversations_replies(
                channel=channel, ts=ts, oldest=ts, latest=ts, inclusive=True, limit=1
            )
            found = [m for m in res.get("messages") or [] if m.get("ts") == ts]
            if not found:
                return None
            link = await self.client.chat_getPermalink(channel=channel, message_ts=ts)
            info = await self.client.conversations_info(channel=channel)
        except SlackApiError as err:
            log.info("could not read message %s in %s: %s", ts, channel, err.response.get("error"))
            return None
        msg = found[0]
        name = (info.get("channel") or {}).get("name")
        return Quoted(str(msg.get("text") or ""), msg.get("user"), link.get("permalink"), name)

    async def open_modal(self, trigger_id: str | None, modal: v.Modal, *, user: str, channel: str) -> None:
        if not trigger_id:
            raise AdapterError("Slack", "this interaction carries no trigger to open a form with")
        try:
            await self.client.views_open(trigger_id=trigger_id, view=rendering.modal(modal))
        except SlackApiError as err:
            code = err.response.get("error") if err.response is not None else "error"
            raise AdapterError("Slack", f"could not open the form ({code}); try again") from err


def _field(body: Mapping[str, Any], *path: str) -> Any:
    cur: Any = body
    for p in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(p)
    return cur


def submission_values(view: Mapping[str, Any]) -> dict[str, str | None]:
    """Input values of a submitted view, by block id."""
    out: dict[str, str | None] = {}
    values = _field(view, "state", "values") or {}
    for block_id, actions in values.items():
        for _action_id, state in (actions or {}).items():
            if "selected_option" in state:
                opt = state.get("selected_option") or {}
                out[block_id] = opt.get("value")
            else:
                out[block_id] = state.get("value")
    return out


class AckBodies:
    """Slash-command acks as HTTP responses, encoded once per distinct reply.

    Help, usage and refusals come back equal (view models are frozen, so equal replies hash alike), and
    rendering, the secret scan and the JSON of a 6 KB help were most of what opsloop added to Bolt's own
    cost of an ack. An encoded body depends only on the reply: rendering is pure and the redactor's
    secrets are fixed when it is built."""

    def __init__(self, redactor: Redactor, size: int = 64) -> None:
        self._redactor = redactor
        self._size = size
        self._bodies: OrderedDict[v.Reply, str] = OrderedDict()
        # The same object again (help replies are built once) needs no hash of the whole view model.
        self._last: tuple[v.Reply, str] | None = None

    def response(self, reply: v.Reply) -> BoltResponse:
        """The 200 that acks with `reply` (redacted: the ack is the one answer that skips the outbox); a
        JSON body makes Bolt's response say application/json."""
        if self._last is not None and self._last[0] is reply:
            return BoltResponse(status=200, body=self._last[1])
        try:
            body = self._bodies.get(reply)
        except TypeError:  # something unhashable inside: encode it every time
            return BoltResponse(status=200, body=self._encode(reply))
        if body is None:
            body = self._bodies[reply] = self._encode(reply)
            if len(self._bodies) > self._size:
                self._bodies.popitem(last=False)
        else:
            self._bodies.move_to_end(reply)
        self._last = (reply, body)
        return BoltResponse(status=200, body=body)

    def _encode(self, reply: v.Reply) -> str:
        return json.dumps(self._redactor.document(rendering.reply(reply)))


class SlashCommands(AsyncMiddleware):
    """Answers `/ops` as the last of Bolt's global middleware: after its signature check, authorization
    and the rest of its built-in chain, before its listeners.

    Why not `@app.command`: a listener costs Bolt a matcher call and its listener runner, each building
    every injectable argument of the request (about 35 of them) to pass two. On the ack path that was
    about a tenth of the event loop's time per command, the largest share of opsloop's cost that was not
    Bolt's own verification or opsloop's own work."""

    def __init__(
        self, answer: Callable[[Mapping[str, Any], Mapping[str, Any]], Awaitable[BoltResponse | None]]
    ) -> None:
        self._answer = answer

    async def async_process(
        self, *, req: AsyncBoltRequest, resp: BoltResponse, next: Callable[[], Awaitable[BoltResponse]]
    ) -> BoltResponse | None:
        """Answer a command for `/ops`; pass everything else on to the listeners."""
        if req.body.get("command") != SLASH_COMMAND:
            return await next()
        # None when the transport already acked (deadline passed): Bolt's answer is then dropped, but a
        # middleware that returns nothing without next() would make Bolt log an unhandled request.
        return await self._answer(req.body, req.context) or BoltResponse(status=200, body="")


class SlackFrontend:
    """Bolt listeners that turn Slack payloads into router calls."""

    def __init__(self, router: Router, services: Services, client: AsyncWebClient) -> None:
        self.router = router
        self.services = services
        self.client = client
        self.surface = SlackSurface(client)
        self.acks = AckBodies(services.redactor)
        self._late: set[asyncio.Task[Any]] = set()

    async def _answer(
        self,
        context: Mapping[str, Any],
        work: Awaitable[T],
        ack_now: Callable[[T], Awaitable[R]],
        deliver_late: Callable[[T], Awaitable[None]],
    ) -> R | None:
        """Run the work inline; ack with its result (returning what `ack_now` returns, for Bolt), or
        deliver it later if the transport already acked.

        The 3-second promise is kept by the AckGuard of the transport (the HTTP endpoint or the Socket
        Mode handler), which answers Slack itself when ACK_DEADLINE passes. Keeping that timer out of
        here means no task per request on the ack path."""
        task = asyncio.current_task()
        if task is not None:  # so shutdown (and tests) can wait for answers still being worked on
            self._late.add(task)
        try:
            result = await work
            guard = context.get(AckGuard.KEY)
            if isinstance(guard, AckGuard) and guard.early:
                await deliver_late(result)
                return None
            return await ack_now(result)
        finally:
            # Here rather than in a done-callback: that would be one more event on the loop per request.
            self._late.discard(task)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def wait_late(self) -> None:
        """Wait for answers still being worked on (tests, shutdown)."""
        while True:
            others = [t for t in self._late if t is not asyncio.current_task()]
            if not others:
                return
            await asyncio.gather(*others, return_exceptions=True)

    async def on_command(self, body: Mapping[str, Any], context: Mapping[str, Any]) -> BoltResponse | None:
        """Answer one `/ops` line: the ack, or (past the ack deadline) a message through its response_url."""
        inv = Invocation(
            actor=str(body.get("user_id", "")),
            channel=str(body.get("channel_id", "")),
            text=str(body.get("text", "")),
            source="slash",
            trigger_id=body.get("trigger_id"),
            response_url=body.get("response_url"),
        )
        url = inv.response_url

        async def ack_reply(reply: v.Reply) -> BoltResponse:
            # Bolt answers Slack with the response SlashCommands returns (process_before_response).
            return self.acks.response(reply)

        async def deliver(reply: v.Reply) -> None:
            if url:
                payload = rendering.reply(reply)
                await self.services.store.write(lambda db: self.services.outbox.respond_in(db, url, payload))
                self.services.outbox.kick()

        return await self._answer(context, self.router.command(inv, self.surface), ack_reply, deliver)

    def register(self, app: AsyncApp) -> None:
        """Attach every listener to the Bolt app."""

        app.use(SlashCommands(self.on_command))

        @app.action(re.compile(r".+"))
        async def on_action(ack: Callable[..., Awaitable[None]], body: dict[str, Any], context: dict[str, Any]) -> None:
            action = (body.get("actions") or [{}])[0]
            channel = _field(body, "channel", "id") or _field(body, "container", "channel_id") or ""
            message = body.get("message") or {}
            click = Click(
                actor=str(_field(body, "user", "id") or ""),
                channel=str(channel),
                action_id=str(action.get("action_id", "")),
                value=str(action.get("value") or _field(action, "selected_option", "value") or ""),
                message_ts=_field(body, "container", "message_ts"),
                thread_ts=message.get("thread_ts"),
                trigger_id=body.get("trigger_id"),
                response_url=body.get("response_url"),
            )

            async def deliver(reply: v.Reply | None) -> None:
                if reply is not None:
                    await self.services.outbox.ephemeral(
                        click.channel or click.actor, click.actor, rendering.message(reply.message), click.thread_ts
                    )
                if _field(body, "container", "type") == "view" and _field(body, "view", "type") == "home":
                    await self.publish_home(click.actor)

            async def ack_then_deliver(reply: v.Reply | None) -> None:
                await ack()
                await deliver(reply)

            await self._answer(context, self.router.click(click, self.surface), ack_then_deliver, deliver)

        @app.view(re.compile(r".+"))
        async def on_submit(ack: Callable[..., Awaitable[None]], body: dict[str, Any], context: dict[str, Any]) -> None:
            view = body.get("view") or {}
            meta = str(view.get("private_metadata") or "")
            actor = str(_field(body, "user", "id") or "")
            try:
                channel = str(json.loads(meta).get("channel") or actor) if meta.startswith("{") else actor
            except json.JSONDecodeError:
                channel = actor
            sub = Submission(
                actor=actor, callback=str(view.get("callback_id", "")), values=submission_values(view), metadata=meta
            )

            async def work() -> v.Reply | SubmitErrors | None:
                try:
                    return await self.router.submit(sub, self.surface, channel)
                except SubmitErrors as err:
                    return err

            async def deliver(result: v.Reply | SubmitErrors | None) -> None:
                if isinstance(result, v.Reply):
                    await self.services.outbox.ephemeral(channel, actor, rendering.message(result.message))
                elif isinstance(result, SubmitErrors):  # too late to show by the fields: say it instead
                    await self.services.outbox.ephemeral(
                        channel,
                        actor,
                        rendering.message(
                            v.Message(
                                f"The form was not accepted: {result}",
                                (v.Section(f"The form was not accepted: {result}"),),
                            )
                        ),
                    )

            async def ack_result(result: v.Reply | SubmitErrors | None) -> None:
                if isinstance(result, SubmitErrors):
                    await ack(response_action="errors", errors=self.services.redactor.document(result.errors))
                    return
                await ack()
                await deliver(result)

            await self._answer(context, work(), ack_result, deliver)

        for sc in self.router.shortcuts.values():

            @app.shortcut(sc.callback)
            async def on_shortcut(ack: Callable[..., Awaitable[None]], body: dict[str, Any]) -> None:
                # Ack at once and open the form from a task: the trigger is only good for 3 seconds.
                await ack()
                msg = body.get("message") or {}
                call = ShortcutCall(
                    actor=str(_field(body, "user", "id") or ""),
                    callback=str(body.get("callback_id", "")),
                    channel=str(_field(body, "channel", "id") or ""),
                    message_ts=str(msg.get("ts") or body.get("message_ts") or ""),
                    message_text=str(msg.get("text") or ""),
                    message_user=msg.get("user"),
                    trigger_id=body.get("trigger_id"),
                    response_url=body.get("response_url"),
                )
                self._spawn(shortcut(call))

        async def shortcut(call: ShortcutCall) -> None:
            reply = await self.router.shortcut(call, self.surface)
            if reply is not None:
                await self.services.outbox.ephemeral(
                    call.channel or call.actor, call.actor, rendering.message(reply.message)
                )

        @app.event("app_mention")
        async def on_mention(event: dict[str, Any], body: dict[str, Any]) -> None:
            # Answered in a thread of the message, so a channel sees one line for the question.
            self._spawn(said_to_me(event, body, "mention", event.get("thread_ts") or event.get("ts")))

        async def said_to_me(event: dict[str, Any], body: dict[str, Any], source: str, thread: str | None) -> None:
            """A command typed in chat (a mention, or a direct message): run it and post the answer there."""
            if not await self._first_delivery(body):
                return
            text = _SAID_PREFIX.sub("", str(event.get("text", "")), count=1)
            channel = str(event.get("channel", ""))
            inv = Invocation(
                actor=str(event.get("user", "")), channel=channel, text=text, source=source, thread_ts=thread
            )
            reply = await self.router.command(inv, self.surface)
            await self.services.post(channel, reply.message, thread_ts=thread)

        @app.event("app_home_opened")
        async def on_home(event: dict[str, Any], body: dict[str, Any]) -> None:
            self._spawn(home_opened(event, body))

        async def home_opened(event: dict[str, Any], body: dict[str, Any]) -> None:
            if not await self._first_delivery(body):
                return
            if event.get("tab", "home") == "home":
                await self.publish_home(str(event.get("user", "")))

        @app.event("message")
        async def on_message(event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
            # A direct message (the app's Messages tab) is a command, as a mention is; channel messages
            # are offered to the stages (an item key pasted in a channel). Edits, joins and bots are not
            # people talking, and a message that mentions opsloop is answered as a command (app_mention).
            if event.get("channel_type") == "im":
                if event.get("subtype") is None and not event.get("bot_id") and event.get("user"):
                    self._spawn(said_to_me(event, body, "dm", event.get("thread_ts")))
                return
            if event.get("subtype") not in (None, "thread_broadcast"):
                return
            if event.get("bot_id") or not self.router.events.get("message"):
                return
            me = getattr(context, "bot_user_id", None)
            if me and f"<@{me}>" in str(event.get("text", "")):
                return
            ev = ChatEvent(
                kind="message",
                actor=str(event.get("user", "")),
                channel=str(event.get("channel", "")),
                message_ts=str(event.get("ts", "")),
                text=str(event.get("text", "")),
                thread_ts=event.get("thread_ts"),
            )
            self._spawn(channel_event(ev, body))

        @app.event("reaction_added")
        async def on_reaction(event: dict[str, Any], body: dict[str, Any]) -> None:
            item = event.get("item") or {}
            if item.get("type") != "message":
                return
            ev = ChatEvent(
                kind="reaction",
                actor=str(event.get("user", "")),
                channel=str(item.get("channel", "")),
                message_ts=str(item.get("ts", "")),
                reaction=str(event.get("reaction", "")),
                author=event.get("item_user"),
            )
            self._spawn(channel_event(ev, body))

        async def channel_event(ev: ChatEvent, body: dict[str, Any]) -> None:
            if not await self._first_delivery(body):
                return
            reply = await self.router.event(ev, self.surface)
            if reply is not None:
                await self.services.outbox.ephemeral(ev.channel, ev.actor, rendering.message(reply.message))

    async def _first_delivery(self, body: Mapping[str, Any]) -> bool:
        """False for a retry of an event already taken (Slack retries events it thinks we missed)."""
        event_id = body.get("event_id")
        if not event_id:
            return True
        now = time.time()
        fresh = await self.services.store.write(
            lambda db: db.execute("INSERT OR IGNORE INTO seen_events (id, at) VALUES (?, ?)", (event_id, now)).rowcount
        )
        if not fresh:
            self.services.metrics.acks.labels(kind="event_retry").inc()
        return bool(fresh)

    async def publish_home(self, user: str) -> None:
        """Render the App Home of `user` and queue its publish."""
        view = await self.router.home(user, self.surface)
        await self.services.outbox.publish_home(user, rendering.home(view))


def request_kind(body: Mapping[str, Any]) -> str:
    """`command`, `block_actions`, `view_submission`, `event_callback`, …: the label of ack metrics."""
    kind = body.get("type")
    if isinstance(kind, str) and kind:
        return kind
    return "command" if "command" in body else "other"


class AckDeadlines:
    """One timer for all the requests a transport has not answered yet.

    Every request gets the same ACK_DEADLINE, so they come due in the order they arrived: the oldest armed
    guard is always the next to fire, and one timer set for it serves them all. A timer per request put a
    handle on the loop's heap for each (nearly all cancelled, and sifted all the same)."""

    def __init__(self) -> None:
        self._armed: dict[AckGuard, float] = {}  # in arrival order, so in deadline order
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, guard: AckGuard) -> None:
        """Start `guard`'s ACK_DEADLINE."""
        loop = asyncio.get_running_loop()
        when = loop.time() + ACK_DEADLINE
        self._armed[guard] = when
        if self._timer is None or when < self._timer.when():
            self._schedule(loop, when)

    def disarm(self, guard: AckGuard) -> None:
        """The request was answered in time (or its guard has fired): forget it."""
        self._armed.pop(guard, None)

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._armed:
            guard, when = next(iter(self._armed.items()))  # the oldest: only it can be due first
            if when > now:
                self._schedule(loop, when)
                return
            del self._armed[guard]
            guard.fire()


class AckGuard:
    """Slack's 3 seconds for one request, kept by the transport that received it.

    The transport arms it before Bolt dispatches; if ACK_DEADLINE passes first, `send` (the
    transport's own way to answer) acks with `early_payload` and the listener, finding `early` set,
    delivers its result later (response_url or an ephemeral message) instead of acking."""

    KEY = "opsloop_ack_guard"

    def __init__(
        self, kind: str, send: Callable[[dict[str, Any] | None], Awaitable[None]], deadlines: AckDeadlines
    ) -> None:
        self.kind = kind
        self.early = False
        self.fired_at: float | None = None
        self._send = send
        self._deadlines = deadlines
        self.sending: asyncio.Task[None] | None = None

    @property
    def early_payload(self) -> dict[str, Any] | None:
        if self.kind == "command":
            return {"text": "Working on it…", "response_type": "ephemeral"}
        return None  # an empty 200: clicks, submits (closes the form), events

    def arm(self) -> None:
        """Start the deadline."""
        self._deadlines.arm(self)

    def fire(self) -> None:
        """The deadline passed: answer Slack now, from outside the listener still at work."""
        self.early = True
        self.fired_at = time.perf_counter()
        self.sending = asyncio.ensure_future(self._send(self.early_payload))

    async def disarm(self) -> bool:
        """Stop the deadline; True if the early answer was sent (and has finished sending)."""
        self._deadlines.disarm(self)
        if self.sending is not None:
            await self.sending
        return self.early


class TimedSocketModeHandler(AsyncSocketModeHandler):
    """Bolt's Socket Mode handler, with the ack deadline and ack metrics of the HTTP endpoint."""

    def __init__(self, app: AsyncApp, app_token: str, metrics: Metrics) -> None:
        super().__init__(app, app_token=app_token)
        self.metrics = metrics
        self.deadlines = AckDeadlines()

    async def handle(self, client: Any, req: Any) -> None:
        started = time.perf_counter()
        payload = req.payload if isinstance(req.payload, Mapping) else {}
        kind = request_kind(payload)

        async def send_early(body: dict[str, Any] | None) -> None:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id, payload=body))

        guard = AckGuard(kind, send_early, self.deadlines)
        bolt_req = AsyncBoltRequest(
            mode="socket_mode", body=req.payload, headers=build_headers(req), context={AckGuard.KEY: guard}
        )
        guard.arm()
        bolt_resp = await self.app.async_dispatch(bolt_req)
        if not await guard.disarm():
            await send_async_response(client, req, bolt_resp, started)
        self.metrics.acked(kind, (guard.fired_at or time.perf_counter()) - started)


class _NoTokenSkippedWarning(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment even when given a client, then warns at every
    start that it will not use it: we give it the client on purpose (our URL, timeout and retries)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


def bolt_app(client: AsyncWebClient, signing_secret: str | None) -> AsyncApp:
    """A Bolt AsyncApp with request verification on (it needs the signing secret in HTTP mode)."""
    bolt_log = logging.getLogger("slack_bolt.AsyncApp")
    if not any(isinstance(f, _NoTokenSkippedWarning) for f in bolt_log.filters):
        bolt_log.addFilter(_NoTokenSkippedWarning())
    return AsyncApp(
        client=client,
        signing_secret=signing_secret or "socket-mode-has-no-signing-secret",
        request_verification_enabled=True,
        # Bolt answers when the listener returns: no extra task and no 10 ms ack polling per request.
        # Our listeners ack within ACK_DEADLINE and hand anything slower to tasks they own.
        process_before_response=True,
        raise_error_for_unhandled_request=False,
    )
