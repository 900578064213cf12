"""Shared fixtures. Every test gets a clean environment: no Slack tokens, no proxies."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.support import clean_environ

# Profiles of tests/reliability/test_fuzz.py, chosen there by OPSLOOP_FUZZ (`ci` by default; `make fuzz`: soak).
_FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=_FUZZ_HEALTH)
settings.register_profile("soak", max_examples=12_000, deadline=None, suppress_health_check=_FUZZ_HEALTH)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k not in clean_environ():
            monkeypatch.delenv(k, raising=False)


def require_servers() -> bool:
    return os.environ.get("OPSLOOP_REQUIRE_SERVERS") == "1"
