"""Handlers: one CommandGroup per stage; they see `bot.*` ports and services, never adapters."""
