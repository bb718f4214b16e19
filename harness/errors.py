"""The harness's errors and its one table of exit statuses.

Two kinds of error, told apart by class, never by message:

- `BadInput`: something the user gave is wrong (a fragment, a patch that does not apply, a
  topology, a source path, an option). Raised before anything is built or written; the message
  names the culprit and the fix.
- `InfrastructureError`: the harness could not do its job (make failed, QEMU did not start, the
  guest stopped answering SSH, drgn could not read). Not a verdict on the kernel.

`ExitCode.for_error` maps an exception to a status; `harness.cli.main` is its one caller, so no
command chooses a status of its own for an error. The README's exit tables are this enum.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit status of every `numa-harness` command (`run` and `ssh` also pass CMD's own)."""

    OK = 0
    # A check failed or hung, or a mutant survived: a verdict on the kernel (or on the checks).
    CHECK_FAILED = 1
    # Bad input, named with its fix; nothing was built or written.
    BAD_INPUT = 2
    # `ci`: something got worse than in --baseline.
    REGRESSION = 3
    # The harness could not build, boot or reach the guest, or a check ended in a harness error.
    # The same status `git bisect run` reads as "cannot test this commit".
    HARNESS_FAILED = 125
    # `run`/`ssh`: the guest kernel logged a bug (oops, WARNING, panic...) or died while CMD ran.
    KERNEL_BUG = 126
    INTERRUPTED = 130

    @classmethod
    def most_telling(cls, codes: Iterable[ExitCode]) -> ExitCode:
        """The status a run with several outcomes exits with: a regression, then a verdict against
        the kernel (a check failed or hung, a mutant survived), then a harness failure. A finding
        outranks "could not test" because 125 is what `git bisect run` and CI read as "skip this
        one": a kernel seen to fail must not be skipped because another part could not run (that
        part is still reported, in the table and in summary.json's errors)."""
        present = set(codes)
        for code in (cls.REGRESSION, cls.CHECK_FAILED, cls.HARNESS_FAILED):
            if code in present:
                return code
        return cls.OK

    @classmethod
    def for_error(cls, error: BaseException) -> ExitCode:
        if isinstance(error, KeyboardInterrupt):
            return cls.INTERRUPTED
        if isinstance(error, BadInput):
            return cls.BAD_INPUT
        return cls.HARNESS_FAILED


class HarnessError(Exception):
    """Base class: a one-paragraph, user-facing explanation."""


class BadInput(HarnessError):
    """Something the user passed is wrong; the message names it and the fix."""


class InfrastructureError(HarnessError):
    """The harness (make, QEMU, SSH, drgn) failed; not a verdict on the kernel."""


class SourceError(BadInput):
    """The kernel source is missing, unreadable or not a kernel tree."""


class SeriesError(BadInput):
    """A patch series or patch file is malformed or missing."""


class PatchApplyError(BadInput):
    """A patch does not apply; names the patch, the file and the hunk."""


class KconfigError(BadInput):
    """A fragment is malformed, an option does not exist or does not stick."""


class BuildError(InfrastructureError):
    """make failed; carries the first compiler errors and the log path."""


class VerifyError(InfrastructureError):
    """The built vmlinux is not what was asked for."""


class BuildOptionError(BadInput):
    """A build option (--base-config, --make-opt) that cannot be used as given."""


class CacheError(BadInput):
    """The cache directory is unusable (a path the user chose or the environment names)."""
