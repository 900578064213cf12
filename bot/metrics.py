"""opsloop's own metrics (served on /metrics), one registry per running app so tests stay independent."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)


class Metrics:
    """Counters, gauges and histograms of one opsloop process."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self._ack_children: dict[str, tuple[Any, Any]] = {}
        self._command_children: dict[tuple[str, str], Any] = {}
        r = self.registry = CollectorRegistry()
        self.acks = Counter("opsloop_acks_total", "Slack requests acknowledged", ["kind"], registry=r)
        self.ack_seconds = Histogram(
            "opsloop_ack_seconds",
            "Time from receiving a Slack request to its ack",
            ["kind"],
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.commands = Counter(
            "opsloop_commands_total", "Commands, clicks and submits by id and outcome", ["id", "outcome"], registry=r
        )
        self.outbox_depth = Gauge("opsloop_outbox_depth", "Slack writes waiting for delivery", registry=r)
        self.outbox_sent = Counter("opsloop_outbox_sent_total", "Slack writes delivered", ["op"], registry=r)
        self.outbox_failed = Counter(
            "opsloop_outbox_failed_total", "Slack writes given up (permanent errors)", ["op"], registry=r
        )
        self.slack_retries = Counter("opsloop_slack_retries_total", "Slack writes retried", ["reason"], registry=r)
        self.slack_429 = Counter("opsloop_slack_ratelimited_total", "Slack 429 answers", ["method"], registry=r)
        self.jobs = Gauge("opsloop_jobs", "Jobs by state", ["state"], registry=r)
        self.job_runs = Counter(
            "opsloop_job_runs_total", "Jobs finished by kind and state", ["kind", "state"], registry=r
        )
        self.hooks = Counter(
            "opsloop_hooks_total", "Webhook requests by source and status", ["source", "status"], registry=r
        )
        self.adapter_errors = Counter("opsloop_adapter_errors_total", "Adapter errors by tool", ["tool"], registry=r)

    def acked(self, kind: str, seconds: float) -> None:
        """Count one ack and its latency (called on every Slack request: label children are cached)."""
        pair = self._ack_children.get(kind)
        if pair is None:
            pair = self._ack_children[kind] = (self.acks.labels(kind=kind), self.ack_seconds.labels(kind=kind))
        pair[0].inc()
        pair[1].observe(seconds)

    def command(self, command_id: str, outcome: str) -> None:
        """Count one command, click or submit by id and outcome."""
        child = self._command_children.get((command_id, outcome))
        if child is None:
            child = self._command_children[(command_id, outcome)] = self.commands.labels(id=command_id, outcome=outcome)
        child.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
