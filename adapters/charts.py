"""Line charts as PNG with matplotlib: the `ChartRenderer` port.

* matplotlib is imported only when the first chart is drawn: importing it costs about a second and
  tens of MB, which a bot that never draws should not pay at start-up.
* The Agg backend is selected before anything else of matplotlib is loaded, so no display is ever
  looked for. Drawing uses `Figure` with its own Agg canvas, not pyplot: pyplot keeps global state
  (the current figure, a registry of open figures) that pool threads would share. A lock still
  serialises drawing, because matplotlib's text and font caches are not documented as thread-safe
  and charts are rare enough that one at a time costs nothing.
* Drawing runs on the `BlockingPool` (rendering is CPU work of tens to hundreds of ms).
* The time axis is UTC, labelled so. Each line is named by its distinctive labels (those whose value
  is not the same in every series); the shared ones are written once under the title.
* At most `MAX_SERIES` lines, the first ones in the order given (Prometheus sorts series by their
  labels); the title says how many were left out.
* NaN and ±Inf points are drawn as gaps (an infinite value would blow up the axis).
* No series, or series without a single finite point, give a "no data" image (still a valid PNG).
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bot.blocking import BlockingPool
from bot.ports import Series

TOOL = "charts"
MAX_SERIES = 10
_WIDTH_IN, _HEIGHT_IN, _DPI = 10.0, 5.0, 100
_LABEL_MAX = 60
_DRAW_LOCK = threading.Lock()


class MatplotlibCharts:
    """`bot.ports.ChartRenderer` drawing with matplotlib's Agg backend on the blocking pool."""

    def __init__(self, pool: BlockingPool, *, timeout: float = 30.0) -> None:
        """`timeout` bounds one drawing (the first one also imports matplotlib and may build its font cache)."""
        self._pool = pool
        self._timeout = timeout

    async def line_chart(self, title: str, series: Sequence[Series], *, unit: str = "") -> bytes:
        """One line per series (at most `MAX_SERIES`) over UTC time; PNG bytes."""
        return await self._pool.run(TOOL, draw_line_chart, title, tuple(series), unit, timeout=self._timeout)


def distinctive_labels(series: Sequence[Series]) -> tuple[list[tuple[tuple[str, str], ...]], list[tuple[str, str]]]:
    """Per series the labels that tell it apart from the others, and the labels all series share."""
    if not series:
        return [], []
    maps = [dict(s.labels) for s in series]
    names = sorted({k for m in maps for k in m})
    shared = [(k, maps[0][k]) for k in names if all(k in m for m in maps) and len({m[k] for m in maps}) == 1]
    shared_names = {k for k, _ in shared}
    own = [tuple((k, v) for k, v in s.labels if k not in shared_names) for s in series]
    return own, shared


def _legend_text(labels: tuple[tuple[str, str], ...], fallback: str) -> str:
    if not labels:
        return fallback
    name = next((v for k, v in labels if k == "__name__"), "")
    rest = ", ".join(f'{k}="{v}"' for k, v in labels if k != "__name__")
    text = f"{name}{{{rest}}}" if rest else name
    return text if len(text) <= _LABEL_MAX else text[: _LABEL_MAX - 1] + "…"


def chart_heading(title: str, total: int) -> str:
    """The chart's title, saying so when series were left out."""
    heading = title or "chart"
    if total > MAX_SERIES:
        heading += f" (showing {MAX_SERIES} of {total} series)"
    return heading


def draw_line_chart(title: str, series: Sequence[Series], unit: str = "") -> bytes:
    """Draw the chart and return PNG bytes (runs on a pool thread; imports matplotlib on first use)."""
    with _DRAW_LOCK:
        fig = build_figure(title, series, unit)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def build_figure(title: str, series: Sequence[Series], unit: str = "") -> Any:
    """The matplotlib `Figure` of the chart, on its own Agg canvas (callers hold `_DRAW_LOCK` across threads)."""
    import matplotlib

    # Before any backend-dependent module is loaded: never look for a display.
    matplotlib.use("Agg")
    from matplotlib import dates as _dates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # matplotlib's annotations are partial (datetimes are valid x values, the date helpers are untyped).
    mdates: Any = _dates

    heading = chart_heading(title, len(series))
    shown = list(series[:MAX_SERIES])
    drawable = {i for i, s in enumerate(shown) if any(math.isfinite(v) for _, v in s.points)}

    fig = Figure(figsize=(_WIDTH_IN, _HEIGHT_IN), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax: Any = fig.add_subplot()
    if not drawable:
        _no_data(ax, heading)
        fig.tight_layout()
        return fig
    own, shared = distinctive_labels(shown)
    for i, s in enumerate(shown):
        if i not in drawable:
            continue
        times = [datetime.fromtimestamp(t, UTC) for t, _ in s.points]
        values = [v if math.isfinite(v) else math.nan for _, v in s.points]
        marker = "o" if len(s.points) == 1 else None  # a lone point draws no line
        ax.plot(times, values, label=_legend_text(own[i], f"series {i + 1}"), linewidth=1.5, marker=marker)
    # tz everywhere: matplotlib's rcParams["timezone"] may have been changed by someone else.
    locator = mdates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time (UTC)")
    if unit:
        ax.set_ylabel(unit)
    ax.grid(True, alpha=0.3)
    if shared:
        ax.set_title(heading, fontsize=12, loc="left", pad=16)
        ax.text(0.0, 1.01, _legend_text(tuple(shared), ""), transform=ax.transAxes, fontsize=8, color="dimgray")
    else:
        ax.set_title(heading, fontsize=12, loc="left")
    if len(drawable) > 1 or any(own):
        # Outside the plot, on the right: inside, ten entries would hide the lines they name.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _no_data(ax: Any, heading: str) -> None:
    ax.set_title(heading, fontsize=12, loc="left")
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=28, color="gray")
    ax.text(
        0.5,
        0.38,
        "the query returned no points in this range",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        color="gray",
    )
    ax.set_xticks([])
    ax.set_yticks([])
