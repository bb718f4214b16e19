"""The command line: one module per command group (build, guests, checks, inspect), option parents
shared in `options`, and `main`, which maps errors to exit codes."""

from harness.cli.main import main

__all__ = ["main"]
