"""The Slack app manifest, derived from what the router serves (a test keeps manifest.yml equal to it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.router import CommandGroup
from bot.slack import SLASH_COMMAND

BOT_SCOPES = [
    "app_mentions:read",  # @opsloop mentions
    "channels:history",  # find a message by its metadata after a crash; read a message reacted to
    "channels:read",  # the name of a channel a reaction came from, to find its service
    "chat:write",
    "chat:write.public",  # post cards to public channels without being invited first
    "commands",  # /ops and the message shortcut
    "files:write",  # long logs and charts as files
    "groups:history",
    "groups:read",  # a private channel's id from its configured #name (the outbox keys channels by id)
    "im:history",
    "pins:write",  # the freeze notice stays pinned in the approvals channel while the freeze lasts
    "reactions:read",  # a configured reaction files a message as feedback or a ticket
    "usergroups:read",  # roles given to user groups
    "users:read",  # names, bots and guests for policy decisions
]
# message.channels: an item key pasted in a channel gets a small card; reaction_added: reactions file feedback.
BOT_EVENTS = ["app_home_opened", "app_mention", "message.channels", "message.im", "reaction_added"]


def manifest(groups: Sequence[CommandGroup] | None = None) -> dict[str, Any]:
    """The manifest for Socket Mode (for HTTP mode set the request URLs and socket_mode_enabled: false)."""
    if groups is None:
        from bot.app import GROUPS

        groups = GROUPS
    stages = ", ".join(g.stage for g in groups if g.commands and g.stage != "core")
    shortcuts = [
        {"name": s.name, "type": "message", "callback_id": s.callback, "description": s.description}
        for g in groups
        for s in g.shortcuts
    ]
    return {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": "opsloop",
            "description": "Plan, build, test, deploy, operate and monitor from chat",
            "background_color": "#1d3557",
        },
        "features": {
            "app_home": {
                "home_tab_enabled": True,
                "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": False,
            },
            "bot_user": {"display_name": "opsloop", "always_online": True},
            "shortcuts": shortcuts,
            "slash_commands": [
                {
                    "command": SLASH_COMMAND,
                    "description": f"opsloop: {stages}",
                    "usage_hint": 'help [stage] | plan new "title" | feedback "text" | …',
                    "should_escape": True,
                }
            ],
        },
        "oauth_config": {"scopes": {"bot": BOT_SCOPES}},
        "settings": {
            "event_subscriptions": {"bot_events": BOT_EVENTS},
            "interactivity": {"is_enabled": True},
            "org_deploy_enabled": False,
            "socket_mode_enabled": True,
            "token_rotation_enabled": False,
        },
    }
