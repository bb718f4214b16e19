"""Errors a user can cause, each with a message that names the culprit and the fix.

The CLI prints `str(error)` without a traceback and exits with `error.exit_code`.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: a one-paragraph, user-facing explanation."""

    exit_code = 2


class SourceError(HarnessError):
    """The kernel source is missing, unreadable or not a kernel tree."""


class SeriesError(HarnessError):
    """A patch series or patch file is malformed or missing."""


class PatchApplyError(HarnessError):
    """A patch does not apply; names the patch, the file and the hunk."""


class KconfigError(HarnessError):
    """A fragment is malformed, an option does not exist or does not stick."""


class BuildError(HarnessError):
    """make failed; carries the first compiler errors and the log path."""


class VerifyError(HarnessError):
    """The built vmlinux is not what was asked for."""


class CacheError(HarnessError):
    """The cache directory is unusable."""
