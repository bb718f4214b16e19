"""pytest plugin (registered through the `pytest11` entry point).

Options: --nh-kernel DIR, --nh-topology SPEC, --nh-keep-guest, --nh-cache-dir DIR, --nh-no-snapshot.
Fixtures: `built_kernel` (the default kernel, built once per machine), `guest_image`, `guest`
(a session-scoped booted guest, started on first use), `guest_factory(topology=..., ...)` (a
booted guest for one test, torn down after it). Guests are restored from the snapshot an earlier
boot of the same guest saved (harness.guest.snapshot) unless --nh-no-snapshot.

Any test during which a live guest logs a kernel bug fails with the bug's title, unless it is
marked `expect_kernel_bug`; a failing test's report carries the console tail of every live
guest. At the end of the session every QEMU the suite started is checked by PID: one that is
still alive is killed and the session fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.cache import read_json
from harness.guest.image import GuestImage, build_image
from harness.guest.launch import LaunchRequest, make_guest
from harness.guest.procs import is_live_qemu
from harness.guest.qemu import Guest
from harness.guest.view import AttachedGuest, GuestView
from harness.kernel.pipeline import BuildRequest, KernelArtifact, build

_LIVE: list[GuestView] = []
_STARTED_QEMU_PIDS: list[int] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("numa-harness")
    group.addoption("--nh-kernel", metavar="DIR", help="boot this kernel (a `numa-harness build` directory)")
    group.addoption("--nh-topology", metavar="SPEC", default="2x2", help="topology of the session guest (default 2x2)")
    group.addoption("--nh-keep-guest", action="store_true",
                    help="leave the session guest running afterwards (as `numa-harness up` does) for debugging")
    group.addoption("--nh-cache-dir", metavar="DIR", help="numa-harness cache directory")
    group.addoption("--nh-no-snapshot", action="store_true",
                    help="boot every guest instead of restoring it from the snapshot an earlier boot saved")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: builds or needs a real kernel (slow on a cold cache)")
    config.addinivalue_line("markers", "guest: needs a booted QEMU guest")
    config.addinivalue_line("markers", "expect_kernel_bug: the test provokes a kernel bug on purpose")


@pytest.fixture(scope="session")
def nh_cache_dir(pytestconfig: pytest.Config) -> Path | None:
    value = pytestconfig.getoption("--nh-cache-dir")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def nh_snapshot(pytestconfig: pytest.Config) -> bool:
    """Whether guests are restored from snapshots (harness.guest.snapshot); --nh-no-snapshot turns it off."""
    return not pytestconfig.getoption("--nh-no-snapshot")


@pytest.fixture(scope="session")
def built_kernel(pytestconfig: pytest.Config, nh_cache_dir: Path | None) -> KernelArtifact:
    """The kernel under test: --nh-kernel, else the default kernel (built once, then cached)."""
    explicit = pytestconfig.getoption("--nh-kernel")
    if explicit:
        directory = Path(explicit)
        manifest = read_json(directory / "manifest.json")
        if manifest is None:
            raise pytest.UsageError(f"--nh-kernel {explicit}: no manifest.json; pass a `numa-harness build` directory")
        return KernelArtifact(directory, manifest, cache_hit=True)
    return build(BuildRequest(cache_dir=nh_cache_dir))


@pytest.fixture(scope="session")
def guest_image(nh_cache_dir: Path | None) -> GuestImage:
    return build_image(BuildRequest(cache_dir=nh_cache_dir).cache_root)


def _request(kernel: KernelArtifact, cache_dir: Path | None, **overrides: Any) -> LaunchRequest:
    return LaunchRequest(build=BuildRequest(cache_dir=cache_dir), kernel_dir=kernel.directory, **overrides)


def _register(guest: Guest) -> None:
    if guest.process is not None:
        _STARTED_QEMU_PIDS.append(guest.process.pid)
    _LIVE.append(guest)


@pytest.fixture(scope="session")
def guest(
    pytestconfig: pytest.Config, built_kernel: KernelArtifact, nh_cache_dir: Path | None, nh_snapshot: bool
) -> Iterator[GuestView]:
    """A booted guest shared by the session (topology from --nh-topology)."""
    topology = pytestconfig.getoption("--nh-topology")
    if pytestconfig.getoption("--nh-keep-guest"):
        yield _kept_guest(built_kernel, topology, nh_cache_dir, nh_snapshot)
        return
    booted = make_guest(_request(built_kernel, nh_cache_dir, topology=topology, name="pytest", snapshot=nh_snapshot))
    try:
        booted.boot()
    finally:
        _register(booted)
    try:
        yield booted
    finally:
        _LIVE.remove(booted)
        booted.shutdown()


def _kept_guest(kernel: KernelArtifact, topology: str, cache_dir: Path | None, snapshot: bool) -> GuestView:
    name = f"pytest-{os.getpid()}"
    argv = [sys.executable, "-m", "harness.cli", "up", "--name", name, "--kernel", str(kernel.directory),
            "--topology", topology]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    if not snapshot:
        argv.append("--no-snapshot")
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise pytest.UsageError(f"--nh-keep-guest: could not start the guest: {result.stderr.strip()}")
    entry = read_json((cache_dir or BuildRequest().cache_root) / "guests" / f"{name}.json")
    assert entry is not None
    info = read_json(Path(str(entry["info"])))
    assert info is not None
    kept = AttachedGuest(info)
    _LIVE.append(kept)
    sys.stderr.write(f"\nnuma-harness: keeping guest {name}: `numa-harness ssh {name}`, `numa-harness down {name}`\n")
    return kept


@pytest.fixture
def guest_factory(built_kernel: KernelArtifact, nh_cache_dir: Path | None,
                  nh_snapshot: bool) -> Iterator[Callable[..., Guest]]:
    """guest_factory(topology="4x1", cmdline=(...), boot_timeout=..., memory=..., snapshot=...) -> a
    booted Guest (restored from its snapshot unless --nh-no-snapshot or snapshot=False), shut down
    when the test ends."""
    made: list[Guest] = []

    def factory(topology: str = "2x2", cmdline: tuple[str, ...] = (), boot_timeout: float = 120.0,
                memory: str | None = None, boot: bool = True, snapshot: bool | None = None,
                name: str = "") -> Guest:
        new = make_guest(_request(built_kernel, nh_cache_dir, topology=topology, cmdline=cmdline,
                                  boot_timeout=boot_timeout, memory=memory, name=name or f"factory{len(made)}",
                                  snapshot=nh_snapshot if snapshot is None else snapshot))
        made.append(new)
        if boot:
            try:
                new.boot()
            finally:
                _register(new)
        return new

    try:
        yield factory
    finally:
        for each in made:
            if each in _LIVE:
                _LIVE.remove(each)
            each.shutdown()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    for live in _LIVE:
        live.mark_bugs_seen()
    before = set(map(id, _LIVE))
    result = yield
    if item.get_closest_marker("expect_kernel_bug"):
        return result
    for live in list(_LIVE):
        fresh = live.bugs() if id(live) not in before else live.new_bugs()
        if fresh:
            titles = "; ".join(bug.title for bug in fresh)
            pytest.fail(f"the guest kernel logged a bug during this test: {titles}\n\n{fresh[0].report}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and _LIVE:
        for index, live in enumerate(_LIVE):
            report.sections.append((f"guest {index} console (tail), log {live.paths.console_log}", live.console_tail(40)))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    survivors = []
    for pid in _STARTED_QEMU_PIDS:
        if is_live_qemu(pid):
            survivors.append(pid)
            os.kill(pid, signal.SIGKILL)
    if survivors:
        sys.stderr.write(f"\nnuma-harness: QEMU processes {survivors} outlived their tests; killed them\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def started_qemu_pids() -> list[int]:
    return list(_STARTED_QEMU_PIDS)
