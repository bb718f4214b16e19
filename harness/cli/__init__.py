"""The command line: one module per command group, `main` maps errors to exit codes."""

from harness.cli.main import main

__all__ = ["main"]
