"""opsloop's own metrics (served on /metrics), one registry per running app so tests stay independent."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)


class Metrics:
    """Counters, gauges and histograms of one opsloop process."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
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

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
