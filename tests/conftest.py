"""Shared helpers for the project's own tests (the numa-harness pytest plugin is loaded through its
entry point)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"


def process_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
