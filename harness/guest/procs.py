"""Process facts about the guests' QEMUs, shared by the registry, the supervisor and the pytest plugin."""

from __future__ import annotations

from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def is_live_qemu(pid: int) -> bool:
    """A live QEMU process (the pid may have been reused by something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"qemu-system" in cmdline and pid_alive(pid)


def booted_from(directory: Path) -> bool:
    """Whether a live QEMU on this machine was started with a file under `directory` (its
    -kernel, -initrd, ... name it): a kernel cache entry in use."""
    needle = str(directory.resolve()).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and needle in cmdline and pid_alive(int(proc.name)):
            return True
    return False
