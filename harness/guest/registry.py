"""Background guests by name (`numa-harness up`, `ssh`, `list`, `down`, `inspect`, `drgn`).

A guest started with `up` belongs to a supervisor process (harness.guest.supervisor) that
registers it as `<cache>/guests/NAME.json` once it is ready; the entry points at the guest's
`guest.json` (ports, run directory, QEMU pid). An entry whose supervisor is gone is stale and is
removed when the registry is read.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from harness.cache import ensure_dir, read_json
from harness.errors import BadInput, InfrastructureError
from harness.guest.launch import LaunchRequest
from harness.guest.procs import is_live_qemu, pid_alive
from harness.guest.view import AttachedGuest

GuestInfo = dict[str, object]
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}"


def registry_dir(cache_root: Path) -> Path:
    return ensure_dir(cache_root / "guests")


def live_guests(cache_root: Path) -> dict[str, GuestInfo]:
    """Registered guests whose supervisor is alive, by name (stale entries are removed)."""
    guests = {}
    for entry in sorted(registry_dir(cache_root).glob("*.json")):
        data = read_json(entry)
        pid = int(str(data.get("supervisor_pid", 0))) if data else 0
        if not data or not pid or not pid_alive(pid):
            entry.unlink(missing_ok=True)
            continue
        info = read_json(Path(str(data["info"])))
        if info is not None:
            guests[entry.stem] = info
    return guests


def attached(cache_root: Path, name: str) -> AttachedGuest:
    guests = live_guests(cache_root)
    if name not in guests:
        known = ", ".join(sorted(guests)) or "none"
        raise BadInput(f"No running guest named {name!r} (running: {known}). Start one with `numa-harness up --name {name}`.")
    return AttachedGuest(guests[name])


def new_name(cache_root: Path, wanted: str) -> str:
    """`wanted` (checked), or the first free guestN."""
    guests = live_guests(cache_root)
    name = wanted or next(f"guest{i}" for i in range(1, 1000) if f"guest{i}" not in guests)
    if not re.fullmatch(NAME_PATTERN, name):
        raise BadInput(f"--name {name!r}: use letters, digits, '.', '_' and '-' (up to 41 characters).")
    if name in guests:
        raise BadInput(f"A guest named {name!r} is already running. Pick another --name or `numa-harness down {name}`.")
    return name


def start_supervised(request: LaunchRequest, kernel_dir: Path) -> GuestInfo:
    """Hand a guest to a new supervisor process and wait until it is ready; its guest.json."""
    request = replace(request, kernel_dir=kernel_dir)
    work = Path(tempfile.mkdtemp(prefix=f"numa-harness-up-{request.name}-"))
    (work / "request.json").write_text(request.to_json())
    status_file = work / "status.json"
    with (work / "supervisor.log").open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "harness.guest.supervisor", str(work / "request.json"), str(status_file)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    deadline = time.monotonic() + request.boot_timeout + 60
    while time.monotonic() < deadline:
        status = read_json(status_file)
        if status and status.get("state") == "ready":
            return read_json(Path(str(status["info"]))) or {}
        if status and status.get("state") == "failed":
            raise InfrastructureError(str(status.get("error")))
        if supervisor.poll() is not None:
            raise InfrastructureError(f"The guest supervisor exited ({supervisor.returncode}); see {work / 'supervisor.log'}.")
        time.sleep(0.1)
    supervisor.terminate()
    raise InfrastructureError(f"The guest {request.name} did not come up in time; see {work / 'supervisor.log'}.")


def stop(info: GuestInfo, grace: float = 20.0) -> None:
    """Stop a registered guest: SIGTERM its supervisor (which shuts QEMU down), then SIGKILL what
    is left. PIDs are reused after a crash, so a pid is signalled only while it is still this
    guest's: the supervisor while its registry entry names it, QEMU while it is a QEMU process
    whose command line carries this guest's run directory."""
    supervisor = int(str(info.get("supervisor_pid", 0)))
    qemu = int(str(info.get("qemu_pid", 0)))
    run_dir = str(info.get("run_dir", ""))

    def still_qemu() -> bool:
        return is_live_qemu(qemu) and bool(run_dir) and run_dir.encode() in _cmdline(qemu)

    def still_supervisor() -> bool:
        return pid_alive(supervisor) and b"harness.guest.supervisor" in _cmdline(supervisor)

    if still_supervisor():
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (still_supervisor() or still_qemu()):
        time.sleep(0.1)
    if still_supervisor():
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGKILL)
    if still_qemu():
        with contextlib.suppress(ProcessLookupError):
            os.kill(qemu, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
