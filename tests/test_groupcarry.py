"""groupcarry.GroupMembers on the states of a real numa-group run (tests/data/observations): what a
read stands on (numa_migrate_retry, a due placement, its clock), decided by the model, not taken
from the kernel."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.checks.groupcarry import GroupMembers, observed_limits
from harness.checks.observe import Inconclusive, Observation
from harness.checks.runner import Recording, load_recording
from harness.model import CPUBUF

DATA = Path(__file__).parent / "data" / "observations"


def _recording() -> Recording:
    return load_recording(DATA / "numa-group.json.gz")


def _members(recording: Recording) -> tuple[GroupMembers, Observation, Observation]:
    """The workers as the start shows them, and the first step's observations around its reads."""
    start, hinted, done = (recording.observations[k] for k in ("start", "step0-hinted", "step0-done"))
    return GroupMembers.opening(recording.facts, dict(enumerate(start.threads, 1))), hinted, done


def test_a_first_read_runs_the_first_placement_on_empty_buffers() -> None:
    recording = _recording()
    members, hinted, done = _members(recording)
    window = (hinted.balancing.jiffies, done.balancing.jiffies)
    premise, found = members.begin_read(1, hinted.threads[0], done.threads[0], hinted.mm.numa_scan_seq, window,
                                        observed_limits(hinted, recording.facts.hz))
    assert not found and premise is not None
    # Due (its numa_scan_seq 0 behind the mm's), and the clock stands for load_sum: it weighs
    # buffers that are all empty at a thread's first fault.
    assert premise.retry_passed and premise.clock is not None
    assert all(pair == (0, 0) for pair in members.tasks[1].faults[CPUBUF])


def test_a_placement_the_kernel_did_not_take_stops_the_model_with_a_finding() -> None:
    recording = _recording()
    members, hinted, done = _members(recording)
    window = (hinted.balancing.jiffies, done.balancing.jiffies)
    unplaced = replace(done.threads[0], last_task_numa_placement=hinted.threads[0].last_task_numa_placement)
    premise, found = members.begin_read(1, hinted.threads[0], unplaced, hinted.mm.numa_scan_seq, window,
                                        observed_limits(hinted, recording.facts.hz))
    assert premise is None and "took no placement" in found[0]


def test_a_first_placement_over_filled_buffers_is_inconclusive() -> None:
    """It weighs its CPU-fault buffers by se.avg.load_sum, which no observation holds."""
    recording = _recording()
    members, hinted, done = _members(recording)
    members.tasks[1] = replace(members.tasks[1], faults=tuple(((0, 0), (0, 8)) if stat == CPUBUF else pairs
                                                              for stat, pairs in enumerate(members.tasks[1].faults)))
    with pytest.raises(Inconclusive, match="load_sum"):
        members.begin_read(1, hinted.threads[0], done.threads[0], hinted.mm.numa_scan_seq,
                           (hinted.balancing.jiffies, done.balancing.jiffies), observed_limits(hinted, recording.facts.hz))


def test_a_retry_that_may_fall_inside_the_read_is_inconclusive_and_one_after_it_blocks_the_placement() -> None:
    recording = _recording()
    members, hinted, done = _members(recording)
    low, high = hinted.balancing.jiffies, done.balancing.jiffies
    limits = observed_limits(hinted, recording.facts.hz)
    members.retry[1] = (low + 1, low + 1)
    with pytest.raises(Inconclusive, match="numa_migrate_retry"):
        members.begin_read(1, hinted.threads[0], done.threads[0], hinted.mm.numa_scan_seq, (low, high), limits)
    members.retry[1] = (high, high + 10)
    premise, found = members.begin_read(1, hinted.threads[0], done.threads[0], hinted.mm.numa_scan_seq, (low, high),
                                        limits)
    assert premise is not None and not premise.retry_passed and premise.clock is None
    assert any("took a placement" in f and "numa_migrate_retry had not passed" in f for f in found)
