"""Parsing guest-tests/nhbench output (golden file: a real 1.2 s numa02 run with the default
scan delay of 1 s, so nothing has moved yet: the node-1 threads' slices are all remote)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from harness.checks.workload import WorkloadError, _op, parse_bench_output

DATA = Path(__file__).parent / "data" / "bench"


def test_bench_output_is_parsed_into_samples() -> None:
    run = parse_bench_output("numa02", "free", 16, (DATA / "numa02-free-default-knobs.txt").read_text())
    assert (run.pid, run.child, len(run.samples)) == (86, -1, 6)
    first = run.samples[0]
    assert first.pages_on_node == (4096, 0) and first.thread_local_share == (1.0, 1.0, 0.0, 0.0)
    assert run.final_share == 0.5 and run.mean_share == 0.5
    assert run.time_to(0.9) is None and run.time_to(0.5) == 0.0
    assert run.writes == 193447936 and run.seconds == 1.31


def test_bench_output_says_why_it_stopped() -> None:
    """Golden files from real runs: numa02 with the FAST_SCAN scan delay, stopped at its first
    sample at 90 % local (`share=0.9`); and a bind run with the default 1 s scan delay and a 1 s
    limit, which hinted nothing and so ran to its deadline (`hint-faults=2`)."""
    free = parse_bench_output("numa02", "free", 16, (DATA / "numa02-free-until-share.txt").read_text())
    assert free.stopped == "share" and free.final_share >= 0.9 and free.time_to(0.9) == free.samples[-1].t
    bind = parse_bench_output("numa02", "bind", 16, (DATA / "numa02-bind-deadline.txt").read_text())
    assert bind.stopped == "deadline" and bind.samples[-1].vmstat[0] - bind.samples[0].vmstat[0] < 2 * 4096
    assert parse_bench_output("numa02", "free", 16, (DATA / "numa02-free-default-knobs.txt").read_text()).stopped == ""


def test_bench_output_without_samples_is_an_error_naming_the_output() -> None:
    with pytest.raises(WorkloadError, match=r"(?s)printed no samples.*usage"):
        parse_bench_output("numa01", "bind", 16, "usage: nhbench numa01|numa02 MIB SECS free|bind|inverse\n")


def test_workload_commands() -> None:
    assert _op("read", 1, 3, True) == "thread read node 1 pages 3"
    assert _op("touch", None, None, False) == "touch"


def test_each_threads_writes_are_parsed_and_a_stalled_thread_makes_the_free_run_inconclusive() -> None:
    """A real numa02 free run with per-thread write counts (golden), and the same run with one
    thread's count frozen from its first sample on: convergence's premise (every thread keeps
    writing its slice, STALLED_S) does not hold, so a run that did not converge is inconclusive."""
    from dataclasses import replace

    from harness.checks.convergence import STALLED_S, _threads_kept_writing
    from harness.checks.observe import Inconclusive

    run = parse_bench_output("numa02", "free", 64, (DATA / "numa02-free-writes.txt").read_text())
    assert all(len(s.thread_writes) == len(s.thread_local_share) == 4 for s in run.samples)
    assert all(b >= a for s, t in itertools.pairwise(run.samples)
               for a, b in zip(s.thread_writes, t.thread_writes, strict=True))
    _threads_kept_writing("numa02", run)  # every thread wrote: no exception
    remote = next(i for i, share in enumerate(run.samples[0].thread_local_share) if share < 1.0)
    frozen = run.samples[0].thread_writes[remote]
    stalled = replace(run, samples=tuple(
        replace(s, thread_writes=tuple(frozen if i == remote else w for i, w in enumerate(s.thread_writes)))
        for s in run.samples))
    assert stalled.samples[-1].t - stalled.samples[0].t >= STALLED_S
    with pytest.raises(Inconclusive, match=f"thread {remote} wrote nothing"):
        _threads_kept_writing("numa02", stalled)
