"""The Slack emulator, exercised through the real slack_sdk / slack_bolt clients."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from .slack import SlackEmulator, validate_blocks, validate_view

TS_RE = re.compile(r"^\d{10}\.\d{6}$")


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # slack_sdk reads these and ignores NO_PROXY, so 127.0.0.1 would go through a proxy
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator() as e:
        e.add_channel("C0OPS", "ops")
        e.add_channel("C0PRIV", "secret", members=["U1", "UBOT"], is_private=True)
        e.add_channel("C0OUT", "outside", bot_member=False)
        e.add_user("U1", "alice", real_name="Alice A")
        e.add_user("U2", "bob")
        e.add_user("U3", "guest", is_restricted=True)
        e.add_usergroup("S0SRE", "sre", ["U1", "U2"])
        yield e


def client_for(emu: SlackEmulator, **kw: Any) -> AsyncWebClient:
    return AsyncWebClient(base_url=emu.api_url, token=emu.bot_token, **kw)


def section(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}, **extra}


def button(action_id: str, label: str = "Go", value: str = "v") -> dict[str, Any]:
    return {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": label}, "value": value}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


# ----------------------------------------------------------------------------------------------
# Web API basics
# ----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_auth_test_and_auth_errors(emu: SlackEmulator) -> None:
    resp = await client_for(emu).auth_test()
    assert resp["user_id"] == "UBOT" and resp["bot_id"] == "BBOT" and resp["team_id"] == "T0TEST"
    assert "chat:write" in resp.headers["x-oauth-scopes"]
    assert resp.headers["content-type"].startswith("application/json")

    with pytest.raises(SlackApiError) as e:
        await AsyncWebClient(base_url=emu.api_url).auth_test()
    assert e.value.response["error"] == "not_authed"
    with pytest.raises(SlackApiError) as e:
        await AsyncWebClient(base_url=emu.api_url, token="xoxb-wrong").auth_test()
    assert e.value.response["error"] == "invalid_auth"
    assert e.value.response.status_code == 200
    with pytest.raises(SlackApiError) as e:
        await client_for(emu).api_call("nope.nothing")
    assert e.value.response["error"] == "unknown_method"
    with pytest.raises(SlackApiError) as e:
        await AsyncWebClient(base_url=emu.api_url, token=emu.app_token).chat_postMessage(channel="C0OPS", text="x")
    assert e.value.response["error"] == "not_allowed_token_type"
    assert [c.error for c in emu.calls][-4:] == [
        "not_authed",
        "invalid_auth",
        "unknown_method",
        "not_allowed_token_type",
    ]


@pytest.mark.asyncio
async def test_post_update_thread_metadata_history_round_trip(emu: SlackEmulator) -> None:
    client = client_for(emu)
    blocks = [
        section("*Deploy* api 1.4.2", block_id="summary"),
        {"type": "actions", "block_id": "act", "elements": [button("approve"), button("reject")]},
    ]
    metadata = {"event_type": "release", "event_payload": {"release_id": "r1"}}
    posted = await client.chat_postMessage(channel="#ops", text="Deploy api", blocks=blocks, metadata=metadata)
    assert posted["channel"] == "C0OPS"
    ts = posted["ts"]
    assert TS_RE.match(ts)
    assert posted["message"]["bot_id"] == "BBOT" and posted["message"]["user"] == "UBOT"

    reply = await client.chat_postMessage(channel="C0OPS", thread_ts=ts, text="build passed")
    assert reply["ts"] > ts
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel="C0OPS", thread_ts="1111111111.000001", text="orphan")
    assert e.value.response["error"] == "thread_not_found"

    updated = await client.chat_update(channel="C0OPS", ts=ts, text="Approved by <@U1>")
    assert updated["ts"] == ts
    msg = emu.message("#ops", ts)
    assert msg.text == "Approved by <@U1>"
    assert msg.blocks == []  # text without blocks removes the blocks
    assert msg.edited_count == 1
    assert msg.history[0]["blocks"] == blocks
    assert msg.metadata == metadata

    assert [m.ts for m in emu.messages("C0OPS")] == [ts, reply["ts"]]
    assert [m.text for m in emu.replies("C0OPS", ts)] == ["build passed"]

    hist = await client.conversations_history(channel="C0OPS", include_all_metadata=True)
    assert [m["ts"] for m in hist["messages"]] == [ts]  # replies are not in the channel history
    assert hist["messages"][0]["metadata"] == metadata
    assert hist["messages"][0]["reply_count"] == 1
    plain = await client.conversations_history(channel="C0OPS")
    assert "metadata" not in plain["messages"][0]

    replies = await client.conversations_replies(channel="C0OPS", ts=ts)
    assert [m["text"] for m in replies["messages"]] == ["Approved by <@U1>", "build passed"]


@pytest.mark.asyncio
async def test_history_pagination_and_oldest(emu: SlackEmulator) -> None:
    emu.enforce_rate_limits = False
    client = client_for(emu)
    posted = [(await client.chat_postMessage(channel="C0OPS", text=f"m{i}"))["ts"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await client.conversations_history(channel="C0OPS", limit=3, cursor=cursor)
        pages += 1
        seen += [m["text"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            assert page["has_more"] is False
            break
    assert pages == 3
    assert seen == [f"m{i}" for i in reversed(range(7))]
    newer = await client.conversations_history(channel="C0OPS", oldest=posted[4])
    assert [m["text"] for m in newer["messages"]] == ["m6", "m5"]


@pytest.mark.asyncio
async def test_post_errors(emu: SlackEmulator) -> None:
    client = client_for(emu)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"channel": "C0NOPE", "text": "x"}, "channel_not_found"),
        ({"channel": "#nope", "text": "x"}, "channel_not_found"),
        ({"channel": "C0OUT", "text": "x"}, "not_in_channel"),
        ({"channel": "C0OPS"}, "no_text"),
        ({"channel": "C0OPS", "text": "x", "blocks": {"blocks": []}}, "invalid_blocks_format"),
        ({"channel": "C0OPS", "text": "x", "metadata": {"event_type": "x"}}, "invalid_metadata_schema"),
    ]
    for kwargs, error in cases:
        with pytest.raises(SlackApiError) as e:
            await client.api_call("chat.postMessage", json=kwargs)
        assert e.value.response["error"] == error, kwargs
    assert emu.messages("C0OPS") == []


@pytest.mark.asyncio
async def test_update_delete_ephemeral_reactions(emu: SlackEmulator) -> None:
    client = client_for(emu)
    human = emu.add_user_message("C0OPS", "deploy please", user_id="U1")
    with pytest.raises(SlackApiError) as e:
        await client.chat_update(channel="C0OPS", ts=human.ts, text="edited")
    assert e.value.response["error"] == "cant_update_message"
    with pytest.raises(SlackApiError) as e:
        await client.chat_update(channel="C0OPS", ts="1234567890.000000", text="edited")
    assert e.value.response["error"] == "message_not_found"

    ts = (await client.chat_postMessage(channel="C0OPS", text="card"))["ts"]
    with pytest.raises(SlackApiError) as e:
        await client.chat_update(channel="C0OPS", ts=ts, text="x" * 4001)
    assert e.value.response["error"] == "msg_too_long"

    await client.reactions_add(channel="C0OPS", timestamp=ts, name="white_check_mark")
    with pytest.raises(SlackApiError) as e:
        await client.reactions_add(channel="C0OPS", timestamp=ts, name="white_check_mark")
    assert e.value.response["error"] == "already_reacted"
    with pytest.raises(SlackApiError) as e:
        await client.reactions_add(channel="C0OPS", timestamp=ts, name="Not A Name")
    assert e.value.response["error"] == "invalid_name"
    assert emu.message("C0OPS", ts).reactions == {"white_check_mark": ["UBOT"]}

    link = await client.chat_getPermalink(channel="C0OPS", message_ts=ts)
    assert ts.replace(".", "") in link["permalink"]

    eph = await client.chat_postEphemeral(channel="C0PRIV", user="U1", text="only you")
    assert TS_RE.match(eph["message_ts"])
    assert emu.ephemerals[-1].user == "U1" and emu.ephemerals[-1].text == "only you"
    with pytest.raises(SlackApiError) as e:
        await client.chat_postEphemeral(channel="C0PRIV", user="U2", text="not a member")
    assert e.value.response["error"] == "user_not_in_channel"
    await client.chat_postEphemeral(channel="C0OPS", user="U2", text="empty member list = everyone")

    await client.chat_delete(channel="C0OPS", ts=ts)
    with pytest.raises(KeyError):
        emu.message("C0OPS", ts)
    assert emu.deleted[-1].ts == ts


@pytest.mark.asyncio
async def test_wait_for_explains_a_timeout(emu: SlackEmulator) -> None:
    await client_for(emu).chat_postMessage(channel="C0OPS", text="the only message")
    with pytest.raises(AssertionError) as e:
        await emu.wait_for(lambda: False, timeout=0.05, message="a reply in the thread")
    text = str(e.value)
    assert "a reply in the thread not met within 0.05s" in text
    assert "chat.postMessage -> 200 ok" in text and "the only message" in text


@pytest.mark.asyncio
async def test_dm_by_user_id(emu: SlackEmulator) -> None:
    resp = await client_for(emu).chat_postMessage(channel="U1", text="your approval is needed")
    assert resp["channel"].startswith("D")
    assert [m.text for m in emu.messages("U1")] == ["your approval is needed"]


# ----------------------------------------------------------------------------------------------
# Block Kit validation
# ----------------------------------------------------------------------------------------------

INVALID_MESSAGES: list[tuple[str, list[dict[str, Any]], str]] = [
    ("51 blocks", [{"type": "divider"}] * 51, "no more than 50 items allowed [json-pointer:/blocks]"),
    (
        "3001-char text",
        [{"type": "divider"}, section("x" * 3001)],
        "must be less than 3001 characters [json-pointer:/blocks/1/text/text]",
    ),
    (
        "76-char button label",
        [{"type": "actions", "elements": [button("a", label="L" * 76)]}],
        "must be less than 76 characters [json-pointer:/blocks/0/elements/0/text/text]",
    ),
    (
        "duplicate action_id",
        [{"type": "actions", "elements": [button("approve")]}, {"type": "actions", "elements": [button("approve")]}],
        "duplicate action_id: approve [json-pointer:/blocks/1/elements/0/action_id]",
    ),
    ("empty text", [section("")], "must be more than 0 characters [json-pointer:/blocks/0/text/text]"),
    ("unknown block", [{"type": "carousel"}], "unsupported block type: carousel [json-pointer:/blocks/0/type]"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("name", "blocks", "expected"), INVALID_MESSAGES, ids=[c[0] for c in INVALID_MESSAGES])
async def test_invalid_blocks_rejected(
    emu: SlackEmulator, name: str, blocks: list[dict[str, Any]], expected: str
) -> None:
    with pytest.raises(SlackApiError) as e:
        await client_for(emu).chat_postMessage(channel="C0OPS", text="fallback", blocks=blocks)
    assert e.value.response["error"] == "invalid_blocks"
    assert expected in e.value.response["errors"]
    assert f"[ERROR] {expected}" in e.value.response["response_metadata"]["messages"]
    assert emu.messages("C0OPS") == []


@pytest.mark.asyncio
async def test_blocks_as_form_encoded_json_string(emu: SlackEmulator) -> None:
    # the sync client style: form fields with blocks as a JSON string
    async with aiohttp.ClientSession() as s:
        form = {"token": emu.bot_token, "channel": "C0OPS", "text": "t", "blocks": json.dumps([section("hi")])}
        async with s.post(emu.api_url + "chat.postMessage", data=form) as r:
            body = await r.json()
    assert body["ok"] is True
    assert emu.message("C0OPS", body["ts"]).blocks == [section("hi")]


def test_validate_blocks_accepts_a_realistic_card() -> None:
    confirm = {
        "title": {"type": "plain_text", "text": "Sure?"},
        "text": {"type": "mrkdwn", "text": "Deploy *api*"},
        "confirm": {"type": "plain_text", "text": "Yes"},
        "deny": {"type": "plain_text", "text": "No"},
    }
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "Deploy api 1.4.2 to prod", "emoji": True}},
        section("*Changes*", fields=[{"type": "mrkdwn", "text": f"f{i}"} for i in range(10)]),
        section(
            "Runbook",
            accessory={
                "type": "overflow",
                "action_id": "more",
                "options": [
                    {"text": {"type": "plain_text", "text": "Open"}, "value": "open", "url": "https://example.com"}
                ],
            },
        ),
        {
            "type": "context",
            "elements": [
                {"type": "image", "image_url": "https://x/y.png", "alt_text": "ci"},
                {"type": "mrkdwn", "text": "tests: 120 passed"},
            ],
        },
        {"type": "divider"},
        {
            "type": "actions",
            "block_id": "approval",
            "elements": [
                {**button("approve", "Approve", "r1"), "style": "primary", "confirm": confirm},
                {**button("reject", "Reject", "r1"), "style": "danger"},
                {
                    "type": "static_select",
                    "action_id": "env",
                    "placeholder": {"type": "plain_text", "text": "env"},
                    "options": [{"text": {"type": "plain_text", "text": "prod"}, "value": "prod"}],
                },
            ],
        },
        {
            "type": "image",
            "image_url": "https://x/graph.png",
            "alt_text": "graph",
            "title": {"type": "plain_text", "text": "p99"},
        },
        {"type": "rich_text", "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": "x"}]}]},
    ]
    assert validate_blocks(blocks, surface="message") == []


def test_validate_blocks_limits() -> None:
    def errs(blocks: list[dict[str, Any]], surface: Any = "message") -> list[str]:
        return validate_blocks(blocks, surface=surface)

    assert errs([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]) == [
        "must be less than 151 characters [json-pointer:/blocks/0/text/text]"
    ]
    assert errs([{"type": "header", "text": {"type": "mrkdwn", "text": "*h*"}}]) == [
        "must be plain_text [json-pointer:/blocks/0/text/type]"
    ]
    assert "no more than 10 items allowed [json-pointer:/blocks/0/fields]" in errs(
        [section("x", fields=[{"type": "mrkdwn", "text": "f"}] * 11)]
    )
    assert errs([section("x", fields=[{"type": "mrkdwn", "text": "f" * 2001}])]) == [
        "must be less than 2001 characters [json-pointer:/blocks/0/fields/0/text]"
    ]
    assert errs([{"type": "section"}]) == ["must provide either text or fields [json-pointer:/blocks/0]"]
    assert errs([{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}]) == [
        "no more than 10 items allowed [json-pointer:/blocks/0/elements]"
    ]
    assert errs([{"type": "actions", "elements": [button(f"a{i}") for i in range(26)]}]) == [
        "no more than 25 items allowed [json-pointer:/blocks/0/elements]"
    ]
    assert errs([{"type": "actions", "elements": [{**button("a"), "style": "green"}]}]) == [
        "must be one of: primary, danger [json-pointer:/blocks/0/elements/0/style]"
    ]
    assert errs([{"type": "actions", "elements": [button("a", value="v" * 2001)]}]) == [
        "must be less than 2001 characters [json-pointer:/blocks/0/elements/0/value]"
    ]
    assert errs([{"type": "actions", "elements": [button("a" * 256)]}]) == [
        "must be less than 256 characters [json-pointer:/blocks/0/elements/0/action_id]"
    ]
    assert errs([{"type": "divider", "block_id": "b" * 256}]) == [
        "must be less than 256 characters [json-pointer:/blocks/0/block_id]"
    ]
    assert errs([{"type": "divider", "block_id": "x"}, {"type": "divider", "block_id": "x"}]) == [
        "duplicate block_id: x [json-pointer:/blocks/1/block_id]"
    ]
    assert errs([{"type": "actions", "elements": [{**button("a"), "action-id": "typo"}]}]) == [
        "invalid additional property: action-id [json-pointer:/blocks/0/elements/0/action-id]"
    ]
    assert errs(
        [section("x", accessory={**button("a"), "confirm": {"title": {"type": "plain_text", "text": "t"}}})]
    ) == [
        "missing required field: text [json-pointer:/blocks/0/accessory/confirm]",
        "missing required field: confirm [json-pointer:/blocks/0/accessory/confirm]",
        "missing required field: deny [json-pointer:/blocks/0/accessory/confirm]",
    ]
    # per-block action_id uniqueness in views, per-message in messages
    two = [{"type": "actions", "elements": [button("a")]}, {"type": "actions", "elements": [button("a")]}]
    assert errs(two, "modal") == []
    assert len(errs(two, "message")) == 1
    assert errs([{"type": "divider"}] * 100, "home") == []
    assert errs([{"type": "divider"}] * 101, "modal") == ["no more than 100 items allowed [json-pointer:/blocks]"]


def test_validate_view() -> None:
    inp = {
        "type": "input",
        "block_id": "reason",
        "label": {"type": "plain_text", "text": "Why"},
        "element": {"type": "plain_text_input", "action_id": "text"},
    }
    good = {
        "type": "modal",
        "callback_id": "deploy",
        "title": {"type": "plain_text", "text": "Deploy"},
        "submit": {"type": "plain_text", "text": "Go"},
        "blocks": [inp],
    }
    assert validate_view(good) == []
    assert validate_view({**good, "title": {"type": "plain_text", "text": "T" * 25}}) == [
        "must be less than 25 characters [json-pointer:/view/title/text]"
    ]
    assert validate_view({k: v for k, v in good.items() if k != "submit"}) == [
        "missing required field: submit (required when a modal has input blocks) [json-pointer:/view]"
    ]
    assert validate_view({**good, "private_metadata": "m" * 3001}) == [
        "must be less than 3001 characters [json-pointer:/view/private_metadata]"
    ]
    home = {"type": "home", "blocks": [section("hi")], "submit": {"type": "plain_text", "text": "x"}}
    assert validate_view(home) == ["home views cannot have submit [json-pointer:/view/submit]"]
    assert validate_view(good, surface="home") == ["must be home [json-pointer:/view/type]"]


# ----------------------------------------------------------------------------------------------
# Rate limits and faults
# ----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_post_rate_limit_429_with_retry_after(emu: SlackEmulator) -> None:
    emu.clock = FakeClock()  # frozen: the burst never refills
    client = client_for(emu)
    outcomes: list[int | str] = []
    for i in range(10):
        try:
            await client.chat_postMessage(channel="C0OPS", text=f"m{i}")
            outcomes.append(200)
        except SlackApiError as e:
            assert e.response["error"] == "ratelimited"
            retry_after = e.response.headers["Retry-After"]
            assert int(retry_after) >= 1
            outcomes.append(e.response.status_code)
    assert outcomes == [200] * 5 + [429] * 5
    assert emu.rate_limited_count == 5
    assert len(emu.messages("C0OPS")) == 5
    # other channels have their own bucket
    await client.chat_postMessage(channel="C0PRIV", text="elsewhere")


@pytest.mark.asyncio
async def test_incoming_webhook_posts_into_its_channel_within_the_channel_rate_limit(emu: SlackEmulator) -> None:
    emu.clock = FakeClock()  # frozen: the burst never refills
    url = emu.add_incoming_webhook("#ops")
    hook = AsyncWebhookClient(url)
    # Alertmanager's slack_configs body: the channel and username in it are ignored, the URL decides.
    r = await hook.send_dict(
        {"channel": "#elsewhere", "username": "Alertmanager", "attachments": [{"title": "Disk full", "text": "n1"}]}
    )
    assert (r.status_code, r.body) == (200, "ok")
    [msg] = emu.messages("C0OPS")
    assert msg.attachments == [{"title": "Disk full", "text": "n1"}] and msg.bot_id == emu.bot_id
    assert (await hook.send(text="")).body == "no_text"
    assert (await AsyncWebhookClient(url + "x").send(text="hi")).status_code == 404
    async with aiohttp.ClientSession() as s, s.post(url, data="{", headers={"Content-Type": "application/json"}) as bad:
        assert (bad.status, await bad.text()) == (400, "invalid_payload")
    # Webhook posts and chat.postMessage share the channel's bucket (burst 5); like a chat.postMessage
    # refused for its content, the no_text post took a token too.
    await client_for(emu).chat_postMessage(channel="C0OPS", text="api")
    statuses = [(await hook.send(text=f"m{i}")).status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    limited = emu.calls_to("incoming-webhook")[-1]
    assert (limited.status, limited.error, limited.params["text"]) == (429, "rate_limited", "m2")
    assert emu.rate_limited_count == 1 and len(emu.messages("C0OPS")) == 4


@pytest.mark.asyncio
async def test_rate_limit_recovered_by_retry_handler() -> None:
    async with SlackEmulator(post_burst=1) as emu:
        emu.add_channel("C0OPS", "ops")
        real0 = time.monotonic()
        # frozen until the first 429, then real time flows: deterministic 429 and a real recovery
        emu.clock = lambda: 1000.0 + ((time.monotonic() - real0) if emu.rate_limited_count else 0.0)
        client = client_for(emu, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=3)])
        await client.chat_postMessage(channel="C0OPS", text="first")
        await client.chat_postMessage(channel="C0OPS", text="second")
        assert [m.text for m in emu.messages("C0OPS")] == ["first", "second"]
        assert [c.status for c in emu.calls_to("chat.postMessage")][:3] == [200, 429, 200]
        assert emu.rate_limited_count == 1


@pytest.mark.asyncio
async def test_tier_limits_for_other_methods(emu: SlackEmulator) -> None:
    emu.clock = clock = FakeClock()
    client = client_for(emu)
    statuses = []
    for _ in range(21):
        try:
            await client.usergroups_users_list(usergroup="S0SRE")
            statuses.append(200)
        except SlackApiError as err:
            statuses.append(err.response.status_code)
    assert statuses == [200] * 20 + [429]  # Tier 2
    emu.set_rate_limit("users.info", per_minute=60, burst=2)
    for _ in range(2):
        await client.users_info(user="U1")
    with pytest.raises(SlackApiError) as e:
        await client.users_info(user="U1")
    assert e.value.response.status_code == 429
    clock.advance(1.0)
    await client.users_info(user="U1")


@pytest.mark.asyncio
async def test_fail_next_and_fail_for(emu: SlackEmulator) -> None:
    client = client_for(emu)
    emu.fail_next("chat.postMessage")
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel="C0OPS", text="x")
    assert e.value.response.status_code == 500
    assert e.value.response["error"] == "internal_error"
    await client.chat_postMessage(channel="C0OPS", text="x")  # only the next call failed

    emu.fail_next("chat.update", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as e:
        await client.chat_update(channel="C0OPS", ts="1", text="y")
    assert e.value.response.status_code == 429
    assert e.value.response.headers["Retry-After"] == "7"
    assert e.value.response["error"] == "ratelimited"

    emu.fail_next("chat.postMessage", status=200, error="is_archived")
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel="C0OPS", text="x")
    assert (e.value.response.status_code, e.value.response["error"]) == (200, "is_archived")

    emu.clock = clock = FakeClock()
    emu.fail_for("*", 10, status=503)
    for method in ("auth.test", "users.info"):
        with pytest.raises(SlackApiError) as e:
            await client.api_call(method, params={"user": "U1"})
        assert e.value.response.status_code == 503
    clock.advance(11)
    await client.auth_test()
    assert [c.status for c in emu.calls[-3:]] == [503, 503, 200]


@pytest.mark.asyncio
async def test_slow_answers_time_out_the_client(emu: SlackEmulator) -> None:
    emu.slow("chat.postMessage", 5, count=1, process_first=True)
    client = client_for(emu, timeout=1)
    with pytest.raises(asyncio.TimeoutError):
        await client.chat_postMessage(channel="C0OPS", text="maybe posted")
    # process_first: Slack carried the post out even though the client gave up
    await emu.wait_for(lambda: len(emu.messages("C0OPS")) == 1)


# ----------------------------------------------------------------------------------------------
# Files, views, directory
# ----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_files_upload_v2_three_steps(emu: SlackEmulator) -> None:
    client = client_for(emu)
    parent = (await client.chat_postMessage(channel="C0OPS", text="release thread"))["ts"]
    resp = await client.files_upload_v2(
        channel="C0OPS",
        content=b"line1\nline2\n",
        filename="build.log",
        title="Build log",
        initial_comment="logs attached",
        thread_ts=parent,
    )
    assert resp["file"]["id"].startswith("F")
    assert [c.method for c in emu.calls[-2:]] == ["files.getUploadURLExternal", "files.completeUploadExternal"]
    (f,) = emu.files
    assert (f.filename, f.title, f.content) == ("build.log", "Build log", b"line1\nline2\n")
    assert (f.channel, f.thread_ts, f.initial_comment) == ("C0OPS", parent, "logs attached")
    (share,) = emu.replies("C0OPS", parent)
    assert share.text == "logs attached" and share.files[0]["id"] == f.id

    with pytest.raises(SlackApiError) as e:
        await client.files_completeUploadExternal(files=[{"id": "F0NOPE"}], channel_id="C0OPS")
    assert e.value.response["error"] == "file_not_found"


MODAL = {
    "type": "modal",
    "callback_id": "deploy",
    "title": {"type": "plain_text", "text": "Deploy"},
    "submit": {"type": "plain_text", "text": "Deploy"},
    "blocks": [
        {
            "type": "input",
            "block_id": "ver",
            "label": {"type": "plain_text", "text": "Version"},
            "element": {"type": "plain_text_input", "action_id": "v"},
        }
    ],
}


@pytest.mark.asyncio
async def test_views_open_trigger_rules(emu: SlackEmulator) -> None:
    emu.clock = clock = FakeClock()
    client = client_for(emu)
    emu.command_body("deploy", user_id="U1")
    trigger = emu.last_trigger_id
    assert trigger is not None
    opened = await client.views_open(trigger_id=trigger, view=MODAL)
    view = opened["view"]
    assert view["id"].startswith("V") and view["hash"] and view["callback_id"] == "deploy"
    assert emu.views[view["id"]]["blocks"] == MODAL["blocks"]
    assert emu.view_stacks["U1"] == [view["id"]]

    with pytest.raises(SlackApiError) as e:
        await client.views_open(trigger_id=trigger, view=MODAL)
    assert e.value.response["error"] == "exchanged_trigger_id"

    late = emu.mint_trigger("U1")
    clock.advance(3.5)
    with pytest.raises(SlackApiError) as e:
        await client.views_open(trigger_id=late, view=MODAL)
    assert e.value.response["error"] == "expired_trigger_id"
    with pytest.raises(SlackApiError) as e:
        await client.views_open(trigger_id="123.456.bogus", view=MODAL)
    assert e.value.response["error"] == "invalid_trigger_id"

    bad = {**MODAL, "title": {"type": "plain_text", "text": "A title that is too long!"}}
    with pytest.raises(SlackApiError) as e:
        await client.views_open(trigger_id=emu.mint_trigger("U1"), view=bad)
    assert e.value.response["error"] == "invalid_arguments"
    assert e.value.response["response_metadata"]["messages"] == [
        "[ERROR] must be less than 25 characters [json-pointer:/view/title/text]"
    ]

    pushed = await client.views_push(trigger_id=emu.mint_trigger("U1"), view=MODAL)
    assert emu.view_stacks["U1"] == [view["id"], pushed["view"]["id"]]

    with pytest.raises(SlackApiError) as e:
        await client.views_update(view_id=view["id"], hash="stale-hash", view=MODAL)
    assert e.value.response["error"] == "hash_conflict"
    new = {**MODAL, "title": {"type": "plain_text", "text": "Deploying…"}}
    upd = await client.views_update(view_id=view["id"], hash=view["hash"], view=new)
    assert upd["view"]["id"] == view["id"] and upd["view"]["hash"] != view["hash"]
    assert emu.views[view["id"]]["title"]["text"] == "Deploying…"
    with pytest.raises(SlackApiError) as e:
        await client.views_update(view_id="V0NOPE", view=new)
    assert e.value.response["error"] == "not_found"


@pytest.mark.asyncio
async def test_views_publish_home(emu: SlackEmulator) -> None:
    client = client_for(emu)
    home = {"type": "home", "blocks": [section("Your pending approvals: 2")]}
    resp = await client.views_publish(user_id="U1", view=home)
    assert emu.home_views["U1"]["blocks"] == home["blocks"]
    again = await client.views_publish(user_id="U1", view=home, hash=resp["view"]["hash"])
    assert again["view"]["id"] == resp["view"]["id"]
    with pytest.raises(SlackApiError) as e:
        await client.views_publish(user_id="U1", view=MODAL)
    assert e.value.response["error"] == "invalid_arguments"


@pytest.mark.asyncio
async def test_users_and_usergroups(emu: SlackEmulator) -> None:
    client = client_for(emu)
    user = (await client.users_info(user="U1"))["user"]
    assert (user["id"], user["name"], user["real_name"], user["is_bot"]) == ("U1", "alice", "Alice A", False)
    assert (await client.users_info(user="U3"))["user"]["is_restricted"] is True
    with pytest.raises(SlackApiError) as e:
        await client.users_info(user="U0NOPE")
    assert e.value.response["error"] == "user_not_found"

    assert (await client.usergroups_users_list(usergroup="S0SRE"))["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError) as e:
        await client.usergroups_users_list(usergroup="S0NOPE")
    assert e.value.response["error"] == "no_such_subteam"
    groups = (await client.usergroups_list(include_users=True))["usergroups"]
    assert groups == [
        {
            "id": "S0SRE",
            "team_id": "T0TEST",
            "handle": "sre",
            "name": "sre",
            "is_usergroup": True,
            "date_delete": 0,
            "user_count": 2,
            "users": ["U1", "U2"],
        }
    ]
    assert "users" not in (await client.usergroups_list())["usergroups"][0]


# ----------------------------------------------------------------------------------------------
# response_url and signing
# ----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_response_url_use_limit(emu: SlackEmulator) -> None:
    body = emu.command_body("status", user_id="U1")
    response_url = parse_qs(body)["response_url"][0]
    assert response_url.startswith(emu.base_url + "/commands/T0TEST/")
    hook = AsyncWebhookClient(response_url)
    for i in range(5):
        r = await hook.send(text=f"progress {i}")
        assert r.status_code == 200, r.body
    r = await hook.send(text="one too many")
    assert r.status_code == 404
    assert json.loads(r.body) == {"ok": False, "error": "used_url"}
    assert [e.text for e in emu.ephemerals] == [f"progress {i}" for i in range(5)]
    assert all(e.user == "U1" and e.source == "response_url" for e in emu.ephemerals)
    assert [p.status for p in emu.responses] == [200] * 5 + [404]

    r = await AsyncWebhookClient(response_url.rsplit("/", 1)[0] + "/forged").send(text="x")
    assert r.status_code == 404


@pytest.mark.asyncio
async def test_response_url_expires(emu: SlackEmulator) -> None:
    emu.clock = clock = FakeClock()
    emu.command_body("status", user_id="U1")
    assert emu.last_response_url is not None
    clock.advance(31 * 60)
    r = await AsyncWebhookClient(emu.last_response_url).send(text="late")
    assert (r.status_code, json.loads(r.body)["error"]) == (404, "expired_url")


@pytest.mark.asyncio
async def test_response_url_replace_delete_in_channel(emu: SlackEmulator) -> None:
    client = client_for(emu)
    card = await client.chat_postMessage(
        channel="C0OPS", text="approve?", blocks=[{"type": "actions", "elements": [button("approve")]}]
    )
    payload = emu.action_payload(
        user_id="U1", action_id="approve", value="r1", channel_id="C0OPS", message_ts=card["ts"]
    )
    hook = AsyncWebhookClient(payload["response_url"])
    r = await hook.send(replace_original=True, text="Approved by <@U1>", blocks=[section("Approved")])
    assert r.status_code == 200
    msg = emu.message("C0OPS", card["ts"])
    assert (msg.text, msg.blocks, msg.edited_count) == ("Approved by <@U1>", [section("Approved")], 1)

    r = await hook.send(text="bad", blocks=[section("x" * 3001)])
    assert r.status_code == 400 and json.loads(r.body)["error"] == "invalid_blocks"

    r = await hook.send_dict({"response_type": "in_channel", "text": "visible to all", "thread_ts": card["ts"]})
    assert r.status_code == 200
    assert [m.text for m in emu.replies("C0OPS", card["ts"])] == ["visible to all"]

    r = await hook.send(delete_original=True)
    assert r.status_code == 200
    assert card["ts"] not in [m.ts for m in emu.messages("C0OPS")]


@pytest.mark.asyncio
async def test_signed_bodies_verify_with_slack_sdk(emu: SlackEmulator) -> None:
    verifier = SignatureVerifier(emu.signing_secret)
    body = emu.command_body("deploy api 1.4.2 to prod", user_id="U1")
    fields = parse_qs(body)
    assert fields["command"] == ["/ops"] and fields["user_id"] == ["U1"] and fields["channel_name"] == ["ops"]
    assert fields["trigger_id"][0] == emu.last_trigger_id
    headers = emu.sign(body)
    assert headers["X-Slack-Request-Timestamp"].isdigit()
    assert verifier.is_valid_request(body, headers)

    stale = emu.sign(body, timestamp=int(time.time()) - 301)
    assert not verifier.is_valid_request(body, stale)
    assert not SignatureVerifier("other-secret").is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + "&x=1", headers)

    action = emu.action_body(
        user_id="U2", action_id="approve", value="r1", channel_id="C0OPS", message_ts="1700000000.000100"
    )
    assert action.startswith("payload=")
    assert verifier.is_valid_request(action, emu.sign(action))
    payload = json.loads(parse_qs(action)["payload"][0])
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U2"
    assert payload["actions"][0]["value"] == "r1"

    event = emu.app_mention_body("<@UBOT> status", user_id="U1")
    envelope = json.loads(event)
    assert envelope["type"] == "event_callback" and envelope["event"]["type"] == "app_mention"
    assert isinstance(envelope["event_time"], int)
    assert verifier.is_valid_request(event, emu.sign(event))
    # the mention is now a message the bot can reply to in its thread
    await client_for(emu).chat_postMessage(channel="C0OPS", thread_ts=envelope["event"]["ts"], text="on it")


# ----------------------------------------------------------------------------------------------
# Inbound HTTP to a real Bolt app
# ----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bolt_http_mode_end_to_end(emu: SlackEmulator) -> None:
    app = AsyncApp(client=client_for(emu), signing_secret=emu.signing_secret)

    @app.command("/ops")
    async def ops(ack: Any, command: dict[str, Any], say: Any, respond: Any) -> None:
        await ack(f"Working on `{command['text']}`")
        await say(
            text="Deploy api?",
            blocks=[
                section("Deploy *api*?"),
                {"type": "actions", "block_id": "ap", "elements": [button("approve", "Approve", "r1")]},
            ],
        )
        await respond("queued")

    @app.action("approve")
    async def approve(ack: Any, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await client.chat_update(
            channel=body["channel"]["id"],
            ts=body["message"]["ts"],
            text=f"Approved by <@{body['user']['id']}> ({body['actions'][0]['value']})",
        )

    @app.view("deploy")
    async def submit(ack: Any, view: dict[str, Any]) -> None:
        version = view["state"]["values"]["ver"]["v"]["value"]
        if version == "bad":
            await ack(response_action="errors", errors={"ver": "no such version"})
        else:
            await ack()

    @app.event("app_mention")
    async def mention(event: dict[str, Any], say: Any) -> None:
        await say(text="hello", thread_ts=event["ts"])

    runner, url = await serve(app.web_app())
    try:
        result = await emu.send_command(url, "deploy api", "U1")
        assert result.status == 200 and result.body_text == "Working on `deploy api`"
        assert result.elapsed_seconds >= 0
        await emu.wait_for(lambda: len(emu.messages("C0OPS")) == 1 and len(emu.responses) == 1)
        assert sorted(e.text for e in emu.ephemerals) == ["Working on `deploy api`", "queued"]
        card = emu.messages("C0OPS")[0]

        clicked = await emu.send_action(
            url, user_id="U2", action_id="approve", value="r1", channel_id="C0OPS", message_ts=card.ts
        )
        assert clicked.status == 200
        await emu.wait_for(lambda: card.edited_count == 1)
        assert card.text == "Approved by <@U2> (r1)"

        opened = await client_for(emu).views_open(trigger_id=emu.mint_trigger("U1"), view=MODAL)
        vid = opened["view"]["id"]
        bad = await emu.send_view_submission(
            url, user_id="U1", view_id=vid, callback_id="deploy", values={"ver": {"v": "bad"}}
        )
        assert bad.json == {"response_action": "errors", "errors": {"ver": "no such version"}}
        assert emu.view_errors[vid] == {"ver": "no such version"}
        good = await emu.send_view_submission(
            url, user_id="U1", view_id=vid, callback_id="deploy", values={"ver": {"v": "1.4.2"}}
        )
        assert good.status == 200 and emu.view_stacks["U1"] == []

        mentioned = await emu.send_app_mention(url, "<@UBOT> hi", user_id="U1")
        assert mentioned.status == 200
        await emu.wait_for(lambda: any(m.text == "hello" for m in emu.messages("C0OPS")))

        unsigned = await emu.send(url, emu.command_body("x", user_id="U1"), signed=False)
        assert unsigned.status == 401
        stale_body = emu.command_body("x", user_id="U1")
        stale = await emu.send(url, stale_body, timestamp=int(time.time()) - 600)
        assert stale.status == 401
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_event_delivery_retries() -> None:
    attempts: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        attempts.append({k: v for k, v in request.headers.items() if k.lower().startswith("x-slack-retry")})
        return web.Response(status=500 if len(attempts) < 3 else 200)

    bot = web.Application()
    bot.router.add_post("/slack/events", handler)
    runner, url = await serve(bot)
    try:
        async with SlackEmulator() as emu:
            emu.add_channel("C0OPS", "ops")
            result = await emu.send_event(
                url, {"type": "reaction_added", "user": "U1", "reaction": "eyes"}, max_retries=3
            )
            assert result.status == 200 and result.retry_num == 2
            assert attempts == [
                {},
                {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"},
                {"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_error"},
            ]
            assert [r.status for r in emu.inbound] == [500, 500, 200]
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------------------------
# Socket Mode
# ----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_socket_mode_with_slack_sdk_client(emu: SlackEmulator) -> None:
    with pytest.raises(SlackApiError) as e:
        await client_for(emu).apps_connections_open(app_token=emu.bot_token)
    assert e.value.response["error"] == "invalid_auth"

    received: list[SocketModeRequest] = []

    async def listener(client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        received.append(req)
        if req.type == "slash_commands":
            await client.send_socket_mode_response(
                SocketModeResponse(envelope_id=req.envelope_id, payload={"text": f"got {req.payload['text']}"})
            )

    emu.calls.clear()
    client = SocketModeClient(app_token=emu.app_token, web_client=client_for(emu))
    client.socket_mode_request_listeners.append(listener)
    try:
        await client.connect()  # type: ignore[no-untyped-call]
        await emu.wait_socket_connected()
        assert emu.socket_connections == 1
        assert len(emu.calls_to("apps.connections.open")) == 1

        ack = await emu.socket_command("deploy api", user_id="U1")
        assert ack is not None
        assert ack["payload"] == {"text": "got deploy api"}
        assert ack["envelope_id"] == emu.socket_envelopes[-1]["envelope_id"]
        assert emu.socket_envelopes[-1]["accepts_response_payload"] is True
        assert received[0].payload["command"] == "/ops" and received[0].payload["user_id"] == "U1"
        assert emu.ephemerals[-1].text == "got deploy api"

        # an events_api envelope nobody acks: socket_send gives up and returns None
        no_ack = await emu.socket_send(
            "events_api", emu.event_envelope({"type": "app_home_opened", "user": "U1"}), timeout=0.3
        )
        assert no_ack is None
        assert emu.socket_envelopes[-1]["retry_attempt"] == 0
        assert emu.socket_envelopes[-1]["accepts_response_payload"] is False

        # a refresh makes the client fetch a new URL and reconnect
        await emu.socket_disconnect("refresh_requested")
        await emu.wait_for(lambda: len(emu.calls_to("apps.connections.open")) == 2 and emu.socket_connections == 1)
        again = await emu.socket_command("again", user_id="U1")
        assert again is not None and again["payload"] == {"text": "got again"}
    finally:
        await client.close()  # type: ignore[no-untyped-call]


@pytest.mark.asyncio
async def test_socket_mode_with_bolt_handler(emu: SlackEmulator) -> None:
    app = AsyncApp(client=client_for(emu), signing_secret=emu.signing_secret)

    @app.command("/ops")
    async def ops(ack: Any, command: dict[str, Any]) -> None:
        await ack(blocks=[section(f"ok: {command['text']}")], text="ok")

    @app.view("deploy")
    async def submit(ack: Any) -> None:
        await ack(response_action="update", view={**MODAL, "title": {"type": "plain_text", "text": "Done"}})

    handler = AsyncSocketModeHandler(app, app_token=emu.app_token)
    try:
        await handler.connect_async()  # type: ignore[no-untyped-call]
        await emu.wait_socket_connected()
        ack = await emu.socket_command("status", user_id="U1")
        assert ack is not None
        assert ack["payload"]["blocks"] == [section("ok: status")]

        opened = await client_for(emu).views_open(trigger_id=emu.mint_trigger("U1"), view=MODAL)
        vid = opened["view"]["id"]
        sub = await emu.socket_view_submission(
            user_id="U1", view_id=vid, callback_id="deploy", values={"ver": {"v": "1.0"}}
        )
        assert sub is not None and sub["payload"]["response_action"] == "update"
        assert emu.views[vid]["title"]["text"] == "Done"
    finally:
        await handler.close_async()  # type: ignore[no-untyped-call]


@pytest.mark.asyncio
async def test_too_many_websockets(emu: SlackEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        sockets = []
        try:
            for _ in range(10):
                ws = await session.ws_connect(f"ws://127.0.0.1:{emu.port}/link")
                hello = await ws.receive_json()
                assert hello["type"] == "hello" and hello["connection_info"]["app_id"] == "A0TEST"
                sockets.append(ws)
            assert emu.socket_connections == 10
            extra = await session.ws_connect(f"ws://127.0.0.1:{emu.port}/link")
            frame = await extra.receive_json()
            assert frame["type"] == "disconnect" and frame["reason"] == "too_many_websockets"
            await extra.close()

            # pings are answered with pongs echoing the data
            await sockets[0].ping(b"sdk-ping-pong:1.5")
            # an unknown ticket is refused
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await session.ws_connect(f"ws://127.0.0.1:{emu.port}/link/?ticket=forged")
        finally:
            for ws in sockets:
                await ws.close()


@pytest.mark.asyncio
async def test_pins_and_ids_where_slack_wants_ids(emu: SlackEmulator) -> None:
    client = client_for(emu)
    posted = await client.chat_postMessage(channel="#ops", text="notice")  # a name is fine to post
    cid, ts = posted["channel"], posted["ts"]
    for call in (
        lambda: client.chat_update(channel="#ops", ts=ts, text="x"),
        lambda: client.pins_add(channel="#ops", timestamp=ts),
        lambda: client.conversations_history(channel="#ops"),
    ):
        with pytest.raises(SlackApiError) as e:
            await call()
        assert e.value.response["error"] == "channel_not_found"
    await client.pins_add(channel=cid, timestamp=ts)
    with pytest.raises(SlackApiError) as e:
        await client.pins_add(channel=cid, timestamp=ts)
    assert e.value.response["error"] == "already_pinned"
    listed = await client.pins_list(channel=cid)
    assert [i["message"]["ts"] for i in listed["items"]] == [ts] and [m.ts for m in emu.pinned("#ops")] == [ts]
    await client.pins_remove(channel=cid, timestamp=ts)
    with pytest.raises(SlackApiError) as e:
        await client.pins_remove(channel=cid, timestamp=ts)
    assert e.value.response["error"] == "no_pin"
    names = {c["name"]: c["id"] for c in (await client.conversations_list(types="public_channel"))["channels"]}
    assert names["ops"] == cid
