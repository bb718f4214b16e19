"""The process that owns a background guest (`numa-harness up`).

It boots the guest, reports `ready` (or the error) through a status file, registers the name,
and waits. SIGTERM/SIGINT (`numa-harness down`) or QEMU's exit end it; either way QEMU is shut
down and the name unregistered. QEMU carries PR_SET_PDEATHSIG, so even a SIGKILL of this
process takes QEMU with it: no guest outlives its supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from harness.cache import atomic_write_text
from harness.errors import HarnessError
from harness.guest.launch import LaunchRequest, make_guest
from harness.guest.registry import registry_dir


def main(argv: list[str]) -> int:
    request_file, status_file = Path(argv[0]), Path(argv[1])
    request = LaunchRequest.from_json(request_file.read_text())
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    registry = registry_dir(request.build.cache_root) / f"{request.name}.json"
    try:
        guest = make_guest(request)
        guest.boot()
    except (HarnessError, OSError) as err:
        atomic_write_text(status_file, json.dumps({"state": "failed", "error": str(err)}))
        return 1
    except BaseException as err:  # report anything, then die
        atomic_write_text(status_file, json.dumps({"state": "failed", "error": f"{type(err).__name__}: {err}"}))
        raise
    try:
        info = json.loads(guest.paths.info.read_text())
        info["supervisor_pid"] = os.getpid()
        info["boot_seconds"] = round(guest.boot_seconds, 2)
        atomic_write_text(guest.paths.info, json.dumps(info, indent=2))
        atomic_write_text(registry, json.dumps({"name": request.name, "info": str(guest.paths.info),
                                                "supervisor_pid": os.getpid()}))
        atomic_write_text(status_file, json.dumps({"state": "ready", "info": str(guest.paths.info)}))
        while not stop["now"] and guest.alive:
            time.sleep(0.2)
    finally:
        registry.unlink(missing_ok=True)
        guest.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
