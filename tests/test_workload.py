"""Parsing guest-tests/nhbench output (golden file: a real 1.2 s numa02 run with the default
scan delay of 1 s, so nothing has moved yet: the node-1 threads' slices are all remote)."""

from __future__ import annotations

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


def test_bench_output_without_samples_is_an_error_naming_the_output() -> None:
    with pytest.raises(WorkloadError, match=r"(?s)printed no samples.*usage"):
        parse_bench_output("numa01", "bind", 16, "usage: nhbench numa01|numa02 MIB SECS free|bind|inverse\n")


def test_workload_commands() -> None:
    assert _op("read", 1, 3, True) == "thread read node 1 pages 3"
    assert _op("touch", None, None, False) == "touch"
