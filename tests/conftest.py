"""Shared helpers for the project's own tests (the numa-harness pytest plugin is loaded through its
entry point)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
