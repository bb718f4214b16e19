"""Where the harness's wall time with a guest goes: looks (the guest paused), SSH commands, and
waits for the output of a command left running (the workload's acknowledgements). Issue 14 asks
for the measurement before the cuts; the check runner reports a check's share of each
(`harness.checks.runner`), `tests/bench/check_bench.py` prints their medians.

Counted here rather than with a profiler: a profiler sees host functions, not whether the guest
was stopped or running meanwhile, and its overhead would change the timing under test.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Tally:
    """How many times something was done, and the wall seconds it took in all."""

    count: int = 0
    seconds: float = 0.0

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Count the block once and add its wall time, also when it raises."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.count += 1
            self.seconds += time.monotonic() - started


@dataclass(frozen=True)
class SpentReading:
    """TimeSpent's tallies at one moment; `since` gives the time between two readings."""

    pauses: int
    paused_s: float
    ssh_commands: int
    ssh_s: float
    stream_waits: int
    stream_wait_s: float

    def since(self, earlier: SpentReading) -> SpentReading:
        return SpentReading(self.pauses - earlier.pauses, self.paused_s - earlier.paused_s,
                            self.ssh_commands - earlier.ssh_commands, self.ssh_s - earlier.ssh_s,
                            self.stream_waits - earlier.stream_waits, self.stream_wait_s - earlier.stream_wait_s)


@dataclass
class TimeSpent:
    """The tallies of one guest, kept for its whole life (across SSH reconnects). The three never
    overlap within one thread: a look, an SSH command and a stream wait each block the caller."""

    # QMP stop .. cont: the guest's vCPUs stopped (its clock too) while drgn reads it.
    paused: Tally = field(default_factory=Tally)
    # SshSession.run: a new channel, a dropbear child and a shell in the guest, to the exit status.
    commands: Tally = field(default_factory=Tally)
    # GuestStream.output(wait=...): blocked until a long-lived command writes (nhmem's `ok`).
    stream_waits: Tally = field(default_factory=Tally)

    def reading(self) -> SpentReading:
        return SpentReading(self.paused.count, self.paused.seconds, self.commands.count, self.commands.seconds,
                            self.stream_waits.count, self.stream_waits.seconds)
