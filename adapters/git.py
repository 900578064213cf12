"""A service's git repository through GitPython: the `Repository` port.

GitPython runs the `git` program and blocks, so every call runs on the shared `BlockingPool` with a
time limit; the git process itself is killed when it overruns (GitPython's `kill_after_timeout`), so
a stuck fetch does not keep a pool thread forever. Each call opens its own `git.Repo` and closes it:
GitPython's `Repo` keeps `cat-file` helper processes and is not meant to be shared across threads.

Where the code lives:

* a local path is used as is (a working clone or a bare repository); nothing is fetched into it.
* a clone URL is kept as a bare clone under `cache_dir/<hash of the URL>.git`, created on first use
  (in a temporary directory renamed into place, so a half-made clone is never seen) and fetched
  (`git fetch --tags --prune`; branches and tags mirrored, forced) when a version is not found
  locally, at most once per call. One asyncio lock per `GitRepository` serialises clone and fetch,
  and a fetch counter taken before each lookup lets a call that waited on the lock see that someone
  else fetched meanwhile, so two concurrent look-ups of a new tag fetch once. The composition root
  should make one `GitRepository` per URL (services sharing a repository share the instance).
  Branch names move, so a branch (or `HEAD`) found in a clone fetched more than `branch_max_age`
  seconds ago is refreshed too; tags and SHAs are fetched only when missing.

Versions: a tag written `v1.2.3` or `1.2.3` finds either spelling, then a full or short commit SHA,
then a branch or other ref. Anything that could be read as an option, a range or a revision
expression (`-x`, `a..b`, `x^`, `@{1}`, whitespace) is refused before git sees it; every revision
handed to `git log` afterwards is a SHA we resolved.

Paths (`authors_of`) are relative to the repository root and taken literally (`GIT_LITERAL_PATHSPECS`,
so `*` or `:(exclude)` mean nothing special); a path that starts with `-`, `/` or `:`, has a `..`
component or a control character is refused before git sees it, and it always follows `--`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import git
from git.exc import GitCommandError, GitCommandNotFound, InvalidGitRepositoryError, NoSuchPathError

from bot.blocking import BlockingPool
from bot.ports import (
    AdapterError,
    AdapterNotFound,
    AdapterTimeout,
    AdapterUnavailable,
    AuthorStat,
    Commit,
    FileChange,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

TOOL = "git"
TICKET = re.compile(r"\b[A-Z][A-Z0-9]+-\d+\b")
MAX_LIMIT = 10_000  # commits per answer; a chat card shows a few dozen
CLONE_RETRY_AFTER = 60.0  # a clone that failed is not tried again (per command) before this many seconds

# A ref name git accepts, minus everything with a meaning beyond "a name": no leading `-` (an
# option), no `..` (a range), no `^ ~ : @{ ? * [ \` or whitespace (revision expressions, globs).
# Ancestry steps after a name (`~2`, `^`) are split off first: see split_ancestry.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}")
_HEX = re.compile(r"[0-9a-fA-F]{4,64}")
_ANCESTRY = re.compile(r"(?:~\d{0,4}|\^[12]?)+$")
# Git's own prompts would hang a pool thread waiting for a terminal nobody watches.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0"}
_LOG_FORMAT = "--format=%H%x00%P%x00%aN%x00%aI%x00%B"
_AUTHOR_FORMAT = "--format=%aN%x00%aI"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH = 1024


def bad_version(version: str) -> str | None:
    """Why `version` can't be handed to git, or None when it is a plain name."""
    if not _NAME.fullmatch(version):
        if version.startswith("-"):
            return "it looks like an option"
        if ".." in version:
            return "it looks like a range; give one version"
        return "only letters, digits and `. _ / + -` can be part of a tag, branch or SHA (and `~N` or `^` after it)"
    if ".." in version:
        return "it looks like a range; give one version"
    if "//" in version or version.endswith(("/", ".", ".lock")) or "/." in version:
        return "git does not allow that name"
    return None


def split_ancestry(version: str) -> tuple[str, str]:
    """`main~2` -> (`main`, `~2`): a name and git's ancestry steps after it (`~N`, `^`, `^2`), the one
    part of revision syntax let through, since it only walks back from a name already checked."""
    m = _ANCESTRY.search(version)
    if m is None or m.start() == 0:
        return version, ""
    return version[: m.start()], m.group()


def bad_path(path: str) -> str | None:
    """Why `path` can't be handed to git as a path inside the repository, or None when it can."""
    if not path:
        return "it is empty"
    if len(path) > MAX_PATH:
        return f"it is longer than {MAX_PATH} characters"
    if _CONTROL.search(path):
        return "it contains a control character"
    if path.startswith("-"):
        return "it looks like an option"
    if path.startswith("/"):
        return "give it relative to the repository root, not as an absolute path"
    if path.startswith(":"):
        return "a leading `:` is git pathspec magic"
    if ".." in path.split("/"):
        return "`..` would leave the repository"
    return None


def clean_path(path: str) -> str:
    """`./src/api/` -> `src/api`: the spelling git matches; "" for the repository root."""
    while path.startswith("./"):
        path = path[2:]
    path = path.rstrip("/")
    return "" if path == "." else path


def ticket_keys(message: str) -> tuple[str, ...]:
    """Ticket keys (`ABC-123`) in a commit message, each once, in order of appearance."""
    return tuple(dict.fromkeys(TICKET.findall(message)))


def _display_url(url: str) -> str:
    """The URL without credentials (`https://user:token@host/x` -> `https://host/x`), for messages."""
    parts = urlsplit(url)
    if parts.scheme and parts.scheme != "ssh" and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return url


def _subject(message: str) -> str:
    """Git's subject: the first paragraph, on one line."""
    first = message.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in first.splitlines())


@dataclass(frozen=True)
class _Found:
    sha: str
    kind: str  # tag | commit | ref (a branch, HEAD, origin/x: names that move)


@dataclass
class _Call:
    """State of one port call: it fetches at most once, however many versions it resolves."""

    fetched: bool = False


class _Ambiguous(Exception):
    pass


class GitRepository:
    """A git repository at a local path, or a cached bare clone of a URL."""

    name = "git"

    def __init__(
        self,
        *,
        pool: BlockingPool,
        path: str | os.PathLike[str] | None = None,
        url: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        branch: str = "main",
        timeout: float = 30.0,
        fetch_timeout: float = 300.0,
        branch_max_age: float = 60.0,
        clone_retry_after: float = CLONE_RETRY_AFTER,
    ) -> None:
        if (path is None) == (url is None):
            raise ValueError("give a repository path or a clone URL, not both or neither")
        why = bad_version(branch)
        if why:
            raise ValueError(f"branch `{branch}` can't be used: {why}")
        self._pool = pool
        self._branch = branch
        self._timeout = timeout
        self._fetch_timeout = max(fetch_timeout, timeout)  # a first clone of a big repository takes a while
        self._branch_max_age = branch_max_age
        self._url = url
        if url is not None:
            # `-...` would be read as an option by `git remote add`; ext:: and fd:: run commands.
            if url.startswith("-") or url.lower().startswith(("ext::", "fd::")) or "\n" in url or "\0" in url:
                raise ValueError(f"clone URL `{_display_url(url)}` can't be used")
            base = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
            key = hashlib.sha256(url.encode()).hexdigest()[:20]
            self._dir = base / f"{key}.git"
            self.where = _display_url(url)
        elif path is not None:
            self._dir = Path(path)
            self.where = str(path)
        self._lock = asyncio.Lock()
        self._ready = url is None  # a local path needs no clone
        self._fetches = 0
        self._fetched_at: float | None = None
        self._clone_retry_after = clone_retry_after
        self._clone_failed: tuple[float, AdapterError] | None = None

    @property
    def fetches(self) -> int:
        """How many times this instance cloned or fetched from its URL (0 for a local path)."""
        return self._fetches

    @property
    def directory(self) -> Path:
        """The repository on disk: the local path, or the cached bare clone."""
        return self._dir

    # ------------------------------------------------------------------ the port

    async def resolve(self, version: str) -> str:
        """The commit SHA of a tag (`v1.2.3` or `1.2.3`), a full or short SHA, or a branch."""
        return await self._resolve(version, _Call())

    async def commits_between(self, old: str | None, new: str, limit: int = 200) -> list[Commit]:
        """Commits in `new` not in `old` (`old..new`), newest first; the last `limit` of `new` when old is None."""
        call = _Call()
        new_sha = await self._resolve(new, call)
        old_sha = await self._resolve(old, call) if old is not None else None
        rev = f"{old_sha}..{new_sha}" if old_sha else new_sha
        return await self._commits(rev, limit)

    async def log(self, ref: str = "HEAD", limit: int = 10) -> list[Commit]:
        """The last `limit` commits of `ref`, newest first."""
        return await self._commits(await self._resolve(ref, _Call()), limit)

    async def count_between(self, old: str | None, new: str) -> int:
        """How many commits are in `new` and not in `old` (all of `new`'s history when old is None)."""
        call = _Call()
        new_sha = await self._resolve(new, call)
        old_sha = await self._resolve(old, call) if old is not None else None
        rev = f"{old_sha}..{new_sha}" if old_sha else new_sha
        return await self._run("counting commits", self._count_sync, rev)

    async def files_changed(self, old: str, new: str) -> list[FileChange]:
        """Files changed from the common ancestor of `old` and `new` to `new` (`git diff old...new`),
        with lines added and deleted, renames followed; in git's order (by path)."""
        call = _Call()
        new_sha = await self._resolve(new, call)
        old_sha = await self._resolve(old, call)
        return await self._run("comparing versions", self._files_sync, old_sha, new_sha)

    async def authors_of(self, path: str, ref: str = "HEAD", limit: int = 500) -> list[AuthorStat]:
        """Who changed `path` in the last `limit` non-merge commits of `ref` that touch it: commits
        and newest author date per author, most commits first (then the most recent)."""
        why = bad_path(path)
        if why:
            raise AdapterError(TOOL, f"`{_CONTROL.sub('?', path[:80])}` can't be used as a path: {why}")
        sha = await self._resolve(ref, _Call())
        if limit < 1:
            return []
        return await self._run("reading the log", self._authors_sync, sha, clean_path(path), min(limit, MAX_LIMIT))

    async def check(self) -> str:
        """Open (for a URL: clone or fetch) the repository and find the branch: one line, or AdapterError."""
        if self._url is not None:
            seen = self._fetches
            await self._ensure_clone()
            if self._fetches == seen:  # reaching the remote is the point of a check
                await self._fetch(seen)
        found = await self._run(f"looking up branch `{self._branch}`", self._lookup_branch)
        if found is None:
            raise AdapterNotFound(TOOL, f"no branch `{self._branch}` in {self.where}")
        return f"git repository at {self.where}, branch {self._branch} at {found[:10]}"

    # ------------------------------------------------------------------ resolution and fetching

    async def _resolve(self, version: str, call: _Call) -> str:
        name, ancestry = split_ancestry(version)
        why = bad_version(name)
        if why:
            raise AdapterError(TOOL, f"`{version[:80]}` is not a tag, branch or commit SHA: {why}")
        sha = await self._resolve_name(name, call)
        if not ancestry:
            return sha
        found = await self._run(f"looking up `{version}`", self._rev_of, f"{sha}{ancestry}")
        if found is None:
            raise AdapterNotFound(TOOL, f"`{version}`: `{name}` has no such ancestor in {self.where}")
        return found

    def _rev_of(self, name: str) -> str | None:
        with self._open() as repo:
            return self._rev(repo, name)

    async def _resolve_name(self, version: str, call: _Call) -> str:
        seen = self._fetches  # before the clone, so a clone made now counts as this call's fetch
        await self._ensure_clone()
        found = await self._run(f"looking up `{version}`", self._lookup, version)
        if self._url is None:
            if found is None:
                raise AdapterNotFound(TOOL, f"no tag or commit `{version}` in {self.where}")
            return found.sha
        if found is not None and (found.kind != "ref" or not self._stale()):
            return found.sha
        if call.fetched:
            if found is None:
                raise AdapterNotFound(TOOL, f"no tag or commit `{version}` in {self.where}")
            return found.sha
        call.fetched = True
        try:
            await self._fetch(seen)
        except AdapterError as exc:
            if found is None:
                raise
            # A branch we already know is better than no answer while the remote is down.
            log.warning("using the cached `%s` of %s: %s", version, self.where, exc)
            return found.sha
        found = await self._run(f"looking up `{version}`", self._lookup, version)
        if found is None:
            raise AdapterNotFound(TOOL, f"no tag or commit `{version}` in {self.where}")
        return found.sha

    def _stale(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > self._branch_max_age

    async def _ensure_clone(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            if self._clone_failed is not None:
                at, err = self._clone_failed
                ago = time.monotonic() - at
                if ago < self._clone_retry_after:
                    # The same answer, without asking the remote again on every command.
                    wait = self._clone_retry_after - ago
                    raise type(err)(TOOL, f"{str(err).removeprefix(f'{TOOL}: ')} (I try again in {wait:.0f} s)")
            try:
                created = await self._run("cloning", self._create_clone, timeout=self._fetch_timeout, remote=True)
            except AdapterError as err:
                if self._clone_failed is None:
                    log.warning("cannot clone %s: %s", self.where, err)  # once, not on every command
                self._clone_failed = (time.monotonic(), err)
                raise
            self._clone_failed = None
            if created:
                self._fetches += 1
                self._fetched_at = time.monotonic()
            self._ready = True

    async def _fetch(self, seen: int) -> None:
        """Fetch from the URL unless another call fetched since this one read `seen`."""
        async with self._lock:
            if self._fetches != seen:
                return
            await self._run("fetching", self._fetch_sync, timeout=self._fetch_timeout, remote=True)
            self._fetches += 1
            self._fetched_at = time.monotonic()

    async def _commits(self, rev: str, limit: int) -> list[Commit]:
        if limit < 1:
            return []
        return await self._run("reading the log", self._log_sync, rev, min(limit, MAX_LIMIT))

    async def _run(
        self, what: str, fn: Callable[..., T], *args: Any, timeout: float | None = None, remote: bool = False
    ) -> T:
        """`fn(*args)` on the pool; GitPython's failures become AdapterErrors about `what` (a `remote`
        call that fails means the remote is unavailable)."""
        limit = self._timeout if timeout is None else timeout
        try:
            # The pool waits a little longer than git may run, so the git process is killed (and
            # reported) by GitPython's watchdog rather than left running behind an abandoned thread.
            return await self._pool.run(TOOL, fn, *args, timeout=limit + 5.0)
        except AdapterTimeout:
            raise AdapterTimeout(TOOL, f"no answer within {limit:g} s ({what} in {self.where})") from None
        except AdapterError:
            raise
        except _Ambiguous:
            raise AdapterError(TOOL, f"{what}: the short SHA is ambiguous in {self.where}; give more of it") from None
        except GitCommandNotFound:
            raise AdapterUnavailable(TOOL, "the `git` program is not installed") from None
        except NoSuchPathError:
            if self._url is not None:
                self._ready = False  # someone removed the cache: clone again next time
                raise AdapterUnavailable(TOOL, f"the cached clone of {self.where} is gone; try again") from None
            raise AdapterUnavailable(TOOL, f"no repository at {self.where}") from None
        except InvalidGitRepositoryError:
            raise AdapterUnavailable(TOOL, f"{self.where} is not a git repository") from None
        except GitCommandError as exc:
            detail = self._stderr(exc)
            if detail.startswith("Timeout:") or "timed out" in detail:
                raise AdapterTimeout(TOOL, f"no answer within {limit:g} s ({what} in {self.where})") from None
            if remote:
                raise AdapterUnavailable(TOOL, f"{what} {self.where} failed: {detail}") from None
            raise AdapterError(TOOL, f"{what} in {self.where} failed: {detail}") from None
        except OSError as exc:
            raise AdapterUnavailable(TOOL, f"{what} in {self.where} failed: {exc.strerror or exc}") from None

    def _stderr(self, exc: GitCommandError) -> str:
        """The line of git's complaint that says what failed, with the URL's credentials left out."""
        text = exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr or "")
        lines = [ln.strip() for ln in text.strip().strip("'").splitlines() if ln.strip()]
        lines = [ln.removeprefix("stderr: ").strip("' ") for ln in lines if not ln.startswith("hint:")]
        # git's first `fatal:`/`error:` line says what went wrong; advice follows it.
        first = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
        detail = (first or f"exit status {exc.status}")[:300]
        if self._url is not None:
            detail = detail.replace(self._url, self.where)
        return detail

    # ------------------------------------------------------------------ on a pool thread

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {"kill_after_timeout": self._timeout if timeout is None else timeout, "env": _GIT_ENV}

    @contextmanager
    def _open(self) -> Iterator[git.Repo]:
        repo = git.Repo(self._dir)
        try:
            yield repo
        finally:
            repo.close()

    def _rev(self, repo: git.Repo, name: str) -> str | None:
        """The commit `name` names, or None; `_Ambiguous` for a short SHA matching several objects."""
        try:
            out: str = repo.git.rev_parse("--verify", f"{name}^{{commit}}", **self._kw())
        except GitCommandError as exc:
            if "ambiguous" in str(exc.stderr):
                raise _Ambiguous from None
            return None
        return out.strip() or None

    def _lookup(self, version: str) -> _Found | None:
        with self._open() as repo:
            spellings = [version]
            if version[:1] == "v" and version[1:2].isdigit():
                spellings.append(version[1:])
            elif version[:1].isdigit():
                spellings.append("v" + version)
            for tag in spellings:
                sha = self._rev(repo, f"refs/tags/{tag}")
                if sha:
                    return _Found(sha, "tag")
            ambiguous = False
            if _HEX.fullmatch(version):
                try:
                    sha = self._rev(repo, version.lower())
                except _Ambiguous:
                    ambiguous = True
                else:
                    # A hex-looking branch name resolves too; that one is a ref, found below.
                    if sha and sha.startswith(version.lower()):
                        return _Found(sha, "commit")
            # Branches, HEAD, origin/x: git's own lookup order (refs/heads, refs/remotes, ...).
            sha = self._rev(repo, version)
            if sha:
                return _Found(sha, "ref")
            if ambiguous:
                raise _Ambiguous
            return None

    def _lookup_branch(self) -> str | None:
        with self._open() as repo:
            return self._rev(repo, f"refs/heads/{self._branch}") or self._rev(
                repo, f"refs/remotes/origin/{self._branch}"
            )

    def _log_sync(self, rev: str, limit: int) -> list[Commit]:
        with self._open() as repo:
            # NUL-separated fields and records: a commit message can hold anything but NUL.
            out: str = repo.git.log(f"--max-count={limit}", "-z", _LOG_FORMAT, rev, "--", **self._kw())
        fields = out.split("\0")
        if fields and fields[-1].strip() == "":
            fields.pop()
        commits = []
        for i in range(0, len(fields) - 4, 5):
            sha, parents, author, date, message = fields[i : i + 5]
            commits.append(
                Commit(
                    sha=sha.strip(),
                    author=author,
                    date=datetime.fromisoformat(date).astimezone(UTC),
                    subject=_subject(message),
                    tickets=ticket_keys(message),
                    merge=len(parents.split()) > 1,
                )
            )
        return commits

    def _count_sync(self, rev: str) -> int:
        with self._open() as repo:
            out: str = repo.git.rev_list("--count", rev, "--", **self._kw())
        return int(out.strip() or 0)

    def _files_sync(self, old: str, new: str) -> list[FileChange]:
        with self._open() as repo:
            try:
                base = repo.git.merge_base(old, new, **self._kw()).strip() or old
            except GitCommandError as exc:
                if exc.status != 1:  # 1: no common ancestor; compare the two trees then
                    raise
                base = old
            # Options a user's config could change are spelled out: renames on, no external diff
            # tools or text conversion (they run programs), numbers not colours.
            out: str = repo.git.diff(
                "--numstat", "-z", "-M", "--no-color", "--no-ext-diff", "--no-textconv", base, new, "--", **self._kw()
            )
        return _parse_numstat(out)

    def _authors_sync(self, sha: str, path: str, limit: int) -> list[AuthorStat]:
        kw = self._kw()
        kw["env"] = {**_GIT_ENV, "GIT_LITERAL_PATHSPECS": "1"}
        spec = [path] if path else []
        with self._open() as repo:
            out: str = repo.git.log(f"--max-count={limit}", "--no-merges", "-z", _AUTHOR_FORMAT, sha, "--", *spec, **kw)
        fields = out.split("\0")
        if fields and fields[-1].strip() == "":
            fields.pop()
        seen: dict[str, tuple[int, datetime]] = {}
        for i in range(0, len(fields) - 1, 2):
            author, when = fields[i].strip("\n"), datetime.fromisoformat(fields[i + 1].strip()).astimezone(UTC)
            n, last = seen.get(author, (0, when))
            seen[author] = (n + 1, max(last, when))
        stats = [AuthorStat(author=a, commits=n, last=last) for a, (n, last) in seen.items()]
        stats.sort(key=lambda s: (-s.commits, -s.last.timestamp(), s.author))
        return stats

    def _create_clone(self) -> bool:
        """Make the bare clone unless it exists; True when this call made it."""
        final, url = self._dir, self._url
        if url is None or (final / "HEAD").is_file():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".clone-", dir=final.parent))
        try:
            repo = git.Repo.init(tmp, bare=True)
            try:
                g = repo.git
                g.remote("add", "origin", url, **self._kw())
                # Branches land in refs/heads, so `main` and a short SHA resolve as in a normal clone.
                g.config("remote.origin.fetch", "+refs/heads/*:refs/heads/*", **self._kw())
                # Forced tags too: the cache mirrors the remote, and without `+` one tag moved upstream
                # ("would clobber existing tag") would make every later fetch fail.
                g.config("--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*", **self._kw())
                g.symbolic_ref("HEAD", f"refs/heads/{self._branch}", **self._kw())
                g.fetch("--tags", "--prune", "origin", **self._kw(self._fetch_timeout))
            finally:
                repo.close()
            try:
                tmp.rename(final)
            except OSError:
                if not (final / "HEAD").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process made it first: use theirs
                return False
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return True

    def _fetch_sync(self) -> None:
        with self._open() as repo:
            repo.git.fetch("--tags", "--prune", "origin", **self._kw(self._fetch_timeout))


def _parse_numstat(out: str) -> list[FileChange]:
    """`git diff --numstat -z` output: `added TAB deleted TAB path NUL`, or for a rename
    `added TAB deleted TAB NUL old NUL new NUL`; `-` counts mark a binary file."""
    tokens = out.split("\0")
    changes: list[FileChange] = []
    i = 0
    while i < len(tokens):
        head = tokens[i].lstrip("\n")
        i += 1
        if not head:
            continue
        parts = head.split("\t", 2)
        if len(parts) != 3:
            continue
        added, deleted, path = parts
        old_path: str | None = None
        if path == "":  # a rename: the two names follow as tokens of their own
            if i + 1 >= len(tokens):
                break
            old_path, path = tokens[i], tokens[i + 1]
            i += 2
        changes.append(
            FileChange(
                path=path,
                added=int(added) if added.isdigit() else None,
                deleted=int(deleted) if deleted.isdigit() else None,
                old_path=old_path,
            )
        )
    return changes


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "opsloop" / "git"
