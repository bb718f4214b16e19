"""Booted guests for real: topologies, commands, crashes, timeouts, and QEMU lifetimes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import process_running

from harness.guest.launch import LaunchRequest, make_guest
from harness.guest.qemu import READY_PREFIX, BootTimeout, Guest
from harness.guest.ssh import CommandTimeout
from harness.guest.view import GuestView
from harness.kernel.pipeline import BuildRequest, KernelArtifact

pytestmark = [pytest.mark.kernel, pytest.mark.guest]
DATA = Path(__file__).parent / "data"
CLI = [sys.executable, "-m", "harness.cli"]


def _nodes(view: GuestView) -> dict[str, str]:
    out = view.ssh.run("cd /sys/devices/system/node && for n in node*; do echo $n $(cat $n/cpulist); done").check()
    return dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())


def test_session_guest_is_the_2x2_machine(guest: GuestView) -> None:
    assert guest.ssh.run("cat /sys/devices/system/node/online").check().stdout == "0-1\n"
    assert _nodes(guest) == {"node0": "0-1", "node1": "2-3"}
    assert guest.ssh.run("cat /proc/sys/kernel/numa_balancing").check().stdout.strip() == "1"
    distance = guest.ssh.run("cat /sys/devices/system/node/node1/distance").check().stdout.split()
    assert distance == ["20", "10"]
    # The counters the cross-checks compare exist (CONFIG_VM_EVENT_COUNTERS).
    vmstat = dict(line.split() for line in guest.ssh.run("cat /proc/vmstat").check().stdout.splitlines())
    for counter in ("numa_pte_updates", "numa_huge_pte_updates", "numa_hint_faults", "numa_hint_faults_local",
                    "numa_pages_migrated", "pgmigrate_success"):
        assert counter in vmstat, counter


def test_4x1_topology(guest_factory: Callable[..., Guest]) -> None:
    booted = guest_factory(topology="4x1")
    assert booted.ssh.run("cat /sys/devices/system/node/online").check().stdout == "0-3\n"
    assert _nodes(booted) == {f"node{i}": str(i) for i in range(4)}
    assert [n.memory_kb // 1024 > 400 for n in booted.observed_nodes] == [True] * 4


def test_a_guest_whose_ssh_port_was_taken_starts_again_on_another(guest_factory: Callable[..., Guest],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two guests starting at once can be handed the same free port: the one whose QEMU loses the
    bind starts again on a fresh port instead of failing. Here the port is really taken."""
    import socket

    from harness.guest import qemu

    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    handed: list[int] = []
    real_free_port = qemu.free_port

    def first_a_taken_port() -> int:
        handed.append(taken.getsockname()[1] if not handed else real_free_port())
        return handed[-1]

    monkeypatch.setattr(qemu, "free_port", first_a_taken_port)
    try:
        booted = guest_factory()
    finally:
        taken.close()
    assert len(handed) == 2 and booted.ssh_port == handed[1] != handed[0]
    assert booted.ssh.run("echo up").check().stdout == "up\n"


def test_memoryless_node_topology(guest_factory: Callable[..., Guest]) -> None:
    booted = guest_factory(topology=str(DATA / "topology/memoryless.toml"))
    observed = {n.node: n for n in booted.observed_nodes}
    assert observed[2].cpus == (4, 5) and observed[2].memory_kb == 0
    assert observed[2].distances == (30, 30, 10)
    meminfo = booted.ssh.run("grep MemTotal /sys/devices/system/node/node2/meminfo").check().stdout
    assert meminfo.split()[-2] == "0"


def test_exit_status_and_streams_round_trip(guest: GuestView) -> None:
    result = guest.ssh.run("sh -c 'echo to-out; echo to-err >&2; exit 7'")
    assert (result.exit_status, result.stdout, result.stderr) == (7, "to-out\n", "to-err\n")
    assert guest.ssh.run(["printf", "%s|", "a b", "c'd"]).stdout == "a b|c'd|"


def test_kernel_messages_stay_out_of_command_output(guest: GuestView) -> None:
    result = guest.ssh.run("echo numa-harness-kmsg-probe > /dev/kmsg; echo done").check()
    assert result.stdout == "done\n"
    deadline = time.monotonic() + 5
    while "numa-harness-kmsg-probe" not in guest.console_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "numa-harness-kmsg-probe" in guest.console_text()


def test_put_and_get_files(guest: GuestView) -> None:
    payload = bytes(range(256)) * 4096
    guest.ssh.put(payload, "/tmp/payload.bin", mode=0o600)
    assert guest.ssh.get("/tmp/payload.bin") == payload
    assert guest.ssh.run("stat -c %a /tmp/payload.bin").check().stdout.strip() == "600"


def test_command_timeout_carries_partial_output(guest: GuestView) -> None:
    with pytest.raises(CommandTimeout) as info:
        guest.ssh.run("echo started; sleep 30", timeout=2)
    assert info.value.stdout == "started\n"
    assert "did not finish within 2 s" in str(info.value)
    assert guest.ssh.run("echo still-usable").check().stdout == "still-usable\n"


def _uptime(guest: GuestView) -> float:
    return float(guest.ssh.run("cat /proc/uptime").check().stdout.split()[0])


def test_pause_really_pauses(guest: GuestView) -> None:
    """While paused the guest's own clock stands still (QEMU stops the virtual clock and the TSC
    with the vCPUs): held paused for a second of host time, the guest sees less than half of it
    pass between two commands that bracket the pause."""
    before = _uptime(guest)
    host_before = time.monotonic()
    with guest.paused():
        assert guest.running() is False
        resume_at = host_before + 1.0
        while time.monotonic() < resume_at:
            assert guest.running() is False
    assert guest.running() is True
    guest_seconds = _uptime(guest) - before
    host_seconds = time.monotonic() - host_before
    assert guest_seconds < host_seconds - 0.5, (guest_seconds, host_seconds)


@pytest.mark.expect_kernel_bug
def test_sysrq_crash_is_detected_and_titled(guest_factory: Callable[..., Guest]) -> None:
    booted = guest_factory()
    booted.ssh.run("echo c > /proc/sysrq-trigger", timeout=10)
    assert booted.process is not None
    booted.process.wait(timeout=30)  # panic=-1 and -no-reboot: QEMU exits
    titles = [bug.title for bug in booted.bugs()]
    assert titles == ["Kernel panic - not syncing: sysrq triggered crash"]
    assert "sysrq_handle_crash" in booted.bugs()[0].report


@pytest.mark.parametrize("cmdline", [(), ("quiet",), ("loglevel=1",)], ids=["default", "quiet", "loglevel-1"])
def test_the_ready_marker_is_a_kernel_record_the_console_prints(guest_factory: Callable[..., Guest],
                                                                cmdline: tuple[str, ...]) -> None:
    """An echo of the marker to the console once had a printk land inside it ("numa-harness:
    re[ 1.95] input: ...ady TOKEN", in CI) and the host waited out its boot timeout. Written
    through /dev/kmsg it is a record of its own line, at a level the console prints whatever
    loglevel the command line sets."""
    booted = guest_factory(cmdline=cmdline, snapshot=False)
    lines = booted.paths.console_log.read_text(errors="replace").splitlines()
    record = re.compile(r"\[\s*\d+\.\d+\] " + re.escape(READY_PREFIX + booted.token) + r"\r?")
    assert [line for line in lines if READY_PREFIX in line and record.fullmatch(line)] == \
        [line for line in lines if READY_PREFIX in line], lines[-20:]
    assert any(record.fullmatch(line) for line in lines)


def test_boot_that_cannot_finish_times_out_with_console_tail(guest_factory: Callable[..., Guest]) -> None:
    # /init replaced by cat: the kernel boots, but the ready marker never comes.
    with pytest.raises(BootTimeout) as info:
        guest_factory(cmdline=("rdinit=/bin/cat",), boot_timeout=20)
    message = str(info.value)
    assert "did not report ready within 20 s" in message
    assert "Run /bin/cat as init process" in message  # the console tail is in the error
    assert "console.log" in message


def test_invalid_topology_is_rejected_before_qemu_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[node]]\ncpus = "0-1"\nmemory = "1G"\n[[node]]\ncpus = "1-2"\nmemory = "1G"\n')
    before = _qemu_pids()
    expected = {
        "2x0": "need at least 1 node and 1 CPU per node",
        str(bad): "CPU 1 is on node 0 and node 1",
        "banana": "expected NxC",
    }
    for topology, message in expected.items():
        result = subprocess.run([*CLI, "run", "--topology", topology, "--", "true"], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr  # bad input, for every command
        assert "Traceback" not in result.stderr
        assert message in result.stderr
    assert _qemu_pids() <= before


def _qemu_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "qemu-system-x86_64"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_cli_run_prints_nodes_and_propagates_status() -> None:
    result = subprocess.run([*CLI, "run", "--topology", "2x2", "--", "cat", "/sys/devices/system/node/online"],
                            capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout) == (0, "0-1\n"), result.stderr
    result = subprocess.run([*CLI, "run", "--", "sh", "-c", "exit 7"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 7, result.stderr


def test_qemu_dies_when_the_harness_is_killed(tmp_path: Path) -> None:
    """SIGKILL the harness in the middle of a command: its QEMU must go too (parent-death signal)."""
    cache = Path(os.environ.get("NUMA_HARNESS_CACHE", Path.home() / ".cache/numa-harness"))
    before = set((cache / "run").glob("run-*"))
    harness = subprocess.Popen([*CLI, "run", "--", "sleep", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    info: dict[str, object] | None = None
    while time.monotonic() < deadline and info is None:
        for run_dir in set((cache / "run").glob("run-*")) - before:
            guest_json = run_dir / "guest.json"
            if guest_json.exists() and (run_dir / "console.log").exists() and \
                    "numa-harness: ready" in (run_dir / "console.log").read_text(errors="replace"):
                info = json.loads(guest_json.read_text())
        time.sleep(0.2)
    assert info is not None, "the guest never came up"
    qemu_pid = int(str(info["qemu_pid"]))
    assert Path(f"/proc/{qemu_pid}").exists()
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{qemu_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
        subprocess.run(["true"])  # give init a chance to reap
    assert not process_running(qemu_pid), f"QEMU {qemu_pid} outlived the harness"


def test_up_ssh_list_down_from_separate_processes(built_kernel: KernelArtifact) -> None:
    name = f"t{os.getpid()}"
    up = subprocess.run([*CLI, "up", "--name", name, "--kernel", str(built_kernel.directory), "--topology", "4x1"],
                        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == name
        listed = subprocess.run([*CLI, "list", "--json"], capture_output=True, text=True, check=True)
        info = json.loads(listed.stdout)[name]
        # The kernel this guest booted is in use: `cache list` says so and `cache prune` keeps it.
        cache = subprocess.run([*CLI, "cache", "list", "--json"], capture_output=True, text=True, check=True)
        entries = {e["directory"]: e for e in json.loads(cache.stdout)}
        assert entries[str(built_kernel.directory)]["in_use"] is True
        ssh = subprocess.run([*CLI, "ssh", name, "--", "cat", "/sys/devices/system/node/online"],
                             capture_output=True, text=True, timeout=60)
        assert (ssh.returncode, ssh.stdout) == (0, "0-3\n"), ssh.stderr
        status = subprocess.run([*CLI, "ssh", name, "--", "sh", "-c", "exit 3"], capture_output=True, text=True)
        assert status.returncode == 3
        again = subprocess.run([*CLI, "up", "--name", name, "--kernel", str(built_kernel.directory)],
                               capture_output=True, text=True)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        down = subprocess.run([*CLI, "down", name], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not process_running(int(info["qemu_pid"])) and not process_running(int(info["supervisor_pid"]))
    assert name not in json.loads(subprocess.run([*CLI, "list", "--json"], capture_output=True, text=True).stdout)


def test_a_guest_context_leaves_no_qemu(built_kernel: KernelArtifact, nh_cache_dir: Path | None) -> None:
    """A guest booted and left through its context manager (normally and by an exception) takes
    its QEMU with it, whether or not other tests ran before (the plugin's own bookkeeping is checked
    at session end: pytest_sessionfinish fails the run if a QEMU it started outlived its test)."""
    request = LaunchRequest(build=BuildRequest(cache_dir=nh_cache_dir), kernel_dir=built_kernel.directory, name="ctx")
    pids = []
    with make_guest(request) as guest:
        assert guest.process is not None
        pids.append(guest.process.pid)
    with pytest.raises(RuntimeError, match="leaving by an exception"), make_guest(request) as guest:
        assert guest.process is not None
        pids.append(guest.process.pid)
        raise RuntimeError("leaving by an exception")
    assert not any(process_running(pid) for pid in pids), pids
