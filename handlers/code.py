"""code: read a service's repository from chat: recent commits, what changed between two versions,
what is not deployed yet, and who knows a path.

Every answer comes from the `Repository` port (`services.repos[service]`), whose adapter runs git on
the blocking pool; nothing here touches git or a shell. Versions, ranges and paths typed in chat are
checked here for the mistakes people make (a range without `..`, a path with `..`) and again by the
adapter, which refuses anything git could read as an option. Ticket keys in commit messages become
links when `services.X.repo.ticket_url` is set. Answers stay a few blocks long; a longer list is
attached as a text file and the message says so.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bot import commands as c
from bot import views as v
from bot.clock import iso
from bot.config import RepoConfig
from bot.context import Ctx
from bot.errors import NotConfigured, NotFound, UsageError, UserError
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    Commit,
    FileChange,
    Repository,
)
from bot.releases import environment, target_for, target_spec
from bot.router import CommandGroup
from bot.store import one

group = CommandGroup("code", "Read the code: recent commits, changes between versions, what is not deployed yet.")

LOG_DEFAULT = 10
LOG_MAX = 200
SHOWN = 25  # commit lines in a message; more go to an attached file
FILES_SHOWN = 10
TICKETS_SHOWN = 15
AUTHORS_SHOWN = 15
DIFF_FETCH = 1000  # commits read for a diff (authors and tickets are counted over these)
WHO_LIMIT = 500  # commits touching a path that `code who` looks at
SECTION_CHARS = 2800  # under Block Kit's 3000 characters per section text
SUBJECT_CHARS = 140
BODY_TICKETS = 5  # ticket keys from a commit's body shown after its subject
_SLACK_LINK = re.compile(r"^<([^|>]*)(?:\|([^>]*))?>$")


# --- the repository of a service ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Repo:
    service: str
    port: Repository
    config: RepoConfig

    @property
    def branch(self) -> str:
        return self.config.branch


def _repo(ctx: Ctx, service: str) -> _Repo:
    svc = ctx.service(service)  # NotFound, with the nearest names
    port = ctx.services.repos.get(service)
    if svc.repo is None or port is None:
        raise NotConfigured(
            f"`{service}` has no repository: add `services.{service}.repo` to the config "
            "(`path:` of a clone or `url:` to clone, and `branch:`)."
        )
    return _Repo(service, port, svc.repo)


def _detail(err: AdapterError) -> str:
    # Adapters quote what was asked (a version typed in chat): escaped, it stays text.
    return v.esc(str(err).removeprefix(f"{err.tool}: "))


@contextmanager
def _git_errors(service: str) -> Iterator[None]:
    """Turn the repository's failures into sentences for the user (never a traceback)."""
    try:
        yield
    except AdapterNotFound as err:
        raise NotFound(f"The repository of `{service}` has {_missing(err)}") from None
    except (AdapterUnavailable, AdapterTimeout) as err:
        raise UserError(f"I couldn't read the repository of `{service}`: {_detail(err)}") from None
    except AdapterError as err:  # a version or path it refused, an ambiguous short SHA, git's complaint
        raise UserError(f"{_detail(err)}.") from None


def _missing(err: AdapterNotFound) -> str:
    # "no tag or commit `1.2.3` in /srv/api" -> "no tag or commit `1.2.3` (in /srv/api)."
    text = _detail(err)
    head, sep, where = text.partition(" in ")
    return f"{head} (in {where})." if sep else f"{text}."


def _usage(command: str, message: str) -> UsageError:
    """A UsageError that ends with the usage line of `code COMMAND`, like the grammar's own."""
    spec = next(s for s in group.commands if s.id == f"code.{command}")
    return UsageError(f"{message}\nUsage: `{spec.usage()}`")


def _check_version(version: str, what: str) -> None:
    if not version:
        raise _usage("diff", f"The {what} version is missing.")
    if version.startswith("-"):
        raise _usage("diff", f"`{v.esc(version[:40])}` looks like an option, not a tag, branch or commit SHA.")


# --- rendering ------------------------------------------------------------------------------------------


def ticket_link(ticket_url: str, key: str) -> str:
    """The URL of a ticket: `{key}` in the configured URL is replaced, else the key is appended."""
    if "{key}" in ticket_url:
        return ticket_url.replace("{key}", key)
    return ticket_url.rstrip("/") + "/" + key


def _ticket(key: str, ticket_url: str | None) -> str:
    return f"<{ticket_link(ticket_url, key)}|{key}>" if ticket_url else f"`{key}`"


def _linked_subject(commit: Commit, ticket_url: str | None) -> str:
    """The subject (escaped, clipped) with its ticket keys linked; keys only in the body follow it."""
    subject = commit.subject if len(commit.subject) <= SUBJECT_CHARS else commit.subject[: SUBJECT_CHARS - 1] + "…"
    text = v.esc(subject)
    if not commit.tickets:
        return text
    in_subject = [k for k in commit.tickets if re.search(rf"\b{re.escape(k)}\b", text)]
    if ticket_url and in_subject:
        keys = sorted(in_subject, key=len, reverse=True)  # ABC-12 before ABC-1
        pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in keys) + r")\b")
        text = pattern.sub(lambda m: _ticket(m.group(1), ticket_url), text)
    rest = [k for k in commit.tickets if k not in in_subject]
    if rest:
        text += " · " + ", ".join(_ticket(k, ticket_url) for k in rest[:BODY_TICKETS])
        if len(rest) > BODY_TICKETS:
            text += f" +{len(rest) - BODY_TICKETS}"
    return text


def _day(commit: Commit) -> str:
    return commit.date.strftime("%Y-%m-%d")


def commit_line(commit: Commit, ticket_url: str | None) -> str:
    """One commit as a chat line: short SHA, date, author, subject with tickets linked."""
    merge = " _(merge)_" if commit.merge else ""
    return f"`{commit.short}` {_day(commit)} *{v.esc(commit.author)}* {_linked_subject(commit, ticket_url)}{merge}"


def _plain_line(commit: Commit) -> str:
    tickets = f"  [{', '.join(commit.tickets)}]" if commit.tickets else ""
    merge = "  (merge)" if commit.merge else ""
    return (
        f"{commit.short}  {commit.date.strftime('%Y-%m-%d %H:%M')}  {commit.author}  {commit.subject}{tickets}{merge}"
    )


def _sections(title: str, lines: Sequence[str]) -> list[v.Block]:
    """Lines in as few sections as fit Block Kit's text limit; the title leads the first."""
    blocks: list[v.Block] = []
    buf = f"*{title}*"
    for line in lines:
        if len(buf) + 1 + len(line) > SECTION_CHARS:
            blocks.append(v.Section(buf))
            buf = line[:SECTION_CHARS]
        else:
            buf += "\n" + line
    blocks.append(v.Section(buf))
    return blocks


def _tickets(commits: Sequence[Commit], ticket_url: str | None) -> str:
    keys = list(dict.fromkeys(k for cm in commits for k in cm.tickets))
    if not keys:
        return "none mentioned"
    shown = ", ".join(_ticket(k, ticket_url) for k in keys[:TICKETS_SHOWN])
    return shown + (f" and {len(keys) - TICKETS_SHOWN} more" if len(keys) > TICKETS_SHOWN else "")


def _authors(commits: Sequence[Commit]) -> str:
    counts = Counter(cm.author for cm in commits)
    ranked = sorted(counts.items(), key=lambda x: (-x[1], x[0]))
    shown = ", ".join(f"{v.esc(a)} ({n})" for a, n in ranked[:AUTHORS_SHOWN])
    return shown + (f" and {len(ranked) - AUTHORS_SHOWN} more" if len(ranked) > AUTHORS_SHOWN else "")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _file_name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-")[:100] + ".txt"


async def _attach(ctx: Ctx, filename: str, title: str, lines: Sequence[str]) -> None:
    await ctx.services.upload(ctx.channel, filename, "\n".join(lines) + "\n", title=title, comment=title)


# --- commands -------------------------------------------------------------------------------------------


@group.command(
    "code log",
    c.word("service"),
    c.number("n", optional=True, default=LOG_DEFAULT, min=1, max=LOG_MAX),
    examples=("code log api", "code log api 50"),
)
async def log_(ctx: Ctx, service: str, n: int) -> v.Reply:
    """Recent commits of a service's branch: short SHA, date, author, subject, tickets linked.

    Shows the last 10 (or `N`, up to 200); beyond 25 the whole list is attached as a file."""
    repo = _repo(ctx, service)
    with _git_errors(service):
        commits = await repo.port.log(repo.branch, n)
    if not commits:
        return v.Reply.text(f"The branch `{v.esc(repo.branch)}` of `{service}` has no commits yet.")
    url = repo.config.ticket_url
    title = f"{service} · {repo.branch}: last {_count(len(commits), 'commit')}"
    blocks: list[v.Block] = [v.Header(title)]
    blocks += _sections("Commits", [commit_line(cm, url) for cm in commits[:SHOWN]])
    if len(commits) > SHOWN:
        await _attach(
            ctx,
            _file_name(service, repo.branch, "log"),
            f"Last {len(commits)} commits of {service} ({repo.branch})",
            [_plain_line(cm) for cm in commits],
        )
        blocks.append(v.Context((f"Showing {SHOWN} of {len(commits)}; the whole list is attached as a file.",)))
    return v.Reply(v.Message(title, tuple(blocks)))


def _split_range(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("..")
    if not sep:
        raise _usage("diff", f"`{v.esc(text[:60])}` is not a range: write it `FROM..TO`, like `v1.4.0..v1.5.0`.")
    if new.startswith("."):
        raise _usage("diff", "Use two dots between the versions (`FROM..TO`), not three.")
    if not old or not new:
        raise _usage("diff", f"`{v.esc(text[:60])}` needs a version on both sides of `..`, like `v1.4.0..v1.5.0`.")
    if ".." in new:
        raise _usage("diff", f"`{v.esc(text[:60])}` has more than one `..`; give one range, `FROM..TO`.")
    _check_version(old, "FROM")
    _check_version(new, "TO")
    return old, new


def _files_summary(files: Sequence[FileChange]) -> str:
    added = sum(f.added or 0 for f in files)
    deleted = sum(f.deleted or 0 for f in files)
    return f"{_count(len(files), 'file')}, +{added} −{deleted}"


def _file_line(f: FileChange) -> str:
    counts = "binary" if f.added is None else f"+{f.added} −{f.deleted}"
    renamed = f" (from `{v.esc(f.old_path)}`)" if f.old_path else ""
    name = f.path if len(f.path) <= 120 else "…" + f.path[-119:]
    return f"`{v.esc(name)}` {counts}{renamed}"


@group.command(
    "code diff",
    c.word("service"),
    c.word("versions", metavar="FROM..TO"),
    examples=("code diff api v1.4.0..v1.5.0", "code diff api 1.4.0..main", "code diff api main~3..main"),
)
async def diff(ctx: Ctx, service: str, versions: str) -> v.Reply:
    """What changed between two versions (tags, branches or SHAs, `~N` back from one): commits, authors, files, tickets.

    Commits in TO that are not in FROM, newest first; files are counted from the versions' common
    ancestor to TO. A long list of commits is attached as a file."""
    old, new = _split_range(versions)
    repo = _repo(ctx, service)
    with _git_errors(service):
        commits = await repo.port.commits_between(old, new, limit=DIFF_FETCH)
        total = len(commits)
        if total >= DIFF_FETCH:
            total = await repo.port.count_between(old, new)
        files = await repo.port.files_changed(old, new) if commits else []
        behind = await repo.port.count_between(new, old) if not commits else 0
    label = f"{old}..{new}"
    if not commits:
        if behind:
            return v.Reply.text(
                f"Nothing in `{v.esc(label)}`: `{v.esc(new)}` is behind `{v.esc(old)}`. "
                f"The other way round, `code diff {service} {v.esc(new)}..{v.esc(old)}`, has "
                f"{_count(behind, 'commit')}."
            )
        return v.Reply.text(f"No commits between `{v.esc(old)}` and `{v.esc(new)}` of `{service}`: they are the same.")
    url = repo.config.ticket_url
    merges = sum(1 for cm in commits if cm.merge)
    counted = "" if total == len(commits) else f" (authors and tickets of the newest {len(commits)})"
    fields = (
        ("Commits", _count(total, "commit") + (f" ({_count(merges, 'merge')})" if merges else "") + counted),
        ("Authors", _authors(commits)),
        ("Files changed", _files_summary(files) if files else "none"),
        ("Tickets", _tickets(commits, url)),
    )
    title = f"{service} {label}"
    blocks: list[v.Block] = [v.Header(title), v.Section(fields=fields)]
    blocks += _sections("Commits", [commit_line(cm, url) for cm in commits[:SHOWN]])
    if files:
        top = sorted(files, key=lambda f: (-f.lines, f.path))[:FILES_SHOWN]
        more = f" (top {FILES_SHOWN} of {len(files)} by lines changed)" if len(files) > FILES_SHOWN else ""
        blocks += _sections(f"Files{more}", [_file_line(f) for f in top])
    notes: list[str] = []
    if total > SHOWN or len(files) > FILES_SHOWN:
        lines = [f"{title}: {_count(total, 'commit')}, {_files_summary(files)}", "", "Commits (newest first):"]
        lines += [_plain_line(cm) for cm in commits]
        if total > len(commits):
            lines.append(f"... and {total - len(commits)} older commits")
        lines += ["", "Files:"]
        lines += [
            f"{f.path}  "
            + ("binary" if f.added is None else f"+{f.added} -{f.deleted}")
            + (f"  (from {f.old_path})" if f.old_path else "")
            for f in files
        ]
        await _attach(ctx, _file_name(service, label), f"Changes in {title}", lines)
        notes.append(
            f"Showing {min(SHOWN, len(commits))} of {_count(total, 'commit')}"
            f" and {min(FILES_SHOWN, len(files))} of {_count(len(files), 'file')};"
            " the full lists are attached as a file."
        )
    if notes:
        blocks.append(v.Context(tuple(notes)))
    return v.Reply(v.Message(f"{title}: {_count(total, 'commit')}", tuple(blocks)))


@dataclass(frozen=True)
class _Deployed:
    """What runs in an environment: a version and how we know it, or (version None) never anything."""

    version: str | None
    how: str


async def _deployed(ctx: Ctx, service: str, env: str) -> _Deployed:
    """The version of the newest release that reached `env` (succeeded, or still baking), else what
    the deploy target reports. UserError when neither can tell although something may run there."""

    def q(db: Any) -> dict[str, Any] | None:
        return one(
            db,
            "SELECT id, action, version, state, requester, finished_at, started_at, created_at FROM releases"
            " WHERE service = ? AND env = ? AND action IN ('deploy', 'rollback') AND state IN ('succeeded', 'baking')"
            " ORDER BY id DESC LIMIT 1",
            (service, env),
        )

    r = await ctx.store.read(q)
    if r is not None and r["version"]:
        when = r["finished_at"] or r["started_at"] or r["created_at"]
        what = "rollback" if r["action"] == "rollback" else "release"
        baking = ", still baking" if r["state"] == "baking" else ""
        return _Deployed(r["version"], f"{what} {r['id']} by <@{r['requester']}>, {iso(when)}{baking}")
    unnamed = f"the last release there (rollback {r['id']}) did not record its version" if r is not None else None
    try:
        spec = target_spec(ctx.config, service, env)
        running = await target_for(ctx.services, spec).running_version(spec)
    except NotConfigured:
        if unnamed:
            raise UserError(
                f"I can't tell which version of `{service}` runs in `{env}`: {unnamed}, and `{service}` "
                "has no deploy target to ask."
            ) from None
        return _Deployed(
            None, f"Nothing of `{service}` was ever deployed to `{env}` by opsloop (and it has no deploy target)."
        )
    except AdapterError as err:
        first = unnamed or "opsloop has no release of it there"
        raise UserError(
            f"I can't tell which version of `{service}` runs in `{env}`: {first}, and the deploy target "
            f"could not be read ({v.esc(str(err))})."
        ) from None
    if running:
        source = unnamed or "opsloop has no release of it there"
        return _Deployed(running, f"reported by the {spec.kind} target; {source}")
    if unnamed:
        raise UserError(
            f"I can't tell which version of `{service}` runs in `{env}`: {unnamed}, and the deploy target reports none."
        )
    return _Deployed(
        None,
        f"Nothing of `{service}` was ever deployed to `{env}`: opsloop has no release of it there, and the "
        "deploy target reports no running version.",
    )


@group.command(
    "code pending",
    c.word("service"),
    c.word("env"),
    examples=("code pending api prod", "code pending api staging"),
)
async def pending(ctx: Ctx, service: str, env: str) -> v.Reply:
    """Commits on the service's branch that are not deployed to ENV yet.

    The deployed version is that of the last release that reached ENV (succeeded or still baking), or,
    when opsloop has none, the version the deploy target reports."""
    repo = _repo(ctx, service)
    environment(ctx.config, env)  # NotFound with the configured names
    deployed = await _deployed(ctx, service, env)
    if deployed.version is None:
        return await _never_deployed(ctx, repo, env, deployed.how)
    url = repo.config.ticket_url
    branch = repo.branch
    version = deployed.version
    with _git_errors(service):
        try:
            await repo.port.resolve(version)
        except AdapterNotFound:
            raise NotFound(
                f"`{env}` runs `{service}` `{v.esc(version)}` ({deployed.how}), but its repository "
                f"has no tag or commit `{v.esc(version)}`, so I can't tell what is pending."
            ) from None
        commits = await repo.port.commits_between(version, branch, limit=DIFF_FETCH)
        total = len(commits)
        if total >= DIFF_FETCH:
            total = await repo.port.count_between(version, branch)
        aside = await repo.port.count_between(branch, version)
    shown = v.esc(version)
    if not commits:
        text = (
            f"✅ Nothing pending: `{env}` runs `{service}` `{shown}` ({deployed.how}), and "
            f"`{v.esc(branch)}` has no commits beyond it."
        )
        if aside:
            text += f" `{shown}` has {_count(aside, 'commit')} that `{v.esc(branch)}` doesn't."
        return v.Reply.text(text)
    title = f"{service}: {_count(total, 'commit')} on {branch} not in {env} yet"
    fields = (
        (f"In {env}", f"`{shown}` ({deployed.how})"),
        ("Pending", _count(total, "commit") + f" on `{v.esc(branch)}`"),
        ("Authors", _authors(commits)),
        ("Tickets", _tickets(commits, url)),
    )
    blocks: list[v.Block] = [v.Header(title), v.Section(fields=fields)]
    blocks += _sections("Not deployed yet", [commit_line(cm, url) for cm in commits[:SHOWN]])
    notes: list[str] = []
    if aside:
        notes.append(f"`{shown}` also has {_count(aside, 'commit')} that `{v.esc(branch)}` doesn't (a hotfix?).")
    if total > SHOWN:
        await _attach(
            ctx,
            _file_name(service, env, "pending"),
            f"{service}: commits on {branch} not in {env} ({version})",
            [_plain_line(cm) for cm in commits],
        )
        notes.append(f"Showing {SHOWN} of {total}; the whole list is attached as a file.")
    if notes:
        blocks.append(v.Context(tuple(notes)))
    return v.Reply(v.Message(title, tuple(blocks)))


async def _never_deployed(ctx: Ctx, repo: _Repo, env: str, why: str) -> v.Reply:
    """`code pending` where nothing was ever deployed: all of the branch is pending."""
    branch = repo.branch
    with _git_errors(repo.service):
        commits = await repo.port.log(branch, SHOWN)
        total = await repo.port.count_between(None, branch) if len(commits) >= SHOWN else len(commits)
    title = f"{repo.service}: all of {branch} is pending for {env}"
    blocks: list[v.Block] = [
        v.Header(title),
        v.Section(f"{why} Everything on `{v.esc(branch)}` is pending: {_count(total, 'commit')}."),
    ]
    if commits:
        lines = [commit_line(cm, repo.config.ticket_url) for cm in commits]
        blocks += _sections(f"Newest on {v.esc(branch)}", lines)
    if total > len(commits):
        blocks.append(v.Context((f"Showing the newest {len(commits)} of {total}.",)))
    return v.Reply(v.Message(f"{title}: {_count(total, 'commit')}", tuple(blocks)))


def _chat_path(text: str) -> str:
    """The path as typed: Slack turns `app.py` into `<http://app.py|app.py>`; take the words back."""
    m = _SLACK_LINK.match(text)
    if m:
        return v.unesc(m.group(2) or m.group(1).removeprefix("http://").removeprefix("https://"))
    return v.unesc(text)


def _check_path(path: str) -> None:
    if path.startswith("-"):
        raise _usage(
            "who", f"`{v.esc(path[:60])}` looks like an option; give a path in the repository, like `src/app.py`."
        )
    if ".." in path.split("/"):
        raise _usage(
            "who", f"`{v.esc(path[:60])}` has `..` in it; give a path inside the repository, like `src/app.py`."
        )
    if path.startswith("/"):
        raise _usage(
            "who",
            f"`{v.esc(path[:60])}` is an absolute path; give it relative to the repository root, like `src/app.py`.",
        )


@group.command(
    "code who",
    c.word("path"),
    c.word("service", optional=True),
    examples=("code who src/payments/", "code who charts/api/values.yaml api"),
)
async def who(ctx: Ctx, path: str, service: str | None) -> v.Reply:
    """Who changed a file or directory recently: commits per author and when they last did.

    PATH is relative to the repository root. SERVICE can be left out when only one service has a
    repository. Merges are not counted; the newest 500 commits that touch the path are looked at."""
    path = _chat_path(path)
    services = ctx.config.services
    if service is not None and service not in services and path in services:
        path, service = _chat_path(service), path  # `code who api src/app.py`
    _check_path(path)
    if service is None:
        with_repo = sorted(name for name, s in services.items() if s.repo is not None)
        if not with_repo:
            raise NotConfigured("No service has a repository: add `services.NAME.repo` to the config.")
        if len(with_repo) > 1:
            names = ", ".join(f"`{n}`" for n in with_repo)
            raise UsageError(f"Which service's repository? Say `code who {v.esc(path)} SERVICE` (one of {names}).")
        service = with_repo[0]
    repo = _repo(ctx, service)
    with _git_errors(service):
        authors = await repo.port.authors_of(path, repo.branch, limit=WHO_LIMIT)
    shown_path = v.esc(path or ".")
    if not authors:
        return v.Reply.text(
            f"No commit on `{v.esc(repo.branch)}` of `{service}` touches `{shown_path}`. "
            "Is the path right? It is relative to the repository root, like `src/app.py`."
        )
    commits = sum(a.commits for a in authors)
    lines = [
        f"*{v.esc(a.author)}* — {_count(a.commits, 'commit')}, last {a.last.strftime('%Y-%m-%d')}"
        for a in authors[:AUTHORS_SHOWN]
    ]
    title = f"Who changed {path or '.'} ({service}, {repo.branch})"
    blocks: list[v.Block] = [v.Header(title)]
    blocks += _sections(f"Authors of `{shown_path}`", lines)
    scope = f"the newest {WHO_LIMIT} commits that touch it" if commits >= WHO_LIMIT else _count(commits, "commit")
    note = f"{_count(len(authors), 'author')} in {scope} (merges not counted)"
    if len(authors) > AUTHORS_SHOWN:
        note += f"; {len(authors) - AUTHORS_SHOWN} more not shown"
    blocks.append(v.Context((note + ".",)))
    return v.Reply(v.Message(title, tuple(blocks)))
