"""aiohttp routes: /slack/events (Bolt), /hooks/* (webhooks), /healthz, /metrics.

Webhook plumbing is shared by every source: a bearer token (`OPSLOOP_WEBHOOK_TOKEN`; sources that
cannot set headers, like Splunk, may pass `?token=`), a 1 MiB body limit (413), a JSON body or a 400
that says what is wrong, and handlers that store everything in one transaction or nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

from bot.context import Services
from bot.router import BeyondInt64, Router, load_json
from bot.slack import AckDeadlines, AckGuard, request_kind

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
QUERY_TOKEN_SOURCES = frozenset({"splunk"})
# What Slack sends: slash commands and interactivity as a form, the Events API as JSON.
SLACK_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "application/json"})


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


class HookRejected(Exception):
    """A webhook body that parsed but is not acceptable; `status` and the message go to the caller."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _parse_hook_body(raw: bytes) -> tuple[Any, str | None]:
    """A webhook body as JSON opsloop can store, or why not (the answer of a 400)."""
    try:
        # Integers are checked as the parser meets them: a walk of the parsed body cost more than the
        # parse (about 40 µs per Alertmanager alert).
        payload = load_json(raw)
        if b"\\ud" in raw or b"\\uD" in raw:
            # Refused here, not half-way in: a lone `\ud800` escape parses to a surrogate, which no UTF-8
            # text (nor SQLite) can hold (a pair, as emoji are escaped, is fine). Python's encoder
            # recurses per level of nesting, as its parser does.
            json.dumps(payload, ensure_ascii=False).encode()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"body is not JSON: {err}"
    except BeyondInt64:
        # No monitor sends such a number, and SQLite cannot store one.
        return None, "body holds an integer beyond 64 bits"
    except UnicodeEncodeError:
        return None, "body holds text that is not valid Unicode (a lone surrogate escape)"
    except RecursionError:
        return None, "body is not JSON opsloop accepts: it is nested too deeply"
    return payload, None


def _text(status: int, message: str) -> web.Response:
    return web.json_response({"ok": status < 400, "message": message}, status=status)


def build_web_app(
    router: Router,
    services: Services,
    *,
    webhook_token: str | None,
    bolt: AsyncApp | None = None,
    health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> web.Application:
    """The HTTP side of opsloop."""
    app = web.Application(client_max_size=MAX_BODY)
    metrics = services.metrics

    if bolt is not None:
        deadlines = AckDeadlines()

        async def slack_events(request: web.Request) -> web.Response:
            # Bolt would parse any body as a form and verifies only the signature, so a signed body of
            # a type Slack never sends would reach the listeners; and a timestamp that is not a number
            # makes its verifier raise (a 500) instead of refusing.
            if request.content_type not in SLACK_CONTENT_TYPES:
                return _text(415, f"Slack sends forms or JSON, not {request.content_type}")
            stamp = request.headers.get("X-Slack-Request-Timestamp")
            if stamp is not None and not (stamp.isascii() and stamp.isdigit()):
                return _text(401, "the request timestamp is not a number")
            try:
                bolt_req = await to_bolt_request(request)
            except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
                # Bolt parses the body before it checks the signature; a body it cannot parse is
                # refused here, before any middleware or listener sees it.
                return _text(400, "malformed Slack request body")
            started = time.perf_counter()
            kind = request_kind(bolt_req.body)
            early: list[web.Response] = []

            async def send_early(body: dict[str, Any] | None) -> None:
                # Answer Slack now, from outside the handler that is still waiting for Bolt; the
                # handler returns this same, already sent, response when Bolt is done.
                resp = web.json_response(body) if body is not None else web.Response(status=200)
                early.append(resp)
                await resp.prepare(request)
                await resp.write_eof()

            guard = AckGuard(kind, send_early, deadlines)
            bolt_req.context[AckGuard.KEY] = guard
            guard.arm()
            response = await bolt.async_dispatch(bolt_req)
            sent_early = await guard.disarm()
            metrics.acked(kind, (guard.fired_at or time.perf_counter()) - started)
            if sent_early:
                return early[0]
            return await to_aiohttp_response(response)

        app.router.add_post("/slack/events", slack_events)

    async def hook(request: web.Request) -> web.Response:
        source = request.match_info["source"]
        spec = router.hooks.get(source)
        if spec is None:
            known = ", ".join(sorted(router.hooks)) or "none yet"
            metrics.hooks.labels(source="unknown", status="404").inc()
            return _text(404, f"no webhook source `{source}` (known: {known})")
        if not webhook_token:
            metrics.hooks.labels(source=source, status="503").inc()
            return _text(503, "webhooks are off: set OPSLOOP_WEBHOOK_TOKEN and send it as `Authorization: Bearer …`")
        given = ""
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif source in QUERY_TOKEN_SOURCES:
            given = request.query.get("token", "")
        if not given or not hmac.compare_digest(given.encode(), webhook_token.encode()):
            metrics.hooks.labels(source=source, status="401").inc()
            return _text(401, "missing or wrong token: send `Authorization: Bearer <OPSLOOP_WEBHOOK_TOKEN>`")
        if "Content-Type" in request.headers and not _is_json_type(request.content_type):
            # Every source posts JSON; a form or a text body would reach the parser by accident.
            metrics.hooks.labels(source=source, status="415").inc()
            return _text(415, f"send the body as JSON (`Content-Type: application/json`), not {request.content_type}")
        if request.content_length is not None and request.content_length > MAX_BODY:
            metrics.hooks.labels(source=source, status="413").inc()
            return _text(413, f"body of {request.content_length} bytes is over the {MAX_BODY} byte limit")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            metrics.hooks.labels(source=source, status="413").inc()
            return _text(413, f"body is over the {MAX_BODY} byte limit")
        payload, refused = _parse_hook_body(raw)
        if refused:
            metrics.hooks.labels(source=source, status="400").inc()
            return _text(400, refused)
        # Monitors and CI copy whatever they were given into annotations and logs: mask secrets before
        # any of it is stored, shown or logged.
        try:
            payload = services.redactor.document(payload)  # one scan of its strings; the walk only if needed
            result = await spec.handler(services, payload)
        except RecursionError:
            # The parser took it, but the redactor and pydantic walk it in Python frames, two or more per
            # level: a body nested some hundred levels (no monitor's) ends here, before anything is stored.
            metrics.hooks.labels(source=source, status="400").inc()
            return _text(400, "body is not JSON opsloop accepts: it is nested too deeply")
        except HookRejected as err:
            metrics.hooks.labels(source=source, status=str(err.status)).inc()
            return _text(err.status, str(err))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(body)"
            metrics.hooks.labels(source=source, status="400").inc()
            return _text(400, f"{source} payload not understood at {where}: {first['msg']}")
        except Exception:
            log.exception("webhook %s failed", source)
            metrics.hooks.labels(source=source, status="500").inc()
            return _text(500, "opsloop failed to handle this webhook; nothing was stored; see its log")
        metrics.hooks.labels(source=source, status=str(result.status)).inc()
        return _text(result.status, result.text)

    app.router.add_post("/hooks/{source}", hook)

    async def healthz(request: web.Request) -> web.Response:
        info: dict[str, Any] = {"status": "ok"}
        if health is not None:
            try:
                info.update(await health())
            except Exception as err:  # report, don't raise: this is what the probe is for
                info = {"status": "failing", "error": f"{type(err).__name__}: {err}"}
        return web.json_response(info, status=200 if info.get("status") == "ok" else 503)

    async def metrics_view(request: web.Request) -> web.Response:
        await services.outbox.depth()
        await services.jobs.count_states()
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app
