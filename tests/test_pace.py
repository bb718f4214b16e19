"""next_pass_pace: idle first when the mm's scan clock is further away than a thread's trigger
(fair.c:task_tick_numa spends a trigger that comes before mm->numa_next_scan), else spin at once.
Built on an observation recorded in a real guest, its clocks set by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.checks.observe import DUE_MARGIN_S, Observation, next_pass_pace
from harness.checks.runner import load_recording

GOLDEN = Path(__file__).parent / "data" / "observations" / "numa-group.json.gz"
HZ = 250
SLACK = 0.3


def _clocks(obs: Observation, due_jiffies: int, to_trigger_s: tuple[float, ...], period_ms: int = 3000) -> Observation:
    """`obs` with mm->numa_next_scan `due_jiffies` after its jiffies and each thread
    `to_trigger_s` seconds of CPU time from its next task_tick_numa trigger."""
    threads = tuple(replace(t, numa_scan_period=period_ms, sum_exec_runtime=10**10,
                            node_stamp=10**10 - period_ms * 10**6 + int(s * 1e9))
                    for t, s in zip(obs.threads, to_trigger_s, strict=True))
    return replace(obs, mm=replace(obs.mm, numa_next_scan=obs.balancing.jiffies + due_jiffies), threads=threads)


@pytest.fixture(scope="module")
def observed() -> Observation:
    return load_recording(GOLDEN).observations["start"]


def test_a_clock_due_after_every_trigger_is_waited_out_idle(observed: Observation) -> None:
    # The clock is due in 2.94 s, the threads' triggers 2.70 and 2.46 s of CPU time away:
    # spinning at once would spend both triggers before the clock and pass a period later.
    pace = next_pass_pace((_clocks(observed, 735, (2.70, 2.46)),), HZ, slack_s=SLACK, cap_s=10.0)
    assert pace.idle_s == pytest.approx(2.94 + DUE_MARGIN_S - 2.70)
    assert pace.spin_s == pytest.approx(2.70 + SLACK)


def test_a_trigger_after_the_clock_is_spun_to_at_once(observed: Observation) -> None:
    pace = next_pass_pace((_clocks(observed, 100, (2.70, 2.90)),), HZ, slack_s=SLACK, cap_s=10.0)
    assert pace.idle_s == 0.0
    assert pace.spin_s == pytest.approx(2.70 + SLACK)


def test_an_overdue_thread_triggers_at_its_next_tick(observed: Observation) -> None:
    pace = next_pass_pace((_clocks(observed, 0, (-1.0, 2.0)),), HZ, slack_s=SLACK, cap_s=10.0)
    assert pace.idle_s == 0.0
    assert pace.spin_s == pytest.approx(SLACK)


def test_every_mm_must_pass(observed: Observation) -> None:
    # Two processes: one due at once, the other's clock 2 s away with its trigger at 1 s.
    early = _clocks(observed, 0, (0.5, 0.5))
    late = _clocks(observed, 500, (1.0, 1.0))
    pace = next_pass_pace((early, late), HZ, slack_s=SLACK, cap_s=10.0)
    assert pace.idle_s == pytest.approx(2.0 + DUE_MARGIN_S - 1.0)
    assert pace.idle_s + pace.spin_s == pytest.approx(2.0 + DUE_MARGIN_S + SLACK)


def test_the_cap_bounds_each_part(observed: Observation) -> None:
    pace = next_pass_pace((_clocks(observed, 5000, (30.0, 30.0), period_ms=60000),), HZ, slack_s=SLACK, cap_s=10.0)
    assert pace.idle_s <= 10.0 and pace.spin_s <= 10.0
