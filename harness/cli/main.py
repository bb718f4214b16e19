"""`numa-harness`: parse (harness.cli.parser), refuse what the command line alone shows is wrong,
then import and run the command; the one place where an exception becomes an exit status
(`ExitCode.for_error`)."""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable, Sequence

from harness.cli.parser import make_parser, validate_early
from harness.errors import ExitCode, HarnessError


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)  # argparse itself exits 2 on a malformed command line
    try:
        validate_early(args)
        module, _, function = str(args.command).partition(":")
        command: Callable[..., int] = getattr(importlib.import_module(module), function)
        return int(command(args))
    except HarnessError as err:
        print(f"numa-harness: error: {err}", file=sys.stderr)
        return ExitCode.for_error(err)
    except KeyboardInterrupt as err:
        print("numa-harness: interrupted", file=sys.stderr)
        return ExitCode.for_error(err)
    except Exception as err:
        # A bug in the harness: never exit 1, which says "a check failed" to CI and bisect.
        traceback.print_exc()
        print(f"numa-harness: internal error: {type(err).__name__}: {err} (a harness bug: the kernel was not "
              f"judged)", file=sys.stderr)
        return ExitCode.HARNESS_FAILED
