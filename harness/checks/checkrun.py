"""One boot of one kernel on one topology, with the cross-checks run in it: what `check`,
`mutants` and `ci` share. The console log is copied out before the guest goes away, also when
the boot or a check fails, so a report can always point at what the kernel printed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checks.registry import CheckResult
from harness.checks.runner import run_checks
from harness.errors import HarnessError, InfrastructureError
from harness.guest.launch import LaunchRequest, make_guest
from harness.guest.qemu import Guest
from harness.kernel.pipeline import KernelArtifact


class BootFailure(InfrastructureError):
    """The guest did not come up; carries the kernel-bug title when the console shows one."""

    def __init__(self, message: str, bug_title: str | None) -> None:
        super().__init__(message)
        self.bug_title = bug_title


@dataclass(frozen=True)
class CheckRun:
    topology: str
    results: tuple[CheckResult, ...]
    accel: str
    boot_seconds: float
    seconds: float
    console_log: Path | None
    # Counters at each check's start and end (observe.Context.timeline); with several guests
    # (harness.checks.parallel) each entry names its "guest".
    timeline: tuple[dict[str, Any], ...] = ()
    guests: int = 1

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def as_json(self) -> dict[str, Any]:
        return {"topology": self.topology, "accel": self.accel, "boot_seconds": round(self.boot_seconds, 2),
                "seconds": round(self.seconds, 2), "guests": self.guests, "passed": self.passed,
                "console_log": self.console_log.name if self.console_log else None,
                "vmstat_delta": self.vmstat_delta, "timeline": list(self.timeline),
                "checks": [r.as_json() for r in self.results]}

    @property
    def vmstat_delta(self) -> dict[str, int]:
        """How far each counter moved over the run, summed over its guests (each guest's
        counters are its own kernel's)."""
        by_guest: dict[int, list[dict[str, int]]] = {}
        for entry in self.timeline:
            by_guest.setdefault(int(entry.get("guest", 1)), []).append(entry["vmstat"])
        total: dict[str, int] = {}
        for counters in by_guest.values():
            if len(counters) < 2:
                continue
            first, last = counters[0], counters[-1]
            for k in last:
                if k in first:
                    total[k] = total.get(k, 0) + last[k] - first[k]
        return total


def kernel_identity(kernel: KernelArtifact) -> dict[str, Any]:
    manifest = kernel.manifest
    return {k: manifest.get(k) for k in ("kernel_release", "build_id", "config_sha256", "patches", "source")}


def check_kernel(request: LaunchRequest, kernel: KernelArtifact, names: Sequence[str] | None = None, *,
                 console_copy: Path | None = None, progress: Callable[[CheckResult], None] | None = None,
                 on_boot: Callable[[float, str], None] | None = None, record: Path | None = None,
                 fail_fast: bool = False, before: Callable[[str], None] | None = None) -> CheckRun:
    started = time.monotonic()
    guest = make_guest(request, kernel)
    try:
        with guest:
            if on_boot is not None:
                on_boot(guest.boot_seconds, guest.accel)
            guest.mark_bugs_seen()
            timeline: list[dict[str, Any]] = []
            results = run_checks(guest, names, progress=progress, timeline=timeline, record=record, fail_fast=fail_fast,
                                 before=before)
            boot_seconds, accel = guest.boot_seconds, guest.accel
    except HarnessError as err:
        bugs = guest.bugs() if guest.paths.console_log.exists() else []
        raise BootFailure(str(err), bugs[0].title if bugs else None) from err
    finally:
        if console_copy is not None:
            _copy_console(guest, console_copy)
    return CheckRun(request.topology, tuple(results), accel, boot_seconds, time.monotonic() - started,
                    console_copy if console_copy is not None and console_copy.exists() else None, tuple(timeline))


def _copy_console(guest: Guest, destination: Path) -> None:
    source = guest.paths.console_log
    if source.exists():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
