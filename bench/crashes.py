"""`python -m bench.crashes [--kills 50] [--seed N]`: issue 7's figure 3 at full size.

Runs the cycles of tests/reliability/test_crashes.py (activity, SIGKILL of `opsloop run` at a random
moment, restart, then the checks) `--kills` times against fresh emulators in a temporary directory,
writes bench/results/crashes.md and exits 1 if anything was lost, doubled or left unsaid.
The test suite runs the same cycles 5 times (`OPSLOOP_KILLS`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from tests.reliability.test_crashes import RESULTS, SEED, render, run_crashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crashes", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILL and restart cycles (default 50)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the moments and the order")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="opsloop-crashes-"))
    c = asyncio.run(run_crashes(tmp, args.kills, args.seed))
    failed = any(cy.problems for cy in c.cycles) or len(c.cycles) < args.kills
    if failed:
        print(f"opsloop's database and log are kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp)
    command = f".venv/bin/python -m bench.crashes --kills {args.kills} --seed {args.seed}"
    text = render(c, args.kills, args.seed, command)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
