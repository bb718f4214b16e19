"""Where the harness's wall time with a guest goes: looks (the guest paused), SSH commands, and
waits for the output of a command left running (the workload's acknowledgements). Issue 14 asks
for the measurement before the cuts; the check runner reports a check's share of each
(`harness.checks.runner`), `tests/bench/check_bench.py` prints their medians.

Counted here rather than with a profiler: a profiler sees host functions, not whether the guest
was stopped or running meanwhile, and its overhead would change the timing under test.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Blocked:
    """The wall seconds in which at least one tallied block was open, on any thread: the union
    of the tallies. Within one thread a look, an SSH command and a stream wait come in turn, but a
    check may sample from a second thread (convergence pauses the guest to read it while its SSH
    command runs the bench), and then the tallies' sum exceeds the wall time they took."""

    _closed_s: float = 0.0
    _open: int = 0
    _since: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def enter(self) -> None:
        with self._lock:
            if self._open == 0:
                self._since = time.monotonic()
            self._open += 1

    def leave(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0:
                self._closed_s += time.monotonic() - self._since

    @property
    def seconds(self) -> float:
        """So far, counting a block still open up to now (a reading taken mid-block stays exact)."""
        with self._lock:
            return self._closed_s + (time.monotonic() - self._since if self._open else 0.0)


@dataclass
class Tally:
    """How many times something was done, and the wall seconds it took in all; with `union`,
    its blocks also count towards that union's wall time."""

    count: int = 0
    seconds: float = 0.0
    union: Blocked | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Count the block once and add its wall time, also when it raises."""
        if self.union is not None:
            self.union.enter()
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            with self._lock:
                self.count += 1
                self.seconds += took
            if self.union is not None:
                self.union.leave()


@dataclass(frozen=True)
class SpentReading:
    """TimeSpent's tallies at one moment; `since` gives the time between two readings."""

    pauses: int
    paused_s: float
    ssh_commands: int
    ssh_s: float
    stream_waits: int
    stream_wait_s: float
    # The three's union (Blocked): at most the wall time, however they overlapped.
    blocked_s: float

    def since(self, earlier: SpentReading) -> SpentReading:
        return SpentReading(self.pauses - earlier.pauses, self.paused_s - earlier.paused_s,
                            self.ssh_commands - earlier.ssh_commands, self.ssh_s - earlier.ssh_s,
                            self.stream_waits - earlier.stream_waits, self.stream_wait_s - earlier.stream_wait_s,
                            self.blocked_s - earlier.blocked_s)


@dataclass
class TimeSpent:
    """The tallies of one guest, kept for its whole life (across SSH reconnects). The three never
    overlap within one thread (a look, an SSH command and a stream wait each block the caller);
    across threads they may, and `blocked` keeps their union."""

    # QMP stop .. cont: the guest's vCPUs stopped (its clock too) while drgn reads it.
    paused: Tally = field(default_factory=Tally)
    # SshSession.run: a new channel, a dropbear child and a shell in the guest, to the exit status.
    commands: Tally = field(default_factory=Tally)
    # GuestStream.output(wait=...): blocked until a long-lived command writes (nhmem's `ok`).
    stream_waits: Tally = field(default_factory=Tally)
    blocked: Blocked = field(default_factory=Blocked)

    def __post_init__(self) -> None:
        for tally in (self.paused, self.commands, self.stream_waits):
            tally.union = self.blocked

    def reading(self) -> SpentReading:
        return SpentReading(self.paused.count, self.paused.seconds, self.commands.count, self.commands.seconds,
                            self.stream_waits.count, self.stream_waits.seconds, self.blocked.seconds)
