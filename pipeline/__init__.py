"""bertpress orchestration: config, cache, tracking, runner and CLI."""

from bertpress import __version__

__all__ = ["__version__"]
