"""The local chat transport: the same router and handlers in a terminal, no Slack needed.

`/as NAME` switches the acting user, buttons show as numbered choices that `click N` presses, forms
become prompts. Messages are the very Block Kit payloads the outbox would send to Slack, drawn with
rich, so the console shows what Slack would show. When standard input is not a terminal it reads one
line per command and exits at the end of input, so demos and tests can script it.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bot import rendering
from bot import views as v
from bot.config import Config
from bot.context import Quoted, Services
from bot.outbox import Payload
from bot.ports import Person
from bot.router import Click, Invocation, Router, Submission, SubmitErrors

_USER = re.compile(r"<@([UW][A-Z0-9_]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#(C[A-Z0-9]+)(?:\|([^>]*))?>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")
_ITAL = re.compile(r"(?<![\w_])_([^_\n]+)_(?![\w_])")
_CODE = re.compile(r"`([^`\n]+)`")


class ConsoleDirectory:
    """People and groups from `console:` in the config."""

    def __init__(self, config: Config) -> None:
        self.people = dict(config.console.people)
        self.names = {uid: name for name, uid in self.people.items()}
        self.groups = {k: frozenset(vs) for k, vs in config.console.groups.items()}

    def id_for(self, name: str) -> str:
        """The id of a console user; unknown names get a stable made-up id."""
        n = name.lstrip("@").lower()
        if n in self.people:
            return self.people[n]
        uid = "U" + re.sub(r"[^A-Z0-9]", "", n.upper())[:10] + "X"
        self.people[n] = uid
        self.names[uid] = n
        return uid

    async def person(self, user_id: str) -> Person:
        return Person(user_id, self.names.get(user_id, user_id))

    async def group_members(self, group: str) -> frozenset[str]:
        return self.groups.get(group, frozenset())

    async def find(self, name: str) -> str | None:
        return self.people.get(name.lower())


@dataclass
class _Shown:
    channel: str
    ts: str
    payload: Payload
    thread_ts: str | None = None
    numbers: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Choice:
    channel: str
    ts: str | None
    thread_ts: str | None
    action_id: str
    value: str
    label: str


class ConsoleScreen:
    """Draws Block Kit payloads with rich and keeps the numbered buttons."""

    def __init__(self, console: Console, directory: ConsoleDirectory) -> None:
        self.out = console
        self.directory = directory
        self.messages: dict[tuple[str, str], _Shown] = {}
        self.choices: dict[int, _Choice] = {}
        self._numbers = itertools.count(1)
        self._ts = itertools.count(1)

    def next_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.000100"

    def inline(self, text: str) -> Text:
        """mrkdwn -> rich text: mentions by name, bold, italics, code."""
        text = _USER.sub(lambda m: "@" + self.directory.names.get(m.group(1), m.group(1)), text)
        text = _CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
        markup = escape(v.unesc(text))
        markup = _CODE.sub(lambda m: f"[cyan]{m.group(1)}[/cyan]", markup)
        markup = _BOLD.sub(lambda m: f"[bold]{m.group(1)}[/bold]", markup)
        markup = _ITAL.sub(lambda m: f"[italic]{m.group(1)}[/italic]", markup)
        return Text.from_markup(markup)

    def _buttons(self, elements: list[Mapping[str, Any]], where: _Shown | None, channel: str) -> Text:
        line = Text()
        for el in elements:
            if el.get("type") != "button":
                continue
            n = next(self._numbers)
            label = str((el.get("text") or {}).get("text", "?"))
            self.choices[n] = _Choice(
                channel,
                where.ts if where else None,
                where.thread_ts if where else None,
                str(el.get("action_id", "")),
                str(el.get("value") or ""),
                label,
            )
            if where:
                where.numbers.append(n)
            style = {"primary": "bold green", "danger": "bold red"}.get(str(el.get("style", "")), "bold")
            line.append(f"[{n}] {label}", style=style)
            line.append("   ")
        return line

    def draw(self, blocks: list[Mapping[str, Any]], where: _Shown | None, channel: str) -> list[Any]:
        """Rich renderables for a list of blocks."""
        parts: list[Any] = []
        for b in blocks:
            t = b.get("type")
            if t == "header":
                parts.append(Text(str(b["text"]["text"]), style="bold underline"))
            elif t == "section":
                if b.get("text"):
                    body = str(b["text"]["text"])
                    if body.startswith("```") and body.endswith("```"):
                        parts.append(Panel(v.unesc(body[3:-3]), expand=False))
                    else:
                        parts.append(self.inline(body))
                if b.get("fields"):
                    table = Table.grid(padding=(0, 3))
                    cells = [self.inline(f["text"]) for f in b["fields"]]
                    for i in range(0, len(cells), 2):
                        table.add_row(*cells[i : i + 2])
                    parts.append(table)
                if b.get("accessory", {}).get("type") == "button":
                    parts.append(self._buttons([b["accessory"]], where, channel))
            elif t == "context":
                parts.append(
                    Text.assemble(*(self.inline(e.get("text", "")) for e in b.get("elements", [])), style="dim")
                )
            elif t == "divider":
                parts.append(Text("─" * 40, style="dim"))
            elif t == "actions":
                parts.append(self._buttons(list(b.get("elements", [])), where, channel))
            elif t == "input":
                parts.append(Text(f"[input] {b.get('label', {}).get('text', '')}", style="dim"))
        return parts

    def show(
        self, title: str, payload: Payload, *, channel: str, where: _Shown | None = None, style: str = "blue"
    ) -> None:
        """Print one message in a panel."""
        parts = self.draw(list(payload.get("blocks") or []), where, channel)
        if not parts:
            parts = [self.inline(str(payload.get("text", "")))]
        self.out.print(Panel(Group(*parts), title=title, title_align="left", border_style=style, expand=False))

    def forget_numbers(self, shown: _Shown) -> None:
        for n in shown.numbers:
            self.choices.pop(n, None)
        shown.numbers.clear()


class ConsoleTransport:
    """The outbox's delivery to the terminal."""

    paced = False

    def __init__(self, screen: ConsoleScreen) -> None:
        self.screen = screen

    async def post(self, channel: str, payload: Payload, *, thread_ts: str | None, marker: str) -> tuple[str, str]:
        ts = self.screen.next_ts()
        shown = _Shown(channel, ts, payload, thread_ts)
        self.screen.messages[(channel, ts)] = shown
        title = f"{channel}" + (" ↳ thread" if thread_ts else "")
        self.screen.show(title, payload, channel=channel, where=shown)
        return channel, ts

    async def update(self, channel: str, ts: str, payload: Payload) -> None:
        shown = self.screen.messages.get((channel, ts))
        if shown is None:
            shown = _Shown(channel, ts, payload)
            self.screen.messages[(channel, ts)] = shown
        self.screen.forget_numbers(shown)
        shown.payload = payload
        self.screen.show(f"{channel} (updated)", payload, channel=channel, where=shown, style="cyan")

    async def ephemeral(self, channel: str, user: str, payload: Payload, *, thread_ts: str | None) -> None:
        name = self.screen.directory.names.get(user, user)
        self.screen.show(f"only @{name} sees this", payload, channel=channel, style="magenta")

    async def publish_home(self, user: str, view: Payload) -> None:
        name = self.screen.directory.names.get(user, user)
        self.screen.show(f"App Home of @{name}", view, channel=user, style="green")

    async def respond(self, url: str, payload: Payload) -> None:
        self.screen.show("reply", payload, channel="")

    async def upload(self, channel: str, payload: Payload, *, thread_ts: str | None) -> None:
        if "content_b64" in payload:
            size = len(payload["content_b64"]) * 3 // 4
            content = f"(binary file, about {size} bytes; Slack shows it inline)"
        else:
            content = str(payload.get("content", ""))
        self.screen.out.print(
            Panel(content[-2000:], title=f"{channel}: file {payload.get('filename')}", title_align="left", expand=False)
        )

    async def find_posted(
        self, channel: str, thread_ts: str | None, marker: str, since: float
    ) -> tuple[str, str] | None:
        return None  # a new console session starts with an empty screen

    async def channel_id(self, channel: str) -> str:
        return channel  # the console shows channels by the names people gave them

    async def pin(self, channel: str, ts: str, *, pinned: bool) -> None:
        shown = self.screen.messages.get((channel, ts))
        what = shown.payload.get("text", "") if shown else ts
        self.screen.out.print(f"📌 {'pinned' if pinned else 'unpinned'} in {channel}: {str(what)[:80]}", style="dim")


class ConsoleSurface:
    """Forms become prompts: the session asks for each input before anything else is read."""

    def __init__(self) -> None:
        self.pending: list[tuple[v.Modal, str, str]] = []

    async def open_modal(self, trigger_id: str | None, modal: v.Modal, *, user: str, channel: str) -> None:
        self.pending.append((modal, user, channel))

    async def quote(self, channel: str, ts: str) -> Quoted | None:
        return None  # the console keeps no history of what people typed


HELP = """Console commands:
  /ops COMMAND or just COMMAND   run an opsloop command (try: help)
  /as NAME                       act as someone else (people come from console.people)
  /in #CHANNEL                   type in another channel
  click N                        press button [N]
  home                           show your App Home tab
  /quit                          leave (Ctrl-D too)"""


class ConsoleSession:
    """One console chat; `handle` runs a line, `run` reads them until the end of input."""

    def __init__(
        self,
        router: Router,
        services: Services,
        screen: ConsoleScreen,
        surface: ConsoleSurface,
        directory: ConsoleDirectory,
        config: Config,
    ) -> None:
        self.router = router
        self.services = services
        self.screen = screen
        self.surface = surface
        self.directory = directory
        self.user = directory.id_for(config.console.user)
        self.channel = config.console.channel
        self._reader: _LineReader | None = None

    @property
    def out(self) -> Console:
        return self.screen.out

    def prompt(self) -> str:
        return f"{self.directory.names.get(self.user, self.user)}@{self.channel}> "

    async def settle(self) -> None:
        """Let jobs and deliveries finish so output follows the line that caused it."""
        await self.services.jobs.wait_idle(timeout=60)
        await self.services.outbox.drain(timeout=60)

    async def _ask(self, question: str) -> str | None:
        self.out.print(Text(question, style="bold yellow"))
        return await self._read("> ")

    async def _read(self, prompt: str) -> str | None:
        """The next line of input (None at its end), read on the reader thread."""
        if self._reader is None:
            return None
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._reader.ask(prompt, fut)
        return await fut

    async def _fill_forms(self) -> None:
        while self.surface.pending:
            modal, user, channel = self.surface.pending.pop(0)
            self.out.print(
                Panel(
                    self.screen.inline(modal.intro or modal.title),
                    title=f"form: {modal.title}",
                    title_align="left",
                    border_style="yellow",
                    expand=False,
                )
            )
            values: dict[str, str | None] = {}
            for inp in modal.inputs:
                if isinstance(inp, v.TextInput):
                    if inp.initial:
                        hint = f" [{inp.initial[:60]}] (empty keeps it)"
                    else:
                        hint = " (may be left empty)" if inp.optional else ""
                    answer = await self._ask(f"{inp.label}{hint}")
                    if answer is None:
                        return
                    values[inp.name] = answer.strip() or inp.initial or None
                else:
                    try:
                        values[inp.name] = await self._choose(inp)
                    except EOFError:
                        return
            sub = Submission(actor=user, callback=modal.callback, values=values, metadata=modal.metadata)
            try:
                reply = await self.router.submit(sub, self.surface, channel)
            except SubmitErrors as err:
                self.out.print(Text(f"The form was not accepted: {err}", style="red"))
                continue
            if reply is not None:
                self.screen.show(
                    "only you see this", rendering.message(reply.message), channel=channel, style="magenta"
                )

    async def _choose(self, inp: v.Choice) -> str | None:
        """One of a choice's values, asked until the answer is one (a number, a label or a value; empty
        keeps the initial one); EOFError at the end of input. A wrong answer is said, never taken for the
        initial one in silence."""
        opts = " ".join(f"[{i}] {label}" for i, (_, label) in enumerate(inp.options, 1))
        keep = next((label for val, label in inp.options if val == inp.initial), None)
        question = f"{inp.label}: {opts}" + (f" (empty keeps {keep})" if keep else "")
        while True:
            answer = await self._ask(question)
            if answer is None:
                raise EOFError
            a = answer.strip()
            if not a:
                return inp.initial
            if a.isdigit() and 1 <= int(a) <= len(inp.options):
                return inp.options[int(a) - 1][0]
            found = next((val for val, label in inp.options if a.lower() in (val, label.lower())), None)
            if found is not None:
                return found
            self.out.print(Text(f"`{a[:40]}` is not one of the choices: answer 1–{len(inp.options)}.", style="red"))

    async def handle(self, line: str) -> bool:
        """Run one line; False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text in ("/quit", "/exit", "quit", "exit"):
            return False
        if text in ("/help", "?"):
            self.out.print(HELP)
            return True
        if text.startswith("/as"):
            name = text[3:].strip()
            if not name:
                self.out.print(Text("Usage: /as NAME", style="red"))
                return True
            self.user = self.directory.id_for(name)
            self.out.print(Text(f"You are now @{self.directory.names[self.user]} ({self.user}).", style="bold"))
            return True
        if text.startswith("/in"):
            ch = text[3:].strip()
            if not ch or ch.startswith("@") or " " in ch:
                # `/in @bob` would have named a channel "#@bob"; a direct message is `/as NAME` then a command.
                self.out.print(Text("Usage: /in #channel (one channel name; to act as someone, /as NAME)", style="red"))
                return True
            self.channel = ch if ch.startswith("#") else f"#{ch}"
            return True
        if text == "home":
            view = await self.router.home(self.user, self.surface)
            await self.services.outbox.publish_home(self.user, rendering.home(view))
            await self.settle()
            return True
        m = re.fullmatch(r"click\s+#?(\d+)", text)
        if m:
            await self._click(int(m.group(1)))
        else:
            if text.startswith("/ops"):
                text = text[4:]
            elif text.startswith("@opsloop"):
                text = text[8:]
            inv = Invocation(actor=self.user, channel=self.channel, text=text, source="console", trigger_id="console")
            reply = await self.router.command(inv, self.surface)
            title = "everyone sees this" if reply.visibility is v.Visibility.IN_CHANNEL else "only you see this"
            self.screen.show(title, rendering.reply(reply), channel=self.channel, style="magenta")
        await self._fill_forms()
        await self.settle()
        return True

    async def _click(self, n: int) -> None:
        choice = self.screen.choices.get(n)
        if choice is None:
            self.out.print(Text(f"There is no button [{n}] (any more).", style="red"))
            return
        self.out.print(Text(f"@{self.directory.names.get(self.user, self.user)} pressed “{choice.label}”", style="dim"))
        click = Click(
            actor=self.user,
            channel=choice.channel,
            action_id=choice.action_id,
            value=choice.value,
            message_ts=choice.ts,
            thread_ts=choice.thread_ts,
            trigger_id="console",
        )
        reply = await self.router.click(click, self.surface)
        if reply is not None:
            self.screen.show(
                "only you see this", rendering.message(reply.message), channel=choice.channel, style="magenta"
            )

    async def run(self, stdin: TextIO | None = None) -> int:
        """Read lines until the end of input (or /quit); 0 on a clean end."""
        stream = stdin or sys.stdin
        interactive = stream.isatty()
        self._reader = _LineReader(stream, interactive, asyncio.get_running_loop())
        if interactive:
            self.out.print(Text("opsloop console — type `help` for commands, /help for console keys.", style="bold"))
        try:
            while True:
                line = await self._read(self.prompt())
                if line is None:
                    break
                if not interactive:
                    self.out.print(Text(self.prompt() + line.rstrip("\n"), style="bold"))
                if not await self.handle(line):
                    break
        finally:
            self._reader.close()
            await self.settle()
        return 0


class _LineReader:
    """Reads one line when asked, on a daemon thread, so a blocked read never holds up shutdown."""

    def __init__(self, stream: TextIO, interactive: bool, loop: asyncio.AbstractEventLoop) -> None:
        self.stream, self.interactive, self.loop = stream, interactive, loop
        self.requests: queue.SimpleQueue[tuple[str, asyncio.Future[str | None]] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="console-input", daemon=True).start()

    def ask(self, prompt: str, fut: asyncio.Future[str | None]) -> None:
        self.requests.put((prompt, fut))

    def close(self) -> None:
        self.requests.put(None)

    def _run(self) -> None:
        while True:
            req = self.requests.get()
            if req is None:
                return
            prompt, fut = req
            line: str | None
            if self.interactive:
                line = _read_interactive(prompt)
            else:
                raw = self.stream.readline()
                line = raw if raw else None
            self.loop.call_soon_threadsafe(_resolve, fut, line)


def _resolve(fut: asyncio.Future[str | None], line: str | None) -> None:
    if not fut.done():
        fut.set_result(line)


def _read_interactive(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None
