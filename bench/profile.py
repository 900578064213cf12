"""Where opsloop's ack path spends its CPU: py-spy on `opsloop run` while wrk drives `/ops help`.

    .venv/bin/pip install py-spy          # once (a dev tool, not a dependency of opsloop)
    .venv/bin/python -m bench.profile [--duration 10] [--rate 250]

Same set-up as `python -m bench` (the emulator, the config, the signed body, a warm-up). py-spy samples
the running process from outside (`--nonblocking`, so it does not stop the interpreter), with thread
ids, so the event loop and the store's writer thread are told apart. Prints, for the event-loop thread:
inclusive time of the interesting opsloop/Bolt/aiohttp functions, self time by function and by
package; writes the collapsed stacks (for speedscope or flamegraph.pl) to bench/results/.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import ack
from bench import wrk as load
from bench.procs import BenchError

# Functions whose inclusive share answers "what in bot/ costs what". Matched against `name (file)`.
WATCH = (
    ("aiohttp request handling (whole request)", r"^RequestHandler\._handle_request \(aiohttp/"),
    ("bot.web slack_events (to_bolt_request + dispatch + response)", r"slack_events \(bot/web\.py\)"),
    ("Bolt async_dispatch", r"^AsyncApp\.async_dispatch \("),
    ("to_bolt_request (read body, parse form)", r"^to_bolt_request \("),
    ("to_aiohttp_response", r"^to_aiohttp_response \("),
    ("Bolt request verification (signature)", r"RequestVerification|SignatureVerifier"),
    ("Bolt authorization (auth.test cache)", r"Authorization\.async_process|authorize"),
    ("Bolt kwargs injection", r"^build_async_required_kwargs \("),
    ("opsloop timing middleware", r"timing \(bot/slack\.py\)"),
    ("SlackFrontend.on_command (from the SlashCommands middleware)", r"on_command \(bot/slack\.py\)"),
    ("Bolt listener machinery (matchers, runner)", r"^(AsyncioListenerRunner\.run|AsyncListener\.async_matches) \("),
    ("SlackFrontend._within_deadline", r"_within_deadline \(bot/slack\.py\)"),
    ("Router.command", r"^Router\.command \("),
    ("Grammar.parse", r"^Grammar\.parse \("),
    ("Policy.check", r"^Policy\.check \("),
    ("help handler", r"^help_ \(handlers/core\.py\)"),
    ("Router._finish (audit + metrics)", r"^Router\._finish \("),
    ("AuditLog.record / Store.write (event-loop side)", r"^(AuditLog\.record|Store\.write) \("),
    ("store writer thread (append_in + commit)", r"^Store\._writer_loop \("),
    ("rendering.reply (views -> Block Kit dicts)", r"^reply \(bot/rendering\.py\)"),
    ("slack_sdk Block Kit models (validate/to_dict)", r"\(slack_sdk/models/"),
    ("Bolt ack() (builds the response)", r"^AsyncAck\.__call__ \("),
    ("json encoding", r"^(dumps|JSONEncoder\.\w+) \(json/"),
    ("prometheus metrics", r"\(prometheus_client/"),
    ("logging", r"\(logging/"),
    ("socket writes (transport.write)", r"^_SelectorSocketTransport\.write \("),
)


@dataclass
class Profile:
    """Collapsed stacks of one thread: each a tuple of frames (outermost first) and its sample count."""

    name: str
    stacks: Counter[tuple[str, ...]]

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def inclusive(self, pattern: str) -> int:
        """Samples with at least one frame matching `pattern` (counted once per sample)."""
        rx = re.compile(pattern)
        return sum(n for st, n in self.stacks.items() if any(rx.search(f) for f in st))

    def self_by(self, key: re.Pattern[str] | None = None) -> Counter[str]:
        """Samples by innermost frame, or by a part of it (`key`'s first group)."""
        out: Counter[str] = Counter()
        for st, n in self.stacks.items():
            leaf = st[-1] if st else "?"
            m = key.search(leaf) if key else None
            out[m.group(1) if m else leaf] += n
        return out


_THREAD = re.compile(r"^(?:process \d+:\"[^\"]*\";)?thread \((\w+)\)(?::\s*([^;]*))?;?")
_FRAME_FILE = re.compile(r"\((?:[^()]*/)?((?:site-packages/)?[^/()]+)/[^()]*\)$")


def parse_raw(text: str) -> dict[str, Profile]:
    """py-spy's raw format (`thread (ID): NAME;frame;frame N`, outermost first), per thread name."""
    threads: dict[str, Profile] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        m = _THREAD.match(stack)
        tid = (m.group(2) or m.group(1)) if m else "all"
        frames = tuple(f.strip() for f in stack[m.end() if m else 0 :].split(";") if f.strip())
        threads.setdefault(tid, Profile(tid, Counter())).stacks[frames] += int(count)
    return threads


def _event_loop(threads: dict[str, Profile]) -> Profile:
    """The thread that runs the web server (the one with the most aiohttp frames)."""
    for p in sorted(threads.values(), key=lambda p: -p.inclusive(r"\(aiohttp/")):
        if p.inclusive(r"\(aiohttp/"):
            return p
    raise BenchError("no thread with aiohttp frames in the profile")


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%" if total else "  n/a"


def summary(threads: dict[str, Profile], requests: int, cpu_s: float) -> str:
    """The text report; µs/request spreads the process's measured CPU time over the samples."""
    loop = _event_loop(threads)
    merged = Profile("all", sum((p.stacks for p in threads.values()), Counter()))
    total = merged.samples
    us_per_sample = cpu_s * 1e6 / total / requests if total and requests else 0.0
    lines = [
        f"{requests} requests, {cpu_s:.2f} s CPU in opsloop = {cpu_s * 1e6 / max(1, requests):.0f} µs/request;"
        f" {total} samples of which the event loop thread has {loop.samples}",
        "",
        "threads: "
        + ", ".join(f"{t} {_pct(p.samples, total)}" for t, p in sorted(threads.items(), key=lambda x: -x[1].samples)),
        "",
        "inclusive (share of all samples, ≈µs of CPU per request):",
    ]
    for label, pattern in WATCH:
        n = merged.inclusive(pattern)
        lines.append(f"  {_pct(n, total)}  {n * us_per_sample:6.0f} µs  {label}")
    lines += ["", "self time by package, event-loop thread:"]
    by_pkg = loop.self_by(_FRAME_FILE)
    lines += [f"  {_pct(n, total)}  {pkg}" for pkg, n in by_pkg.most_common(15)]
    lines += ["", "self time by function, event-loop thread (top 25):"]
    lines += [f"  {_pct(n, total)}  {fn}" for fn, n in loop.self_by().most_common(25)]
    for tid, p in threads.items():
        if p is not loop and p.samples:
            lines += ["", f"thread {tid} ({_pct(p.samples, total)}), top self:"]
            lines += [f"  {_pct(n, total)}  {fn}" for fn, n in p.self_by().most_common(8)]
    return "\n".join(lines)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise BenchError(f"py-spy is not installed: {Path(sys.executable).parent / 'pip'} install py-spy")
    return found


def profile(opts: ack.Options, rate: int, out_dir: Path) -> tuple[str, Path]:
    """Run opsloop under load with py-spy attached; return the summary and the collapsed-stacks file."""
    spy = _py_spy()
    tmp = Path(tempfile.mkdtemp(prefix="opsloop-profile-"))
    slack = ack.start_slack(tmp)
    try:
        body = load.command_body(ack.ACTOR, ack.COMMAND_TEXT, f"http://127.0.0.1:{slack.port}/commands/T0TEST/1/b")
        ctx = ack.Context(opts, tmp, f"http://127.0.0.1:{slack.port}/api/", body)
        work = tmp / "opsloop"
        work.mkdir()
        server = ack.start_opsloop(ctx, work)
        try:
            ack.check_ack(ctx, server, ack.TARGETS["opsloop"])
            ack.drive(ctx, server, opts.warmup, "warm-up")
            raw = tmp / "stacks.txt"
            argv = [spy, "record", "-p", str(server.pid), "-d", str(int(opts.duration) + 2), "-r", str(rate)]
            argv += ["-f", "raw", "--nolineno", "--threads", "--nonblocking", "-o", str(raw)]
            spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # let py-spy attach before the load starts
            result, window = ack.drive(ctx, server, opts.duration, "profiled")
            _, err = spy_proc.communicate(timeout=60)
            if not raw.exists():
                raise BenchError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        finally:
            server.stop()
    finally:
        slack.stop()
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = out_dir / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.collapsed.txt"
    shutil.copy(raw, kept)
    shutil.rmtree(tmp, ignore_errors=True)
    # py-spy samples a bit longer than wrk runs; the CPU measured over the wrk run is what requests cost.
    text = summary(parse_raw(kept.read_text()), result.requests, window.server)
    return text, kept


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.profile`: print where opsloop's time goes under the bench's load."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--connections", type=int, default=50)
    a = p.parse_args(argv)
    results = ack.ROOT / "bench" / "results"
    opts = ack.Options(a.duration, a.warmup, 1, a.connections, 2, ("opsloop",), 0.0, False, False, results)
    try:
        text, kept = profile(opts, a.rate, results)
    except BenchError as err:
        print(f"!!! profile failed: {err}", file=sys.stderr)
        return 1
    print()
    print(text)
    print(f"\ncollapsed stacks: {kept} (open in https://www.speedscope.app or flamegraph.pl)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
