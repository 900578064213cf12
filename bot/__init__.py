"""opsloop: a Slack chat-ops bot for the whole DevOps loop."""

__version__ = "0.1.0"
