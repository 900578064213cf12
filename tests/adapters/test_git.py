"""Contract tests: `GitRepository` (GitPython) against real git repositories made here.

A working repository ("origin") holds four commits on main, tags v1.0.0 (lightweight) and 1.1.0
(annotated) and a branch `feature`. URL tests clone a bare copy of it (the "remote") by `file://`
URL or plain path, push to it later, and watch the cache fetch on demand.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from adapters.git import GitRepository, ticket_keys
from bot.blocking import BlockingPool
from bot.ports import AdapterError, AdapterNotFound, AdapterUnavailable, Repository

T = TypeVar("T")


class CountingPool(BlockingPool):
    """A pool that counts the calls made on it, to prove that a refused version never reached git."""

    def __init__(self) -> None:
        super().__init__(workers=4)
        self.calls = 0

    async def run(self, tool: str, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kw: Any) -> T:
        self.calls += 1
        return await super().run(tool, fn, *args, timeout=timeout, **kw)


def git(cwd: Path, *args: str, date: str | None = None, author: str = "Ann Lee") -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": "dev@example.com"}
    env |= {"GIT_COMMITTER_NAME": "CI", "GIT_COMMITTER_EMAIL": "ci@example.com"}
    if date:
        env |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit(repo: Path, message: str, *, date: str, author: str = "Ann Lee") -> str:
    with (repo / "changes.txt").open("a") as f:
        f.write(message + "\n")
    git(repo, "add", "changes.txt")
    git(repo, "commit", "-q", "-m", message, date=date, author=author)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Origin:
    path: Path
    shas: dict[str, str]  # name -> commit


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Neither the machine's git config nor its cache directory may leak into these tests.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shas = {}
    shas["c1"] = commit(repo, "Initial import", date="2026-03-01T12:00:00+02:00")
    git(repo, "tag", "v1.0.0")
    shas["c2"] = commit(
        repo,
        "Fix login redirect (SHOP-12)\n\nAlso touches SHOP-7 and again SHOP-12; see OPS-3.",
        date="2026-03-02T09:30:00-05:00",
        author="Bob Ng",
    )
    shas["c3"] = commit(repo, "AB1-99 add metrics\nsecond line of the subject\n\nbody", date="2026-03-03T08:00:00Z")
    git(repo, "tag", "-a", "1.1.0", "-m", "release 1.1.0", date="2026-03-03T08:05:00Z")
    git(repo, "branch", "feature")
    shas["c4"] = commit(repo, "Bump version", date="2026-03-04T08:00:00Z")
    git(repo, "checkout", "-q", "feature")
    shas["f1"] = commit(repo, "Feature work PLAT-1", date="2026-03-05T08:00:00Z")
    git(repo, "checkout", "-q", "main")
    return Origin(repo, shas)


@pytest.fixture
def remote(origin: Origin, tmp_path: Path) -> Path:
    """A bare copy of origin that origin pushes to."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(origin.path), str(bare))
    git(origin.path, "remote", "add", "upstream", str(bare))
    return bare


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[CountingPool]:
    p = CountingPool()
    yield p
    p.close()


@pytest.fixture
def local(origin: Origin, pool: CountingPool) -> GitRepository:
    return GitRepository(pool=pool, path=origin.path)


def cached(pool: BlockingPool, remote: Path, tmp_path: Path, **kw: Any) -> GitRepository:
    return GitRepository(pool=pool, url=remote.as_uri(), cache_dir=tmp_path / "cache", **kw)


# --- local path ---------------------------------------------------------------------------------


def test_implements_the_port(local: GitRepository) -> None:
    repo: Repository = local
    assert repo is local


@pytest.mark.parametrize("version", ["v1.0.0", "1.0.0"])
async def test_a_tag_is_found_by_either_spelling(local: GitRepository, origin: Origin, version: str) -> None:
    assert await local.resolve(version) == origin.shas["c1"]


@pytest.mark.parametrize("version", ["1.1.0", "v1.1.0"])
async def test_an_annotated_tag_resolves_to_its_commit(local: GitRepository, origin: Origin, version: str) -> None:
    assert await local.resolve(version) == origin.shas["c3"]


async def test_shas_and_branches(local: GitRepository, origin: Origin) -> None:
    c2 = origin.shas["c2"]
    assert await local.resolve(c2) == c2
    assert await local.resolve(c2[:7]) == c2
    assert await local.resolve(c2[:12].upper()) == c2
    assert await local.resolve("main") == origin.shas["c4"]
    assert await local.resolve("feature") == origin.shas["f1"]
    assert await local.resolve("HEAD") == origin.shas["c4"]


async def test_ancestry_steps_after_a_name_walk_back_from_it(local: GitRepository, origin: Origin) -> None:
    # `code diff api HEAD~2..HEAD`: git's own spelling of "two commits back", and nothing else of its
    # revision syntax (see the refusals below).
    assert await local.resolve("main~1") == origin.shas["c3"]
    assert await local.resolve("main^") == origin.shas["c3"]
    assert await local.resolve("HEAD~2") == origin.shas["c2"]
    assert await local.resolve("1.1.0~1") == await local.resolve("v1.1.0^")  # either spelling of the tag
    assert [c.sha for c in await local.commits_between("main~2", "main")] == [origin.shas["c4"], origin.shas["c3"]]
    with pytest.raises(AdapterNotFound, match=r"`main~99`: `main` has no such ancestor"):
        await local.resolve("main~99")


async def test_a_missing_version_is_named_with_the_repository(local: GitRepository, origin: Origin) -> None:
    with pytest.raises(AdapterNotFound) as err:
        await local.resolve("1.2.3")
    assert str(err.value) == f"git: no tag or commit `1.2.3` in {origin.path}"
    with pytest.raises(AdapterNotFound):
        await local.resolve("deadbeefcafe")


async def test_commits_between_two_versions(local: GitRepository, origin: Origin) -> None:
    commits = await local.commits_between("v1.0.0", "v1.1.0")
    assert [c.sha for c in commits] == [origin.shas["c3"], origin.shas["c2"]]  # newest first
    newest, older = commits
    assert newest.subject == "AB1-99 add metrics second line of the subject"
    assert newest.tickets == ("AB1-99",)
    assert newest.date == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    assert older.author == "Bob Ng"
    assert older.subject == "Fix login redirect (SHOP-12)"
    assert older.tickets == ("SHOP-12", "SHOP-7", "OPS-3")  # deduplicated, in order of appearance
    assert older.date == datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
    assert older.date.tzinfo is UTC
    assert older.short == origin.shas["c2"][:10]


async def test_commits_between_without_old_and_with_limits(local: GitRepository, origin: Origin) -> None:
    last_two = await local.commits_between(None, "main", limit=2)
    assert [c.sha for c in last_two] == [origin.shas["c4"], origin.shas["c3"]]
    everything = await local.commits_between(None, "main")
    assert [c.subject for c in everything][-1] == "Initial import"
    assert everything[-1].date == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert await local.commits_between("main", "v1.0.0") == []  # a rollback: nothing new
    assert await local.commits_between(None, "main", limit=0) == []


async def test_log(local: GitRepository, origin: Origin) -> None:
    assert [c.sha for c in await local.log()][:2] == [origin.shas["c4"], origin.shas["c3"]]
    feature = await local.log("feature", limit=1)
    assert [(c.sha, c.tickets) for c in feature] == [(origin.shas["f1"], ("PLAT-1",))]


@pytest.mark.parametrize(
    "version",
    [
        "-x",
        "--upload-pack=touch pwned",
        "--output=/tmp/pwned",
        "v1.0.0..main",
        "a...b",
        "~1",
        "main^{tree}",
        "main~1~x",
        "HEAD@{1}",
        "main:changes.txt",
        "v1.0.0 main",
        "main\n--all",
        "",
        "*",
    ],
)
async def test_options_ranges_and_expressions_never_reach_git(
    local: GitRepository, pool: CountingPool, version: str
) -> None:
    with pytest.raises(AdapterError) as err:
        await local.resolve(version)
    assert not isinstance(err.value, AdapterNotFound)
    assert "is not a tag, branch or commit SHA" in str(err.value)
    with pytest.raises(AdapterError):
        await local.commits_between(version, "main")
    with pytest.raises(AdapterError):
        await local.log(version)
    assert pool.calls == 1  # only the resolution of `main` in commits_between, which comes first


async def test_refusals_say_why(local: GitRepository) -> None:
    with pytest.raises(AdapterError, match="looks like an option"):
        await local.resolve("-x")
    with pytest.raises(AdapterError, match="looks like a range"):
        await local.resolve("1.0.0..1.1.0")


async def test_check_a_local_repository(local: GitRepository, origin: Origin, pool: CountingPool) -> None:
    assert await local.check() == f"git repository at {origin.path}, branch main at {origin.shas['c4'][:10]}"
    wrong = GitRepository(pool=pool, path=origin.path, branch="release")
    with pytest.raises(AdapterNotFound, match="no branch `release`"):
        await wrong.check()


async def test_a_missing_or_plain_directory_is_unavailable(tmp_path: Path, pool: CountingPool) -> None:
    with pytest.raises(AdapterUnavailable, match="no repository at"):
        await GitRepository(pool=pool, path=tmp_path / "nowhere").check()
    (tmp_path / "plain").mkdir()
    with pytest.raises(AdapterUnavailable, match="is not a git repository"):
        await GitRepository(pool=pool, path=tmp_path / "plain").resolve("1.0.0")


def test_constructor_refuses_bad_settings(pool: CountingPool, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        GitRepository(pool=pool)
    with pytest.raises(ValueError):
        GitRepository(pool=pool, path=tmp_path, url="file:///x")
    with pytest.raises(ValueError):
        GitRepository(pool=pool, url="--upload-pack=touch /tmp/x", cache_dir=tmp_path)
    with pytest.raises(ValueError):
        GitRepository(pool=pool, url="ext::sh -c touch% /tmp/x", cache_dir=tmp_path)
    with pytest.raises(ValueError):
        GitRepository(pool=pool, path=tmp_path, branch="-f")


def test_ticket_keys() -> None:
    assert ticket_keys("ABC-1 fix; see ABC-1, X2-30 and abc-4 (not a key), ABCD- neither, fooXY-1 no") == (
        "ABC-1",
        "X2-30",
    )


# --- a clone URL, cached ---------------------------------------------------------------------------


async def test_a_url_is_cloned_once_into_the_cache(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool
) -> None:
    repo = cached(pool, remote, tmp_path)
    assert await repo.resolve("v1.1.0") == origin.shas["c3"]
    assert repo.fetches == 1  # the clone
    assert repo.directory.parent == tmp_path / "cache"
    assert (repo.directory / "HEAD").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [repo.directory.name]  # no temporary left
    assert await repo.resolve(origin.shas["c2"][:8]) == origin.shas["c2"]
    assert await repo.resolve("feature") == origin.shas["f1"]
    assert [c.sha for c in await repo.commits_between("1.0.0", "1.1.0")] == [origin.shas["c3"], origin.shas["c2"]]
    assert repo.fetches == 1  # everything was there

    again = cached(pool, remote, tmp_path)  # a restart: the cache is reused, not cloned again
    assert again.directory == repo.directory
    assert await again.resolve("1.0.0") == origin.shas["c1"]
    assert again.fetches == 0


async def test_a_plain_path_works_as_a_url(origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool) -> None:
    repo = GitRepository(pool=pool, url=str(remote), cache_dir=tmp_path / "cache")
    assert await repo.resolve("1.1.0") == origin.shas["c3"]
    assert await repo.check() == f"git repository at {remote}, branch main at {origin.shas['c4'][:10]}"


async def test_a_new_version_is_fetched_on_demand(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool
) -> None:
    repo = cached(pool, remote, tmp_path)
    await repo.resolve("1.1.0")
    new = commit(origin.path, "Ship it JIRA-42", date="2026-03-06T08:00:00Z")
    git(origin.path, "tag", "v1.2.0")
    git(origin.path, "push", "-q", "upstream", "main", "--tags")

    assert await repo.resolve("1.2.0") == new
    assert repo.fetches == 2
    commits = await repo.commits_between("1.1.0", "1.2.0")
    assert [(c.subject, c.tickets) for c in commits] == [("Ship it JIRA-42", ("JIRA-42",)), ("Bump version", ())]
    assert repo.fetches == 2


async def test_a_missing_version_fetches_once_then_says_where(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool
) -> None:
    repo = cached(pool, remote, tmp_path)
    await repo.resolve("1.0.0")
    with pytest.raises(AdapterNotFound) as err:
        await repo.resolve("9.9.9")
    assert str(err.value) == f"git: no tag or commit `9.9.9` in {remote.as_uri()}"
    assert repo.fetches == 2
    with pytest.raises(AdapterNotFound):
        await repo.commits_between("8.8.8", "9.9.9")
    assert repo.fetches == 3


async def test_one_call_fetches_at_most_once(origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool) -> None:
    repo = cached(pool, remote, tmp_path)
    await repo.resolve("1.0.0")
    a = commit(origin.path, "A", date="2026-03-06T08:00:00Z")
    git(origin.path, "tag", "2.0.0")
    b = commit(origin.path, "B", date="2026-03-07T08:00:00Z")
    git(origin.path, "tag", "2.1.0")
    git(origin.path, "push", "-q", "upstream", "main", "--tags")
    assert [c.sha for c in await repo.commits_between("2.0.0", "v2.1.0")] == [b]
    assert repo.fetches == 2  # one fetch found both versions
    assert await repo.resolve("v2.0.0") == a


async def test_concurrent_lookups_of_a_new_version_fetch_once(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool
) -> None:
    repo = cached(pool, remote, tmp_path)
    await repo.resolve("1.0.0")
    new = commit(origin.path, "New", date="2026-03-06T08:00:00Z")
    git(origin.path, "tag", "v3.0.0")
    git(origin.path, "push", "-q", "upstream", "main", "--tags")

    found = await asyncio.gather(repo.resolve("3.0.0"), repo.resolve("v3.0.0"), repo.resolve("3.0.0"))
    assert list(found) == [new] * 3
    assert repo.fetches == 2

    missing = await asyncio.gather(repo.resolve("7.7.7"), repo.resolve("7.7.7"), return_exceptions=True)
    assert all(isinstance(e, AdapterNotFound) for e in missing)
    assert repo.fetches == 3


async def test_concurrent_first_calls_clone_once(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool
) -> None:
    repo = cached(pool, remote, tmp_path)
    got = await asyncio.gather(
        repo.resolve("1.0.0"), repo.resolve("v1.1.0"), repo.resolve("nope-1"), return_exceptions=True
    )
    assert list(got[:2]) == [origin.shas["c1"], origin.shas["c3"]]
    assert isinstance(got[2], AdapterNotFound)
    assert repo.fetches == 1  # the clone was everyone's fetch


async def test_branches_are_refreshed_when_the_cache_is_old(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool
) -> None:
    patient = cached(pool, remote, tmp_path, branch_max_age=3600)
    eager = cached(pool, remote, tmp_path, branch_max_age=0)
    assert await patient.resolve("main") == origin.shas["c4"]
    new = commit(origin.path, "Later", date="2026-03-06T08:00:00Z")
    git(origin.path, "push", "-q", "upstream", "main")

    assert await patient.resolve("main") == origin.shas["c4"]  # fetched moments ago: the cache answers
    assert patient.fetches == 1
    assert await eager.resolve("main") == new
    assert [c.sha for c in await eager.log("HEAD", 1)] == [new]  # HEAD of the cache is the configured branch
    assert await eager.resolve("1.0.0") == origin.shas["c1"]  # tags don't move: no fetch for them
    assert eager.fetches == 2


async def test_check_fetches_and_reports_the_branch(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool
) -> None:
    repo = cached(pool, remote, tmp_path)
    assert await repo.check() == f"git repository at {remote.as_uri()}, branch main at {origin.shas['c4'][:10]}"
    assert repo.fetches == 1  # a fresh clone is the fetch
    new = commit(origin.path, "Later", date="2026-03-06T08:00:00Z")
    git(origin.path, "push", "-q", "upstream", "main")
    assert await repo.check() == f"git repository at {remote.as_uri()}, branch main at {new[:10]}"
    assert repo.fetches == 2


async def test_an_unreachable_remote_is_unavailable(tmp_path: Path, pool: CountingPool) -> None:
    repo = GitRepository(pool=pool, url=(tmp_path / "gone.git").as_uri(), cache_dir=tmp_path / "cache")
    with pytest.raises(AdapterUnavailable) as err:
        await repo.resolve("1.0.0")
    assert "cloning" in str(err.value) and "gone.git" in str(err.value)
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []  # no half clone


async def test_a_failed_clone_is_not_retried_on_every_command(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "later.git"
    repo = GitRepository(pool=pool, url=missing.as_uri(), cache_dir=tmp_path / "cache", clone_retry_after=3600)
    with pytest.raises(AdapterUnavailable) as first:
        await repo.resolve("1.0.0")
    calls = pool.calls
    for _ in range(3):
        with pytest.raises(AdapterUnavailable) as again:
            await repo.log()
        # The URL and git's reason every time, but git was not asked again, and the log says it once.
        assert str(first.value).removeprefix("git: ") in str(again.value) and "try again in" in str(again.value)
    assert pool.calls == calls
    assert sum("cannot clone" in r.getMessage() for r in caplog.records) == 1
    # Once the wait is over (made 0 here), the next command clones, and succeeds when the remote exists.
    shutil.copytree(remote, missing)
    repo._clone_retry_after = 0
    assert await repo.resolve("1.0.0") == origin.shas["c1"]


def test_credentials_in_a_url_stay_out_of_messages(pool: CountingPool, tmp_path: Path) -> None:
    repo = GitRepository(pool=pool, url="https://bot:s3cr3t-t0ken@git.example.com/shop/api.git", cache_dir=tmp_path)
    assert repo.where == "https://git.example.com/shop/api.git"
    assert "s3cr3t" not in str(repo.directory)


async def test_default_cache_dir_follows_xdg(origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool) -> None:
    repo = GitRepository(pool=pool, url=remote.as_uri())
    assert repo.directory.parent == tmp_path / "xdg-cache" / "opsloop" / "git"
    assert await repo.resolve("1.0.0") == origin.shas["c1"]


async def test_a_remote_gone_after_the_clone(origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool) -> None:
    repo = cached(pool, remote, tmp_path, branch_max_age=0)
    await repo.resolve("1.0.0")
    remote.rename(tmp_path / "moved.git")
    assert await repo.resolve("1.1.0") == origin.shas["c3"]  # what is cached still answers
    assert await repo.resolve("main") == origin.shas["c4"]  # a stale branch beats no answer
    with pytest.raises(AdapterUnavailable, match="fetching"):
        await repo.resolve("9.9.9")  # but a missing version says the remote failed, not "no such tag"


async def test_a_tag_moved_upstream_does_not_break_fetching(
    origin: Origin, remote: Path, tmp_path: Path, pool: CountingPool
) -> None:
    repo = cached(pool, remote, tmp_path)
    assert await repo.resolve("1.0.0") == origin.shas["c1"]
    git(origin.path, "tag", "-f", "v1.0.0", origin.shas["c2"])
    git(origin.path, "tag", "5.0.0")
    git(origin.path, "push", "-q", "--force", "upstream", "--tags")
    assert await repo.resolve("5.0.0") == origin.shas["c4"]  # the fetch went through
    assert await repo.resolve("1.0.0") == origin.shas["c2"]  # and took the moved tag along


# --- merges, counts, files and authors of a path ------------------------------------------------------


def write(repo: Path, name: str, content: str | bytes) -> None:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def commit_all(repo: Path, message: str, *, date: str, author: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message, date=date, author=author)
    return git(repo, "rev-parse", "HEAD")


README = "".join(f"line {i}\n" for i in range(20))


@pytest.fixture
def project(tmp_path: Path) -> Origin:
    """main: initial (v1.0.0) -> docs -> merge of `feature` (two commits) -> rename + binary (v1.1.0) -> bump."""
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shas = {}
    write(repo, "src/app.py", "a\nb\n")
    write(repo, "docs/readme.md", README)
    shas["initial"] = commit_all(repo, "Initial import SHOP-1", date="2026-04-01T10:00:00Z", author="Ann Lee")
    git(repo, "tag", "v1.0.0")
    git(repo, "checkout", "-q", "-b", "feature")
    write(repo, "src/app.py", "a\nb\nc\n")
    shas["feature"] = commit_all(repo, "Feature flag SHOP-2", date="2026-04-02T10:00:00Z", author="Bob Ng")
    write(repo, "src/lib.py", "x\ny\n")
    shas["lib"] = commit_all(repo, "Add lib\n\nFor SHOP-3.", date="2026-04-03T10:00:00Z", author="Bob Ng")
    git(repo, "checkout", "-q", "main")
    write(repo, "docs/readme.md", README + "more\n")
    shas["docs"] = commit_all(repo, "Docs OPS-9", date="2026-04-04T10:00:00Z", author="Cy Diaz")
    git(
        repo,
        "merge",
        "-q",
        "--no-ff",
        "feature",
        "-m",
        "Merge feature (SHOP-2, SHOP-3)",
        date="2026-04-05T10:00:00Z",
        author="Dee Park",
    )
    shas["merge"] = git(repo, "rev-parse", "HEAD")
    git(repo, "mv", "docs/readme.md", "docs/README.md")
    write(repo, "logo.png", bytes(range(256)) * 4)
    shas["rename"] = commit_all(repo, "Rename readme, add logo", date="2026-04-06T10:00:00Z", author="Ann Lee")
    git(repo, "tag", "-a", "v1.1.0", "-m", "release", date="2026-04-06T11:00:00Z")
    write(repo, "VERSION", "1.2.0-dev\n")
    shas["bump"] = commit_all(repo, "Bump version", date="2026-04-07T10:00:00Z", author="Ann Lee")
    return Origin(repo, shas)


@pytest.fixture
def proj(project: Origin, pool: CountingPool) -> GitRepository:
    return GitRepository(pool=pool, path=project.path)


async def test_merges_are_marked_and_their_tickets_read(proj: GitRepository, project: Origin) -> None:
    commits = await proj.commits_between("v1.0.0", "v1.1.0")
    s = project.shas
    assert [c.sha for c in commits] == [s["rename"], s["merge"], s["docs"], s["lib"], s["feature"]]
    assert [c.merge for c in commits] == [False, True, False, False, False]
    merge = commits[1]
    assert (merge.author, merge.subject, merge.tickets) == (
        "Dee Park",
        "Merge feature (SHOP-2, SHOP-3)",
        ("SHOP-2", "SHOP-3"),
    )
    assert commits[3].tickets == ("SHOP-3",)  # from the body
    assert [c.merge for c in await proj.log("main", 3)] == [False, False, True]


async def test_count_between(proj: GitRepository) -> None:
    assert await proj.count_between("v1.0.0", "v1.1.0") == 5
    assert await proj.count_between("1.0.0", "main") == 6
    assert await proj.count_between(None, "v1.1.0") == 6
    assert await proj.count_between("main", "v1.0.0") == 0  # backwards: nothing new
    assert await proj.count_between("feature", "main") == 4  # docs, merge, rename, bump
    with pytest.raises(AdapterNotFound):
        await proj.count_between("v9.9.9", "main")


async def test_files_changed_with_renames_and_binaries(proj: GitRepository) -> None:
    files = {f.path: f for f in await proj.files_changed("v1.0.0", "v1.1.0")}
    assert set(files) == {"docs/README.md", "logo.png", "src/app.py", "src/lib.py"}
    readme = files["docs/README.md"]
    assert (readme.old_path, readme.added, readme.deleted) == ("docs/readme.md", 1, 0)
    assert (files["logo.png"].added, files["logo.png"].deleted, files["logo.png"].lines) == (None, None, 0)
    assert (files["src/app.py"].added, files["src/app.py"].deleted, files["src/app.py"].old_path) == (1, 0, None)
    assert files["src/lib.py"].lines == 2
    assert await proj.files_changed("v1.1.0", "v1.1.0") == []


async def test_files_changed_counts_from_the_common_ancestor(proj: GitRepository, project: Origin) -> None:
    # Neither is an ancestor of the other: only what `docs` added since they forked counts, not the
    # feature branch's files that `docs` lacks (a plain tree diff would list those as deleted).
    s = project.shas
    changed = await proj.files_changed(s["lib"], s["docs"])
    assert [(f.path, f.added, f.deleted) for f in changed] == [("docs/readme.md", 1, 0)]
    both = await proj.files_changed(s["docs"], s["lib"])
    assert sorted(f.path for f in both) == ["src/app.py", "src/lib.py"]


async def test_authors_of_a_path(proj: GitRepository) -> None:
    src = await proj.authors_of("src", "v1.1.0")
    assert [(a.author, a.commits) for a in src] == [("Bob Ng", 2), ("Ann Lee", 1)]  # the merge is not counted
    assert src[0].last == datetime(2026, 4, 3, 10, 0, tzinfo=UTC)
    assert src[1].last == datetime(2026, 4, 1, 10, 0, tzinfo=UTC)
    docs = await proj.authors_of("./docs/", "main")
    assert [(a.author, a.commits, a.last.day) for a in docs] == [("Ann Lee", 2, 6), ("Cy Diaz", 1, 4)]
    assert [(a.author, a.commits) for a in await proj.authors_of("src/lib.py")] == [("Bob Ng", 1)]
    assert [(a.author, a.commits) for a in await proj.authors_of("src", "v1.0.0")] == [("Ann Lee", 1)]
    assert [a.commits for a in await proj.authors_of("src", "main", limit=1)] == [1]
    assert sum(a.commits for a in await proj.authors_of(".", "main")) == 6  # the root: every non-merge
    assert await proj.authors_of("no/such/dir") == []


async def test_paths_are_literal(proj: GitRepository, project: Origin) -> None:
    assert await proj.authors_of("src/*.py") == []  # no glob
    assert await proj.authors_of("*") == []
    write(project.path, "odd/*.py", "literal\n")
    commit_all(project.path, "An odd name", date="2026-04-08T10:00:00Z", author="Eve Moss")
    assert [a.author for a in await proj.authors_of("odd/*.py")] == ["Eve Moss"]


@pytest.mark.parametrize(
    "path",
    [
        "-x",
        "--output=/tmp/pwned",
        "../outside",
        "src/../../etc",
        "..",
        "/etc/passwd",
        ":(exclude)src",
        ":!src",
        "",
        "src\n--all",
        "a\0b",
    ],
)
async def test_bad_paths_never_reach_git(proj: GitRepository, pool: CountingPool, path: str) -> None:
    with pytest.raises(AdapterError) as err:
        await proj.authors_of(path)
    assert not isinstance(err.value, AdapterNotFound)
    assert "can't be used as a path" in str(err.value)
    assert pool.calls == 0


async def test_authors_and_files_of_a_cached_clone(project: Origin, tmp_path: Path, pool: CountingPool) -> None:
    bare = tmp_path / "project.git"
    git(tmp_path, "clone", "-q", "--bare", str(project.path), str(bare))
    repo = cached(pool, bare, tmp_path)
    assert [(a.author, a.commits) for a in await repo.authors_of("src", "main")] == [("Bob Ng", 2), ("Ann Lee", 1)]
    assert len(await repo.files_changed("1.0.0", "1.1.0")) == 4
    assert await repo.count_between("1.0.0", "1.1.0") == 5
    assert repo.fetches == 1  # the clone; everything was in it
