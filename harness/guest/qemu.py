"""The QEMU process: argv, accelerator choice, boot, readiness, crash detection and shutdown.

Every QEMU started here gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the process that
started it, whatever happens to that process; `Guest` is also a context manager whose exit
always tears QEMU down (poweroff over SSH, then QMP `quit`, then SIGKILL), after QEMU's
`python/qemu/machine` (soft shutdown first, hard kill after, always-clean post-shutdown).

The serial console is a unix-socket chardev with QEMU's own `logfile=`: QEMU writes every byte
the guest prints to console.log whether or not anybody is attached, so no crash is lost; the
harness reads the ready marker from that file, and `numa-harness console` attaches to the
socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pexpect
from qemu.qmp import QMPError

from harness.cache import atomic_write_text, ensure_dir
from harness.guest.image import SshIdentity
from harness.guest.snapshot import RUN_DIR_PLACEHOLDER, TOKEN_PLACEHOLDER, Snapshot, SnapshotStore, snapshot_key
from harness.guest.ssh import SshSession
from harness.guest.topology import GUEST_PROBE, ObservedNode, Topology, TopologyMismatch, compare, parse_guest_probe
from harness.guest.view import GuestView, RunPaths, VmError

QEMU = "qemu-system-x86_64"
READY_PREFIX = "numa-harness: ready "
_PR_SET_PDEATHSIG = 1


class VmLaunchError(VmError):
    """QEMU exited before the guest was up (bad arguments, missing firmware, a boot panic)."""


class BootTimeout(VmError):
    """The guest did not report ready in time."""


@dataclass(frozen=True)
class VmConfig:
    kernel: Path  # bzImage
    initramfs: Path
    topology: Topology
    accel: str = "auto"  # auto | kvm | tcg
    cmdline_extra: tuple[str, ...] = ()
    boot_timeout: float = 120.0
    name: str = ""
    host_key: str = ""
    vmlinux: Path | None = None
    kernel_dir: Path | None = None
    # Restore the guest from a snapshot taken at an earlier boot's ready marker when one exists,
    # else boot and save one (harness.guest.snapshot).
    snapshot: bool = False


def qemu_argv(config: VmConfig, paths: RunPaths, accel: str, ssh_port: int, token: str) -> list[str]:
    """The whole QEMU command line (pure: unit-tested, and printed by --show-command)."""
    # Under TCG, -cpu max gives the guest LA57 (5-level paging), which the page-table walker handles.
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    cmdline = [
        "console=ttyS0,115200",
        # Die instead of hanging on panic; with -no-reboot QEMU then exits and the panic is reported.
        "panic=-1",
        # Mitigations cost a lot under TCG and do not change NUMA balancing.
        "mitigations=off",
        f"nh_token={token}",
        f"nh_hostname={config.name or 'numa-guest'}",
        *config.cmdline_extra,
    ]
    return [
        QEMU,
        "-name", f"numa-harness-{config.name or 'guest'}",
        "-machine", "pc",
        *accel_args,
        *config.topology.qemu_args(),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(config.kernel),
        "-initrd", str(config.initramfs),
        "-append", " ".join(cmdline),
        "-chardev", f"socket,id=nh-console,path={paths.console},server=on,wait=off,"
        # logappend: a restored guest's console log starts with the boot its snapshot recorded.
        f"logfile={paths.console_log},logappend=on",
        "-serial", "chardev:nh-console",
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
        "-qmp", f"unix:{paths.drgn_qmp},server=on,wait=off",
        # vmcoreinfo through fw_cfg: how drgn finds the live kernel (guest CONFIG_FW_CFG_SYSFS).
        "-device", "vmcoreinfo",
        "-netdev", f"user,id=nh-net,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=nh-net",
        "-pidfile", str(paths.pidfile),
    ]


# QEMU starts that lost their SSH port to another process before a guest is given up on.
PORT_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL) for the calling process: the kernel kills it when the thread
    that started it exits (a preexec_fn for QEMU; also the first call of the harness's own
    child processes, harness.checks.parallel)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def choose_accel(requested: str, cache_root: Path, probe_kernel: Path | None = None) -> str:
    """`kvm` or `tcg`. `auto` probes KVM once per machine (a boot that must print the kernel
    banner within 10 s; nested KVM here hangs in the firmware) and remembers the answer."""
    if requested in ("kvm", "tcg"):
        return requested
    if requested != "auto":
        raise VmError(f"--accel {requested}: expected auto, kvm or tcg.")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    qemu_version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    memo = cache_root / "accel-probe.json"
    key = f"{os.uname().release} {qemu_version}"
    try:
        remembered = json.loads(memo.read_text())
        if remembered.get("key") == key:
            return str(remembered["accel"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        pass
    accel = "kvm" if probe_kernel is not None and _kvm_boots(probe_kernel) else "tcg"
    ensure_dir(cache_root)
    atomic_write_text(memo, json.dumps({"key": key, "accel": accel}))
    return accel


def _kvm_boots(kernel: Path, timeout: float = 10.0) -> bool:
    argv = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256M", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
            "-serial", "stdio"]
    try:
        child = pexpect.spawn(argv[0], argv[1:], timeout=timeout, encoding="utf-8", codec_errors="replace",
                              preexec_fn=die_with_parent)
    except pexpect.ExceptionPexpect:
        return False
    try:
        return bool(child.expect(["Linux version", pexpect.TIMEOUT, pexpect.EOF]) == 0)
    finally:
        child.terminate(force=True)


@dataclass
class Guest(GuestView):
    """A booted guest. Use as a context manager; `boot()` returns once SSH answers."""

    config: VmConfig
    identity: SshIdentity
    cache_root: Path
    run_root: Path | None = None
    accel: str = ""
    ssh_port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    process: subprocess.Popen[bytes] | None = None
    paths: RunPaths = field(init=False)
    boot_seconds: float = 0.0
    _bug_cursor: int = 0
    _ssh: SshSession | None = None
    observed_nodes: list[ObservedNode] = field(default_factory=list)
    # Whether this boot was a snapshot restore, and what happened to snapshots on the way.
    restored: bool = False
    snapshot_note: str = ""

    def __post_init__(self) -> None:
        self.host_key = self.config.host_key
        self.identity_file = self.identity.private_key
        base = ensure_dir(self.run_root or self.cache_root / "run")
        directory = Path(tempfile.mkdtemp(dir=base, prefix=f"{self.config.name or 'guest'}-"))
        os.chmod(directory, 0o700)
        self.paths = RunPaths(directory)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Guest:
        try:
            self.boot()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()

    def argv(self) -> list[str]:
        return qemu_argv(self.config, self.paths, self.accel or "tcg", self.ssh_port or 0, self.token)

    def boot(self) -> None:
        """Start QEMU and wait for the guest's first SSH command. The SSH port is one the host's
        kernel just handed out (free_port); another process may take it before QEMU binds it
        (two guests started at once), and QEMU then exits at once: start again on another port,
        up to PORT_ATTEMPTS times."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._boot_once()
                return
            except (VmError, OSError):
                if attempt == PORT_ATTEMPTS or not self._lost_port_race():
                    raise
                self.close_ssh()
                self.process = None
                # console.log too: QEMU appends to it (logappend), and this start is a new boot.
                for stale in (self.paths.console, self.paths.qmp, self.paths.drgn_qmp, self.paths.console_log):
                    stale.unlink(missing_ok=True)

    def _lost_port_race(self) -> bool:
        if self.process is None:
            return False
        # A QEMU that lost its port exits at once; the error that got here (an SSH connection
        # refused, say) may have come while it was still on its way out.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=2)
        if self.process.poll() is None:
            return False
        stderr = (self.paths.directory / "qemu.stderr").read_text(errors="replace")
        return "Could not set up host forwarding rule" in stderr

    def _boot_once(self) -> None:
        started = time.monotonic()
        self.accel = choose_accel(self.config.accel, self.cache_root, self.config.kernel)
        slot = self._snapshot_slot()
        if slot is not None:
            store, key = slot
            saved = store.lookup(key)
            if saved is not None:
                try:
                    self._restore(saved, started)
                    self.snapshot_note = f"restored from snapshot {key}"
                    return
                except VmError as err:
                    if self._lost_port_race():
                        raise  # boot() retries on another port; the snapshot is fine
                    # A stream QEMU cannot load (a truncated file, a QEMU that changed under the
                    # same version string): drop it and boot; this boot saves a new one.
                    store.discard(key)
                    self._discard_failed_start("restore")
                    self.snapshot_note = f"snapshot {key} did not restore ({str(err).splitlines()[0]}); booted"
                    started = time.monotonic()
        self._boot_fresh(started, slot)

    def _snapshot_slot(self) -> tuple[SnapshotStore, str] | None:
        if not self.config.snapshot:
            return None
        template = qemu_argv(self.config, RunPaths(RUN_DIR_PLACEHOLDER), self.accel, 0, TOKEN_PLACEHOLDER)
        key = snapshot_key(template, self.config.kernel, self.config.initramfs, QEMU, self.cache_root)
        return SnapshotStore(self.cache_root / "snapshots"), key

    def _start_qemu(self, extra: list[str]) -> None:
        self.ssh_port = free_port()
        argv = self.argv() + extra
        (self.paths.directory / "qemu.argv").write_text(json.dumps(argv))
        stderr = (self.paths.directory / "qemu.stderr").open("wb")
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, preexec_fn=die_with_parent,
        )
        self._write_info()

    def _boot_fresh(self, started: float, slot: tuple[SnapshotStore, str] | None) -> None:
        self._start_qemu([])
        self._wait_ready(started)
        saved: tuple[Path, Path] | None = None
        if slot is not None:
            saved = self._save(slot[0].staging_file(slot[1]), started + self.config.boot_timeout)
        try:
            self._connect_and_probe(started)
            if slot is not None and saved is not None:
                # Only a guest that came up as asked for becomes a snapshot.
                slot[0].commit(slot[1], saved[0], saved[1], self.token)
                self.snapshot_note = "; ".join(filter(None, (self.snapshot_note, f"saved as snapshot {slot[1]}")))
        finally:
            if saved is not None:
                for leftover in saved:
                    leftover.unlink(missing_ok=True)

    def _save(self, stream: Path, deadline: float) -> tuple[Path, Path] | None:
        """Save the guest, stopped at its ready marker before any SSH connection (so the stream
        holds no TCP state a restored guest would have to drop), to `stream`, and resume it; the
        stream and a copy of the boot's console log, or None (with the reason in snapshot_note)
        when QEMU could not migrate: the guest then simply runs without a snapshot."""
        console_copy = stream.with_suffix(".console")
        self.qmp_command("stop")
        try:
            try:
                # The default limit (32 MiB/s in QEMU 7.2) would make a 2 GiB guest's stream take
                # seconds; its zero pages cost nothing, so let the rest go at disk speed.
                self.qmp_command("migrate-set-parameters", **{"max-bandwidth": 10 << 30})
                self.qmp_command("migrate", uri=f"exec:cat > {shlex.quote(str(stream))}")
            except QMPError as err:  # e.g. a device that blocks migration
                self.snapshot_note = f"no snapshot saved: QEMU refused to migrate ({err})"
                stream.unlink(missing_ok=True)
                return None
            while True:
                state = self.qmp_command("query-migrate")
                status = state.get("status") if isinstance(state, dict) else None
                if status == "completed":
                    break
                if status in ("failed", "cancelled") or time.monotonic() > deadline:
                    reason = state.get("error-desc", status) if isinstance(state, dict) else status
                    self.snapshot_note = f"no snapshot saved: QEMU's migration {reason or 'timed out'}"
                    with contextlib.suppress(QMPError):
                        self.qmp_command("migrate_cancel")
                    stream.unlink(missing_ok=True)
                    return None
                self._check_alive("while its snapshot was saved")
                time.sleep(0.01)
            if self.paths.console_log.exists():
                shutil.copyfile(self.paths.console_log, console_copy)
            return stream, console_copy
        finally:
            if self.alive:
                self.qmp_command("cont")

    def _restore(self, saved: Snapshot, started: float) -> None:
        """Start QEMU on the snapshot's stream and resume the guest where it was saved."""
        # The guest keeps the token it booted with (it is in its /proc/cmdline); the rest of
        # the command line is this guest's (the key says it is the same bar paths and port).
        self.token = saved.token
        shutil.copyfile(saved.console_log, self.paths.console_log)
        self._start_qemu(["-incoming", f"exec:cat {shlex.quote(str(saved.state))}"])
        deadline = started + self.config.boot_timeout
        while True:
            self._check_alive("while it loaded its snapshot")
            if time.monotonic() > deadline:
                self._boot_timeout()
            status = None
            if self.paths.qmp.exists():
                with contextlib.suppress(VmError, OSError):
                    state = self.qmp_command("query-status")
                    status = state.get("status") if isinstance(state, dict) else None
            # "inmigrate" while the stream loads; the saved guest was stopped, so it lands paused.
            if status in ("paused", "running"):
                break
            time.sleep(0.01)
        self.qmp_command("cont")
        # The guest's clock stood still from the save to now: set it, before anything runs.
        self._connect_and_probe(started, prefix=f"date -s @{int(time.time())} >/dev/null && ")
        self.restored = True

    def _discard_failed_start(self, what: str) -> None:
        """Tear down a QEMU that failed to start, keeping its stderr, for the next start."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close_ssh()
        self.process = None
        stderr = self.paths.directory / "qemu.stderr"
        if stderr.exists():
            os.replace(stderr, self.paths.directory / f"qemu-{what}.stderr")
        for stale in (self.paths.console, self.paths.qmp, self.paths.drgn_qmp, self.paths.console_log):
            stale.unlink(missing_ok=True)

    def _connect_and_probe(self, started: float, prefix: str = "") -> None:
        session = SshSession.open(self.ssh_port, self.config.host_key, self.identity.private_key,
                                  started + self.config.boot_timeout,
                                  alive=lambda: self._check_alive("while SSH was connecting"), spent=self.spent)
        self._ssh = session
        probe = session.run(prefix + GUEST_PROBE, timeout=30)
        if probe.exit_status != 0:
            raise VmLaunchError(f"The guest's first SSH command failed: {probe.stderr.strip()}")
        self.boot_seconds = time.monotonic() - started
        online, observed = parse_guest_probe(probe.stdout)
        problems = compare(self.config.topology, online, observed)
        if problems:
            raise TopologyMismatch(
                f"The guest does not see the NUMA machine that was asked for: {'; '.join(problems)}. "
                f"Asked for: {self.config.topology.describe()}. Check that the kernel has CONFIG_NUMA and "
                f"CONFIG_ACPI_NUMA and that nothing on its command line (numa=off) disables NUMA."
            )
        self.observed_nodes = observed

    def _wait_ready(self, started: float) -> None:
        """Wait for init's ready marker with this boot's token in console.log, the file QEMU
        writes whether or not anybody reads it (nothing printed before the host looks is lost).
        init writes the marker through /dev/kmsg, so it is a kernel record: a record is written
        to the UART whole, under the port lock (8250_port.c:serial8250_console_write), and no
        other record or tty output lands inside it. A plain echo to the console once had a
        printk land in the middle (CI: "numa-harness: re[ 1.95] input: ...\nady TOKEN")."""
        deadline = started + self.config.boot_timeout
        marker = (READY_PREFIX + self.token).encode()
        offset, tail = 0, b""  # how far console.log has been read; its last bytes, for a cut marker
        while True:
            try:
                with self.paths.console_log.open("rb") as stream:
                    stream.seek(offset)
                    text = tail + stream.read()
            except FileNotFoundError:
                text = tail
            if marker in text:
                return
            offset, tail = offset + len(text) - len(tail), text[-len(marker):]
            self._check_alive("during boot")
            if time.monotonic() > deadline:
                self._boot_timeout()
            time.sleep(0.02)

    def _check_alive(self, when: str) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        stderr = (self.paths.directory / "qemu.stderr").read_text(errors="replace").strip()
        bugs = self.bugs()
        crash = f" The kernel reported: {bugs[0].title}." if bugs else ""
        raise VmLaunchError(
            f"QEMU exited {when} (status {self.process.returncode}).{crash} "
            f"{('QEMU said: ' + stderr[-600:] + '. ') if stderr else ''}"
            f"Last console lines:\n{self.console_tail()}\nConsole log: {self.paths.console_log}"
        )

    def _boot_timeout(self) -> None:
        bugs = self.bugs()
        crash = f" The kernel reported: {bugs[0].title}." if bugs else ""
        raise BootTimeout(
            f"The guest did not report ready within {self.config.boot_timeout:.0f} s "
            f"(accelerator {self.accel}).{crash} Last console lines:\n{self.console_tail()}\n"
            f"Console log: {self.paths.console_log}. A kernel that hangs at boot, a wrong init= "
            f"or a too-short --boot-timeout under TCG are the usual causes."
        )

    def _write_info(self) -> None:
        assert self.process is not None
        info = {
            "name": self.config.name,
            "qemu_pid": self.process.pid,
            "harness_pid": os.getpid(),
            "ssh_port": self.ssh_port,
            "accel": self.accel,
            "token": self.token,
            "host_key": self.config.host_key,
            "identity": str(self.identity.private_key),
            "run_dir": str(self.paths.directory),
            "qmp": str(self.paths.qmp),
            "drgn_qmp": str(self.paths.drgn_qmp),
            "console": str(self.paths.console),
            "console_log": str(self.paths.console_log),
            "kernel": str(self.config.kernel),
            "vmlinux": str(self.config.vmlinux) if self.config.vmlinux else None,
            "kernel_dir": str(self.config.kernel_dir) if self.config.kernel_dir else None,
            "topology": self.config.topology.describe(),
            "snapshot": self.snapshot_note or None,
        }
        atomic_write_text(self.paths.info, json.dumps(info, indent=2))

    @property
    def vmlinux(self) -> Path | None:
        return self.config.vmlinux

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def shutdown(self, timeout: float = 10.0) -> None:
        """poweroff over SSH, then QMP quit, then SIGKILL; always reaps QEMU."""
        if self.process is None:
            return
        if self.process.poll() is None and self._ssh is not None:
            with contextlib.suppress(Exception):
                self._ssh.poweroff()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout / 2)
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.qmp_command("quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout / 2)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close_ssh()

    def remove_run_dir(self) -> None:
        shutil.rmtree(self.paths.directory, ignore_errors=True)
