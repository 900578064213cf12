"""Shared fixtures. Every test gets a clean environment: no Slack tokens, no proxies."""

from __future__ import annotations

import os

import pytest

from tests.support import clean_environ


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k not in clean_environ():
            monkeypatch.delenv(k, raising=False)


def require_servers() -> bool:
    return os.environ.get("OPSLOOP_REQUIRE_SERVERS") == "1"
