"""`python -m bench [--duration S] [--repeat N] ...`: run the ack-path benchmark (see bench/README.md)."""

from bench.ack import main

raise SystemExit(main())
