"""Real Prometheus and Alertmanager (Debian's binaries) for tests, plus a webhook catcher.

Each server runs in the foreground as a child process on a free port, with its own temporary storage
and config under the test's `tmp_path`, and is stopped (terminate, then kill) when its context ends.

    async with catcher() as hook, alertmanager(tmp_path, hook.url("/alertmanager")) as am:
        await inject_alerts(am.url, [{"labels": {"alertname": "Test"}}])
        body = await hook.wait_for(lambda r: r.path == "/alertmanager")

When a binary is missing the test is skipped with the reason, or fails when `OPSLOOP_REQUIRE_SERVERS=1`
(CI sets it), so a machine without the packages can never pass by skipping.

Ports: a free port is picked and handed to the binary; another process can take it in between, so
a start that dies with "address already in use" is retried on a new port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import require_servers
from tests.support import free_port

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"
PACKAGES = {PROMETHEUS: "prometheus", ALERTMANAGER: "prometheus-alertmanager"}
# The bearer token opsloop's webhook server expects in tests (tests.support.slack_ops uses it too).
WEBHOOK_TOKEN = "hook-secret-123"
# Receiver names travel through regexp.QuoteMeta into the webhook body: keep them to [a-z0-9_-].
WEBHOOK_RECEIVER = "opsloop"
SLACK_RECEIVER = "slack-native"

_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_START_TRIES = 3


def need_binary(name: str) -> str:
    """The path of a server binary; skip the test (or fail it under OPSLOOP_REQUIRE_SERVERS=1) if absent."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"`{name}` is not installed (apt-get install -y {PACKAGES.get(name, name)})"
    if require_servers():
        pytest.fail(f"OPSLOOP_REQUIRE_SERVERS=1 but {reason}")
    pytest.skip(reason)


# --- processes -----------------------------------------------------------------------------------------


@dataclass
class _Process:
    """A started server: its process and the file its output goes to."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def stop(self) -> None:
        """Terminate; kill if it has not exited within a few seconds. Always waits for the exit."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


class _PortTaken(Exception):
    pass


async def _start(name: str, args: Sequence[str], log_path: Path, ready_url: str) -> _Process:
    """Start a server and wait for its `/-/ready`; `_PortTaken` if it could not bind its port."""
    with log_path.open("wb") as out:
        # The child keeps its own copy of the descriptor; ours can close at once.
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    p = _Process(name, proc, log_path)
    try:
        await _wait_ready(p, ready_url)
    except BaseException:
        await p.stop()
        raise
    return p


async def _wait_ready(p: _Process, url: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if p.proc.returncode is not None:
                text = p.log()
                if "address already in use" in text:
                    raise _PortTaken(text)
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode} before it was ready:\n{text[-3000:]}")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{p.name} was not ready within {_READY_TIMEOUT:g} s:\n{p.log()[-3000:]}")


async def _start_on_free_port(
    name: str, workdir: Path, make_args: Callable[[int], Sequence[str]]
) -> tuple[_Process, int]:
    for attempt in range(_START_TRIES):
        port = free_port()
        try:
            proc = await _start(name, make_args(port), workdir / f"{name}.log", f"http://127.0.0.1:{port}/-/ready")
        except _PortTaken:
            if attempt == _START_TRIES - 1:
                raise
            continue
        return proc, port
    raise AssertionError("unreachable")


# --- Alertmanager --------------------------------------------------------------------------------------


@dataclass
class RunningAlertmanager:
    """A started Alertmanager: `url` is its API and UI (also its --web.external-url)."""

    url: str
    port: int
    config_path: Path
    config: dict[str, Any]
    workdir: Path
    _process: _Process = field(repr=False)

    def log(self) -> str:
        """What the server printed so far (for failure messages)."""
        return self._process.log()

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._process.proc.pid

    async def stop(self) -> None:
        """Stop it early (to test "Alertmanager down"); the context's exit is then a no-op."""
        await self._process.stop()

    async def set_webhook_url(self, webhook_url: str) -> None:
        """Point the webhook receiver at `webhook_url` and reload (POST /-/reload, as `kill -HUP` would).

        For a receiver that can only start once Alertmanager's URL is known (opsloop needs it in its
        config), so neither side has to guess a free port for the other."""
        for receiver in self.config["receivers"]:
            if receiver["name"] == WEBHOOK_RECEIVER:
                for hook in receiver["webhook_configs"]:
                    hook["url"] = webhook_url
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(f"{self.url}/-/reload") as resp,
        ):
            if resp.status != 200:
                raise AssertionError(f"Alertmanager refused the new config: {resp.status} {await resp.text()}")


def alertmanager_config(
    webhook_url: str,
    *,
    token: str | None = WEBHOOK_TOKEN,
    slack_api_url: str | None = None,
    group_wait: str = "1s",
    group_interval: str = "2s",
    repeat_interval: str = "1h",
    group_by: Sequence[str] = ("alertname",),
    max_alerts: int = 0,
) -> dict[str, Any]:
    """The alertmanager.yml (as data) that `alertmanager()` runs: every alert to the webhook receiver,
    and with `slack_api_url` also to a native `slack_configs` receiver that sees the same groups."""
    webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True, "max_alerts": max_alerts}
    if token is not None:
        webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": token}}
    receivers: list[dict[str, Any]] = [{"name": WEBHOOK_RECEIVER, "webhook_configs": [webhook]}]
    route: dict[str, Any] = {
        "receiver": WEBHOOK_RECEIVER,
        "group_by": list(group_by),
        "group_wait": group_wait,
        "group_interval": group_interval,
        "repeat_interval": repeat_interval,
    }
    if slack_api_url is not None:
        # Two sibling routes without matchers: both match everything, `continue` lets the second see it.
        route["routes"] = [{"receiver": WEBHOOK_RECEIVER, "continue": True}, {"receiver": SLACK_RECEIVER}]
        receivers.append(
            {
                "name": SLACK_RECEIVER,
                "slack_configs": [
                    {
                        "api_url": slack_api_url,
                        "channel": "#alerts",
                        "send_resolved": True,
                        "title": "{{ .CommonLabels.alertname }} is {{ .Status }}",
                        "text": '{{ range .Alerts }}{{ .Annotations.summary }}{{ "\\n" }}{{ end }}',
                    }
                ],
            }
        )
    return {"global": {"resolve_timeout": "5m"}, "route": route, "receivers": receivers}


@asynccontextmanager
async def alertmanager(
    tmp_path: Path,
    webhook_url: str,
    *,
    token: str | None = WEBHOOK_TOKEN,
    slack_api_url: str | None = None,
    group_wait: str = "1s",
    group_interval: str = "2s",
    repeat_interval: str = "1h",
    group_by: Sequence[str] = ("alertname",),
    max_alerts: int = 0,
) -> AsyncIterator[RunningAlertmanager]:
    """Run Alertmanager 0.25 on a free port; every alert goes to `webhook_url` (bearer `token`, resolved
    notifications on) and, when `slack_api_url` is given, also to a native Slack receiver posting there."""
    binary = need_binary(ALERTMANAGER)
    config = alertmanager_config(
        webhook_url,
        token=token,
        slack_api_url=slack_api_url,
        group_wait=group_wait,
        group_interval=group_interval,
        repeat_interval=repeat_interval,
        group_by=group_by,
        max_alerts=max_alerts,
    )
    workdir = _fresh_dir(tmp_path, "alertmanager")
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def args(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={config_path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.external-url=http://127.0.0.1:{port}",
            # Empty: no HA gossip, which would otherwise bind :9094 on every interface.
            "--cluster.listen-address=",
            "--log.level=info",
        ]

    process, port = await _start_on_free_port(ALERTMANAGER, workdir, args)
    try:
        yield RunningAlertmanager(f"http://127.0.0.1:{port}", port, config_path, config, workdir, process)
    finally:
        await process.stop()


async def inject_alerts(am_url: str, alerts: Sequence[Mapping[str, Any]]) -> None:
    """POST /api/v2/alerts: alerts straight into Alertmanager, as Prometheus would send them.

    Each is `{"labels": {...}, "annotations": {...}, "startsAt"?, "endsAt"?, "generatorURL"?}`; an
    `endsAt` in the past resolves the alert."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(f"{am_url.rstrip('/')}/api/v2/alerts", json=list(alerts)) as resp,
    ):
        if resp.status != 200:
            raise AssertionError(f"Alertmanager refused the alerts: {resp.status} {await resp.text()}")


# --- Prometheus ----------------------------------------------------------------------------------------


@dataclass
class RunningPrometheus:
    """A started Prometheus: `url` is its API and UI (also its --web.external-url)."""

    url: str
    port: int
    config_path: Path
    rules_path: Path | None
    workdir: Path
    _process: _Process = field(repr=False)

    def log(self) -> str:
        """What the server printed so far (for failure messages)."""
        return self._process.log()

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._process.proc.pid

    async def stop(self) -> None:
        """Stop it early (to test "Prometheus down"); the context's exit is then a no-op."""
        await self._process.stop()


@asynccontextmanager
async def prometheus(
    tmp_path: Path,
    *,
    alertmanager_url: str | None = None,
    rules: str = "",
    scrape_targets: Sequence[str] = (),
) -> AsyncIterator[RunningPrometheus]:
    """Run Prometheus 2.42 on a free port, scraping itself (and `scrape_targets`, job "extra") every
    second, evaluating `rules` (a rules.yml text) every second and sending alerts to `alertmanager_url`.

    `--rules.alert.resend-delay=1s`: Prometheus drops an alert that fires before the Alertmanager target
    is discovered and resends it only after this delay (default 1 min)."""
    binary = need_binary(PROMETHEUS)
    workdir = _fresh_dir(tmp_path, "prometheus")
    rules_path: Path | None = None
    if rules.strip():
        rules_path = workdir / "rules.yml"
        rules_path.write_text(rules)
    config_path = workdir / "prometheus.yml"

    def args(port: int) -> list[str]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
        }
        if scrape_targets:
            config["scrape_configs"].append(
                {"job_name": "extra", "static_configs": [{"targets": list(scrape_targets)}]}
            )
        if rules_path is not None:
            config["rule_files"] = [str(rules_path)]
        if alertmanager_url:
            u = urlsplit(alertmanager_url)
            am: dict[str, Any] = {"scheme": u.scheme or "http", "static_configs": [{"targets": [u.netloc]}]}
            if u.path.strip("/"):
                am["path_prefix"] = u.path
            config["alerting"] = {"alertmanagers": [am]}
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            # Without it generatorURL holds the machine's hostname.
            f"--web.external-url=http://127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--rules.alert.resend-delay=1s",
        ]

    process, port = await _start_on_free_port(PROMETHEUS, workdir, args)
    try:
        yield RunningPrometheus(f"http://127.0.0.1:{port}", port, config_path, rules_path, workdir, process)
    finally:
        await process.stop()


# --- a webhook catcher -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caught:
    """One request the catcher received."""

    at: float  # time.monotonic()
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


@dataclass
class Catcher:
    """An HTTP server on 127.0.0.1 that answers 200 to everything and keeps what it got."""

    base: str
    received: list[Caught] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str = "/") -> str:
        """The catcher's URL for `path` (any path is answered)."""
        return self.base + path

    async def wait_for(self, pred: Callable[[Caught], bool], timeout: float = 30.0, what: str = "") -> Caught:
        """The first request (already received or still to come) that satisfies `pred`."""

        async def first() -> Caught:
            async with self._arrived:
                while True:
                    for c in self.received:
                        if pred(c):
                            return c
                    await self._arrived.wait()

        try:
            return await asyncio.wait_for(first(), timeout)
        except TimeoutError:
            got = [(c.path, c.body[:300]) for c in self.received]
            raise AssertionError(f"no request {what} within {timeout:g} s; got {got}") from None

    async def _handle(self, request: web.Request) -> web.Response:
        caught = Caught(time.monotonic(), request.method, request.path, dict(request.headers), await request.read())
        async with self._arrived:
            self.received.append(caught)
            self._arrived.notify_all()
        return web.Response(text="ok")


@asynccontextmanager
async def catcher() -> AsyncIterator[Catcher]:
    """Start a `Catcher` on a port the OS picks (read back, so never taken)."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    holder: list[Catcher] = []

    async def handle(request: web.Request) -> web.Response:
        return await holder[0]._handle(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    c = Catcher(f"http://127.0.0.1:{port}")
    holder.append(c)
    try:
        yield c
    finally:
        await runner.cleanup()


def _fresh_dir(tmp_path: Path, name: str) -> Path:
    """`tmp_path/name`, or `name-2`, ... so two servers of a kind in one test don't share storage."""
    n = 1
    while True:
        d = tmp_path / (name if n == 1 else f"{name}-{n}")
        try:
            d.mkdir(parents=True)
        except FileExistsError:
            n += 1
            continue
        return d
