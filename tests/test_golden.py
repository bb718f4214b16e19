"""Golden observations: what real guests showed, replayed through the model without a guest.

The files in tests/data/observations/ were written by `numa-harness check --record DIR` on the
default kernel (2x2, TCG): every observation the placement checks judged, with the guest facts
(node of each CPU, HZ, zero pfn, last_cpupid width) and the scenario notes a replay needs. The
model must agree with every one of them; and a kernel that had kept its books differently must
not: each perturbation below is a bookkeeping bug the replay has to notice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from harness.checks.observe import Observation
from harness.checks.placement import _Rounds, judge_placement_round, replay_exact_rounds
from harness.checks.runner import Recording, load_recording
from harness.inspect import TaskNumaState

GOLDEN = Path(__file__).parent / "data" / "observations"


def _load(check: str) -> Recording:
    return load_recording(GOLDEN / f"{check}.json.gz")


def _placement_rounds(recording: Recording) -> _Rounds:
    rounds = _Rounds()
    for label in sorted(k for k in recording.observations if k.endswith("-a")):
        a, b = recording.observations[label], recording.observations[label[:-2] + "-b"]
        judge_placement_round(recording.facts, str(recording.notes[label]["phase"]), a, b, rounds)
    return rounds


def test_recorded_placements_are_predicted_from_their_pre_placement_books() -> None:
    recording = _load("placement")
    rounds = _placement_rounds(recording)
    assert len(rounds.judged) >= 4 and not rounds.diffs, rounds.diffs
    assert rounds.judged[-1]["preferred_model"] == max(recording.facts.node_of_cpu.values())


def test_recorded_exact_rounds_replay_free_running() -> None:
    recording = _load("placement-exact")
    rounds = replay_exact_rounds(recording.facts, recording.observations, recording.notes)
    assert not rounds.diffs, rounds.diffs
    assert sum(r["carried"] for r in rounds.judged) >= 2, "the recording must hold rounds the model carried itself"


def _with_task(obs: Observation, **changes: object) -> Observation:
    return replace(obs, task=replace(obs.task, **changes))  # type: ignore[arg-type]


def _first_carried_a(recording: Recording) -> str:
    """The label of the first -a observation whose books the model carries into (the second round)."""
    return sorted(k for k in recording.observations if k.endswith("-a"))[1]


def _membuf_plus_one(t: TaskNumaState) -> dict[str, object]:
    membuf = [(s + 1, p) if nid == 0 else (s, p) for nid, (s, p) in enumerate(t.faults["membuf"])]
    return {"faults": {**t.faults, "membuf": membuf}}


@pytest.mark.parametrize(("bug", "change"), [
    ("a remote fault counted as local", lambda t: {"locality": (t.locality[0] - 1, t.locality[1] + 1, t.locality[2])}),
    ("a shared fault on node 0 that never happened", _membuf_plus_one),
    ("the decayed history lost", lambda t: {"faults": {**t.faults, "mem": [(0, 0) for _ in t.faults["mem"]]}}),
    ("the scan period off by one slot", lambda t: {"numa_scan_period": t.numa_scan_period + 10}),
])
def test_a_kernel_keeping_other_books_is_caught(bug: str, change: Callable[[TaskNumaState], dict[str, object]]) -> None:
    """The same recording with one bookkeeping value changed where the model carries it: the
    free run must report the field, so a kernel that did this would fail placement-exact."""
    recording = _load("placement-exact")
    label = _first_carried_a(recording)
    a = recording.observations[label]
    perturbed = {**recording.observations, label: _with_task(a, **change(a.task))}
    rounds = replay_exact_rounds(recording.facts, perturbed, recording.notes)
    assert rounds.diffs, f"{bug}: not noticed"
