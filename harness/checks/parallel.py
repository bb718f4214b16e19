"""`check --guests N`: the checks of one run split over N guests of the same kernel and
topology, booted side by side, one child process each, merged into the one `CheckRun` a run in
one guest would have given.

Why processes and not threads: the model and drgn's reads are CPU-bound Python that would take
turns under one interpreter lock, and a child's QEMU dies with its child (PR_SET_PDEATHSIG is
per thread: see harness.guest.qemu.die_with_parent). Every child carries PR_SET_PDEATHSIG
itself, so a SIGKILL of the harness takes children and their QEMUs down; Ctrl-C and SIGTERM
reach only this process, which stops each child with SIGTERM that the child turns into an
orderly unwind (`with guest` powers its QEMU off), and SIGKILLs a child that has not exited
`STOP_GRACE` seconds later.

The checks are independent scenarios (each sets up its own workload and takes its own first
observation), so which guest runs one does not change what it judges; only the host's cores
are shared, so each check takes longer than in a guest of its own (measured in the README). A
check whose premise bounds a thread's guest CPU time (Check.alone) is the exception: the guest
charges a task for host time its vCPU waited, so such a check runs last, in guest 1, once every
other guest has finished. What the
runner does after a hang, a kernel bug or a `--fail-fast` fail in one guest, it does across
all of them: the others are stopped and their unfinished checks reported as not run, with the
reason and the guest it came from.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from types import FrameType
from typing import Any

from harness.checks.catalog import CHECKS
from harness.checks.checkrun import BootFailure, CheckRun, check_kernel
from harness.checks.registry import CheckResult, Verdict
from harness.checks.runner import stop_reason
from harness.errors import BadInput, InfrastructureError
from harness.guest.launch import LaunchRequest
from harness.guest.qemu import Guest, die_with_parent
from harness.guest.topology import parse_topology
from harness.kernel.pipeline import KernelArtifact

# How long a stopped child has to power its guest off before it is killed: a poweroff over SSH
# (up to its 60 s command timeout on a dead guest) is not waited out, QEMU's `quit` is enough.
STOP_GRACE = 30.0
# How often a stopped child that has not exited is sent SIGTERM again (see _interrupt).
RESEND_S = 2.0
# Per guest, beyond its RAM: QEMU's own heap and the TCG translation cache it fills (QEMU
# reserves up to 1 GiB for it under TCG but touches only what the guest's code needs; a booted,
# idle 2x2 guest's QEMU measured 211 MiB RSS here, its touched guest pages included), and the
# child's Python with drgn attached. A bound with room, not a measured peak.
GUEST_OVERHEAD_MB = 768


@dataclass(frozen=True)
class GuestShare:
    """The checks one guest runs: in the order the whole run would have run them, then those
    that run alone (`alone`, also in `names`), after every other guest has finished."""

    index: int  # 1-based
    names: tuple[str, ...]
    alone: tuple[str, ...] = ()

    @property
    def seconds(self) -> float:
        return sum(CHECKS[name].seconds for name in self.names)


def plan_shares(names: Sequence[str], guests: int) -> list[GuestShare]:
    """At most `guests` shares of `names`, balanced by the checks' registered cost
    (Check.seconds): the longest first, each to the share with the least so far (the longest-
    processing-time rule, within 4/3 of the best split). The checks that run alone go last in
    share 1. Deterministic: ties go to the lower share and to the earlier check; empty shares
    are dropped."""
    if guests < 1:
        raise BadInput(f"--guests {guests}: expected 1 or more.")
    order = {name: position for position, name in enumerate(names)}
    alone = tuple(n for n in names if CHECKS[n].alone) if guests > 1 else ()
    shared = [n for n in names if n not in alone]
    bins: list[list[str]] = [[] for _ in range(min(guests, len(shared)) or 1)]
    totals = [0.0] * len(bins)
    for name in sorted(shared, key=lambda n: (-CHECKS[n].seconds, order[n])):
        lightest = min(range(len(bins)), key=lambda i: (totals[i], i))
        bins[lightest].append(name)
        totals[lightest] += CHECKS[name].seconds
    plan = [sorted(b, key=order.__getitem__) for b in bins]
    plan[0] += alone
    return [GuestShare(i + 1, tuple(b), alone if i == 0 else ()) for i, b in enumerate(plan) if b]


def validate_guests(request: LaunchRequest, guests: int) -> None:
    """Refuse a --guests the host cannot hold, before anything is built or booted."""
    if guests < 1:
        raise BadInput(f"--guests {guests}: expected 1 or more.")
    if guests == 1:
        return
    per_guest = parse_topology(request.topology, request.memory).memory_mb + GUEST_OVERHEAD_MB
    available = _mem_available_mb()
    if available is not None and guests * per_guest > available:
        raise BadInput(f"--guests {guests}: {guests} guests of {request.topology} need about {guests * per_guest} MiB "
                       f"({per_guest} MiB each with QEMU's overhead), and the host has {available} MiB available. "
                       f"Pass --guests {max(1, available // per_guest)} or fewer, or a smaller --memory.")


def _mem_available_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


BootCallback = Callable[[GuestShare, float, str], None]
ProgressCallback = Callable[[GuestShare, CheckResult], None]


def check_kernel_in_guests(request: LaunchRequest, kernel: KernelArtifact, names: Sequence[str] | None, guests: int, *,
                           progress: ProgressCallback | None = None, on_boot: BootCallback | None = None,
                           on_plan: Callable[[list[GuestShare]], None] | None = None, record: Path | None = None,
                           fail_fast: bool = False) -> CheckRun:
    """The checks (`names`, or all) over `guests` guests, as one CheckRun: results in the order
    of `names`, boot_seconds the slowest guest's, the timeline's entries tagged with their guest.
    A boot that fails in any guest stops the others and raises its BootFailure."""
    chosen = list(names or CHECKS)
    plan = plan_shares(chosen, guests)
    if on_plan is not None:
        on_plan(plan)
    started = time.monotonic()
    if len(plan) == 1:
        share = plan[0]
        tell, booted = progress, on_boot
        return check_kernel(request, kernel, share.names, record=record, fail_fast=fail_fast,
                            progress=None if tell is None else lambda r: tell(share, r),
                            on_boot=None if booted is None else lambda s, a: booted(share, s, a))
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads and sockets
    messages: Queue[tuple[Any, ...]] = context.Queue()
    others_done = context.Event()  # set once only the share with the alone checks still runs
    children: dict[int, BaseProcess] = {share.index: context.Process(
        target=guest_main, args=(os.getpid(), share, request, kernel, record, fail_fast, messages, others_done),
        name=f"numa-harness-guest-{share.index}") for share in plan}
    by_index = {share.index: share for share in plan}
    collector = _Collector(by_index, fail_fast, progress, on_boot, others_done.set)
    try:
        for child in children.values():
            child.start()
        collector.collect(messages, children)
        for child in children.values():  # each has reported its end and is exiting
            child.join(STOP_GRACE)
    finally:
        _stop_all(children.values())
    if collector.failure is not None:
        raise collector.failure
    return collector.merged(chosen, request.topology, time.monotonic() - started)


class _Collector:
    """The parent's side: the children's messages turned into progress, stops and one run."""

    def __init__(self, shares: dict[int, GuestShare], fail_fast: bool, progress: ProgressCallback | None,
                 on_boot: BootCallback | None, others_done: Callable[[], None]) -> None:
        self.shares = shares
        self.others_done = others_done
        self.alone_in = {s.index for s in shares.values() if s.alone}
        self.fail_fast = fail_fast
        self.progress = progress
        self.on_boot = on_boot
        self.results: dict[str, CheckResult] = {}
        self.runs: dict[int, CheckRun] = {}
        self.stopped: str | None = None
        self.failure: BaseException | None = None
        # When each stopped child was first and last sent SIGTERM.
        self.stop_sent: dict[int, float] = {}
        self.last_sent: dict[int, float] = {}

    def collect(self, messages: Queue[tuple[Any, ...]], children: dict[int, BaseProcess]) -> None:
        pending = set(children)
        while pending:
            self._reap(pending, children)
            if not pending - self.alone_in:
                self.others_done()
            try:
                message = messages.get(timeout=1.0)
            except queue.Empty:
                continue
            kind, index = message[0], message[1]
            if kind == "boot" and self.on_boot is not None:
                self.on_boot(self.shares[index], message[2], message[3])
            elif kind == "result":
                self._result(index, message[2], pending, children)
            elif kind == "done":
                self.runs[index] = message[2]
                pending.discard(index)
            elif kind == "failed":
                pending.discard(index)
                if self.failure is None and self.stopped is None:
                    self.failure = BootFailure(f"guest {index}: {message[2]}", message[3])
                    self._stop_others(index, f"guest {index} failed", pending, children)
            elif kind == "interrupted":
                pending.discard(index)

    def _result(self, index: int, result: CheckResult, pending: set[int], children: dict[int, BaseProcess]) -> None:
        self.results[result.name] = result
        if self.progress is not None:
            self.progress(self.shares[index], result)
        reason = stop_reason(result, self.fail_fast)
        if reason is not None and self.stopped is None:
            # The child stops its own remaining checks; the others would meet the same kernel.
            self._stop_others(index, f"guest {index}: {reason}", pending, children)

    def _stop_others(self, index: int, reason: str, pending: set[int], children: dict[int, BaseProcess]) -> None:
        self.stopped = reason
        for other in pending - {index}:
            if children[other].is_alive():
                children[other].terminate()
                self.stop_sent[other] = self.last_sent[other] = time.monotonic()

    def _reap(self, pending: set[int], children: dict[int, BaseProcess]) -> None:
        """Children that exited without a last message, and stopped ones past their grace."""
        for index in list(pending):
            child = children[index]
            if not child.is_alive():
                pending.discard(index)
                if index not in self.stop_sent and self.failure is None:
                    self.failure = InfrastructureError(
                        f"guest {index}'s process exited with status {child.exitcode} without reporting; the checks "
                        f"{', '.join(self.shares[index].names)} were not judged.")
                    self._stop_others(index, f"guest {index}'s process died", pending, children)
            elif index in self.stop_sent:
                now = time.monotonic()
                if now - self.stop_sent[index] > STOP_GRACE:
                    child.kill()
                elif now - self.last_sent[index] >= RESEND_S:
                    child.terminate()  # again: see _interrupt
                    self.last_sent[index] = now

    def merged(self, chosen: Sequence[str], topology: str, seconds: float) -> CheckRun:
        why = self.stopped or "its guest stopped"
        results = tuple(self.results.get(name) or CheckResult(name, Verdict.NOT_RUN, f"not run: {why}")
                        for name in chosen)
        runs = [self.runs[i] for i in sorted(self.runs)]
        timeline = tuple({**entry, "guest": i} for i in sorted(self.runs) for entry in self.runs[i].timeline)
        return CheckRun(topology, results, runs[0].accel if runs else "unknown",
                        max((r.boot_seconds for r in runs), default=0.0), seconds, None, timeline, guests=len(self.shares))


def _stop_all(children: Iterable[BaseProcess]) -> None:
    """SIGTERM every child still alive, again every RESEND_S until it exits, SIGKILL past STOP_GRACE."""
    alive = [child for child in children if child.is_alive()]
    deadline = time.monotonic() + STOP_GRACE
    while alive and time.monotonic() < deadline:
        for child in alive:
            child.terminate()
        alive[0].join(RESEND_S)
        alive = [child for child in alive if child.is_alive()]
    for child in alive:
        child.kill()
        child.join()


# Set in a child by its first SIGTERM: from then on it reports no result (see _report).
_stop_requested = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """A child's SIGTERM: unwind (`with guest` shuts the guest down), unless the shutdown is
    already under way, which a second interrupt must not cut short. Not one-shot: an exception
    raised while libdrgn runs Python code of its own (its plugin hooks) is printed and dropped
    there, so the parent sends SIGTERM again every RESEND_S until the child has exited."""
    global _stop_requested
    _stop_requested = True
    walk = frame
    while walk is not None:
        if walk.f_code is Guest.shutdown.__code__:
            return
        walk = walk.f_back
    raise KeyboardInterrupt


def _report(messages: Queue[tuple[Any, ...]], index: int, result: CheckResult) -> None:
    """Send a child's result to the parent, unless the parent has asked the child to stop: the
    interrupt lands anywhere, also inside paramiko while it writes a packet, and a check's
    cleanup then meets a closed channel, whose SSHException replaces the KeyboardInterrupt and
    would come back as a harness error. A result finished after the stop judged nothing; the
    parent reports the check as not run, with the stop's reason."""
    if _stop_requested:
        raise KeyboardInterrupt
    messages.put(("result", index, result))


def guest_main(parent: int, share: GuestShare, request: LaunchRequest, kernel: KernelArtifact, record: Path | None,
               fail_fast: bool, messages: Queue[tuple[Any, ...]], others_done: EventType) -> None:
    """A child: boot one guest, run its share, report each result as it comes (module docstring)."""
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a child stops
    signal.signal(signal.SIGTERM, _interrupt)
    index = share.index

    def before(name: str) -> None:
        if _stop_requested:
            raise KeyboardInterrupt
        # Short waits: a SIGTERM's KeyboardInterrupt is raised between them.
        while name in share.alone and not others_done.wait(1.0):
            pass

    try:
        run = check_kernel(replace(request, name=f"{request.name or 'check'}-{index}"), kernel, share.names,
                           on_boot=lambda seconds, accel: messages.put(("boot", index, seconds, accel)),
                           progress=lambda result: _report(messages, index, result), record=record,
                           fail_fast=fail_fast, before=before)
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        messages.put(("interrupted", index))
        return
    except BootFailure as err:
        messages.put(("failed", index, str(err), err.bug_title))
        return
    except BaseException as err:  # reported to the parent, which raises it as the harness's error
        messages.put(("failed", index, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}", None))
        return
    # The guest is down: nothing left to unwind, a SIGTERM may now simply end the process.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    messages.put(("done", index, run))
