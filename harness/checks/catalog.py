"""Every check, registered in the order they run: importing this module imports each family.

The families are listed once, here, in run order (cheap and fundamental first, the long
convergence runs last); each check's name is written once, in its module's `@check`.
"""

from __future__ import annotations

import importlib

from harness.checks.registry import CHECKS, Check

FAMILIES = ("scanner", "faults", "earlyscan", "largefolio", "sharing", "refusal", "placement", "taskplacement", "convergence")

for _family in FAMILIES:
    importlib.import_module(f"harness.checks.{_family}")

__all__ = ["CHECKS", "FAMILIES", "Check"]
