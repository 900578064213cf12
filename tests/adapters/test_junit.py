"""JUnitReader against real junitparser and real files: pytest's own reports, nesting, globs, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.junit import MAX_BYTES, JUnitReader
from bot.blocking import BlockingPool
from bot.ports import AdapterError, AdapterNotFound, TestStatus

SAMPLE_TESTS = """
import pytest

def test_pass():
    pass

def test_fail():
    assert 1 == 2, "one is not two"

@pytest.mark.skip(reason="no creds")
def test_skip():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_error(broken):
    pass

class TestGroup:
    def test_method(self):
        pass
"""


class RecordingPool(BlockingPool):
    """A real pool that notes which thread each call ran on."""

    def __init__(self) -> None:
        super().__init__(workers=2)
        self.threads: list[str] = []

    async def run(self, tool: str, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kw: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            self.threads.append(threading.current_thread().name)
            return fn(*a, **k)

        return await super().run(tool, wrapped, *args, timeout=timeout, **kw)


@pytest.fixture
async def pool() -> AsyncIterator[RecordingPool]:
    p = RecordingPool()
    yield p
    p.close()


@pytest.fixture
def reader(pool: RecordingPool) -> JUnitReader:
    return JUnitReader(pool)


@pytest.fixture(scope="module")
def pytest_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real reports written by pytest --junitxml, once per junit_family."""
    work = tmp_path_factory.mktemp("pytest-run")
    (work / "test_sample.py").write_text(SAMPLE_TESTS)
    out: dict[str, Path] = {}
    for family in ("xunit1", "xunit2"):
        (work / "pytest.ini").write_text(f"[pytest]\njunit_family = {family}\n")
        report = work / f"{family}.xml"
        # -p no:... keeps the plugins installed in this venv out of the sample run's output.
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:asyncio",
                f"--junitxml={report}",
                "test_sample.py",
            ],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr  # 1 = some tests failed, as intended
        out[family] = report
    return out


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
async def test_reads_pytests_own_report(
    reader: JUnitReader, pool: RecordingPool, pytest_reports: dict[str, Path], family: str
) -> None:
    report = await reader.read(str(pytest_reports[family]))

    by_name = {c.name: c for c in report.cases}
    assert sorted(by_name) == ["test_error", "test_fail", "test_method", "test_pass", "test_skip"]
    assert report.count(TestStatus.PASSED) == 2
    assert report.count(TestStatus.FAILED) == 2  # the failure and the error
    assert report.count(TestStatus.SKIPPED) == 1

    fail = by_name["test_fail"]
    assert fail.status is TestStatus.FAILED
    assert fail.message is not None and "one is not two" in fail.message
    assert fail.details is not None and "assert 1 == 2" in fail.details  # the element text: the traceback
    assert fail.classname == "test_sample"
    assert fail.id == "test_sample.test_fail"
    assert fail.suite == "pytest"

    error = by_name["test_error"]
    assert error.status is TestStatus.FAILED
    assert error.message is not None and "fixture broke" in error.message

    skip = by_name["test_skip"]
    assert skip.status is TestStatus.SKIPPED
    assert skip.message == "no creds"

    method = by_name["test_method"]
    assert method.status is TestStatus.PASSED
    assert method.classname == "test_sample.TestGroup"
    assert method.message is None and method.details is None
    assert all(c.duration_s >= 0 for c in report.cases)

    # The parse ran on the pool's threads, not on the event loop's.
    assert pool.threads and all(t.startswith("blocking") for t in pool.threads)


async def test_parse_takes_bytes_and_maps_every_result(reader: JUnitReader) -> None:
    data = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="smoke" tests="4" failures="1" errors="1" skipped="1" time="1.2">
  <testsuite name="post-deploy" tests="4">
    <testcase classname="smoke.ui" name="test_home_loads" time="0.9"/>
    <testcase classname="smoke.ui" name="test_login" time="0.3">
      <failure message="title mismatch" type="AssertionError">Traceback &amp; more&#10;line 2</failure>
    </testcase>
    <testcase classname="smoke.api" name="test_metrics" time="0"><skipped message="no creds"/></testcase>
    <testcase classname="smoke.api" name="test_db" time="n/a"><error message="connection reset"/></testcase>
  </testsuite>
</testsuites>"""
    report = await reader.parse(data, "smoke.xml")
    assert [(c.id, c.status) for c in report.cases] == [
        ("smoke.ui.test_home_loads", TestStatus.PASSED),
        ("smoke.ui.test_login", TestStatus.FAILED),
        ("smoke.api.test_metrics", TestStatus.SKIPPED),
        ("smoke.api.test_db", TestStatus.FAILED),
    ]
    login = report.cases[1]
    assert login.message == "title mismatch"
    assert login.details == "Traceback & more\nline 2"  # predefined entities and character references still work
    assert login.duration_s == pytest.approx(0.3)
    assert report.cases[3].message == "connection reset"
    assert report.cases[3].details is None
    assert report.cases[3].duration_s == 0.0  # an unreadable time does not lose the result
    assert {c.suite for c in report.cases} == {"post-deploy"}


async def test_nested_suites_count_each_case_once(reader: JUnitReader) -> None:
    data = b"""<testsuites>
  <testsuite name="outer">
    <testcase classname="o" name="a"/>
    <testsuite name="inner">
      <testcase classname="i" name="b"><failure message="boom"/></testcase>
      <testsuite name="innermost"><testcase classname="ii" name="c"/></testsuite>
      <testsuite><testcase classname="anon" name="d"/></testsuite>
    </testsuite>
  </testsuite>
  <testsuite name="second"><testcase classname="s" name="e"/></testsuite>
</testsuites>"""
    report = await reader.parse(data)
    assert [(c.suite, c.id) for c in report.cases] == [
        ("outer", "o.a"),
        ("inner", "i.b"),
        ("innermost", "ii.c"),
        ("inner", "anon.d"),  # a suite without a name takes its parent's
        ("second", "s.e"),
    ]
    assert report.count(TestStatus.FAILED) == 1


async def test_a_lone_testsuite_root_works(reader: JUnitReader) -> None:
    data = b"""<?xml version="1.0"?>
<testsuite name="go" tests="2"><testcase classname="pkg" name="TestA"/>
<testcase classname="pkg" name="TestB"><skipped/></testcase></testsuite>"""
    report = await reader.parse(data)
    assert [(c.suite, c.id, c.status) for c in report.cases] == [
        ("go", "pkg.TestA", TestStatus.PASSED),
        ("go", "pkg.TestB", TestStatus.SKIPPED),
    ]
    assert report.cases[1].message is None


def _suite(name: str, *cases: str) -> str:
    body = "".join(f'<testcase classname="{name}" name="{c}"/>' for c in cases)
    return f'<testsuite name="{name}">{body}</testsuite>'


async def test_a_glob_merges_every_matching_file(reader: JUnitReader, tmp_path: Path) -> None:
    (tmp_path / "reports" / "unit").mkdir(parents=True)
    (tmp_path / "reports" / "unit" / "a.xml").write_text(_suite("a", "t1", "t2"))
    (tmp_path / "reports" / "b.xml").write_text(f"<testsuites>{_suite('b', 't3')}</testsuites>")
    (tmp_path / "reports" / "notes.txt").write_text("not a report")
    (tmp_path / "reports" / "dir.xml").mkdir()  # a directory that matches is not a file to read

    merged = await reader.read(str(tmp_path / "reports" / "**" / "*.xml"))
    assert sorted(c.id for c in merged.cases) == ["a.t1", "a.t2", "b.t3"]

    flat = await reader.read(str(tmp_path / "reports" / "*.xml"))
    assert [c.id for c in flat.cases] == ["b.t3"]


async def test_no_matching_file_is_not_found(reader: JUnitReader, tmp_path: Path) -> None:
    pattern = str(tmp_path / "reports" / "*.xml")
    with pytest.raises(AdapterNotFound, match="no file matches") as exc:
        await reader.read(pattern)
    assert exc.value.tool == "JUnit"
    assert pattern in str(exc.value)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"<testsuites><testsuite name='x'><testcase name='a'></testsuite>", "mismatched tag"),
        (b"", "no element found"),
        (b"PASS ok 12 tests\n", "syntax error"),
        (b"<html><body>Jenkins: 404</body></html>", "root element is <html>"),
    ],
)
async def test_malformed_input_is_not_junit_xml(reader: JUnitReader, tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "broken.xml"
    path.write_bytes(data)
    with pytest.raises(AdapterError, match="is not JUnit XML") as exc:
        await reader.read(str(path))
    assert str(exc.value).startswith(f"JUnit: {path} is not JUnit XML: ")
    assert why in str(exc.value)
    assert not isinstance(exc.value, AdapterNotFound)


async def test_one_bad_file_in_a_glob_names_that_file(reader: JUnitReader, tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(_suite("a", "t1"))
    (tmp_path / "b.xml").write_text("<testsuite")
    with pytest.raises(AdapterError, match=r"b\.xml is not JUnit XML"):
        await reader.read(str(tmp_path / "*.xml"))


async def test_oversized_input_is_refused_before_parsing(pool: RecordingPool, tmp_path: Path) -> None:
    # A sparse file: over 50 MiB by size, but nothing to write; it is refused on its size alone.
    big = tmp_path / "huge.xml"
    with open(big, "wb") as f:
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(AdapterError, match=r"huge\.xml is 52,428,801 bytes; JUnit files over 50 MiB are refused"):
        await JUnitReader(pool).read(str(big))

    small_limit = JUnitReader(pool, max_bytes=1024)
    data = _suite("s", *(f"t{i}" for i in range(100))).encode()
    with pytest.raises(AdapterError, match=re.escape(f"upload.xml is {len(data):,} bytes; JUnit files over 1 KiB")):
        await small_limit.parse(data, "upload.xml")
    assert len((await JUnitReader(pool).parse(data)).cases) == 100


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<testsuite name="s"><testcase name="t"><failure message="&lol9;"/></testcase></testsuite>"""


async def test_entity_expansion_is_refused(reader: JUnitReader, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"bomb\.xml is not JUnit XML: it declares a DTD"):
        await reader.parse(BILLION_LAUGHS, "bomb.xml")

    # One harmless-looking internal entity is refused just the same: no entity is ever expanded.
    small = b'<!DOCTYPE t [<!ENTITY x "boom">]><testsuite name="s"><testcase name="&x;"/></testsuite>'
    with pytest.raises(AdapterError, match="declares a DTD"):
        await reader.parse(small, "small.xml")


async def test_external_entities_are_never_read(reader: JUnitReader, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-token")
    report = tmp_path / "xxe.xml"
    report.write_text(
        f'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY xxe SYSTEM "file://{secret}">]>'
        '<testsuite name="s"><testcase name="t"><failure message="x">&xxe;</failure></testcase></testsuite>'
    )
    with pytest.raises(AdapterError, match="declares a DTD") as exc:
        await reader.read(str(report))
    assert "s3cr3t" not in str(exc.value)
