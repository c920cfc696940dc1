"""bertpress orchestration: config, cache, tracking, runner and CLI."""

__version__ = "0.1.0"
