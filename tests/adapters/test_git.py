"""Contract tests: `GitRepository` (GitPython) against real git repositories made here.

A working repository ("origin") holds four commits on main, tags v1.0.0 (lightweight) and 1.1.0
(annotated) and a branch `feature`. URL tests clone a bare copy of it (the "remote") by `file://`
URL or plain path, push to it later, and watch the cache fetch on demand.
"""

from __future__ import annotations

import asyncio
import os
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
        "main~1",
        "main^",
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
