"""One error hierarchy for everything bertpress raises on purpose.

Each error carries the process exit code the command line turns it into, and its message is one
line (or a short list) that says what is wrong and how to fix it; the command line prints it
without a traceback. Torch-free: the runtime and the pipeline share it.
"""

from __future__ import annotations


class BertpressError(Exception):
    """A problem the user can act on; `exit_code` is what the CLI exits with."""

    exit_code = 1
    label = "error"


class InputError(BertpressError, ValueError):
    """Bad input from the user (a config, a file, a request): exit code 2."""

    exit_code = 2


class BundleError(InputError):
    """A bundle that cannot be used: missing, incomplete, corrupted or of an unknown format."""


class GateFailed(BertpressError):
    """A quality gate refused a candidate: exit code 3."""

    exit_code = 3
    label = "gate failed"
