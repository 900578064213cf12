"""The `opsloop` command: run, console, check, config schema, audit verify, manifest."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from bot import __version__
from bot.config import Config, Env, database_path, json_schema, load_config
from bot.errors import ConfigError, StartupError
from bot.redact import RedactingFilter, Redactor
from bot.views import count

log = logging.getLogger("opsloop")

TOKEN_HELP = {
    "SLACK_BOT_TOKEN": "the Bot User OAuth Token (xoxb-…): create the app from manifest.yml at "
    "https://api.slack.com/apps, install it, then copy it from OAuth & Permissions",
    "SLACK_SIGNING_SECRET": "the Signing Secret from Basic Information → App Credentials of your Slack app "
    "(needed in HTTP mode; set SLACK_APP_TOKEN instead to use Socket Mode)",
    "SLACK_APP_TOKEN": "an app-level token (xapp-…) with connections:write from Basic Information → App-Level Tokens",
}


class _KeyValueFormatter(logging.Formatter):
    """`ts=… level=… logger=… msg="…"`: structured enough to grep and to ship."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace('"', "'")
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
            f'logger={record.name} msg="{msg}"'
        )
        if record.exc_info:
            # The filter only sees the message; an exception's text (a tool's error, a URL) is masked here.
            trace = self.formatException(record.exc_info)
            line += "\n" + (self.redactor.text(trace) if self.redactor else trace)
        return line


def log_handler(stream: TextIO, redactor: Redactor) -> logging.Handler:
    """The handler opsloop logs through: key=value lines, secrets redacted."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_KeyValueFormatter(redactor))
    handler.addFilter(RedactingFilter(redactor))
    return handler


def setup_logging(level: int, redactor: Redactor) -> None:
    """Structured, redacted logs on stderr."""
    root = logging.getLogger()
    root.handlers[:] = [log_handler(sys.stderr, redactor)]
    root.setLevel(level)
    for noisy in ("slack_bolt", "slack_sdk", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _print_config_error(err: ConfigError) -> int:
    print(f"opsloop: the configuration has {count(len(err.problems), 'problem')} ({err.source}):", file=sys.stderr)
    for path, msg in err.problems:
        print(f"  {path}: {msg}", file=sys.stderr)
    return 2


def _load(args: argparse.Namespace) -> tuple[Config, Env]:
    env = Env.read(config_path=args.config)
    return load_config(env.config_path), env


def _missing(name: str) -> int:
    print(f"opsloop: {name} is not set. It is {TOKEN_HELP[name]}.", file=sys.stderr)
    return 2


async def _run(config: Config, env: Env) -> int:
    from slack_sdk.errors import SlackApiError

    from bot.app import build_slack

    socket_mode = env.app_token is not None
    ops, bolt, frontend = await build_slack(config, env)
    try:
        try:
            who = await ops.services.outbox.transport.client.auth_test()  # type: ignore[attr-defined]
            log.info("connected to Slack as %s in team %s", who.get("user"), who.get("team"))
        except SlackApiError as err:
            code = err.response.get("error") if err.response is not None else "error"
            if code in ("invalid_auth", "not_authed", "account_inactive", "token_revoked"):
                raise StartupError(
                    f"Slack rejected SLACK_BOT_TOKEN ({code}); it is {TOKEN_HELP['SLACK_BOT_TOKEN']}."
                ) from None
            log.warning("auth.test failed (%s); starting anyway, Slack writes will be retried", code)
        except OSError as err:
            log.warning(
                "Slack is not reachable at %s (%s); starting anyway, writes wait in the outbox", env.api_url, err
            )
        await ops.start()
        port = await ops.serve_http(env.http_host, env.http_port, bolt=None if socket_mode else bolt)
        # Everything made so far (modules, config, adapters) lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it, which was tens of ms of a request's wait.
        gc.collect()
        gc.freeze()
        handler = None
        if socket_mode:
            from bot.slack import TimedSocketModeHandler

            assert env.app_token is not None
            handler = TimedSocketModeHandler(bolt, env.app_token, ops.services.metrics)
            await handler.connect_async()  # type: ignore[no-untyped-call]
            log.info("Socket Mode connected; webhooks, /healthz and /metrics on http://%s:%d", env.http_host, port)
        else:
            log.info("serving Slack on http://%s:%d/slack/events", env.http_host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
        if handler is not None:
            await handler.close_async()  # type: ignore[no-untyped-call]
        await frontend.wait_late()
    finally:
        await ops.stop()
    return 0


async def _console(config: Config, env: Env) -> int:
    from bot.app import build_console

    ops, session = await build_console(config, env)
    try:
        await ops.start()
        try:
            port = await ops.serve_http(env.http_host, env.http_port)
            if sys.stdin.isatty():
                print(f"webhooks: http://{env.http_host}:{port}/hooks/…  (token: OPSLOOP_WEBHOOK_TOKEN)")
        except OSError as err:
            print(
                f"opsloop: the webhook server could not listen on {env.http_host}:{env.http_port} ({err.strerror});"
                " the console works without it (set OPSLOOP_HTTP_PORT to move it)",
                file=sys.stderr,
            )
        return await session.run()
    finally:
        await ops.stop()


async def _check(config: Config, env: Env) -> int:
    """Reach everything the config names; print one line per check."""
    from bot.store import Store

    failures = 0

    def report(ok: bool, what: str, detail: str) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")

    report(True, "config", f"{env.config_path} is valid")
    path = database_path(config, env)
    store = Store(path)
    try:
        await store.open()
        report(True, "storage.path", f"{path} is writable")
    except StartupError as err:
        report(False, "storage.path", str(err))
    finally:
        await store.close()
    if env.bot_token:
        from slack_sdk.errors import SlackApiError

        from bot.slack import web_client

        try:
            who = await web_client(env.bot_token, env.api_url, timeout=5).auth_test()
            report(True, "SLACK_BOT_TOKEN", f"Slack knows this bot as {who.get('user')} in {who.get('team')}")
        except SlackApiError as err:
            code = err.response.get("error") if err.response is not None else "error"
            report(False, "SLACK_BOT_TOKEN", f"Slack answered {code}; it must be {TOKEN_HELP['SLACK_BOT_TOKEN']}")
        except Exception as err:  # unreachable, DNS, TLS
            report(False, "SLACK_API_URL", f"cannot reach {env.api_url}: {type(err).__name__} {err}".strip())
        if not env.app_token and not env.signing_secret:
            report(False, "SLACK_SIGNING_SECRET", f"not set; it is {TOKEN_HELP['SLACK_SIGNING_SECRET']}")
    else:
        print("skip SLACK_BOT_TOKEN: not set (fine for `opsloop console`; `opsloop run` needs it)")
    if not env.webhook_token:
        print("skip OPSLOOP_WEBHOOK_TOKEN: not set, so /hooks/* answer 503")
    from bot.app import build_tools
    from bot.blocking import BlockingPool
    from bot.ports import AdapterError

    pool = BlockingPool()
    try:
        tools = build_tools(config, pool, base_dir=env.config_path.parent.resolve())
    except ConfigError as err:
        for where, msg in err.problems:
            report(False, where, msg)
        tools = None
    if tools is not None:
        for where, adapter in tools.reachable():
            try:
                report(True, where, await adapter.check())
            except AdapterError as err:
                report(False, where, f"{err}; check its url and credentials")
        await tools.close()
    pool.close()
    print(count(failures, "problem") if failures else "all checks passed")
    return 1 if failures else 0


async def _audit_verify(config: Config, env: Env) -> int:
    from bot.audit import verify_chain
    from bot.store import Store

    path = database_path(config, env)
    if not path.exists():
        print(f"opsloop: no database at {path}", file=sys.stderr)
        return 2
    store = Store(path)
    await store.open()
    try:
        result = await store.read(verify_chain)
    finally:
        await store.close()
    if result.ok:
        print(f"audit log intact: {result.checked} rows, hash chain verified")
        return 0
    print(f"audit log BROKEN at row {result.first_bad}: {result.problem}")
    return 1


def _manifest() -> int:
    import yaml

    from bot.manifest import manifest

    print(yaml.safe_dump(manifest(), sort_keys=False, allow_unicode=True), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="opsloop", description="A Slack chat-ops bot for the whole DevOps loop.")
    p.add_argument("--version", action="version", version=f"opsloop {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", metavar="FILE", help="YAML config (default: $OPSLOOP_CONFIG or opsloop.yml)")
        return sp

    with_config(sub.add_parser("run", help="serve Slack (Socket Mode if SLACK_APP_TOKEN is set, else HTTP)"))
    with_config(sub.add_parser("console", help="chat with opsloop in this terminal, no Slack needed"))
    with_config(sub.add_parser("check", help="validate the config and reach every configured integration"))
    cfg = sub.add_parser("config", help="config helpers")
    cfg_sub = cfg.add_subparsers(dest="config_cmd", required=True, metavar="WHAT")
    cfg_sub.add_parser("schema", help="print the JSON Schema of the config")
    audit = sub.add_parser("audit", help="audit log helpers")
    audit_sub = audit.add_subparsers(dest="audit_cmd", required=True, metavar="WHAT")
    with_config(audit_sub.add_parser("verify", help="check the audit hash chain; name the first broken row"))
    sub.add_parser("manifest", help="print the Slack app manifest that matches this version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `opsloop` and `python -m bot`."""
    args = parser().parse_args(argv)
    if args.cmd == "config":
        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.cmd == "manifest":
        return _manifest()
    try:
        config, env = _load(args)
    except ConfigError as err:
        return _print_config_error(err)
    # From bot.config, not bot.app: `audit verify` and `check` should not import every stage to start.
    from bot.config import secret_values

    level = logging.DEBUG if args.verbose else (logging.WARNING if args.cmd != "run" else logging.INFO)
    setup_logging(level, Redactor(secret_values(config, env)))
    runner: Any
    if args.cmd == "run":
        if not env.bot_token:
            return _missing("SLACK_BOT_TOKEN")
        if not env.app_token and not env.signing_secret:
            return _missing("SLACK_SIGNING_SECRET")
        runner = _run(config, env)
    elif args.cmd == "console":
        runner = _console(config, env)
    elif args.cmd == "check":
        runner = _check(config, env)
    else:
        runner = _audit_verify(config, env)
    try:
        return int(asyncio.run(runner))
    except ConfigError as err:
        return _print_config_error(err)
    except StartupError as err:
        print(f"opsloop: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
