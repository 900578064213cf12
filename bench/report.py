"""Ratios, the verdict, the printed table and the JSON file; pure functions over the results' JSON.

`python -m bench.report bench/results/ack-….json` prints the table of an earlier run again (watch-….json too).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.9  # of the minimal Bolt app's throughput
TARGET_P99_MS = 50.0
BUSY_WARNING_CORES = 0.25  # other processes using more than this during a run skew it


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(servers: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """opsloop/bolt, opsloop/bare and bolt/bare for throughput, p99 and memory, where both were measured."""
    out: dict[str, dict[str, float | None]] = {}
    for a, b in (("opsloop", "bolt"), ("opsloop", "bare"), ("bolt", "bare")):
        if a in servers and b in servers:
            x, y = servers[a], servers[b]
            out[f"{a}/{b}"] = {
                "throughput": _ratio(x["rps"], y["rps"]),
                "p99": _ratio(x["p99_ms"], y["p99_ms"]),
                "memory": _ratio(x["rss_kib"], y["rss_kib"]),
            }
    return out


def target(
    servers: dict[str, dict[str, Any]], rat: dict[str, dict[str, float | None]], paired: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The issue's target: ≥ 0.9 of bolt's throughput and p99 ≤ 50 ms (met is None when not measured); with
    --paired the throughput ratio is the median of the slices' own ratios."""
    ratio = paired["median"] if paired else rat.get("opsloop/bolt", {}).get("throughput")
    p99 = servers["opsloop"]["p99_ms"] if "opsloop" in servers else None
    met = None if ratio is None or p99 is None else bool(ratio >= TARGET_RATIO and p99 <= TARGET_P99_MS)
    return {
        "throughput_ratio_min": TARGET_RATIO,
        "p99_ms_max": TARGET_P99_MS,
        "ratio": ratio,
        "p99_ms": p99,
        "met": met,
    }


def _warnings(servers: dict[str, dict[str, Any]]) -> list[str]:
    out = [f"{name}: {w}" for name, s in servers.items() for w in s.get("warnings", [])]
    for name, s in servers.items():
        busiest = s.get("other_cores_max", 0.0)
        if busiest > BUSY_WARNING_CORES:
            out.append(
                f"{name}: other processes used {busiest:.2f} cores during a measured run; "
                "its numbers are pessimistic (run again on a quiet machine, or use --repeat)"
            )
    return out


def assemble(
    settings: dict[str, Any],
    machine: dict[str, Any],
    servers: dict[str, dict[str, Any]],
    problems: list[str],
    slack_calls: list[str],
    paired: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole report as one JSON-able dict."""
    rat = ratios(servers)
    return {
        "benchmark": "slash-command ack path",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "machine": machine,
        "servers": servers,
        "ratios": rat,
        "paired": paired,
        "target": target(servers, rat, paired),
        "problems": problems,
        "warnings": _warnings(servers),
        "slack_emulator": slack_calls,
    }


def write_json(directory: Path, data: dict[str, Any], prefix: str = "ack") -> Path:
    """bench/results/<prefix>-<time>.json (the directory is git-ignored)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _rows(servers: dict[str, dict[str, Any]]) -> list[str]:
    head = (
        f"{'server':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'RSS MiB':>9}"
        f"{'CPU µs/req':>12}{'off-loop':>10}"
    )
    lines = [head, "-" * len(head)]
    for name, s in servers.items():
        lines.append(
            f"{name:<9}{s['rps']:>9.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['errors']:>8}"
            f"{s['rss_kib'] / 1024:>9.1f}{s['cpu_us_per_request']:>12.0f}"
            f"{s.get('other_threads_cpu_us_per_request', 0):>10.0f}"
        )
    return lines


def _ratio_lines(rat: dict[str, dict[str, float | None]]) -> list[str]:
    return [
        f"{pair:<13} throughput {_num(r['throughput'], '.2f')}   p99 {_num(r['p99'], '.2f')}x"
        f"   memory {_num(r['memory'], '.2f')}x"
        for pair, r in rat.items()
    ]


def _target_line(t: dict[str, Any]) -> str:
    verdict = {True: "MET", False: "NOT MET", None: "NOT MEASURED (needs bolt and opsloop)"}[t["met"]]
    detail = "" if t["met"] is None else f" ({t['ratio']:.2f} of bolt, p99 {t['p99_ms']:.2f} ms)"
    return f"target: ≥{t['throughput_ratio_min']} of bolt throughput, p99 ≤ {t['p99_ms_max']:.0f} ms: {verdict}{detail}"


def _audit_line(s: dict[str, Any]) -> str | None:
    audits = [r["audit"] for r in s["rounds"] if r.get("audit")]
    if not audits:
        return None
    rows, answered = sum(a["rows"] for a in audits), sum(a["answered"] for a in audits)
    allowance = sum(a["in_flight_allowance"] for a in audits)
    intact = sum(1 for a in audits if a.get("verify", "").startswith("audit log intact"))
    p50 = [a["router_ms"]["p50"] for a in audits if a.get("router_ms")]
    p99 = [a["router_ms"]["p99"] for a in audits if a.get("router_ms")]
    router = f"p50 {statistics.median(p50):.1f} ms, p99 {statistics.median(p99):.1f} ms" if p50 and p99 else "n/a"
    return (
        f"audit: {rows} rows for {answered} answered requests (+{rows - answered} answered after wrk stopped"
        f" counting, allowed ≤ {allowance}); hash chain verified intact in {intact}/{len(audits)} round(s);"
        f" router time before the audit write (audit detail.ms) {router}"
    )


def table(data: dict[str, Any]) -> str:
    """The human summary: per-server rows, ratios, the verdict, the audit proof, and problems loudly."""
    st, servers = data["settings"], data["servers"]
    lines = [
        f"ack path: {st['request']}, wrk -t{st['threads']} -c{st['connections']} -d{st['duration_s']:g}s "
        f"(median of {st['repeat']} {'slice' if st.get('paired') else 'round'}(s)), {data['machine']['cores']} cores,"
        f" {data['machine']['cpu']}",
        "",
        *_rows(servers),
        "",
        *_ratio_lines(data["ratios"]),
    ]
    if paired := data.get("paired"):
        each = ", ".join(f"{x:.2f}" for x in paired["opsloop/bolt"])
        interval = "95 % interval {:.2f}–{:.2f}; ".format(*paired["median_95"]) if "median_95" in paired else ""
        lines.append(f"paired slices: opsloop/bolt throughput median {paired['median']:.2f} ({interval}slices {each})")
    lines.append(_target_line(data["target"]))
    if "opsloop" in servers and (audit := _audit_line(servers["opsloop"])):
        lines.append(audit)
    lines += [f"warning: {w}" for w in data["warnings"]]
    if data["problems"]:
        lines += ["", "!" * 72, f"!!! {len(data['problems'])} PROBLEM(S): these numbers are not valid", "!" * 72]
        lines += [f"!!! {p}" for p in data["problems"]]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        data = json.loads(Path(arg).read_text())
        if data.get("benchmark") == "build watching":  # bench/watch.py's results
            from bench import watch

            print(watch.table(data))
        else:
            print(table(data))
