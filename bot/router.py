"""CommandGroups and the Router: one registry per app, collision checks, and one dispatch path.

Every command, click, submit and shortcut goes through the same steps: parse at the edge into typed
values, check the policy on the payload's user id, run the handler, audit the decision, count it.
A UserError becomes a reply with its text verbatim; any other exception becomes a short apology with
an error id while the traceback goes to the log.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import BaseModel

from bot import commands as c
from bot import views as v
from bot.approvals import ApprovalKind
from bot.audit import AuditEntry, Outcome
from bot.context import Ctx, Services, Surface
from bot.errors import NotAllowed, UsageError, UserError
from bot.jobs import JobKind
from bot.ports import AdapterError
from bot.rendering import base_action

log = logging.getLogger(__name__)


# --- what transports hand to the router (parsed at the edge) ------------------------------------------


def valid_text(s: str) -> str:
    """`s` with lone surrogates replaced: a JSON body may escape one (`"\\ud800"`), and SQLite and the
    audit hash can only take text that encodes as UTF-8."""
    return s if s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class Invocation:
    """A command typed by someone (slash command, mention, console line)."""

    actor: str
    channel: str
    text: str
    source: str = "slash"
    thread_ts: str | None = None
    trigger_id: str | None = None
    response_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", valid_text(self.text))


@dataclass(frozen=True)
class Click:
    """A button pressed."""

    actor: str
    channel: str
    action_id: str
    value: str
    message_ts: str | None = None
    thread_ts: str | None = None
    trigger_id: str | None = None
    response_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", valid_text(self.value))


@dataclass(frozen=True)
class Submission:
    """A modal submitted: input values by name, and the metadata the modal carried."""

    actor: str
    callback: str
    values: Mapping[str, str | None]
    metadata: str = ""

    def __post_init__(self) -> None:
        values = {valid_text(k): None if x is None else valid_text(x) for k, x in self.values.items()}
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "metadata", valid_text(self.metadata))


@dataclass(frozen=True)
class ShortcutCall:
    """A message shortcut used on a message."""

    actor: str
    callback: str
    channel: str
    message_ts: str
    message_text: str
    message_user: str | None
    trigger_id: str | None = None
    response_url: str | None = None


@dataclass(frozen=True)
class ChatEvent:
    """Something people did in a channel without addressing opsloop: a reaction, a message."""

    kind: str  # "reaction" | "message"
    actor: str
    channel: str
    message_ts: str
    text: str = ""  # message: what was written
    reaction: str = ""  # reaction: the emoji name, without colons
    thread_ts: str | None = None  # message: the thread it was written in
    author: str | None = None  # reaction: who wrote the message reacted to


@dataclass(frozen=True)
class HookResult:
    status: int
    text: str


class SubmitErrors(UserError):
    """Field errors of a modal submit: shown next to the fields in Slack, as text in the console."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {m}" for k, m in self.errors.items()))


# --- registrations ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionSpec:
    id: str
    handler: Callable[..., Awaitable[v.Reply | None]]
    value: type[BaseModel] | None
    policy: str


@dataclass(frozen=True)
class SubmitSpec:
    callback: str
    handler: Callable[..., Awaitable[v.Reply | None]]
    metadata: type[BaseModel] | None
    policy: str


@dataclass(frozen=True)
class ShortcutSpec:
    callback: str
    name: str
    description: str
    handler: Callable[..., Awaitable[None]]
    policy: str


@dataclass(frozen=True)
class HookSpec:
    source: str
    handler: Callable[[Services, Any], Awaitable[HookResult]]


class Handled:
    """What an event handler returns when it acted and has nothing to tell the actor."""


HANDLED = Handled()


@dataclass(frozen=True)
class EventSpec:
    id: str
    kind: str
    handler: Callable[[Ctx, ChatEvent], Awaitable[v.Reply | Handled | None]]


HomeFn = Callable[[Ctx], Awaitable[Sequence[v.Block]]]


@dataclass
class CommandGroup:
    """The commands, buttons, forms, hooks and jobs of one stage (errbot's plugin, botkube's table)."""

    stage: str
    doc: str
    commands: list[c.CommandSpec] = field(default_factory=list)
    actions: list[ActionSpec] = field(default_factory=list)
    submits: list[SubmitSpec] = field(default_factory=list)
    shortcuts: list[ShortcutSpec] = field(default_factory=list)
    homes: list[tuple[int, HomeFn]] = field(default_factory=list)
    hooks: list[HookSpec] = field(default_factory=list)
    events: list[EventSpec] = field(default_factory=list)
    periodics: list[tuple[float, Callable[[Services], Awaitable[Any]]]] = field(default_factory=list)
    jobs: list[tuple[str, Callable[..., Awaitable[None]], bool, float]] = field(default_factory=list)
    approval_kinds: list[
        tuple[
            str,
            str,
            Callable[..., Awaitable[str]],
            Callable[..., Awaitable[str | None]] | None,
            Callable[..., None] | None,
        ]
    ] = field(default_factory=list)

    def command(
        self, words: str, *params: c.Param, id: str | None = None, examples: Sequence[str] = (), hidden: bool = False
    ) -> Callable[[c.Handler], c.Handler]:
        """Register a command; its docstring is its help (first line: summary)."""

        def deco(fn: c.Handler) -> c.Handler:
            ws = tuple(words.split())
            cid = id or ".".join(ws[:2] if len(ws) > 1 else (*ws, "run"))
            self.commands.append(c.CommandSpec(cid, ws, tuple(params), fn, fn.__doc__ or "", tuple(examples), hidden))
            return fn

        return deco

    def action(
        self, action_id: str, *, value: type[BaseModel] | None = None, policy: str | None = None
    ) -> Callable[[Any], Any]:
        """Register a button; `value` is the pydantic model its value parses into."""

        def deco(fn: Any) -> Any:
            self.actions.append(ActionSpec(action_id, fn, value, policy or action_id))
            return fn

        return deco

    def submit(
        self, callback: str, *, metadata: type[BaseModel] | None = None, policy: str | None = None
    ) -> Callable[[Any], Any]:
        """Register a modal submit handler."""

        def deco(fn: Any) -> Any:
            self.submits.append(SubmitSpec(callback, fn, metadata, policy or callback))
            return fn

        return deco

    def shortcut(
        self, callback: str, *, name: str, description: str, policy: str | None = None
    ) -> Callable[[Any], Any]:
        """Register a message shortcut (it appears in the manifest)."""

        def deco(fn: Any) -> Any:
            self.shortcuts.append(ShortcutSpec(callback, name, description, fn, policy or callback))
            return fn

        return deco

    def home(self, order: int = 50) -> Callable[[HomeFn], HomeFn]:
        """Contribute blocks to the App Home tab."""

        def deco(fn: HomeFn) -> HomeFn:
            self.homes.append((order, fn))
            return fn

        return deco

    def event(self, id: str, kind: str) -> Callable[[Any], Any]:
        """Listen for a channel event (`reaction`, `message`): `async def fn(ctx, event)` returns None
        when the event is not for it (nothing is audited), HANDLED when it acted, or a reply for the
        person who acted. The handler checks the permission of what it decides to do (`ctx.authorize`)."""

        def deco(fn: Any) -> Any:
            self.events.append(EventSpec(id, kind, fn))
            return fn

        return deco

    def hook(self, source: str) -> Callable[[Any], Any]:
        """Register the handler of `POST /hooks/<source>`."""

        def deco(fn: Any) -> Any:
            self.hooks.append(HookSpec(source, fn))
            return fn

        return deco

    def periodic(self, seconds: float) -> Callable[[Any], Any]:
        """Run `async def fn(services)` every `seconds` while opsloop runs (schedules, sweeps)."""

        def deco(fn: Any) -> Any:
            self.periodics.append((seconds, fn))
            return fn

        return deco

    def job(self, kind: str, *, resumable: bool = False, timeout: float = 3600.0) -> Callable[[Any], Any]:
        """Register a kind of job: `async def fn(services, jctx)`."""

        def deco(fn: Any) -> Any:
            self.jobs.append((kind, fn, resumable, timeout))
            return fn

        return deco

    def approval(
        self,
        policy_key: str,
        *,
        job: str,
        fingerprint: Callable[..., Awaitable[str]],
        recheck: Callable[..., Awaitable[str | None]] | None = None,
        on_change: Callable[..., None] | None = None,
    ) -> None:
        """Register how approvals of `policy_key` fingerprint their subject, which job runs after, and
        (optionally) how the kind renders its own card."""
        self.approval_kinds.append((policy_key, job, fingerprint, recheck, on_change))


# --- the router --------------------------------------------------------------------------------------------


class Router:
    """The single registry of an app; see the module docstring."""

    def __init__(self, groups: Sequence[CommandGroup], services: Services) -> None:
        self.groups = list(groups)
        self.services = services
        specs = [s for g in groups for s in g.commands]
        ids: dict[str, str] = {}
        for s in specs:
            if s.id in ids:
                raise ValueError(f"command id {s.id} is registered twice")
            ids[s.id] = s.id
        self.grammar = c.Grammar(specs)
        self.actions = self._unique(
            {a.id: a for g in groups for a in g.actions}, [a.id for g in groups for a in g.actions], "action"
        )
        self.submits = self._unique(
            {s.callback: s for g in groups for s in g.submits}, [s.callback for g in groups for s in g.submits], "modal"
        )
        self.shortcuts = self._unique(
            {s.callback: s for g in groups for s in g.shortcuts},
            [s.callback for g in groups for s in g.shortcuts],
            "shortcut",
        )
        self.hooks = self._unique(
            {h.source: h for g in groups for h in g.hooks}, [h.source for g in groups for h in g.hooks], "hook"
        )
        self.events: dict[str, list[EventSpec]] = {}
        for e in (e for g in groups for e in g.events):
            self.events.setdefault(e.kind, []).append(e)
        self.homes = sorted((h for g in groups for h in g.homes), key=lambda x: x[0])
        self.periodics = [p for g in groups for p in g.periodics]
        for g in groups:
            for kind, fn, resumable, timeout in g.jobs:
                services.jobs.register(JobKind(kind, partial(fn, services), resumable, timeout))
            for key, job, fp, recheck, on_change in g.approval_kinds:
                services.approvals.register(
                    ApprovalKind(
                        key,
                        job,
                        partial(fp, services),
                        partial(recheck, services) if recheck else None,
                        partial(on_change, services) if on_change else None,
                    )
                )

    @staticmethod
    def _unique(table: dict[str, Any], names: list[str], what: str) -> dict[str, Any]:
        if len(table) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"{what} ids registered twice: {', '.join(dup)}")
        return table

    @property
    def specs(self) -> list[c.CommandSpec]:
        return self.grammar.specs

    def stages(self) -> list[CommandGroup]:
        return self.groups

    def _ctx(self, surface: Surface, actor: str, channel: str, **kw: Any) -> Ctx:
        return Ctx(actor=actor, channel=channel, services=self.services, surface=surface, router=self, **kw)

    async def authorize(self, actor: str, key: str) -> None:
        """The one permission check of commands, clicks, submits and shortcuts."""
        decision = await self.services.policy.check(actor, key)
        if not decision.allowed:
            raise NotAllowed(decision.reason)

    async def _resolve(self, args: dict[str, Any]) -> dict[str, Any]:
        out = dict(args)
        for k, val in args.items():
            if isinstance(val, c.Mention):
                if val.id:
                    out[k] = val.id
                    continue
                assert val.name is not None
                uid = await self.services.directory.find(val.name)
                if uid is None:
                    raise UsageError(
                        f"I don't know @{val.name}. Mention them so chat fills in the person "
                        "(type @ and pick from the list)."
                    )
                out[k] = uid
        return out

    async def _finish(
        self,
        actor: str,
        channel: str,
        action: str,
        target: str | None,
        started: float,
        err: BaseException | None,
        detail: Mapping[str, Any] | None = None,
    ) -> v.Reply | None:
        """Audit and count one dispatch; turn an error into the reply the user sees."""
        reply: v.Reply | None = None
        if err is None:
            outcome, reason = Outcome.OK, None
        elif isinstance(err, NotAllowed):
            outcome, reason = Outcome.REFUSED, str(err)
            reply = error_reply(err)
        elif isinstance(err, UserError):
            outcome, reason = Outcome.ERROR, str(err)
            reply = error_reply(err)
        elif isinstance(err, AdapterError):
            # A tool said no or is down: its message names the tool and what to fix; not our bug.
            log.info("%s by %s: %s", action, actor, err)
            outcome, reason = Outcome.ERROR, str(err)
            reply = v.Reply(v.Message(str(err)[:3000], (v.Section(f":warning: {v.esc(str(err))}"),)))
        else:
            error_id = secrets.token_hex(3)
            log.error("%s by %s failed (error %s)", action, actor, error_id, exc_info=err)
            outcome, reason = Outcome.ERROR, f"internal error {error_id}: {type(err).__name__}"
            reply = v.Reply.text(
                f":warning: Something went wrong on my side (error `{error_id}`). "
                "Nothing was changed unless a message says so; the details are in the opsloop log."
            )
        self.services.metrics.command(action, outcome.value)
        await self.services.audit.record(
            AuditEntry(
                actor,
                action,
                outcome,
                channel,
                target,
                reason,
                {"ms": round((time.perf_counter() - started) * 1000, 1), **(detail or {})},
            )
        )
        return reply

    async def command(self, inv: Invocation, surface: Surface) -> v.Reply:
        """Run one command line; always returns something to show."""
        started = time.perf_counter()
        text = inv.text.strip() or "help"
        action = "command.unknown"
        reply: v.Reply | None = None
        err: BaseException | None = None
        try:
            parsed = self.grammar.parse(text)
            action = parsed.command.id
            await self.authorize(inv.actor, action)
            args = await self._resolve(parsed.args)
            ctx = self._ctx(
                surface,
                inv.actor,
                inv.channel,
                thread_ts=inv.thread_ts,
                trigger_id=inv.trigger_id,
                response_url=inv.response_url,
                source=inv.source,
            )
            reply = await parsed.command.handler(ctx, **args)
        except Exception as e:  # every failure is reported to the user and audited below
            err = e
        failure = await self._finish(
            inv.actor,
            inv.channel,
            action,
            text,
            started,
            err,
            {"source": inv.source},
        )
        return failure or reply or v.Reply.text("Done.")

    async def click(self, click: Click, surface: Surface) -> v.Reply | None:
        """Run a button's handler; the reply (if any) goes privately to the clicker."""
        started = time.perf_counter()
        action = base_action(click.action_id)
        reply: v.Reply | None = None
        err: BaseException | None = None
        try:
            spec = self.actions.get(action)
            if spec is None:
                raise UserError("This button belongs to something opsloop no longer has; run the command again.")
            value: Any = click.value
            if spec.value is not None:
                value = _parsed(spec.value, click.value)
                if value is None:
                    raise UserError("This button's data is not valid any more; run the command again.")
            await self.authorize(click.actor, spec.policy)
            ctx = self._ctx(
                surface,
                click.actor,
                click.channel,
                thread_ts=click.thread_ts,
                trigger_id=click.trigger_id,
                response_url=click.response_url,
                message_ts=click.message_ts,
                source="click",
            )
            reply = await spec.handler(ctx, value)
        except Exception as e:  # reported and audited below
            err = e
        failure = await self._finish(click.actor, click.channel, f"click:{action}", click.value, started, err)
        return failure or reply

    async def submit(self, sub: Submission, surface: Surface, channel: str) -> v.Reply | None:
        """Run a modal's submit handler; SubmitErrors propagate so the transport can show them by field."""
        started = time.perf_counter()
        err: BaseException | None = None
        reply: v.Reply | None = None
        spec = self.submits.get(sub.callback)
        try:
            if spec is None:
                raise UserError("This form belongs to something opsloop no longer has.")
            meta: Any = sub.metadata
            if spec.metadata is not None:
                meta = _parsed(spec.metadata, sub.metadata)
                if meta is None:
                    raise UserError("This form's data is not valid any more; open it again.")
            await self.authorize(sub.actor, spec.policy)
            ctx = self._ctx(surface, sub.actor, channel, source="submit")
            reply = await spec.handler(ctx, dict(sub.values), meta)
        except SubmitErrors as e:
            await self._finish(sub.actor, channel, f"submit:{sub.callback}", None, started, e)
            raise
        except Exception as e:  # reported and audited below
            err = e
        failure = await self._finish(sub.actor, channel, f"submit:{sub.callback}", None, started, err)
        return failure or reply

    async def shortcut(self, call: ShortcutCall, surface: Surface) -> v.Reply | None:
        """Run a message shortcut."""
        started = time.perf_counter()
        err: BaseException | None = None
        try:
            spec = self.shortcuts.get(call.callback)
            if spec is None:
                raise UserError("opsloop has no such shortcut any more.")
            await self.authorize(call.actor, spec.policy)
            ctx = self._ctx(
                surface,
                call.actor,
                call.channel,
                trigger_id=call.trigger_id,
                response_url=call.response_url,
                message_ts=call.message_ts,
                source="shortcut",
            )
            await spec.handler(ctx, call)
        except Exception as e:  # reported and audited below
            err = e
        return await self._finish(call.actor, call.channel, f"shortcut:{call.callback}", call.message_ts, started, err)

    async def event(self, ev: ChatEvent, surface: Surface) -> v.Reply | None:
        """Offer a channel event to the stages listening for its kind; the first that takes it answers
        (for `ev.actor` only). Events nobody takes leave no trace."""
        for spec in self.events.get(ev.kind, ()):
            started = time.perf_counter()
            err: BaseException | None = None
            result: v.Reply | Handled | None = None
            try:
                ctx = self._ctx(surface, ev.actor, ev.channel, message_ts=ev.message_ts, source=ev.kind)
                result = await spec.handler(ctx, ev)
            except Exception as e:  # reported and audited below
                err = e
            if result is None and err is None:
                continue
            failure = await self._finish(ev.actor, ev.channel, f"event:{spec.id}", ev.message_ts, started, err)
            return failure or (result if isinstance(result, v.Reply) else None)
        return None

    async def home(self, user: str, surface: Surface) -> v.HomeView:
        """The App Home tab of `user`, from every stage's contribution."""
        ctx = self._ctx(surface, user, f"home:{user}", source="home")
        blocks: list[v.Block] = []
        for _, fn in self.homes:
            try:
                blocks.extend(await fn(ctx))
            except Exception:
                log.exception("a home section failed")
                blocks.append(v.Context(("This section could not be loaded; see the opsloop log.",)))
        return v.HomeView(tuple(blocks))


class BeyondInt64(ValueError):
    """A JSON integer SQLite cannot hold."""


def _int64(text: str) -> int:
    n = int(text)
    if not -(2**63) <= n < 2**63:
        raise BeyondInt64("an integer beyond 64 bits")
    return n


def load_json(text: str | bytes) -> Any:
    """JSON from outside (a webhook body, a button's value, a form's metadata), refusing integers beyond
    64 bits as the parser meets them: opsloop never sends one, and SQLite cannot bind one."""
    return json.loads(text, parse_int=_int64)


def _parsed(model: type[BaseModel], text: str) -> Any:
    """`text` (a button's value, a form's metadata) as `model`, or None when it is not one."""
    try:
        return model.model_validate(load_json(text or "{}"))
    except (ValueError, RecursionError):  # bad JSON, the wrong shape (ValidationError), too big or too deep
        return None


def error_reply(err: UserError) -> v.Reply:
    """How a UserError looks to the user."""
    icon = ":no_entry:" if isinstance(err, NotAllowed) else ":warning:"
    text = f"{icon} *{err.title}:* {err}"
    return v.Reply(v.Message(f"{err.title}: {err}"[:3000], (v.Section(text),)))
