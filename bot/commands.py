"""The grammar users type: text -> command + typed arguments; usage lines; "did you mean".

A command declares its words (`plan new`) and its parameters; parsing is pure (no I/O) and either
returns typed values or raises UsageError carrying the usage line of the nearest command. Slack's
escaped mentions (`<@U123|alice>`) and plain `@alice` are both understood, as are curly quotes.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bot.durations import format_seconds, parse_duration
from bot.errors import UsageError

_QUOTES = {'"': '"', "“": "”", "”": "”", "„": "“"}
_SLACK_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|([^>]*))?>$")
_PLAIN_USER = re.compile(r"^@([\w.\-]+)$")
# ABC-12 (built-in tracker, Jira), a bare number, a Trello card's short link, an Asana task gid.
_KEY = re.compile(r"^(?:([A-Za-z][A-Za-z0-9_]{0,9})-)?(\d{1,20})$")
_SHORT_LINK = re.compile(r"^(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{8}$")
# A pasted link (Slack wraps it in <…>, maybe with |label): Jira browse, Trello card, Asana task.
_KEY_IN_URL = (
    re.compile(r"/browse/([A-Za-z][A-Za-z0-9_]{0,9}-\d{1,20})(?:[/?#]|$)"),
    re.compile(r"trello\.com/c/([A-Za-z0-9]{8})(?:[/?#]|$)"),
    re.compile(r"asana\.com/.*?/(\d{10,20})(?:/f)?/?(?:[?#]|$)"),
)


def key_of_link(text: str) -> str | None:
    """The item key in a pasted Jira, Trello or Asana link; None for anything else."""
    url = text.strip("<>").split("|", 1)[0]
    if not url.startswith(("http://", "https://")):
        return None
    for pattern in _KEY_IN_URL:
        m = pattern.search(url)
        if m:
            return m.group(1)
    return None


_KV = re.compile(r"^([A-Za-z_][\w.\-]*)=(.*)$")


@dataclass(frozen=True)
class Token:
    text: str
    quoted: bool = False


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_LIST_ITEM = re.compile(r"([-*•]|\d+[.)])\s")


def tokenize(text: str) -> list[Token]:
    """Split on whitespace; double quotes (straight or curly) and Slack's <…> group words; raise on an
    open quote."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in _QUOTES:
            start = i
            i += 1
            buf = []
            while i < n and text[i] not in ('"', "”", "“"):
                buf.append(text[i])
                i += 1
            if i >= n:
                raise UsageError(f"The quote opened at `{text[start : start + 20]}` is never closed.")
            i += 1
            tokens.append(Token("".join(buf), quoted=True))
            continue
        start = i
        if c == "<" and (end := text.find(">", i)) != -1 and "<" not in text[i + 1 : end]:
            # Slack's <url|label>, <@U1|name>: one token even when the label has spaces.
            i = end + 1
            tokens.append(Token(text[start:i]))
            continue
        while i < n and not text[i].isspace() and text[i] not in _QUOTES:
            i += 1
        tokens.append(Token(text[start:i]))
    return tokens


class Kind(enum.Enum):
    WORD = "word"
    TEXT = "text"
    MENTION = "mention"
    KEY = "key"
    INT = "int"
    CHOICE = "choice"
    FLAG = "flag"
    PAIRS = "pairs"
    REST = "rest"
    DURATION = "duration"


@dataclass(frozen=True)
class Mention:
    """A user named in chat: by id (`<@U123>`) or by a name still to be looked up (`@alice`)."""

    id: str | None
    name: str | None

    def __str__(self) -> str:
        return f"<@{self.id}>" if self.id else f"@{self.name}"


@dataclass(frozen=True)
class Param:
    """One parameter of a command."""

    name: str
    kind: Kind
    optional: bool = False
    choices: tuple[str, ...] = ()
    default: Any = None
    min: int | None = None
    max: int | None = None
    metavar: str | None = None

    def usage(self) -> str:
        if self.kind is Kind.FLAG:
            return f"[{self.name}]"
        return f"[{self.label}]" if self.optional else self.label

    @property
    def label(self) -> str:
        """How the usage line names it, without the brackets of an optional one: what errors call it."""
        if self.kind is Kind.FLAG:
            return self.name
        if self.kind is Kind.CHOICE:
            core = "|".join(self.choices)
        elif self.kind is Kind.TEXT:
            core = f'"{self.metavar or self.name.upper()}"'
        elif self.kind is Kind.MENTION:
            core = f"@{self.metavar or self.name}"
        elif self.kind is Kind.PAIRS:
            core = "key=value …"
        elif self.kind is Kind.REST:
            core = f"{self.metavar or self.name.upper()}…"
        else:
            core = self.metavar or self.name.upper()
        return core


# Small constructors so declarations read like the usage line.
def text(name: str, *, optional: bool = False, metavar: str | None = None) -> Param:
    return Param(name, Kind.TEXT, optional, metavar=metavar)


def word(name: str, *, optional: bool = False, metavar: str | None = None) -> Param:
    return Param(name, Kind.WORD, optional, metavar=metavar)


def mention(name: str, *, optional: bool = False) -> Param:
    return Param(name, Kind.MENTION, optional)


def key(name: str = "key", *, optional: bool = False) -> Param:
    return Param(name, Kind.KEY, optional, metavar="KEY")


def number(name: str, *, optional: bool = False, default: int | None = None, min: int = 1, max: int = 1000) -> Param:
    return Param(name, Kind.INT, optional, default=default, min=min, max=max)


def choice(name: str, choices: Iterable[str], *, default: str | None = None) -> Param:
    return Param(name, Kind.CHOICE, default is not None, tuple(choices), default=default)


def flag(name: str) -> Param:
    return Param(name, Kind.FLAG, True, default=False)


def pairs(name: str = "params") -> Param:
    return Param(name, Kind.PAIRS, True, default={})


def rest(name: str, *, optional: bool = False, metavar: str | None = None) -> Param:
    return Param(name, Kind.REST, optional, metavar=metavar)


def duration(name: str, *, optional: bool = False, longest: timedelta | None = None) -> Param:
    """A duration like 90s, 2h or 3d; `longest` refuses anything longer (kept in `max`, in seconds)."""
    cap = int(longest.total_seconds()) if longest is not None else None
    return Param(name, Kind.DURATION, optional, max=cap, metavar="DURATION")


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class CommandSpec:
    """A command: `stage.verb` id, the words that call it, its parameters, help and handler."""

    id: str
    words: tuple[str, ...]
    params: tuple[Param, ...]
    handler: Handler
    doc: str = ""
    examples: tuple[str, ...] = ()
    hidden: bool = False

    @property
    def stage(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def summary(self) -> str:
        return (self.doc.strip().splitlines() or [""])[0]

    @property
    def details(self) -> str:
        """The docstring after its first line, each paragraph on one line: chat breaks a line wherever the
        text has a newline, and a docstring's are only where the source wraps. List items keep theirs."""
        paragraphs = []
        for block in _PARAGRAPH_BREAK.split("\n".join(self.doc.strip().splitlines()[1:])):
            lines: list[str] = []
            for line in (raw.strip() for raw in block.splitlines()):
                if lines and line and not _LIST_ITEM.match(line):
                    lines[-1] += " " + line
                elif line:
                    lines.append(line)
            if lines:
                paragraphs.append("\n".join(lines))
        return "\n".join(paragraphs)

    def usage(self) -> str:
        return " ".join([*self.words, *(p.usage() for p in self.params)])


@dataclass(frozen=True)
class Parsed:
    command: CommandSpec
    args: dict[str, Any] = field(default_factory=dict)


def _looks_like(p: Param, tok: Token) -> bool:
    """Whether an unquoted token can only be meant for parameter `p` (used to end a free text)."""
    if tok.quoted:
        return False
    t = tok.text
    if p.kind is Kind.MENTION:
        return bool(_SLACK_USER.match(t) or _PLAIN_USER.match(t))
    if p.kind is Kind.CHOICE:
        return t.lower() in p.choices
    return False


def _parse_mention(t: str) -> Mention | None:
    m = _SLACK_USER.match(t)
    if m:
        return Mention(m.group(1), m.group(2) or None)
    m = _PLAIN_USER.match(t)
    if m:
        return Mention(None, m.group(1))
    return None


class Grammar:
    """Every command's words, for matching and suggestions."""

    def __init__(self, specs: Sequence[CommandSpec]) -> None:
        self.specs = list(specs)
        seen: dict[tuple[str, ...], str] = {}
        for s in self.specs:
            if s.words in seen:
                raise ValueError(f"commands {seen[s.words]} and {s.id} both answer to `{' '.join(s.words)}`")
            seen[s.words] = s.id
        self._by_words = {s.words: s for s in self.specs}
        # Longest words first: `plan new` before `plan`.
        self._lengths = sorted({len(w) for w in self._by_words}, reverse=True)

    def match(self, tokens: list[Token]) -> tuple[CommandSpec, list[Token]] | None:
        """The command whose words start the text, and the remaining tokens."""
        lead: list[str] = []
        for t in tokens[: self._lengths[0] if self._lengths else 0]:
            if t.quoted:  # a quoted token is an argument, never a command word
                break
            lead.append(t.text.lower())
        for n in self._lengths:
            if n <= len(lead):
                spec = self._by_words.get(tuple(lead[:n]))
                if spec is not None:
                    return spec, tokens[n:]
        return None

    def suggest(self, tokens: list[Token]) -> list[CommandSpec]:
        """Commands close to what was typed: a typo, or a stage name with an unknown verb."""
        words = [t.text.lower() for t in tokens[:3] if not t.quoted]
        if not words:
            return []
        visible = [s for s in self.specs if not s.hidden]
        same_stage = [s for s in visible if s.words[0] == words[0]]
        if same_stage:
            subs = {s.words[1]: s for s in same_stage if len(s.words) > 1}
            second = words[1] if len(words) > 1 else ""
            close = difflib.get_close_matches(second, list(subs), n=3, cutoff=0.6) if second else []
            return [subs[c] for c in close] or same_stage
        scored: list[tuple[float, CommandSpec]] = []
        for s in visible:
            whole = difflib.SequenceMatcher(None, " ".join(words[: len(s.words)]), " ".join(s.words)).ratio()
            first = difflib.SequenceMatcher(None, words[0], s.words[0]).ratio()
            score = max(whole, first)
            if score >= 0.7:
                scored.append((score, s))
        scored.sort(key=lambda x: -x[0])
        out: list[CommandSpec] = []
        for _, s in scored:
            if s not in out:
                out.append(s)
        return out[:3]

    def parse(self, text: str) -> Parsed:
        """Parse a whole command line; raise UsageError with a helpful message otherwise."""
        tokens = tokenize(text)
        if not tokens:
            raise UsageError("Tell me what to do: try `help`.")
        found = self.match(tokens)
        if found is None:
            typed = " ".join(t.text for t in tokens[:2])
            close = self.suggest(tokens)
            if close:
                lines = "\n".join(f"• `{s.usage()}`" for s in close)
                stage = tokens[0].text.lower()
                if all(s.words[0] == stage for s in close):
                    # A stage's name: "I don't know `test`" would be wrong, it only needs its verb.
                    if len(tokens) == 1 or tokens[1].quoted:
                        raise UsageError(f"`{stage}` needs a command after it:\n{lines}")
                    raise UsageError(f"`{stage}` has no `{tokens[1].text}`. Did you mean:\n{lines}")
                raise UsageError(f"I don't know `{typed}`. Did you mean:\n{lines}")
            raise UsageError(f"I don't know `{typed}`. Try `help` for the list of commands.")
        spec, rest_tokens = found
        return Parsed(spec, parse_args(spec, rest_tokens))


def _usage_error(spec: CommandSpec, message: str) -> UsageError:
    return UsageError(f"{message}\nUsage: `{spec.usage()}`")


def parse_args(spec: CommandSpec, tokens: list[Token]) -> dict[str, Any]:
    """Bind tokens to the parameters of `spec`."""
    args: dict[str, Any] = {}
    remaining = list(tokens)
    # Flags and key=value pairs may appear anywhere.
    for p in spec.params:
        if p.kind is Kind.FLAG:
            hit = [t for t in remaining if not t.quoted and t.text.lower() == p.name]
            args[p.name] = bool(hit)
            remaining = [t for t in remaining if t not in hit]
        elif p.kind is Kind.PAIRS:
            found: dict[str, str] = {}
            keep: list[Token] = []
            for t in remaining:
                m = None if t.quoted else _KV.match(t.text)
                if m:
                    found[m.group(1)] = m.group(2)
                else:
                    keep.append(t)
            args[p.name] = found
            remaining = keep
    positional = [p for p in spec.params if p.kind not in (Kind.FLAG, Kind.PAIRS)]
    i = 0
    # Why an optional parameter let a word pass: said if nothing else takes that word (`audit abc`).
    passed: dict[int, str] = {}
    for idx, p in enumerate(positional):
        later = positional[idx + 1 :]
        if i >= len(remaining):
            if not p.optional:
                raise _usage_error(spec, f"Missing {p.usage()}.")
            args[p.name] = p.default
            continue
        tok = remaining[i]
        value: Any
        if p.kind is Kind.TEXT:
            if tok.quoted:
                value, i = tok.text, i + 1
            else:
                j = i
                while j < len(remaining) and not any(_looks_like(q, remaining[j]) for q in later):
                    if remaining[j].quoted:
                        break
                    j += 1
                if j == i:
                    if p.optional:
                        args[p.name] = p.default
                        continue
                    raise _usage_error(spec, f"Missing {p.usage()}.")
                value, i = " ".join(t.text for t in remaining[i:j]), j
            if not value.strip() and not p.optional:
                raise _usage_error(spec, f"{p.usage()} can't be empty.")
        elif p.kind is Kind.REST:
            value, i = " ".join(t.text if not t.quoted else f'"{t.text}"' for t in remaining[i:]), len(remaining)
        elif p.kind is Kind.MENTION:
            who = None if tok.quoted else _parse_mention(tok.text)
            if who is None:
                if p.optional:
                    passed.setdefault(i, f"`{tok.text}` is not a person for {p.label}; mention someone like @alice.")
                    args[p.name] = p.default
                    continue
                raise _usage_error(spec, f"`{tok.text}` is not a person; mention someone like @alice.")
            value, i = who, i + 1
        elif p.kind is Kind.CHOICE:
            low = tok.text.lower()
            if low not in p.choices:
                if p.optional:
                    passed.setdefault(i, f"`{tok.text}` is not one of {', '.join(p.choices)}.")
                    args[p.name] = p.default
                    continue
                # `deploy api to prod`: the version was left out and `to` taken for it; say so.
                skipped = next(
                    (
                        q
                        for q in positional[:idx]
                        if q.kind is Kind.WORD and str(args.get(q.name, "")).lower() in p.choices
                    ),
                    None,
                )
                if skipped is not None:
                    raise _usage_error(spec, f"Missing {skipped.usage()}.")
                if len(p.choices) == 1:  # a word of the sentence, like `to` in `deploy api 1.2 to prod`
                    raise _usage_error(spec, f"Expected `{p.choices[0]}` before `{tok.text}`.")
                raise _usage_error(spec, f"`{tok.text}` is not one of {', '.join(p.choices)}.")
            value, i = low, i + 1
        elif p.kind is Kind.KEY:
            raw = key_of_link(tok.text) or tok.text.strip("#")
            m2 = _KEY.match(raw)
            if m2 is not None:
                value = f"{m2.group(1).upper()}-{m2.group(2)}" if m2.group(1) else m2.group(2)
            elif _SHORT_LINK.match(raw):
                value = raw  # Trello short links are case-sensitive
            else:
                raise _usage_error(spec, f"`{tok.text}` is not an item key like OPS-12 (or a card or task link).")
            i += 1
        elif p.kind is Kind.INT:
            try:
                n = int(tok.text.lstrip("#"))
            except ValueError:
                if p.optional:
                    passed.setdefault(i, f"`{tok.text}` is not a number; {p.label} is a whole number.")
                    args[p.name] = p.default
                    continue
                raise _usage_error(spec, f"`{tok.text}` is not a number; {p.label} is a whole number.") from None
            lo, hi = p.min if p.min is not None else -(10**9), p.max if p.max is not None else 10**9
            if not lo <= n <= hi:
                raise _usage_error(spec, f"{p.label} must be between {lo} and {hi}.")
            value, i = n, i + 1
        elif p.kind is Kind.DURATION:
            try:
                d: timedelta = parse_duration(tok.text)
            except ValueError as err:
                raise _usage_error(spec, str(err)) from None
            if p.max is not None and d.total_seconds() > p.max:
                raise _usage_error(spec, f"{p.label} can be at most {format_seconds(p.max)}; `{tok.text}` is longer.")
            value, i = d, i + 1
        else:  # WORD
            value, i = tok.text, i + 1
        args[p.name] = value
    if i < len(remaining):
        if i in passed:
            raise _usage_error(spec, passed[i])
        extra = " ".join(t.text for t in remaining[i:])
        raise _usage_error(spec, f"I don't understand `{extra[:80]}`.")
    return args
