"""Every check, registered in the order they run: importing this module imports each family.

The families are listed once, here, in run order (cheap and fundamental first, the long
convergence runs last); each check's name is written once, in its module's `@check`.
"""

from __future__ import annotations

import importlib

from harness.checks.registry import CHECKS, Check

FAMILIES = ("scanner", "scantiming", "faults", "migratefilter", "largefolio", "sharing", "refusal", "placement",
            "taskplacement", "numagroup", "numagroupshared", "convergence")

for _family in FAMILIES:
    importlib.import_module(f"harness.checks.{_family}")

# Run order is family order, then each module's own order, whichever module was imported first
# (a family may import another, and a test may import one before this catalog).
_FAMILY_INDEX = {f"harness.checks.{family}": index for index, family in enumerate(FAMILIES)}
_ordered = sorted(CHECKS.values(), key=lambda c: _FAMILY_INDEX.get(c.run.__module__, len(FAMILIES)))
CHECKS.clear()
CHECKS.update((c.name, c) for c in _ordered)

__all__ = ["CHECKS", "FAMILIES", "Check"]
