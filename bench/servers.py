"""The comparison servers and the Slack stand-in, each meant to run as its own process.

    python -m bench.servers bare              # aiohttp: read the body, answer 200 "ok"
    python -m bench.servers bolt API_URL      # minimal Bolt AsyncApp: `/ops` -> ack("ok")
    python -m bench.servers hook              # aiohttp: parse an Alertmanager webhook body (bench.alerts)
    python -m bench.servers slack             # the in-repo Slack emulator (auth.test, users.info)

Each binds 127.0.0.1 on a port the kernel picks, prints `ready PORT` on stdout once it listens, and
stops cleanly on SIGTERM. The bare and Bolt servers are mounted exactly the way bot/web.py mounts
opsloop (an aiohttp route calling to_bolt_request / async_dispatch / to_aiohttp_response, no access
log, the default asyncio loop), so the only difference left between them and opsloop is opsloop's
own work on the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
EVENTS_PATH = "/slack/events"
SIGNING_SECRET = "bench-signing-secret"
BOT_TOKEN = "xoxb-bench"
SLASH_COMMAND = "/ops"
HOOK_PATH = "/hooks/alertmanager"


def bare_app() -> web.Application:
    """The floor: aiohttp reading the body and answering, nothing else."""

    async def events(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(EVENTS_PATH, events)
    return app


def bare_hook_app() -> web.Application:
    """The floor for webhooks (bench.alerts): read the body, parse the JSON, answer with the alert count."""

    async def hook(request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        return web.json_response({"ok": True, "message": f"{len(payload['alerts'])} alerts"})

    app = web.Application(client_max_size=1024 * 1024)  # opsloop's webhook body limit
    app.router.add_post(HOOK_PATH, hook)
    return app


def bolt_app(api_url: str) -> web.Application:
    """The reference: Bolt's own cost for a signed slash command (verification, parsing, ack)."""
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
    from slack_bolt.async_app import AsyncAck, AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    bolt = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=api_url), signing_secret=SIGNING_SECRET)

    @bolt.command(SLASH_COMMAND)
    async def on_command(ack: AsyncAck) -> None:
        await ack("ok")

    async def events(request: web.Request) -> web.Response:
        bolt_req = await to_bolt_request(request)
        return await to_aiohttp_response(await bolt.async_dispatch(bolt_req))

    app = web.Application()
    app.router.add_post(EVENTS_PATH, events)
    return app


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(app: web.Application) -> None:
    """Listen on a free port, announce it, serve until SIGTERM."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0).start()
    print(f"ready {runner.addresses[0][1]}", flush=True)
    try:
        await _until_sigterm()
    finally:
        await runner.cleanup()


async def serve_slack() -> None:
    """The Slack emulator with the test workspace, so auth.test and users.info of U0ALICE succeed.

    opsloop caches users.info (and Bolt caches auth.test), so this process is idle while measuring.
    """
    from tests.emulators.slack import SlackEmulator
    from tests.support import slack_workspace

    emu = SlackEmulator(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN)
    await emu.start()
    slack_workspace(emu)
    print(f"ready {emu.port}", flush=True)
    try:
        await _until_sigterm()
    finally:
        calls = ", ".join(f"{c.method}={c.status}" for c in emu.calls) or "none"
        print(f"slack calls: {calls}", flush=True)
        await emu.stop()


def main(argv: list[str]) -> int:
    """`python -m bench.servers KIND [API_URL]`."""
    logging.basicConfig(level=logging.WARNING)
    kinds: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "bare": lambda: serve(bare_app()),
        "bolt": lambda: serve(bolt_app(argv[1])),
        "hook": lambda: serve(bare_hook_app()),
        "slack": serve_slack,
    }
    if not argv or argv[0] not in kinds or (argv[0] == "bolt" and len(argv) < 2):
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(kinds[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
