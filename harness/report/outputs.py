"""The report files every ci run (sharded or merged) writes into its output directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text
from harness.report.html import write_html
from harness.report.junit import write_ci_junit


def write_outputs(summary: dict[str, Any], directory: Path) -> None:
    atomic_write_text(directory / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_ci_junit(directory / "junit.xml", summary)
    write_html(directory / "report.html", summary)
