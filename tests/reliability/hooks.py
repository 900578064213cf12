"""Alertmanager webhook notifications as the reliability tests send them: one alert per group, the
group named by its alertname, delivered to opsloop's `/hooks/alertmanager` with the tests' token."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp

HOOK_TOKEN = "hook-secret-123"  # what tests.support.slack_ops (and the Proc environ) give opsloop


def fingerprint(name: str) -> str:
    return name.encode().hex()[:16]


def notification(
    name: str, service: str, status: str = "firing", external_url: str = "http://alertmanager.invalid"
) -> dict[str, Any]:
    """The webhook body (version 4) Alertmanager 0.25 sends for the group `alertname=name`."""
    labels = {"alertname": name, "service": service, "severity": "warning"}
    now = datetime.now(UTC).isoformat()
    alert = {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"{name} on {service}"},
        "startsAt": "2026-11-26T04:00:00Z" if status == "resolved" else now,
        "endsAt": now if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.invalid/graph",
        "fingerprint": fingerprint(name),
    }
    return {
        "receiver": "opsloop",
        "status": status,
        "alerts": [alert],
        "groupLabels": {"alertname": name},
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"],
        "externalURL": external_url,
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "truncatedAlerts": 0,
    }


async def notify(hooks_url: str, body: dict[str, Any], timeout: float = 10.0) -> int:
    """POST it to `{hooks_url}/alertmanager`; the HTTP status (aiohttp errors when nobody answers)."""
    headers = {"Authorization": f"Bearer {HOOK_TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.post(f"{hooks_url}/alertmanager", json=body, headers=headers) as r,
    ):
        return r.status
