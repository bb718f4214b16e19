"""A running guest as any process sees it: its run directory, QMP, serial console log, kernel-bug
reports and SSH. `Guest` (harness.guest.qemu) is one this process started and owns;
`AttachedGuest` is one found by name in the registry (`numa-harness up`)."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import drgn

from harness.errors import InfrastructureError
from harness.guest.crash import KernelBug, find_bugs
from harness.guest.spent import TimeSpent
from harness.guest.ssh import SshSession


class VmError(InfrastructureError):
    """QEMU or the guest misbehaved."""


@dataclass(frozen=True)
class RunPaths:
    directory: Path

    @property
    def qmp(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def drgn_qmp(self) -> Path:
        """A second QMP socket for drgn: QMP serves one client per socket."""
        return self.directory / "qmp-drgn.sock"

    @property
    def console(self) -> Path:
        return self.directory / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def info(self) -> Path:
        return self.directory / "guest.json"


class GuestView:
    """What any process can do with a running guest: SSH, QMP, console, crash reports.

    `Guest` owns a QEMU it started; `AttachedGuest` is a guest found by name (`numa-harness up`)."""

    paths: RunPaths
    ssh_port: int
    host_key: str
    identity_file: Path
    _ssh: SshSession | None
    _bug_cursor: int
    # The one drgn Program attached to this guest (harness.inspect.attach); a class-level default.
    _drgn_program: drgn.Program | None = None

    @property
    def vmlinux(self) -> Path | None:
        """The booted kernel's vmlinux (debug info for drgn), when the harness built it."""
        return None

    # -- QMP -----------------------------------------------------------------------------------

    def qmp_command(self, command: str, **arguments: object) -> object:
        """Run one QMP command and return its `return` value (qemu.qmp raises on QMP errors)."""
        from qemu.qmp import ConnectError
        from qemu.qmp.legacy import QEMUMonitorProtocol

        qmp = QEMUMonitorProtocol(str(self.paths.qmp))
        try:
            qmp.connect()
        except (OSError, ConnectError) as err:  # ConnectError: QEMU closed the socket as it exited
            raise VmError(f"Cannot reach the guest's QMP socket {self.paths.qmp}: {err}. Is the guest still up?") from err
        try:
            return qmp.cmd(command, **arguments) if arguments else qmp.cmd(command)
        finally:
            qmp.close()

    def pause(self) -> None:
        self.qmp_command("stop")

    def resume(self) -> None:
        self.qmp_command("cont")

    def running(self) -> bool:
        status = self.qmp_command("query-status")
        if not isinstance(status, dict) or "running" not in status:
            raise VmError(f"Unexpected answer to QMP query-status: {status!r}")
        return bool(status["running"])

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The guest's vCPUs stopped for the duration (consistent snapshots), resumed also on error."""
        with self.spent.paused.timing():
            self.pause()
            try:
                yield
            finally:
                self.resume()

    @functools.cached_property
    def spent(self) -> TimeSpent:
        """Where the harness's time with this guest went: pauses, SSH commands, stream waits."""
        return TimeSpent()

    # -- console and crashes -----------------------------------------------------------------

    def console_text(self) -> str:
        try:
            return self.paths.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 25) -> str:
        text = self.console_text().splitlines()[-lines:]
        return "\n".join("  | " + line.rstrip("\r") for line in text) or "  | (the guest printed nothing)"

    def bugs(self) -> list[KernelBug]:
        return find_bugs(self.console_text())

    def mark_bugs_seen(self) -> None:
        self._bug_cursor = len(self.bugs())

    def pending_bugs(self) -> list[KernelBug]:
        """Bugs logged since the previous new_bugs()/mark_bugs_seen(), without consuming them:
        a waiting loop uses this to stop waiting on a kernel that has already locked up."""
        return self.bugs()[self._bug_cursor:]

    def new_bugs(self) -> list[KernelBug]:
        """Bugs logged since the previous call (tests use this to fail on what happened during them)."""
        bugs = self.bugs()
        fresh = bugs[self._bug_cursor:]
        self._bug_cursor = len(bugs)
        return fresh

    # -- SSH -----------------------------------------------------------------------------------

    @property
    def ssh(self) -> SshSession:
        if self._ssh is None:
            self._ssh = SshSession.open(self.ssh_port, self.host_key, self.identity_file, time.monotonic() + 30,
                                        spent=self.spent)
        return self._ssh

    def close_ssh(self) -> None:
        if self._ssh is not None:
            with contextlib.suppress(Exception):
                self._ssh.close()
            self._ssh = None


class AttachedGuest(GuestView):
    """A running guest found through its guest.json (started by `numa-harness up`)."""

    def __init__(self, info: dict[str, object]) -> None:
        self.info = info
        self.paths = RunPaths(Path(str(info["run_dir"])))
        self.ssh_port = int(str(info["ssh_port"]))
        self.host_key = str(info["host_key"])
        self.identity_file = Path(str(info["identity"]))
        self.name = str(info.get("name", ""))
        self._ssh = None
        self._bug_cursor = 0

    @property
    def vmlinux(self) -> Path | None:
        value = self.info.get("vmlinux")
        return Path(str(value)) if value else None
