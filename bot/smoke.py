"""Browser smoke checks of a service in an environment: the test stage runs them on demand, the
deploy stage after a rollout. The pages come from `services.<name>.smoke`; `{env}` in a URL is the
environment's name."""

from __future__ import annotations

from dataclasses import dataclass

from bot import views as v
from bot.config import Config
from bot.errors import NotConfigured
from bot.ports import Browser, PageCheck, PageResult


@dataclass(frozen=True)
class SmokeOutcome:
    service: str
    env: str
    results: tuple[PageResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def pages_for(config: Config, service: str, env: str) -> tuple[PageCheck, ...]:
    """The page checks of a service in an environment; NotConfigured when it has none."""
    svc = config.services.get(service)
    if svc is None or svc.smoke is None:
        raise NotConfigured(
            f"`{service}` has no smoke check: add `services.{service}.smoke.pages` (url, text and/or css)."
        )
    return tuple(
        PageCheck(url=p.url.replace("{env}", env), text=p.text, css=p.css, timeout_s=p.timeout.total_seconds())
        for p in svc.smoke.pages
    )


async def run_smoke(config: Config, browser: Browser | None, service: str, env: str) -> SmokeOutcome:
    """Check every page of the service in `env` with the headless browser."""
    pages = pages_for(config, service, env)
    if browser is None:
        raise NotConfigured("No browser is available for smoke checks (Chromium and chromedriver are needed).")
    return SmokeOutcome(service, env, await browser.check(pages))


def smoke_card(outcome: SmokeOutcome) -> v.Message:
    """The result of a smoke check: one line per page."""
    icon = "✅" if outcome.ok else "❌"
    head = f"{icon} Smoke check of {outcome.service} in {outcome.env}"
    lines = []
    for r in outcome.results:
        mark = "✅" if r.ok else "❌"
        title = f" — _{v.esc(r.title[:80])}_" if r.title else ""
        lines.append(f"{mark} {v.esc(r.url)}: {v.esc(r.message)} ({r.duration_s:.1f} s){title}")
    failed = sum(1 for r in outcome.results if not r.ok)
    summary = f"{len(outcome.results) - failed} of {len(outcome.results)} pages passed"
    return v.Message(
        f"{head}: {summary}",
        (
            v.Header(head),
            v.Section("\n".join(lines)),
            v.Context((summary + ("; screenshots of the failures are in the thread" if failed else ""),)),
        ),
    )
