"""Every user task's NUMA-balancing state, one line each.

    numa-harness drgn NAME harness/examples/numa_tasks.py

Runs inside `numa-harness drgn`, which provides `prog` (the live guest) and `nh`
(harness.inspect); reads the guest paused, so the lines are one consistent moment.
"""

from typing import Any

from drgn import Program
from drgn.helpers.linux.pid import for_each_task

from harness import inspect as nh

# `numa-harness drgn NAME SCRIPT` runs this with the live guest's drgn Program and the guest.
prog: Program = globals()["prog"]
guest: Any = globals()["guest"]

guest.pause()
try:
    print(f"{'pid':>6} {'comm':16} {'cpu':>3} {'pref':>4} {'seq':>4} {'period':>7} {'migrated':>8}  mem faults per node")
    for task in for_each_task(prog):
        if not task.mm:
            continue
        state = nh.read_task(prog, task.pid.value_())
        faults = " ".join(f"{s}+{p}" for s, p in state.faults["mem"])
        print(f"{state.pid:>6} {state.comm:16} {state.cpu:>3} {state.numa_preferred_nid:>4} {state.numa_scan_seq:>4} "
              f"{state.numa_scan_period:>7} {state.numa_pages_migrated:>8}  {faults}")
finally:
    guest.resume()
