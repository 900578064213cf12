"""The code stage end to end: `/ops code log|diff|pending|who` through the Slack emulator (signed
requests, strict Block Kit) and the console, on real git repositories made here.

The `api` repository: main holds an initial import (v1.0.0), a docs commit, a `--no-ff` merge of a
feature branch with two commits, (v1.1.0, annotated) and a version bump after it. Ticket keys sit in
subjects and bodies; `SHOP-1` and `SHOP-12` both exist, so a link of one must not swallow the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import adapters.git
from tests.emulators.slack import Ephemeral, SlackEmulator
from tests.support import ALICE, DAVE, EVE, SlackHarness, console_ops, slack_ops, slack_workspace

JIRA = "https://jira.example.com/browse/{key}"


def git(cwd: Path, *args: str, date: str | None = None, author: str = "Ann Lee") -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": "dev@example.com"}
    env |= {"GIT_COMMITTER_NAME": "CI", "GIT_COMMITTER_EMAIL": "ci@example.com"}
    if date:
        env |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str, files: dict[str, str], *, date: str, author: str) -> str:
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message, date=date, author=author)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Repo:
    path: Path
    shas: dict[str, str]

    def short(self, name: str) -> str:
        return self.shas[name][:10]


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def api_repo(tmp_path: Path) -> Repo:
    repo = tmp_path / "api"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    s: dict[str, str] = {}
    readme = "".join(f"line {i}\n" for i in range(20))
    s["initial"] = commit(
        repo,
        "Initial import SHOP-1",
        {"src/app.py": "a\nb\n", "docs/readme.md": readme, "app.py": "main\n"},
        date="2026-04-01T10:00:00Z",
        author="Ann Lee",
    )
    git(repo, "tag", "v1.0.0")
    git(repo, "checkout", "-q", "-b", "feature")
    s["feature"] = commit(
        repo, "Feature flag SHOP-2", {"src/app.py": "a\nb\nc\n"}, date="2026-04-02T10:00:00Z", author="Bob Ng"
    )
    s["lib"] = commit(
        repo, "Add lib\n\nFor SHOP-3.", {"src/lib.py": "x\ny\n"}, date="2026-04-03T10:00:00Z", author="Bob Ng"
    )
    git(repo, "checkout", "-q", "main")
    s["docs"] = commit(
        repo, "Docs OPS-9", {"docs/readme.md": readme + "more\n"}, date="2026-04-04T10:00:00Z", author="Cy Diaz"
    )
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
    s["merge"] = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "v1.1.0", "-m", "release 1.1.0", date="2026-04-05T11:00:00Z")
    s["bump"] = commit(
        repo, "Bump version SHOP-12", {"VERSION": "1.2.0-dev\n"}, date="2026-04-07T10:00:00Z", author="Ann Lee"
    )
    return Repo(repo, s)


def overrides(tmp_path: Path, repo: Repo, **extra: Any) -> dict[str, Any]:
    services: dict[str, Any] = {
        "api": {
            "repo": {"path": str(repo.path), "branch": "main", "ticket_url": JIRA},
            "deploy": {"target": "command", "command": ["true"]},
        },
        "web": {},
    }
    return {
        "services": services,
        "environments": {"staging": {}, "prod": {}},
        "integrations": {"command": {"version_file": str(tmp_path / "{service}-{env}.version")}},
        **extra,
    }


@pytest.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator() as e:
        slack_workspace(e)
        yield e


async def ask(h: SlackHarness, text: str, user: str = ALICE) -> tuple[str, Ephemeral]:
    """Send `/ops TEXT` as `user`; the one answer they see (its blocks and text as one string)."""
    before = len(h.emu.ephemerals_for(user))
    res = await h.command(text, user=user)
    assert res.status == 200
    answers = h.emu.ephemerals_for(user)[before:]
    assert len(answers) == 1, [a.text for a in answers]
    assert h.emu.invalid_acks == []  # Slack accepted every block
    shown = json.dumps(answers[0].blocks, ensure_ascii=False) + answers[0].text
    assert "went wrong" not in shown
    return shown, answers[0]


def link(key: str) -> str:
    return f"<{JIRA.replace('{key}', key)}|{key}>"


async def add_release(h: SlackHarness, version: str | None, state: str, env: str = "prod", **kw: Any) -> int:
    row = {"action": "deploy", "service": "api", "requester": ALICE, "channel": "C0OPS", **kw}
    now = h.services.clock.now()

    def tx(db: Any) -> int:
        cur = db.execute(
            "INSERT INTO releases (action, service, env, version, requester, state, channel, created_at,"
            " finished_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row["action"], row["service"], env, version, row["requester"], state, row["channel"], now, now, now),
        )
        return int(cur.lastrowid)

    return await h.services.store.write(tx)


# --- code log ---------------------------------------------------------------------------------------


async def test_log_shows_recent_commits_with_tickets_linked(tmp_path: Path, emu: SlackEmulator, api_repo: Repo) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        shown, answer = await ask(h, "code log api 3")
        assert "api · main: last 3 commits" in shown
        for name in ("bump", "merge", "docs"):
            assert api_repo.short(name) in shown
        assert api_repo.short("lib") not in shown  # the fourth newest
        assert "2026-04-07 *Ann Lee* Bump version " + link("SHOP-12") in shown
        assert "*Dee Park* Merge feature (" + link("SHOP-2") + ", " + link("SHOP-3") + ") _(merge)_" in shown
        assert "|SHOP-1>" not in shown  # SHOP-12's link is not SHOP-1's
        assert [b["type"] for b in answer.blocks] == ["header", "section"]

        shown, _ = await ask(h, "code log api")
        assert "last 6 commits" in shown and api_repo.short("initial") in shown
        assert "Add lib · " + link("SHOP-3") in shown  # a key from the body follows the subject
        assert emu.files == []


async def test_log_without_ticket_url_keeps_keys_as_text(tmp_path: Path, api_repo: Repo) -> None:
    o = overrides(tmp_path, api_repo)
    del o["services"]["api"]["repo"]["ticket_url"]
    async with console_ops(tmp_path, **o) as h:
        out = await h.say("code log api 1")
        assert "Bump version SHOP-12" in out and "jira" not in out


# --- code diff --------------------------------------------------------------------------------------


async def test_diff_between_two_tags(tmp_path: Path, emu: SlackEmulator, api_repo: Repo) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        shown, _ = await ask(h, "code diff api v1.0.0..1.1.0")
        assert "api v1.0.0..1.1.0" in shown
        assert "4 commits (1 merge)" in shown
        assert "Bob Ng (2), Cy Diaz (1), Dee Park (1)" in shown
        assert "3 files, +4 −0" in shown
        assert ", ".join(link(k) for k in ("SHOP-2", "SHOP-3", "OPS-9")) in shown
        for name in ("merge", "docs", "lib", "feature"):
            assert api_repo.short(name) in shown
        assert api_repo.short("bump") not in shown and api_repo.short("initial") not in shown
        assert "`src/lib.py` +2 −0" in shown and "`src/app.py` +1 −0" in shown and "`docs/readme.md` +1 −0" in shown
        assert emu.files == []  # short enough: nothing attached


async def test_diff_of_shas_counts_files_from_the_fork_point(
    tmp_path: Path, emu: SlackEmulator, api_repo: Repo
) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        s = api_repo.shas
        shown, _ = await ask(h, f"code diff api {s['docs'][:8]}..{s['lib'][:8]}")
        assert "2 commits" in shown and "Bob Ng (2)" in shown
        assert "src/lib.py" in shown and "src/app.py" in shown
        assert "readme" not in shown  # `docs` changed it, but not on the way from the fork point to `lib`


async def test_diff_the_wrong_way_round_and_of_one_version(tmp_path: Path, api_repo: Repo) -> None:
    async with console_ops(tmp_path, **overrides(tmp_path, api_repo)) as h:
        out = await h.say("code diff api v1.1.0..v1.0.0")
        assert "v1.1.0..v1.0.0" in out and "v1.0.0 is behind v1.1.0" in out
        assert "code diff api v1.0.0..v1.1.0, has 4 commits" in out
        out = await h.say("code diff api v1.1.0..1.1.0")
        assert "No commits between v1.1.0 and 1.1.0 of api: they are the same" in out
        out = await h.say("code diff api main~1..main")  # git's "one back", as people type it
        assert "api main~1..main" in out and "1 commit" in out and api_repo.short("bump") in out


@pytest.fixture
def big_repo(tmp_path: Path) -> Repo:
    """60 commits after v0, each touching its own file, some with long subjects and many tickets."""
    repo = tmp_path / "big"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shas = {"v0": commit(repo, "Start", {"README": "x\n"}, date="2026-01-01T00:00:00Z", author="Ann Lee")}
    git(repo, "tag", "v0")
    for i in range(60):
        keys = " ".join(f"BIG-{i * 100 + k}" for k in range(12))
        subject = f"Change {i} " + "x" * 150 if i % 10 == 0 else f"Change {i} BIG-{i}"
        shas[f"c{i}"] = commit(
            repo,
            f"{subject}\n\nRefs {keys}",
            {f"files/f{i:02d}.txt": "line\n" * (i + 1)},
            date=f"2026-02-{1 + i // 3:02d}T{i % 3:02d}:00:00Z",
            author=f"Dev {i % 7}",
        )
    return Repo(repo, shas)


async def test_large_answers_are_trimmed_and_attached(
    tmp_path: Path, emu: SlackEmulator, api_repo: Repo, big_repo: Repo
) -> None:
    o = overrides(tmp_path, api_repo)
    o["services"]["big"] = {"repo": {"path": str(big_repo.path), "branch": "main", "ticket_url": JIRA}}
    async with slack_ops(tmp_path, emu, **o) as h:
        shown, answer = await ask(h, "code diff big v0..main")
        assert "60 commits" in shown and "60 files, +1830 −0" in shown
        assert "Showing 25 of 60 commits and 10 of 60 files; the full lists are attached as a file." in shown
        assert big_repo.short("c59") in shown and big_repo.short("c34") not in shown
        assert "top 10 of 60 by lines changed" in shown and "`files/f59.txt` +60 −0" in shown
        assert "files/f49.txt" not in shown  # the 11th biggest
        assert len(answer.blocks) < 50
        assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in answer.blocks)
        [listing] = emu.files
        content = listing.content.decode()
        assert listing.channel == "C0OPS" and listing.filename == "big-v0..main.txt"
        assert all(big_repo.short(f"c{i}") in content for i in range(60))
        assert "files/f00.txt  +1 -0" in content

        shown, answer = await ask(h, "code log big 40")
        assert "last 40 commits" in shown and "Showing 25 of 40; the whole list is attached as a file." in shown
        assert big_repo.short("c59") in shown and big_repo.short("c20") not in shown
        assert "+7" in shown  # 12 keys in the body: 5 shown, the rest counted
        assert len(emu.files) == 2 and big_repo.short("c20") in emu.files[1].content.decode()


# --- code pending -----------------------------------------------------------------------------------


async def test_pending_counts_from_the_last_succeeded_release(
    tmp_path: Path, emu: SlackEmulator, api_repo: Repo
) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        await add_release(h, "v1.0.0", "succeeded")
        await add_release(h, "1.1.0", "failed")  # never ran: it doesn't count
        await add_release(h, "1.1.0", "succeeded", env="staging")  # another environment
        shown, _ = await ask(h, "code pending api prod")
        assert "api: 5 commits on main not in prod yet" in shown
        assert "`v1.0.0` (release 1 by <@U0ALICE>" in shown
        for name in ("bump", "merge", "docs", "lib", "feature"):
            assert api_repo.short(name) in shown
        assert api_repo.short("initial") not in shown
        assert "Bob Ng (2), Ann Lee (1), Cy Diaz (1), Dee Park (1)" in shown
        assert link("SHOP-12") in shown

        rid = await add_release(h, "1.1.0", "succeeded")
        shown, _ = await ask(h, "code pending api prod")
        assert "api: 1 commit on main not in prod yet" in shown and f"release {rid} by" in shown
        assert api_repo.short("bump") in shown and api_repo.short("merge") not in shown

        await add_release(h, api_repo.shas["bump"], "baking")
        shown, _ = await ask(h, "code pending api prod")
        assert "Nothing pending" in shown and "still baking" in shown


async def test_pending_uses_the_target_when_opsloop_has_no_release(
    tmp_path: Path, emu: SlackEmulator, api_repo: Repo
) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        shown, _ = await ask(h, "code pending api staging")
        assert "Nothing of `api` was ever deployed to `staging`" in shown
        assert "Everything on `main` is pending: 6 commits." in shown
        assert api_repo.short("initial") in shown

        (tmp_path / "api-staging.version").write_text("1.0.0\n")
        shown, _ = await ask(h, "code pending api staging")
        assert "api: 5 commits on main not in staging yet" in shown
        assert "reported by the command target; opsloop has no release of it there" in shown

        (tmp_path / "api-staging.version").write_text("7.7.7\n")
        shown, _ = await ask(h, "code pending api staging")
        assert "`staging` runs `api` `7.7.7`" in shown and "has no tag or commit `7.7.7`" in shown
        assert "can't tell what is pending" in shown


async def test_pending_of_a_hotfix_names_what_the_branch_lacks(
    tmp_path: Path, emu: SlackEmulator, api_repo: Repo
) -> None:
    git(api_repo.path, "checkout", "-q", "-b", "hotfix", "v1.1.0")
    fix = commit(api_repo.path, "Hotfix OPS-77", {"src/app.py": "fixed\n"}, date="2026-04-08T10:00:00Z", author="Eve")
    git(api_repo.path, "checkout", "-q", "main")
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        await add_release(h, fix[:12], "succeeded")
        shown, _ = await ask(h, "code pending api prod")
        assert "api: 1 commit on main not in prod yet" in shown and api_repo.short("bump") in shown
        assert f"`{fix[:12]}` also has 1 commit that `main` doesn't" in shown


async def test_pending_when_a_rollback_recorded_no_version(tmp_path: Path, api_repo: Repo) -> None:
    o = overrides(tmp_path, api_repo)
    async with console_ops(tmp_path, **o) as h:
        now = h.services.clock.now()
        await h.services.store.write(
            lambda db: db.execute(
                "INSERT INTO releases (action, service, env, version, requester, state, channel, created_at,"
                " updated_at) VALUES ('rollback', 'api', 'prod', NULL, ?, 'succeeded', '#ops', ?, ?)",
                (ALICE, now, now),
            )
        )
        out = await h.say("code pending api prod")
        assert "I can't tell which version of api runs in prod" in out
        assert "did not record its version" in out and "reports none" in out
        (tmp_path / "api-prod.version").write_text("v1.1.0\n")
        out = await h.say("code pending api prod")
        assert "1 commit on main not in prod yet" in out and "reported by the command target" in out


# --- code who ---------------------------------------------------------------------------------------


async def test_who_changed_a_path(tmp_path: Path, emu: SlackEmulator, api_repo: Repo) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        shown, _ = await ask(h, "code who src")  # `api` is the only service with a repository
        assert "Who changed src (api, main)" in shown
        assert "*Bob Ng* — 2 commits, last 2026-04-03\\n*Ann Lee* — 1 commit, last 2026-04-01" in shown
        assert "Dee Park" not in shown  # merges don't count
        assert "2 authors in 3 commits (merges not counted)." in shown

        assert (await ask(h, "code who ./docs/ api"))[0].count("Cy Diaz") == 1
        shown, _ = await ask(h, "code who api src/lib.py")  # the words the other way round
        assert "*Bob Ng* — 1 commit" in shown and "Ann Lee" not in shown
        shown, _ = await ask(h, "code who <http://app.py|app.py>")  # Slack made a link of the file name
        assert "Who changed app.py" in shown and "*Ann Lee* — 1 commit" in shown

        shown, _ = await ask(h, "code who src/nothing.py")
        assert "No commit on `main` of `api` touches `src/nothing.py`" in shown


async def test_who_asks_which_service_when_several_have_a_repository(
    tmp_path: Path, api_repo: Repo, big_repo: Repo
) -> None:
    o = overrides(tmp_path, api_repo)
    o["services"]["big"] = {"repo": {"path": str(big_repo.path)}}
    async with console_ops(tmp_path, **o) as h:
        out = await h.say("code who src")
        assert "Which service's repository? Say code who src SERVICE (one of api, big)" in out
        out = await h.say("code who files big")
        assert "7 authors in 60 commits" in out


# --- bad input, permissions, help, the event loop -----------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("code log nope", "There is no service nope. Configured: api, web."),
        ("code log web", "web has no repository: add services.web.repo"),
        ("code log api 0", "N must be between 1 and 200"),
        ("code log api 5000", "N must be between 1 and 200"),
        ("code diff api 1.0.0", "1.0.0 is not a range: write it FROM..TO"),
        ("code diff api 1.0.0...1.1.0", "Use two dots between the versions"),
        ("code diff api ..main", "needs a version on both sides of .."),
        ("code diff api 1.0.0..main..x", "has more than one .."),
        ("code diff api --output=/tmp/pwned..main", "looks like an option, not a tag, branch or commit SHA"),
        ("code diff api 9.9.9..main", "The repository of api has no tag or commit 9.9.9"),
        ("code diff api main^{tree}..main", "main^{tree} is not a tag, branch or commit SHA"),
        ("code diff api main~99..main", "main~99: main has no such ancestor"),
        ("code diff api v1.0.0..HEAD@{1}", "HEAD@{1} is not a tag, branch or commit SHA"),
        ("code diff", "Missing SERVICE"),
        ("code who ../etc/passwd api", "../etc/passwd has .. in it"),
        ("code who src/../../x api", "has .. in it"),
        ("code who -rf api", "-rf looks like an option"),
        ("code who /etc api", "/etc is an absolute path"),
        ("code who :(exclude)src api", "a leading : is git pathspec magic"),
        ("code who src nope", "There is no service nope"),
        ("code pending api nowhere", "There is no environment nowhere. Configured: staging, prod."),
        ("code pending nope prod", "There is no service nope"),
        ("code pending web prod", "web has no repository"),
    ],
)
async def test_bad_input_gets_a_sentence(tmp_path: Path, api_repo: Repo, line: str, expected: str) -> None:
    async with console_ops(tmp_path, **overrides(tmp_path, api_repo)) as h:
        out = await h.say(line)
        assert expected in " ".join(out.split()), out
        assert "went wrong" not in out and "Traceback" not in out
    assert not Path("/tmp/pwned").exists()


async def test_bad_input_over_slack_is_a_sentence(tmp_path: Path, emu: SlackEmulator, api_repo: Repo) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        shown, _ = await ask(h, "code who ../secrets api")
        assert "`../secrets` has `..` in it" in shown and "Usage: `code who PATH [SERVICE]`" in shown
        shown, _ = await ask(h, "code diff api v1.0.0..v9")
        assert "The repository of `api` has no tag or commit `v9`" in shown


async def test_who_may_run_code_commands(tmp_path: Path, emu: SlackEmulator, api_repo: Repo) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        shown, _ = await ask(h, "code log api 1", user=EVE)  # no rule: everyone may read code
        assert api_repo.short("bump") in shown
    o = overrides(tmp_path, api_repo, permissions={"code.*": ["developers"]})
    async with slack_ops(tmp_path, emu, **o) as h:
        shown, _ = await ask(h, "code log api 1", user=EVE)
        assert "`code.log` needs the role `developers`" in shown and api_repo.short("bump") not in shown
        shown, _ = await ask(h, "code pending api prod", user=DAVE)
        assert "not in prod" in shown or "ever deployed" in shown


async def test_help_code_comes_from_the_docstrings(tmp_path: Path, emu: SlackEmulator, api_repo: Repo) -> None:
    async with slack_ops(tmp_path, emu, **overrides(tmp_path, api_repo)) as h:
        shown, _ = await ask(h, "help code")
        for usage, summary in [
            ("code log SERVICE [N]", "Recent commits of a service's branch"),
            ("code diff SERVICE FROM..TO", "What changed between two versions"),
            ("code pending SERVICE ENV", "not deployed to ENV yet"),
            ("code who PATH [SERVICE]", "Who changed a file or directory recently"),
        ]:
            assert f"`{usage}`" in shown and summary in shown
        shown, _ = await ask(h, "help")
        assert "*code* — Read the code" in shown


async def test_git_runs_off_the_event_loop(tmp_path: Path, api_repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = adapters.git.git.Repo

    class Watched(real):  # type: ignore[misc,valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            threads.append(threading.current_thread().name)
            super().__init__(*a, **kw)

    monkeypatch.setattr(adapters.git.git, "Repo", Watched)
    async with console_ops(tmp_path, **overrides(tmp_path, api_repo)) as h:
        for line in ("code log api", "code diff api v1.0.0..v1.1.0", "code pending api prod", "code who src"):
            out = await h.say(line)
            assert "went wrong" not in out
    loop_thread = threading.main_thread().name
    assert len(threads) >= 6 and loop_thread not in threads
    assert all(t.startswith("blocking") for t in threads), threads


async def test_a_diff_longer_than_what_is_read_is_counted_in_full(
    tmp_path: Path, big_repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("handlers.code.DIFF_FETCH", 30)
    o = {"services": {"big": {"repo": {"path": str(big_repo.path)}}}}
    async with console_ops(tmp_path, **o) as h:
        out = await h.say("code diff big v0..main")
        assert "60 commits (authors and tickets of the newest 30)" in out
        await h.services.outbox.drain(timeout=10)
        assert "... and 30 older commits" in h.text()
