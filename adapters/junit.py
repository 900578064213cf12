"""JUnit XML test reports -> `TestReport`, read with junitparser on the blocking pool.

XML safety. JUnit reports come from builds, that is from code under test, so they are not trusted:
- Files over 50 MiB are refused before a byte is parsed (a real report of that size is a mistake).
- The XML is parsed by the standard library's expat parser with a tree builder that refuses any
  `<!DOCTYPE>`. A DTD is the only place where entities can be declared, so refusing it means no entity
  (internal, external or parameter) is ever declared, let alone expanded: billion-laughs and quadratic
  blow-up documents are rejected as "not JUnit XML", and no file or URL is ever fetched. JUnit reports
  never carry a DTD, so nothing real is lost. Expat (2.4.1 and newer) also caps entity amplification on
  its own, which bounds the little work done before the refusal surfaces.
- We build the tree ourselves and hand the root to junitparser, so this holds whether or not lxml is
  installed (junitparser switches to lxml when it can import it, and its own `fromstring`/`fromfile`
  would then use lxml's default parser, which expands entities). Neither lxml nor defusedxml is a
  dependency of opsloop, and neither is needed for this.
"""

from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, TypeVar, cast

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from bot.blocking import BlockingPool
from bot.ports import AdapterError, AdapterNotFound, TestCaseResult, TestReport, TestStatus

TOOL = "JUnit"
MAX_BYTES = 50 * 1024 * 1024
_CHUNK = 64 * 1024

E = TypeVar("E")


class _DoctypeRefused(Exception):
    """Raised from inside expat when the document declares a DTD."""


class _NoDoctypeBuilder(ET.TreeBuilder):
    """A TreeBuilder that aborts the parse at the first `<!DOCTYPE`."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        # XMLParser calls this as soon as expat reads the DOCTYPE header, before the internal subset's
        # entity declarations could be used by any content we keep.
        raise _DoctypeRefused(
            f"it declares a DTD (<!DOCTYPE {name}>), which JUnit reports never need;"
            " refused so that no entity is expanded"
        )


def _parse_xml(data: bytes) -> ET.Element:
    """Parse `data` with the DTD-refusing parser; raises ET.ParseError or _DoctypeRefused."""
    parser = ET.XMLParser(target=_NoDoctypeBuilder())
    # Fed in chunks so that a refusal stops us before the rest of a large file is even looked at.
    view = memoryview(data)
    for start in range(0, len(data), _CHUNK):
        parser.feed(bytes(view[start : start + _CHUNK]))
    root: ET.Element = parser.close()
    return root


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _duration(case: TestCase) -> float:
    try:
        t = case.time
    except ValueError:
        # A tool wrote something like time="n/a"; the result still counts, its duration does not.
        return 0.0
    return float(t) if t is not None else 0.0


def _case(case: TestCase, suite: str) -> TestCaseResult:
    results = case.result
    bad = next((r for r in results if isinstance(r, Failure | Error)), None)
    skip = next((r for r in results if isinstance(r, Skipped)), None)
    if bad is not None:
        status, message, details = TestStatus.FAILED, bad.message, bad.text
    elif skip is not None:
        status, message, details = TestStatus.SKIPPED, skip.message, skip.text
    else:
        status, message, details = TestStatus.PASSED, None, None
    return TestCaseResult(
        suite=suite,
        classname=case.classname or "",
        name=case.name or "",
        status=status,
        duration_s=_duration(case),
        message=_text(message),
        details=_text(details),
    )


def _children(elem: Any, kind: type[E]) -> Iterator[E]:
    """Direct children of one kind (junitparser leaves `iterchildren` unannotated)."""
    return iter(elem.iterchildren(kind))


def _walk(suite: TestSuite, parent: str) -> Iterator[TestCaseResult]:
    """Cases of `suite` and of its nested suites, each exactly once, named by its innermost suite."""
    name = suite.name or parent
    # Not `for case in suite`: junitparser's TestSuite iteration already chains nested suites' cases,
    # so combining it with testsuites() would count every nested case twice.
    for case in _children(suite, TestCase):
        yield _case(case, name)
    for child in _children(suite, TestSuite):
        yield from _walk(child, name)


def _report(root: ET.Element) -> TestReport:
    # fromroot wraps a lone <testsuite> root in <testsuites>; it is annotated as taking junitparser's own
    # Element but takes (and needs) an ElementTree element.
    xml = JUnitXml.fromroot(cast(Any, root))
    cases: list[TestCaseResult] = []
    # Some tools put cases straight under <testsuites>; keep them rather than drop them silently.
    cases.extend(_case(c, xml.name or "") for c in _children(xml, TestCase))
    for suite in xml:
        cases.extend(_walk(suite, ""))
    return TestReport(cases=tuple(cases))


def _size(n: int) -> str:
    for unit, k in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _too_big(source: str, size: int, limit: int) -> AdapterError:
    # The size in bytes, exactly: "50 MiB" beside "over 50 MiB" would read as a contradiction.
    return AdapterError(TOOL, f"{source} is {size:,} bytes; JUnit files over {_size(limit)} are refused")


def _parse_sync(data: bytes, source: str, limit: int) -> TestReport:
    if len(data) > limit:
        raise _too_big(source, len(data), limit)
    try:
        root = _parse_xml(data)
    except ET.ParseError as e:
        raise AdapterError(TOOL, f"{source} is not JUnit XML: {e}") from None
    except _DoctypeRefused as e:
        raise AdapterError(TOOL, f"{source} is not JUnit XML: {e}") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise AdapterError(
            TOOL, f"{source} is not JUnit XML: its root element is <{root.tag}>, not <testsuites> or <testsuite>"
        )
    try:
        return _report(root)
    except ValueError as e:  # a malformed count or number that junitparser could not convert
        raise AdapterError(TOOL, f"{source} is not JUnit XML: {e}") from None


def _read_sync(path: str, limit: int) -> TestReport:
    try:
        size = os.stat(path).st_size
        if size > limit:
            raise _too_big(path, size, limit)
        with open(path, "rb") as f:
            # Read at most one byte past the limit: the file may have grown since stat().
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise AdapterNotFound(TOOL, f"{path} does not exist") from None
    except OSError as e:
        raise AdapterError(TOOL, f"cannot read {path}: {e.strerror or e}") from None
    return _parse_sync(data, path, limit)


def _matches(pattern: str) -> list[str]:
    expanded = os.path.expanduser(pattern)
    # Sorted so that a merged report lists its files' cases in a stable order.
    return sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))


class JUnitReader:
    """`TestResultsReader` for JUnit XML files (pytest, Maven Surefire, Jest, Go, ...)."""

    def __init__(self, pool: BlockingPool, *, timeout: float = 60.0, max_bytes: int = MAX_BYTES) -> None:
        self._pool = pool
        self._timeout = timeout
        self._max_bytes = max_bytes

    async def parse(self, data: bytes, source: str = "") -> TestReport:
        """Parse one JUnit XML document; `source` names it in error messages."""
        return await self._pool.run(
            TOOL, _parse_sync, data, source or "the report", self._max_bytes, timeout=self._timeout
        )

    async def read(self, path: str) -> TestReport:
        """Read a file, or every file a glob matches (`reports/**/*.xml`), merged into one report.

        Raises `AdapterNotFound` when nothing matches, `AdapterError` when a file is not JUnit XML.
        """
        files: list[str] = await self._pool.run(TOOL, _matches, path, timeout=self._timeout)
        if not files:
            raise AdapterNotFound(TOOL, f"no file matches `{path}`")
        cases: list[TestCaseResult] = []
        for file in files:
            # One pool call per file: the time limit applies to each file, and a long merge does not
            # hold a pool thread for the whole run.
            report: TestReport = await self._pool.run(TOOL, _read_sync, file, self._max_bytes, timeout=self._timeout)
            cases.extend(report.cases)
        return TestReport(cases=tuple(cases))
