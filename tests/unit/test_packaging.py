"""What the Dockerfile relies on: the package builds with every module, and its health check works."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from bot.app import build_console
from bot.outbox import Pacing
from tests.support import clean_environ, make_config, make_env

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", DOCKERFILE, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    final = DOCKERFILE.split("\nFROM ")[-1]
    user = re.search(r"^USER\s+(\S+)", final, re.M)
    assert user is not None and user.group(1) not in ("root", "0")
    assert "COPY --from=build" in final
    assert re.search(r'^ENTRYPOINT \["opsloop"\]\s*\nCMD \["run"\]', final, re.M)
    assert "/healthz" in final and "HEALTHCHECK" in final


def test_the_wheel_holds_every_package_and_the_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        env=clean_environ(),
        capture_output=True,
    )
    [wheel] = tmp_path.glob("opsloop-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("bot/app.py", "bot/cli.py", "handlers/plan.py", "adapters/tracker_local.py"):
        assert module in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "opsloop = bot.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


async def test_the_healthcheck_command_passes_against_a_running_opsloop(tmp_path: Path) -> None:
    probe = re.search(r"HEALTHCHECK .*?CMD (\[[^\n]*\])", DOCKERFILE, re.S)
    assert probe is not None
    argv = ast.literal_eval(probe.group(1))
    ops, _ = await build_console(make_config(tmp_path / "h.db"), make_env(tmp_path), pacing=Pacing.unpaced())
    await ops.start()
    port = await ops.serve_http("127.0.0.1", 0)
    env = {**clean_environ(), "OPSLOOP_HTTP_PORT": str(port)}

    async def healthcheck() -> int:
        # Not subprocess.run: that would block this loop, and the server under test runs on it.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv[1:], env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(proc.wait(), 20)

    try:
        assert await healthcheck() == 0
    finally:
        await ops.stop()
    assert await healthcheck() != 0
