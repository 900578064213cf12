"""`python -m bot` is the `opsloop` command."""

from bot.cli import main

raise SystemExit(main())
