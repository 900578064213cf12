"""Secret redaction before anything is written (audit, chat, logs).

Two nets: the exact values of secrets we know (from the environment), and patterns of well-known token
shapes and `key=value` secrets, so a token pasted into chat is not stored either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

MASK = "[redacted]"

_PATTERNS = [
    re.compile(r"xox[abeposr]-[A-Za-z0-9-]{8,}"),  # Slack bot/user/legacy tokens
    re.compile(r"xapp-[A-Za-z0-9-]{8,}"),  # Slack app-level tokens
    re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub tokens
    re.compile(r"glpat-[A-Za-z0-9_-]{20,}"),  # GitLab tokens
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key ids
    re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),  # JWTs
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        # Not `\b`: in AWS_SECRET_ACCESS_KEY= or DB_PASSWORD= the name follows an underscore.
        r"(?i)(?<![A-Za-z0-9])((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)"
        r"\s*[=:]\s*)"
        r"(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
    ),
    re.compile(r"(?i)(://[^/\s:@]+:)[^@\s/]+(@)"),  # credentials inside URLs
]


_SEEN_MAX, _SEEN_CHARS = 128, 32_768  # texts remembered by may_mask_text: at most 4 MiB

# A word that each pattern above contains (except the URL one: `://` and `@`), case-folded.
_WORDS = (
    *("xox", "xapp-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "glpat-", "akia", "eyj", "private key", "bearer"),
    *("pass", "pwd", "secret", "token", "apikey", "api_key", "api-key", "accesskey", "access_key", "access-key"),
)

# One pass that finds every place a pattern above could start; most texts have none.
_MAYBE = re.compile(
    "|".join(f"(?i:{p.pattern[4:]})" if p.pattern.startswith("(?i)") else f"(?:{p.pattern})" for p in _PATTERNS)
)


class Redactor:
    """Masks known secret values and secret-looking substrings.

    The secrets are fixed when it is made (from the config and the environment): what it answered for a
    text stays true, which is what lets its users remember answers (`may_mask_text`, the Slack acks)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)
        # Documents seen lately and whether they may hold a secret: most replies are the same few texts
        # (help, usage, "nothing here"), and scanning them again cost more than building them.
        self._seen: dict[str, bool] = {}

    def text(self, s: str) -> str:
        """The text with every secret masked."""
        if not _MAYBE.search(s) and not any(v in s for v in self._values):
            return s  # the common case, one scan instead of one per pattern
        for v in self._values:
            if v in s:
                s = s.replace(v, MASK)
        for p in _PATTERNS:
            # Group 1, when present, is the kept prefix (`token=`); a last group `(@)` is kept too.
            if p.groups == 0:
                s = p.sub(MASK, s)
            elif p.pattern.endswith("(@)"):
                s = p.sub(lambda m: m.group(1) + MASK + "@", s)
            else:
                s = p.sub(lambda m: m.group(1) + MASK, s)
        return s

    def texts(self, texts: Iterable[str]) -> dict[str, str]:
        """Each distinct text -> `text(t)`, the lot scanned as one text first (the summaries of a
        delivery's alerts: one scan instead of the combined pattern over each)."""
        distinct = dict.fromkeys(texts)
        if not self._may_mask_text("\n".join(distinct)):  # not remembered: rarely the same twice
            return {t: t for t in distinct}
        return {t: self.text(t) for t in distinct}

    def may_mask_text(self, text: str) -> bool:
        """False only when `text()` would change nothing in `text`. Texts up to 32 KiB are remembered."""
        if len(text) > _SEEN_CHARS:  # rarely the same twice: not worth keeping
            return self._may_mask_text(text)
        known = self._seen.get(text)
        if known is None:
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            known = self._seen[text] = self._may_mask_text(text)
        return known

    def _may_mask_text(self, document: str) -> bool:
        if any(v in document for v in self._values):
            return True
        # _MAYBE tries ten alternatives at every character (about 3 ms for a 32 KiB body); every pattern
        # needs one of these words first, found by a plain substring search of the case-folded text
        # (case folding, as IGNORECASE matches `ſ` for `s` and `K` for `k`).
        folded = document.casefold()
        if not any(w in folded for w in _WORDS) and not ("://" in folded and "@" in folded):
            return False
        if len(folded) != len(document) or "private key" in folded:
            return bool(_MAYBE.search(document))  # positions differ after folding, or a match starts early
        # Every pattern starts at its word (but `client_secret`, up to 7 characters before `secret`; a URL's
        # credentials at `://`): try the patterns only there. Words such as "pass" are common in ordinary
        # text (help, test reports), and one search of the whole document cost more than the rest of a reply.
        for word in (*_WORDS, "://"):
            back = 7 if word == "secret" else 0
            at = folded.find(word)
            while at != -1:
                if any(_MAYBE.match(document, p) for p in range(max(0, at - back), at + 1)):
                    return True
                at = folded.find(word, at + 1)
        return False

    def document(self, v: Any) -> Any:
        """`value(v)`, for a whole payload (a message, a form's errors): its distinct strings are scanned once,
        as one text, and walked one by one only when they may hold a secret, which most never do."""
        # Distinct strings only: an Alertmanager delivery repeats its label names, times, URLs and
        # descriptions in every alert, and scanning each once cut the text of a 50-alert body from 27 to 5 kB.
        # Joined by newlines: a match inside one string is a match in the joined text (no pattern needs
        # the start of its string), and one that spans two only sends the payload to the walk.
        if self.may_mask_text("\n".join(dict.fromkeys(_strings(v)))):
            return self.value(v)
        return v

    def value(self, v: Any) -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [self.value(x) for x in v]
        return v


def _strings(v: Any) -> list[str]:
    """Every string in a JSON-like value, dict keys included, in no particular order."""
    # A loop over a stack rather than recursion: one Python call per string and container cost more than
    # the scan of the strings. JSON's own types first, then their subclasses (a StrEnum, an OrderedDict).
    out: list[str] = []
    add = out.append
    stack = [v]
    pop, push = stack.pop, stack.append
    while stack:
        x = pop()
        t = type(x)
        if t is dict:
            for k, y in x.items():
                if isinstance(k, str):
                    add(k)
                if type(y) is str:
                    add(y)
                elif y is not None and type(y) is not int and type(y) is not float and type(y) is not bool:
                    push(y)
        elif t is list or t is tuple:
            stack.extend(x)
        elif isinstance(x, str):
            add(x)
        elif isinstance(x, dict):
            push(dict(x))
        elif isinstance(x, list | tuple):
            stack.extend(x)
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record, and its traceback (as the
    `exc_text` that standard formatters print instead of formatting the exception again)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self.redactor.text(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = self.redactor.text(_TRACEBACKS.formatException(record.exc_info))
        return True


_TRACEBACKS = logging.Formatter()
OWN_LOGGERS = ("bot", "handlers", "adapters")


def redact_own_logs(redactor: Redactor) -> None:
    """Mask secrets in every record opsloop's own loggers make, before any handler sees it (pytest's,
    journald's, one an operator adds), not only in the handler `opsloop run` installs: tools' error
    messages are logged as they came. Replaces the filter an earlier call installed."""
    flt = RedactingFilter(redactor)
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger) and name.split(".", 1)[0] in OWN_LOGGERS:
            for old in [f for f in lg.filters if isinstance(f, RedactingFilter)]:
                lg.removeFilter(old)
            lg.addFilter(flt)
