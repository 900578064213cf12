"""What the figure tests of issue 7 share: reading every table of the store, and writing a figure.

A figure is written to bench/results/<name>.md only when OPSLOOP_RESULTS=1, with the date, the machine
and its load average, so a number can always be traced to where it came from.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"


def _tables(db: Database) -> list[str]:
    return [
        r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]


async def table_counts(services: Any) -> dict[str, int]:
    """The number of rows of every table of opsloop's store (every table, so a new one is covered)."""

    def q(db: Database) -> dict[str, int]:
        return {t: int(db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in _tables(db)}

    result: dict[str, int] = await services.store.read(q)
    return result


async def all_text(services: Any) -> dict[str, list[str]]:
    """Every text value of every table (blobs decoded leniently), by table."""

    def q(db: Database) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in _tables(db):
            values: list[str] = []
            for row in db.execute(f'SELECT * FROM "{t}"'):
                for cell in row:
                    if isinstance(cell, str):
                        values.append(cell)
                    elif isinstance(cell, bytes):
                        values.append(cell.decode("utf-8", "replace"))
            out[t] = values
        return out

    result: dict[str, list[str]] = await services.store.read(q)
    return result


def results_on() -> bool:
    return os.environ.get("OPSLOOP_RESULTS") == "1"


def provenance(reproduce: str) -> str:
    """One line: when, where, how loaded the machine was, and the command that made the figure."""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {load} (1/5/15 min). Reproduce: `{reproduce}`."
    )


def write_figure(name: str, markdown: str) -> Path | None:
    """bench/results/<name>.md, when OPSLOOP_RESULTS=1."""
    if not results_on():
        return None
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(markdown)
    return path


def md_cell(text: object, limit: int = 140) -> str:
    """A table cell: one line, pipes escaped, cut."""
    s = str(text).replace("\n", " ").replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"
