"""Adapters: one module per tool, each implementing ports from `bot.ports`."""
