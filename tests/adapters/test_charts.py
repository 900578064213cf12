"""MatplotlibCharts: PNGs come back, "no data" for nothing to draw, UTC axis, labels, lazy import."""

from __future__ import annotations

import asyncio
import io
import math
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.charts import MAX_SERIES, MatplotlibCharts, build_figure, chart_heading, distinctive_labels
from bot.blocking import BlockingPool
from bot.ports import ChartRenderer, Series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[2]
NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def series(n: int, *, points: int = 30, job: str = "api") -> list[Series]:
    return [
        Series(
            labels=(("__name__", "http_requests_total"), ("instance", f"10.0.0.{i}:9100"), ("job", job)),
            points=tuple((NOON + j * 60, 10.0 * i + math.sin(j / 4)) for j in range(points)),
        )
        for i in range(n)
    ]


def png_size(png: bytes) -> tuple[int, int]:
    # IHDR is the first chunk: width and height are big-endian at bytes 16..24.
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def colourful_pixels(png: bytes) -> int:
    """Pixels that are clearly not grey: lines are coloured, the "no data" image is black and grey."""
    from PIL import Image

    raw = Image.open(io.BytesIO(png)).convert("RGB").tobytes()
    return sum(1 for i in range(0, len(raw), 3) if max(raw[i : i + 3]) - min(raw[i : i + 3]) > 60)


@pytest.fixture
async def pool() -> AsyncIterator[BlockingPool]:
    p = BlockingPool(workers=2)
    yield p
    p.close()


@pytest.fixture
def charts(pool: BlockingPool) -> MatplotlibCharts:
    return MatplotlibCharts(pool)


def test_it_is_a_chart_renderer(pool: BlockingPool) -> None:
    renderer: ChartRenderer = MatplotlibCharts(pool)
    assert renderer is not None


async def test_a_chart_is_a_png(charts: MatplotlibCharts) -> None:
    png = await charts.line_chart("rate(http_requests_total[5m])", series(3), unit="req/s")
    assert png.startswith(PNG_MAGIC)
    assert png_size(png) == (1000, 500)
    assert colourful_pixels(png) > 500


async def test_no_series_gives_the_no_data_image(charts: MatplotlibCharts) -> None:
    empty = await charts.line_chart("up", [])
    assert empty.startswith(PNG_MAGIC)
    assert colourful_pixels(empty) == 0
    # Series without a drawable point are no data either, and give the very same image.
    blank = [Series(labels=(("job", "a"),), points=()), Series(labels=(("job", "b"),), points=((NOON, math.nan),))]
    assert await charts.line_chart("up", blank) == empty
    fig = build_figure("up", [])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "no data" in texts


async def test_drawing_happens_off_the_event_loop(charts: MatplotlibCharts) -> None:
    beats = 0
    stop = asyncio.Event()

    async def beat() -> None:
        nonlocal beats
        while not stop.is_set():
            await asyncio.sleep(0.005)
            beats += 1

    task = asyncio.create_task(beat())
    for _ in range(3):
        await charts.line_chart("busy", series(MAX_SERIES, points=500))
    stop.set()
    await task
    assert beats > 3


def test_lines_are_named_by_their_distinctive_labels() -> None:
    own, shared = distinctive_labels(series(3))
    assert shared == [("__name__", "http_requests_total"), ("job", "api")]
    assert own[1] == (("instance", "10.0.0.1:9100"),)
    fig = build_figure("requests", series(3), unit="req/s")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ['{instance="10.0.0.0:9100"}', '{instance="10.0.0.1:9100"}', '{instance="10.0.0.2:9100"}']
    # The shared labels are said once, under the title.
    assert 'http_requests_total{job="api"}' in [t.get_text() for t in ax.texts]
    assert ax.get_ylabel() == "req/s"


def test_a_label_missing_from_some_series_is_distinctive() -> None:
    a = Series(labels=(("job", "api"), ("path", "/login")), points=((NOON, 1.0),))
    b = Series(labels=(("job", "api"),), points=((NOON, 2.0),))
    own, shared = distinctive_labels([a, b])
    assert shared == [("job", "api")]
    assert own == [(("path", "/login"),), ()]


def test_at_most_ten_series_and_the_title_says_so() -> None:
    assert chart_heading("load", 3) == "load"
    assert chart_heading("load", 12) == f"load (showing {MAX_SERIES} of 12 series)"
    fig = build_figure("load", series(12))
    ax = fig.axes[0]
    assert len(ax.get_lines()) == MAX_SERIES
    assert ax.get_title(loc="left") == f"load (showing {MAX_SERIES} of 12 series)"


def test_the_time_axis_is_utc_whatever_matplotlib_is_told() -> None:
    import matplotlib

    # Someone else's rcParams must not move the axis off UTC.
    with matplotlib.rc_context({"timezone": "Asia/Tokyo"}):
        fig = build_figure("noon", series(1, points=31))
        fig.canvas.draw()
        ax = fig.axes[0]
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ax.get_xlabel() == "time (UTC)"
    # 12:00-12:30 UTC is 21:00-21:30 in Tokyo.
    assert any(t.startswith("12:") for t in ticks), ticks
    assert not any(t.startswith("21:") for t in ticks), ticks


def test_infinite_and_nan_points_are_gaps() -> None:
    s = Series(
        labels=(("job", "a"),), points=((NOON, 1.0), (NOON + 60, math.inf), (NOON + 120, math.nan), (NOON + 180, 2.0))
    )
    fig = build_figure("gaps", [s])
    ys = list(fig.axes[0].get_lines()[0].get_ydata())
    assert ys[0] == 1.0 and ys[3] == 2.0
    assert math.isnan(ys[1]) and math.isnan(ys[2])


def test_matplotlib_is_imported_only_when_a_chart_is_drawn(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from adapters.charts import MatplotlibCharts
        from bot.blocking import BlockingPool
        from bot.ports import Series

        assert "matplotlib" not in sys.modules, "imported at module import"
        pool = BlockingPool(workers=1)
        charts = MatplotlibCharts(pool)
        assert "matplotlib" not in sys.modules, "imported by the constructor"
        png = asyncio.run(charts.line_chart("t", [Series(labels=(), points=((0.0, 1.0), (60.0, 2.0)))]))
        assert png.startswith(b"\\x89PNG"), png[:8]
        assert "matplotlib" in sys.modules
        assert "matplotlib.pyplot" not in sys.modules, "pyplot's global state is not used"
        import matplotlib
        print(matplotlib.get_backend())
        pool.close()
        """
    )
    env = {"PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(tmp_path), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().lower() == "agg"
