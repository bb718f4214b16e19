"""`numa-harness`: the parser made from each command group's `register`, and `main`, the one place
where an exception becomes an exit status (`ExitCode.for_error`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness import __version__
from harness.cli import build, cache, checks, guests, inspect
from harness.errors import ExitCode, HarnessError

GROUPS = (build, guests, checks, inspect, cache)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numa-harness",
                                     description="Build, boot and cross-check Linux NUMA balancing on a real kernel.")
    parser.add_argument("--version", action="version", version=f"numa-harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)  # argparse itself exits 2 on a malformed command line
    try:
        return int(args.func(args))
    except HarnessError as err:
        print(f"numa-harness: error: {err}", file=sys.stderr)
        return ExitCode.for_error(err)
    except KeyboardInterrupt as err:
        print("numa-harness: interrupted", file=sys.stderr)
        return ExitCode.for_error(err)
