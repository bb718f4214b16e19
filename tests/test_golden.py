"""Golden observations: what real guests showed, replayed through the model without a guest.

The files in tests/data/observations/ were written by `numa-harness check --record DIR` on the
default kernel (2x2, TCG): every observation the placement checks judged, with the guest facts
(node of each CPU, HZ, zero pfn, last_cpupid width) and the scenario notes a replay needs. The
model must agree with every one of them; and a kernel that had kept its books differently must
not: each perturbation below is a bookkeeping bug the replay has to notice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.checks.migratefilter import Access, replay_accesses
from harness.checks.observe import Inconclusive, Observation
from harness.checks.placement import replay_placement_run
from harness.checks.runner import Recording, load_recording
from harness.checks.scantiming import ClockSample
from harness.inspect import TaskNumaState
from harness.inspect.pagetable import PRESENT, PROTNONE, RW
from harness.model.timing import pid_bit

GOLDEN = Path(__file__).parent / "data" / "observations"


def _load(check: str) -> Recording:
    return load_recording(GOLDEN / f"{check}.json.gz")


def test_recorded_placements_follow_the_memory_free_running() -> None:
    """placement's recording: one observation starts the free run, and the model predicts every
    write's placement and migrations, the preferred node moving to the node the task writes from."""
    recording = _load("placement")
    run = replay_placement_run(recording.facts, recording.observations, recording.notes)
    assert not run.rounds.diffs and not run.broken, run.rounds.diffs
    assert len(run.rounds.judged) >= 4 and run.carried_rounds >= 3
    remote = max(recording.facts.node_of_cpu.values())
    assert run.rounds.judged[0]["preferred_model"] != remote
    assert run.rounds.judged[-1]["preferred_model"] == remote
    assert sum(r["faults_replayed"] for r in run.rounds.judged) >= 4 * 128


def _first_write_with_first_page_left_on_node_0(recording: Recording) -> tuple[str, int, Observation]:
    """The first access of the placement recording, with the region's first page shown on node 0
    (where it was before the write): its label, the page's address and the changed observation."""
    label = next(k for k in sorted(recording.observations) if recording.notes[k]["kind"] == "access")
    obs = recording.observations[label]
    low = int(recording.notes[label]["region"][0])
    index = int(np.flatnonzero(obs.table.vaddr == np.uint64(low))[0])
    node = obs.table.node.copy()
    node[index] = 0
    return label, low, replace(obs, table=replace(obs.table, node=node))


def test_a_migration_placement_did_not_make_is_caught() -> None:
    """The placement recording with one written page left on node 0 in the kernel's view at the
    end of the first write, with nothing else changed: the model moved it, so the free run must
    report the page (a kernel whose migrations silently went missing)."""
    recording = _load("placement")
    label, low, changed = _first_write_with_first_page_left_on_node_0(recording)
    perturbed = {**recording.observations, label: changed}
    run = replay_placement_run(recording.facts, perturbed, recording.notes)
    assert run.broken and any(f"{low:#x}" in d for d in run.rounds.diffs), run.rounds.diffs


def test_a_migration_refused_outside_the_rules_is_inconclusive() -> None:
    """The same page left on node 0, but counted by the kernel as a failed migration
    (numa_faults_locality[2]): an isolation failure the model cannot know, so the scenario is
    inconclusive (retried by the runner) rather than failed."""
    recording = _load("placement")
    label, _, left = _first_write_with_first_page_left_on_node_0(recording)
    remote, local, _ = left.task.locality
    changed = _with_task(left, locality=(remote, local, 1))
    with pytest.raises(Inconclusive, match="refused"):
        replay_placement_run(recording.facts, {**recording.observations, label: changed}, recording.notes)


def test_recorded_exact_rounds_replay_free_running() -> None:
    recording = _load("placement-exact")
    run = replay_placement_run(recording.facts, recording.observations, recording.notes)
    assert not run.rounds.diffs and not run.broken, run.rounds.diffs
    assert run.carried_rounds >= 2, "the recording must hold rounds the model carried itself"
    kinds = [recording.notes[k]["kind"] for k in sorted(recording.observations)]
    assert kinds[0] == "start" and kinds.count("start") == 1, "one observation starts the free run"
    assert "access" in kinds and "spin" in kinds
    assert run.free is not None and run.free.replay.inputs.get("passes whose numa_pte_updates were compared")


def test_recorded_exact_rounds_on_6_1_replay_under_its_rules() -> None:
    """The same check on Debian's 6.1: the free run holds under 6.1's rules (no per-VMA scan
    state, KernelRules.vma_scan_gate), and not under 6.12's, whose passes would have kept
    numab_state the 6.1 kernel does not have."""
    recording = _load("placement-exact-6.1")
    assert recording.facts.rules.release == "6.1"
    run = replay_placement_run(recording.facts, recording.observations, recording.notes)
    assert not run.rounds.diffs and not run.broken, run.rounds.diffs
    assert run.carried_rounds >= 2
    as_6_12 = replace(recording.facts, release="6.12.117")
    wrong = replay_placement_run(as_6_12, recording.observations, recording.notes)
    assert wrong.broken and any("numab" in d for d in wrong.rounds.diffs), wrong.rounds.diffs


def _with_task(obs: Observation, **changes: object) -> Observation:
    return replace(obs, task=replace(obs.task, **changes))  # type: ignore[arg-type]


def _with_mm(obs: Observation, **changes: object) -> Observation:
    return replace(obs, mm=replace(obs.mm, **changes))  # type: ignore[arg-type]


def _first_spin_after_a_read(recording: Recording) -> str:
    """The label of the first spin observation after the first read: the model carries the
    books it replayed there."""
    labels = sorted(recording.observations)
    kinds = [recording.notes[k]["kind"] for k in labels]
    return labels[kinds.index("access") + 1]


def _membuf_plus_one(t: TaskNumaState) -> dict[str, object]:
    membuf = [(s + 1, p) if nid == 0 else (s, p) for nid, (s, p) in enumerate(t.faults["membuf"])]
    return {"faults": {**t.faults, "membuf": membuf}}


def _region_hint_flipped(recording: Recording, obs: Observation) -> Observation:
    """`obs` with the region's first entry turned into a hint or back (x86: PAGE_NONE is
    _PAGE_PROTNONE without _PAGE_PRESENT)."""
    low = int(recording.notes[sorted(recording.observations)[0]]["region"][0])
    index = int(np.flatnonzero(obs.table.vaddr == np.uint64(low))[0])
    raw = obs.table.raw.copy()
    raw[index] ^= np.uint64(PRESENT | PROTNONE)
    return replace(obs, table=replace(obs.table, raw=raw))


@pytest.mark.parametrize(("bug", "change"), [
    ("a remote fault counted as local", lambda t: {"locality": (t.locality[0] - 1, t.locality[1] + 1, t.locality[2])}),
    ("a shared fault on node 0 that never happened", _membuf_plus_one),
    ("the decayed history lost", lambda t: {"faults": {**t.faults, "mem": [(0, 0) for _ in t.faults["mem"]]}}),
    ("the scan period off by one slot", lambda t: {"numa_scan_period": t.numa_scan_period + 10}),
    ("numa_migrate_retry pushed a jiffy later", lambda t: {"numa_migrate_retry": t.numa_migrate_retry + 1}),
])
def test_a_kernel_keeping_other_books_is_caught(bug: str, change: Callable[[TaskNumaState], dict[str, object]]) -> None:
    """The same recording with one bookkeeping value changed where the model carries it: the
    free run must report the field, so a kernel that did this would fail placement-exact."""
    recording = _load("placement-exact")
    label = _first_spin_after_a_read(recording)
    obs = recording.observations[label]
    perturbed = {**recording.observations, label: _with_task(obs, **change(obs.task))}
    run = replay_placement_run(recording.facts, perturbed, recording.notes)
    assert run.rounds.diffs, f"{bug}: not noticed"


def _without_pass(recording: Recording, label: str) -> bool:
    """Whether no pass ran in the step that ends at `label` (the mm's offset and sequence stayed)."""
    labels = sorted(recording.observations)
    before = recording.observations[labels[labels.index(label) - 1]].mm
    after = recording.observations[label].mm
    return (before.numa_scan_offset, before.numa_scan_seq) == (after.numa_scan_offset, after.numa_scan_seq)


@pytest.mark.parametrize("bug", ["a region hint the model's passes did not set (or one they set, gone)",
                                 "the scan clock a jiffy late", "the mm's sequence a step ahead"])
def test_a_kernel_whose_scanner_went_elsewhere_is_caught(bug: str) -> None:
    """placement-exact predicts the hint set, the clock and the sequence itself from the start
    (it used to take them from each round's observation): a kernel that changed them between
    two observations fails it, at every kind of step. The clock is perturbed only in spin steps
    without a pass: a pass's jiffies, and a read's placing fault's, are inputs (numa_next_scan
    = that jiffy + period), so a jiffy later there is another run, not a bug."""
    recording = _load("placement-exact")
    tried = 0
    for label in sorted(recording.observations)[1:]:
        obs = recording.observations[label]
        if bug.startswith("a region hint"):
            changed = _region_hint_flipped(recording, obs)
        elif bug.startswith("the scan clock"):
            if recording.notes[label]["kind"] != "spin" or not _without_pass(recording, label):
                continue
            changed = _with_mm(obs, numa_next_scan=obs.mm.numa_next_scan + 1)
        else:
            changed = _with_mm(obs, numa_scan_seq=obs.mm.numa_scan_seq + 1)
        tried += 1
        run = replay_placement_run(recording.facts, {**recording.observations, label: changed}, recording.notes)
        assert run.broken and run.rounds.diffs, f"{bug} at {label} ({recording.notes[label]['kind']}): not noticed"
    assert tried >= 3


# -- scanner-window: the scanner's state carried free from one observation ----------------------


def _replay_window(recording: Recording, perturb: Callable[[str, Observation], Observation] | None = None, *,
                   faulter: bool = True) -> tuple[int, list[str]]:
    """Replay scanner-window's recorded steps from the first observation; the passes predicted
    and the first diffs (perturb changes a kernel observation before the replay sees it). With
    `faulter` False the region's faults are taken as the scanning task's, whoever made them."""
    from harness.checks.scanreplay import ScanReplay

    labels = sorted(recording.observations)
    observations = [recording.observations[label] for label in labels]
    if perturb is not None:
        observations = [perturb(label, obs) for label, obs in zip(labels, observations, strict=True)]
    notes = recording.notes[labels[0]]
    low, high = notes["region"]
    region_faulter = int(notes["faulter"]) if faulter and "faulter" in notes else None
    replay = ScanReplay.start(observations[0], recording.facts, int(notes["pid"]), (int(low), int(high)),
                              region_faulter=region_faulter)
    passes = 0
    for label, before, after in zip(labels[1:], observations, observations[1:], strict=False):
        diffs = replay.step(before, after, region_touched=bool(recording.notes[label]["touched"]))
        if diffs:
            return passes, diffs
        passes += replay.last_pass is not None
    return passes, []


def _replay_merged(recording: Recording, unseen: set[int],
                   perturb: Callable[[Observation], Observation] | None = None) -> tuple[dict[str, int], list[str]]:
    """Replay a recording with the observations `unseen` left out: the steps around each become
    one long step whose passes the model never saw one by one (what a host stall makes of a
    short spin). Returns the replay's inputs and the first diffs; `perturb` changes the last
    observation."""
    from harness.checks.scanreplay import ScanReplay

    labels = sorted(recording.observations)
    seen = [i for i in range(len(labels)) if i not in unseen]
    observations = {i: recording.observations[labels[i]] for i in seen}
    if perturb is not None:
        observations[seen[-1]] = perturb(observations[seen[-1]])
    notes = recording.notes[labels[0]]
    replay = ScanReplay.start(observations[0], recording.facts, int(notes["pid"]),
                              (int(notes["region"][0]), int(notes["region"][1])))
    for a, b in itertools.pairwise(seen):
        touched = any(bool(recording.notes[labels[i]]["touched"]) for i in range(a + 1, b + 1))
        diffs = replay.step(observations[a], observations[b], region_touched=touched)
        if diffs:
            return replay.inputs, diffs
    return replay.inputs, []


def test_a_long_step_holding_three_real_passes_is_predicted() -> None:
    """scanner-window's steps 4 to 7 seen as one step of 781 jiffies (observations 4 to 6 left
    out): three passes ran in it, each a period after the one before. A CI run under
    load once failed scanner-threads on such a step (a 0.15 s spin that took 336 jiffies)
    when the replay knew at most two passes per step."""
    inputs, diffs = _replay_merged(_load("scanner-window"), {4, 5, 6})
    assert not diffs, diffs
    assert inputs.get("long steps that held 3 passes") == 1, inputs


def test_a_long_step_that_scanned_a_window_too_far_is_caught() -> None:
    """The same long step with the kernel's scan offset one 16 MiB window further: no chain of
    passes the rules allow explains it."""
    def further(o: Observation) -> Observation:
        return replace(o, mm=replace(o.mm, numa_scan_offset=o.mm.numa_scan_offset + (16 << 20)))
    _, diffs = _replay_merged(_load("scanner-window"), {4, 5, 6}, further)
    assert any("scan offset" in d for d in diffs), diffs


# -- scanner-pids: the region faulted in by a worker thread, scanned by the main thread ----------


def _region_vma(obs: Observation, low: int) -> int:
    return next(i for i, v in enumerate(obs.vmas) if v.start <= low < v.end)


def test_recorded_scanner_pids_steps_are_predicted_with_the_workers_bit_in_the_region() -> None:
    """A real scanner-pids run: the worker's local touch in step 5 records the worker, not the
    scanning main thread, in the region's pids_active; every pass is predicted."""
    recording = _load("scanner-pids")
    passes, diffs = _replay_window(recording)
    assert not diffs, diffs
    assert passes >= 3
    touched = [label for label in sorted(recording.notes) if recording.notes[label]["touched"]]
    assert touched, "the recording must hold a step in which the worker touched the region"
    low = int(recording.notes[touched[0]]["region"][0])
    after = recording.observations[touched[0]]
    worker_bit = pid_bit(int(recording.notes[touched[0]]["faulter"]))
    numab = after.vmas[_region_vma(after, low)].numab
    assert numab is not None and (numab["pids_active"][0] | numab["pids_active"][1]) & worker_bit


def test_a_region_fault_that_left_no_bit_is_caught() -> None:
    """The same run with the worker's bit erased from the region's pids_active after its touch:
    a hint fault always records its thread (vma_set_access_pid_bit), and one pass rotates the
    words at most once, so the bit cannot be gone."""
    recording = _load("scanner-pids")
    touched = next(label for label in sorted(recording.notes) if recording.notes[label]["touched"])
    low = int(recording.notes[touched]["region"][0])

    def erase(label: str, obs: Observation) -> Observation:
        if label != touched:
            return obs
        vmas = list(obs.vmas)
        i = _region_vma(obs, low)
        numab = dict(vmas[i].numab or {})
        numab["pids_active"] = [0, 0]
        vmas[i] = replace(vmas[i], numab=numab)
        return replace(obs, vmas=vmas)
    _, diffs = _replay_window(recording, erase)
    assert any("in neither pids_active word" in d for d in diffs), diffs


def test_scanner_pids_with_the_faults_taken_as_the_scanning_threads_is_caught() -> None:
    """Replayed as if the main thread had made the region's faults (its bit in the region), the
    model's passes would find their own pid there: the kernel's state says otherwise."""
    _, diffs = _replay_window(_load("scanner-pids"), faulter=False)
    assert diffs


def _worker_pass_step(recording: Recording) -> str:
    """The step of the recording in which the worker's own trigger ran a pass: its node_stamp
    moved (the recording was kept up to that step: _WindowTally.trim_recording)."""
    labels = sorted(recording.observations)
    first = recording.observations[labels[0]].threads[0].node_stamp
    return next(label for label in labels if recording.observations[label].threads[0].node_stamp != first)


def test_a_pass_the_worker_ran_itself_is_predicted_as_the_workers() -> None:
    """A real scanner-pids run on a loaded host: the worker's CPU time passed node_stamp plus its
    200 ms period during its touch, and its trigger won numa_next_scan (node_stamp 8060000 ->
    216060000: the period and the pass's 2 * TICK_NSEC, fair.c:task_tick_numa and
    task_numa_work). The replay takes that pass as the worker's, and every step is predicted."""
    from harness.checks.scanreplay import ScanReplay

    recording = _load("scanner-pids")
    step = _worker_pass_step(recording)
    labels = sorted(recording.observations)
    observations = [recording.observations[label] for label in labels]
    notes = recording.notes[labels[0]]
    replay = ScanReplay.start(observations[0], recording.facts, int(notes["pid"]),
                              (int(notes["region"][0]), int(notes["region"][1])), region_faulter=int(notes["faulter"]))
    for label, before, after in zip(labels[1:], observations, observations[1:], strict=False):
        diffs = replay.step(before, after, region_touched=bool(recording.notes[label]["touched"]))
        assert not diffs, (label, diffs)
        if label == step:
            assert replay.last_pass is not None and replay.runner is not None and not replay.runner.is_task
    assert replay.inputs.get("passes run by the region's faulter") == 1


def test_a_pass_no_thread_was_charged_for_is_caught() -> None:
    """The same run with the worker's node_stamp showing its trigger alone (the period, not the
    pass's two ticks): the thread that wins numa_next_scan always adds 2 * TICK_NSEC
    (fair.c:task_numa_work), and the main thread's node_stamp did not move, so no thread ran
    the pass the scan offset shows."""
    recording = _load("scanner-pids")
    step = _worker_pass_step(recording)
    tick = 1_000_000_000 // recording.facts.hz

    def trigger_only(label: str, obs: Observation) -> Observation:
        if label != step:
            return obs
        worker = obs.threads[0]
        return replace(obs, threads=(replace(worker, node_stamp=worker.node_stamp - 2 * tick), *obs.threads[1:]))
    _, diffs = _replay_window(recording, trigger_only)
    assert any("two ticks in exactly one thread's node_stamp" in d for d in diffs), diffs


def test_recorded_scanner_steps_are_predicted_from_the_first_observation() -> None:
    passes, diffs = _replay_window(_load("scanner-window"))
    assert not diffs, diffs
    assert passes >= 4


def test_recorded_6_1_scanner_steps_follow_6_1s_rules() -> None:
    """scanner-window on Debian's 6.1: predicted under 6.1's rules (no per-VMA state, the late
    VMA scanned on the first pass that reaches it), and not under 6.12's, whose first pass
    would have given every VMA a numab_state and waited out the late VMA's scan delay."""
    recording = _load("scanner-window-6.1")
    assert recording.facts.rules.release == "6.1"
    passes, diffs = _replay_window(recording)
    assert not diffs, diffs
    assert passes >= 4
    as_6_12 = replace(recording, facts=replace(recording.facts, release="6.12.117"))
    _, wrong = _replay_window(as_6_12)
    assert any("numab" in d for d in wrong), wrong


def _label_of_nth_pass(recording: Recording, n: int) -> str:
    labels = sorted(recording.observations)
    seen = 0
    for before, after in itertools.pairwise(labels):
        a, b = recording.observations[before].mm, recording.observations[after].mm
        if (a.numa_scan_offset, a.numa_scan_seq) != (b.numa_scan_offset, b.numa_scan_seq):
            seen += 1
            if seen == n:
                return after
    raise AssertionError(f"the recording has fewer than {n} passes")


def _vma_numab(obs: Observation, change: Callable[[dict[str, object]], dict[str, object]]) -> Observation:
    vmas = [replace(v, numab=change(dict(v.numab))) if v.numab else v for v in obs.vmas]
    return replace(obs, vmas=vmas)


@pytest.mark.parametrize(("bug", "field", "change"), [
    ("a finished VMA not recorded as scanned", "numab prev_scan_seq",
     lambda o: _vma_numab(o, lambda n: {**n, "prev_scan_seq": int(n["prev_scan_seq"]) - 1})),  # type: ignore[call-overload]
    ("the PID window reset a jiffy late", "numab pids_active_reset",
     lambda o: _vma_numab(o, lambda n: {**n, "pids_active_reset": int(n["pids_active_reset"]) + 1})),  # type: ignore[call-overload]
    ("a scan delay for a VMA that had it", "numab next_scan",
     lambda o: _vma_numab(o, lambda n: {**n, "next_scan": int(n["next_scan"]) + 25})),  # type: ignore[call-overload]
    ("the scan offset left a page further", "scan offset",
     lambda o: replace(o, mm=replace(o.mm, numa_scan_offset=o.mm.numa_scan_offset + 4096))),
    ("the task's period not what task_scan_max says", "numa_scan_period",
     lambda o: replace(o, task=replace(o.task, numa_scan_period=o.task.numa_scan_period + 10))),
])
def test_a_kernel_keeping_other_scan_books_is_caught(bug: str, field: str, change: Callable[[Observation], Observation]) -> None:
    """Each change is a kernel that kept one field of the scanner's books differently from the
    second pass on: the replay must fail there, naming the field."""
    recording = _load("scanner-window")
    broken_from = _label_of_nth_pass(recording, 2)
    _, diffs = _replay_window(recording, lambda label, obs: change(obs) if label >= broken_from else obs)
    assert diffs, f"{bug}: not noticed"
    assert any(field in d for d in diffs), (bug, diffs)


# -- cow-sharing: fork, the child's copies, the scan and the read --------------------------------


def _cow(perturb: Callable[[str, Observation, int, int], Observation] | None = None) -> list[str]:
    """Replay cow-sharing's recording (perturb changes one kernel observation, given the index of
    the first copied and the first COW-shared entry of the region)."""
    from harness.checks.sharing import replay_cow

    recording = _load("cow-sharing")
    notes = recording.notes["forked"]
    start, copied = int(notes["region"][0]), int(notes["copied"])
    observations = dict(recording.observations)
    if perturb is not None:
        for label, obs in observations.items():
            vaddr = obs.table.vaddr
            first_copied = int(np.searchsorted(vaddr, np.uint64(start)))
            first_shared = int(np.searchsorted(vaddr, np.uint64(start + copied * 4096)))
            observations[label] = perturb(label, obs, first_copied, first_shared)
    return replay_cow(recording.facts, observations, recording.notes).diffs


def _column(obs: Observation, name: str, index: int, value: int) -> Observation:
    column = getattr(obs.table, name).copy()
    column[index] = value
    return replace(obs, table=replace(obs.table, **{name: column}))


def test_recorded_fork_is_predicted_from_the_observation_after_it() -> None:
    diffs = _cow()
    assert not diffs, diffs


@pytest.mark.parametrize(("bug", "where", "perturb"), [
    ("a COW-shared page hinted", "after a whole scan",
     lambda label, o, copied, shared: _column(o, "raw", shared, int(o.table.raw[copied])) if label == "scanned" else o),
    ("a copied page left unhinted", "after a whole scan",
     lambda label, o, copied, shared: _column(o, "raw", copied, int(o.table.raw[shared])) if label == "scanned" else o),
    ("the child's copy did not drop the original's mapping", "after the fork",
     lambda label, o, copied, shared: _column(o, "mapcount", copied, 2) if label == "forked" else o),
    ("a COW-shared page migrated by the read", "after the read",
     lambda label, o, copied, shared: _column(o, "node", shared, int(o.table.node[copied])) if label == "read" else o),
])
def test_a_kernel_that_hints_or_moves_shared_pages_is_caught(
        bug: str, where: str, perturb: Callable[[str, Observation, int, int], Observation]) -> None:
    diffs = _cow(perturb)
    assert any(d.startswith(where) for d in diffs), (bug, diffs)


# -- run_accesses: fault-migration, thp, early-scan, two-stage-filter, mthp ----------------------


def _reads_of(check: str) -> tuple[Access, ...]:
    from harness.checks.faults import FAULT_WRITES, THP_READS
    from harness.checks.largefolio import MTHP_READS
    from harness.checks.migratefilter import EARLY_READS, TWO_STAGE_READS
    from harness.checks.refusal import REFUSED_READS

    return {"fault-migration": FAULT_WRITES, "thp": THP_READS, "mthp": MTHP_READS, "early-scan": EARLY_READS,
            "two-stage-filter": TWO_STAGE_READS, "migration-refused": REFUSED_READS}[check]


def _accesses(check: str, perturb: Callable[[str, Observation, dict[str, Any]], Observation] | None = None,
              release: str = "") -> tuple[list[str], list[dict[str, Any]]]:
    """The judgement of a run_accesses check over its recording (`release`: "-6.1" for 6.1's),
    each observation through `perturb` (with the label's notes): the diffs and the judged rounds."""
    recording = _load(check + release)
    observations = {label: perturb(label, obs, recording.notes[label]) if perturb else obs
                    for label, obs in recording.observations.items()}
    finding = replay_accesses(recording.facts, observations, recording.notes, _reads_of(check))
    return list(finding.diffs), list(finding.figures["rounds"])


def _label(check: str, phase: str) -> str:
    recording = _load(check)
    return next(k for k in sorted(recording.notes) if recording.notes[k].get("phase") == phase)


def _span(notes: dict[str, Any]) -> tuple[int, int]:
    low = int(notes["region"][0])
    return low + int(notes["first"]) * 4096, low + int(notes["pages"]) * 4096


def _entries(obs: Observation, span: tuple[int, int], column: str,
             value: Callable[[int, int], int]) -> Observation:
    """`obs` with `column` of each entry in `span` set to value(vaddr, old value)."""
    table = obs.table
    inside = (table.vaddr >= np.uint64(span[0])) & (table.vaddr < np.uint64(span[1]))
    values = getattr(table, column).copy()
    values[inside] = [value(int(v), int(x)) for v, x in zip(table.vaddr[inside], values[inside], strict=True)]
    return replace(obs, table=replace(table, **{column: values}))


@pytest.mark.parametrize(("check", "release"), [
    ("fault-migration", ""), ("fault-migration", "-6.1"), ("thp", ""), ("thp", "-6.1"), ("mthp", ""),
    ("early-scan", ""), ("early-scan", "-6.1"), ("two-stage-filter", ""), ("two-stage-filter", "-6.1"),
    ("migration-refused", ""), ("migration-refused", "-6.1"),
])
def test_recorded_accesses_are_predicted_free_running(check: str, release: str) -> None:
    """Every step of the recording (6.12's; 6.1's where the check applies there: no per-VMA scan
    state, savedwrite) predicted from its one observation, each access's subject decided by
    the model."""
    diffs, rounds = _accesses(check, release=release)
    assert not diffs, diffs
    assert len(rounds) == len(_reads_of(check))
    decisions = [r["decisions"] for r in rounds]
    if check in ("early-scan", "two-stage-filter"):
        assert {"two-stage filter: the previous fault came from another node": 128} in decisions
    if check == "early-scan":
        assert {"early scan: first fault or same task": 128} in decisions


@pytest.mark.parametrize(("shift", "passes"), [(0, True), (1, False)])
def test_a_placement_in_the_observations_own_jiffy_restarts_the_clock(shift: int, passes: bool) -> None:
    """two-stage-filter's warm-up read restarts the scan clock at its placing fault
    (update_task_scan_period: numa_next_scan = jiffies + period). The guest resumes after an
    observation within the jiffy it was paused in, so the fault may run in that jiffy: the
    observation before the read moved onto the placing jiffy still passes, and moved one past
    it (the clock restarted before anything was read) fails."""
    recording = _load("two-stage-filter")
    label = _label("two-stage-filter", "warm-up")
    after = recording.observations[label]
    placing = after.mm.numa_next_scan - 800 * recording.facts.hz // 1000
    before_label = max((k for k, o in recording.observations.items() if o.balancing.jiffies < after.balancing.jiffies),
                       key=lambda k: recording.observations[k].balancing.jiffies)
    assert recording.observations[before_label].balancing.jiffies < placing

    def at_the_placing_jiffy(k: str, o: Observation, n: dict[str, Any]) -> Observation:
        if k != before_label:
            return o
        return replace(o, balancing=replace(o.balancing, jiffies=placing + shift))

    diffs, _ = _accesses("two-stage-filter", at_the_placing_jiffy)
    if passes:
        assert not diffs, diffs
    else:
        assert any("a jiffy of the step" in d for d in diffs), diffs


def test_a_kernel_that_ends_the_early_exception_early_is_caught() -> None:
    """The early-exception read (task sequence <= 4, a preferred node) with nothing moved, as a
    kernel without the "numa_scan_seq <= 4" clause would leave it: the replay must name a page
    and the rule the model followed for it."""
    label = _label("early-scan", "early exception")
    diffs, _ = _accesses("early-scan", lambda k, o, n: _entries(o, _span(n), "node", lambda va, x: 0) if k == label else o)
    assert any("early scan: first fault or same task" in d and "kernel node 0" in d for d in diffs), diffs


@pytest.mark.parametrize(("phase", "node_of", "rule"), [
    ("first fault from the far node", lambda va, node: 1, "two-stage filter"),
    ("second fault from the far node", lambda va, node: 0, "same task faulted from this node twice"),
    ("second fault from the far node", lambda va, node: 0 if va % (8 * 4096) == 0 else node,
     "same task faulted from this node twice"),
])
def test_a_kernel_that_moves_against_the_filter_is_caught(
        phase: str, node_of: Callable[[int, int], int], rule: str) -> None:
    """two-stage-filter's refused read with its pages moved anyway (a filter that never refuses),
    or its second read with all or every eighth page left behind (a filter that always refuses):
    the step must fail naming the rule."""
    label = _label("two-stage-filter", phase)
    diffs, _ = _accesses("two-stage-filter", lambda k, o, n: _entries(o, _span(n), "node", node_of) if k == label else o)
    assert any(rule in d for d in diffs), diffs


def test_a_kernel_that_moves_a_page_nobody_read_is_caught() -> None:
    """The refused read covers pages 1..128; a kernel that moved page 0 (hinted, not read) in
    that step must not pass."""
    label = _label("two-stage-filter", "first fault from the far node")
    diffs, _ = _accesses("two-stage-filter", lambda k, o, n: _entries(
        o, _span({**n, "first": 0, "pages": 1}), "node", lambda va, x: 1 - x) if k == label else o)
    assert any("node" in d for d in diffs), diffs


@pytest.mark.parametrize(("bug", "column", "value", "where"), [
    ("the write's wp fault did not reset last_cpupid", "last_cpupid", lambda va, x: 0x401, "last_cpupid"),
    ("a page written after migrating left read-only", "raw", lambda va, x: x & ~RW, "write bit"),
    ("a page the rules migrate left on node 0", "node", lambda va, x: 0, "first fault"),
])
def test_a_kernel_that_migrates_a_written_page_otherwise_is_caught(
        bug: str, column: str, value: Callable[[int, int], int], where: str) -> None:
    """fault-migration's write with one entry (its first page) changed the way `bug` says."""
    label = _label("fault-migration", "write from the far node")

    def first_page(k: str, o: Observation, n: dict[str, Any]) -> Observation:
        if k != label:
            return o
        start = _span(n)[0]
        return _entries(o, (start, start + 4096), column, value)
    diffs, _ = _accesses("fault-migration", first_page)
    assert any(where in d for d in diffs), (bug, diffs)


@pytest.mark.parametrize(("bug", "perturb", "where"), [
    ("a THP left on node 0", lambda o, n: _entries(o, _span(n), "node", lambda va, x: 0), "kernel node 0"),
    ("a migrated THP mapped writable", lambda o, n: _entries(o, _span(n), "raw", lambda va, x: x | RW), "write bit"),
    ("thp_migration_success not counted", lambda o, n: replace(
        o, vmstat={**o.vmstat, "thp_migration_success": o.vmstat["thp_migration_success"] - 1}),
     "thp_migration_success"),
])
def test_a_kernel_that_migrates_thps_otherwise_is_caught(
        bug: str, perturb: Callable[[Observation, dict[str, Any]], Observation], where: str) -> None:
    label = _label("thp", "read from the far node")
    diffs, _ = _accesses("thp", lambda k, o, n: perturb(o, n) if k == label else o)
    assert any(where in d for d in diffs), (bug, diffs)


def test_a_pass_that_hints_a_pmd_uncounted_is_caught() -> None:
    """A spin step whose pass hinted the PMDs with numa_huge_pte_updates not counting them."""
    recording = _load("thp")
    steps = sorted(recording.notes)
    label = next(k for k, prev in zip(steps[1:], steps, strict=False) if recording.notes[k]["kind"] == "spin"
                 and recording.observations[k].vmstat["numa_huge_pte_updates"]
                 > recording.observations[prev].vmstat["numa_huge_pte_updates"])
    diffs, _ = _accesses("thp", lambda k, o, n: replace(o, vmstat={
        **o.vmstat, "numa_huge_pte_updates": o.vmstat["numa_huge_pte_updates"] - 1}) if k >= label else o)
    assert any("numa_huge_pte_updates" in d for d in diffs), diffs


def test_a_kernel_that_faults_per_pte_is_caught() -> None:
    """The remote read as a kernel that restored only the faulting PTE of each folio would book
    it: sixteen faults of sixteen pages per folio."""
    label = _label("mthp", "remote")

    def per_pte(k: str, o: Observation, n: dict[str, Any]) -> Observation:
        if k != label:
            return o
        loc = o.task.locality
        return _with_task(o, locality=(loc[0] + 15 * 1024, loc[1], loc[2]))
    diffs, _ = _accesses("mthp", per_pte)
    assert any("numa_faults_locality" in d for d in diffs), diffs


def test_a_folio_left_partly_hinted_is_caught() -> None:
    """One PTE of a folio the local read restored still PROT_NONE after it: the replay names it."""
    label = _label("mthp", "local")

    def one_left(k: str, o: Observation, n: dict[str, Any]) -> Observation:
        if k != label:
            return o
        index = int(np.searchsorted(o.table.vaddr, np.uint64(_span(n)[0] + 4096)))
        before = _load("mthp").observations[sorted(_load("mthp").observations)[
            sorted(_load("mthp").observations).index(k) - 1]]
        return _column(o, "raw", index, int(before.table.raw[index]))
    diffs, _ = _accesses("mthp", one_left)
    assert any("hint=True" in d for d in diffs), diffs


# -- migration-refused: the target node nearly full (a run_accesses check) ---------------------


def test_recorded_refusals_are_predicted_on_both_releases() -> None:
    for release in ("", "-6.1"):
        diffs, rounds = _accesses("migration-refused", release=release)
        assert not diffs, (release, diffs)
        assert rounds[0]["decisions"] == {"migration failed": 1024}
        assert rounds[1]["period_model"] == 2 * rounds[1]["period_before"]


def _step(phase: str, change: Callable[[Observation, dict[str, Any]], Observation]) -> list[str]:
    label = _label("migration-refused", phase)
    diffs, _ = _accesses("migration-refused", lambda k, o, n: change(o, n) if k == label else o)
    return diffs


def test_a_page_migrated_into_the_full_node_is_caught() -> None:
    diffs = _step("every migration refused", lambda o, n: _entries(o, (_span(n)[0], _span(n)[0] + 4096), "node",
                                                                   lambda va, x: 1))
    assert any("migration failed" in d and "kernel node 1" in d for d in diffs), diffs


def test_a_refusal_not_booked_as_failed_is_caught() -> None:
    diffs = _step("every migration refused", lambda o, n: _with_task(
        o, locality=(o.task.locality[0], o.task.locality[1], o.task.locality[2] - 1)))
    assert any("numa_faults_locality" in d for d in diffs), diffs


def test_a_period_not_doubled_after_refusals_is_caught() -> None:
    diffs = _step("the placement after the refusals", lambda o, n: _with_task(
        o, numa_scan_period=o.task.numa_scan_period // 2))
    assert any("numa_scan_period" in d for d in diffs), diffs


# -- scanner-threads: a pass in the middle of a touch --------------------------------------------


def test_a_pass_in_the_middle_of_a_touch_is_predicted() -> None:
    """Recorded on a clean kernel when the replay still assumed a touch came wholly before or
    after the step's pass: with mm_users 2 the pass hinted again the 1,191 pages the touch had
    restored so far (numa_pte_updates +1,203) and the touch restored the rest after it."""
    passes, diffs = _replay_window(_load("scanner-threads"))
    assert not diffs, diffs
    assert passes == 1


def test_a_pass_count_no_order_explains_is_caught() -> None:
    recording = _load("scanner-threads")
    last = sorted(recording.observations)[-1]

    def miscounted(label: str, o: Observation) -> Observation:
        if label != last:
            return o
        return replace(o, vmstat={**o.vmstat, "numa_pte_updates": o.vmstat["numa_pte_updates"] - 600})
    _, diffs = _replay_window(recording, miscounted)
    assert any("numa_pte_updates" in d for d in diffs), diffs


# -- numa-group: two threads, their first groups, the tie-break and the join ----------------------


def _group(perturb: Callable[[str, Observation], Observation] | None = None) -> list[str]:
    from harness.checks.numagroup import replay_group

    recording = _load("numa-group")
    observations = {label: perturb(label, obs) if perturb else obs for label, obs in recording.observations.items()}
    return replay_group(recording.facts, observations, recording.notes).diffs


def _group_step(name: str) -> tuple[str, list[int]]:
    """The label of a step's observation after the reads, and the indexes of its readers."""
    recording = _load("numa-group")
    label = next(k for k in recording.observations if k.endswith("-done") and recording.notes[k]["step"] == name)
    return label, [int(read[0]) - 1 for read in recording.notes[label]["reads"]]


def _joined_step() -> tuple[str, int]:
    """The label of the join step's observation after the reads, and the index of the reader."""
    label, readers = _group_step("joined")
    return label, readers[0]


def test_recorded_groups_form_and_join_as_predicted() -> None:
    recording = _load("numa-group")
    diffs = _group()
    assert not diffs, diffs
    label, _ = _joined_step()
    groups = recording.observations[label].groups
    assert groups[0] is not None and groups[0] == groups[1] and groups[0].nr_tasks == 2


def test_a_thread_that_did_not_join_is_caught() -> None:
    label, reader = _joined_step()

    def apart(lbl: str, o: Observation) -> Observation:
        if lbl != label:
            return o
        mine = o.groups[reader]
        assert mine is not None
        own = replace(mine, gid=o.threads[reader].pid, nr_tasks=1, address=mine.address + 0x1000)
        other = replace(mine, nr_tasks=1)
        return replace(o, groups=tuple(own if i == reader else other for i in range(2)))
    diffs = _group(apart)
    assert any(d.startswith("joined: groups") for d in diffs), diffs


def test_joining_faults_counted_private_are_caught() -> None:
    label, reader = _joined_step()

    def private(lbl: str, o: Observation) -> Observation:
        if lbl != label:
            return o
        t = o.threads[reader]
        membuf = [(s - 8, p + 8) if s >= 8 else (s, p) for s, p in t.faults["membuf"]]
        moved = replace(t, faults={**t.faults, "membuf": membuf})
        return replace(o, threads=tuple(moved if i == reader else o.threads[i] for i in range(2)))
    diffs = _group(private)
    assert any(d.startswith("joined: books") and "membuf books (shared, private)" in d for d in diffs), diffs


def test_a_group_whose_books_are_not_its_members_is_caught() -> None:
    label, _ = _joined_step()

    def lost(lbl: str, o: Observation) -> Observation:
        if lbl != label:
            return o
        g = o.groups[0]
        assert g is not None
        mem = [(s, max(p - 100, 0)) for s, p in g.faults["mem"]]
        changed = replace(g, faults={**g.faults, "mem": mem})
        return replace(o, groups=(changed, changed))
    diffs = _group(lost)
    assert any("members' summed" in d for d in diffs), diffs


def test_a_pass_during_the_reads_makes_the_step_inconclusive() -> None:
    from harness.checks.observe import Inconclusive

    label, _ = _joined_step()

    def passed(lbl: str, o: Observation) -> Observation:
        return replace(o, mm=replace(o.mm, numa_scan_seq=o.mm.numa_scan_seq + 1)) if lbl == label else o
    with pytest.raises(Inconclusive, match="during the reads"):
        _group(passed)


def test_a_tie_broken_the_wrong_way_is_caught() -> None:
    recording = _load("numa-group")
    label = next(k for k in recording.observations if k.endswith("-done") and recording.notes[k]["step"] == "tie kept")
    reader = int(recording.notes[label]["reads"][0][0]) - 1

    def joined_low(lbl: str, o: Observation) -> Observation:
        if lbl != label:
            return o
        low = o.groups[1 - reader]
        assert low is not None
        both = replace(low, nr_tasks=2)
        return replace(o, groups=(both, both))
    diffs = _group(joined_low)
    assert any(d.startswith("tie kept: groups") for d in diffs), diffs


def _in_decides(change: Callable[[Observation], Observation]) -> list[str]:
    label, _ = _group_step("group decides")
    return _group(lambda lbl, o: change(o) if lbl == label else o)


def test_recorded_group_decides_both_ways() -> None:
    """The recording's group-decides step took the group half of should_numa_migrate_memory both
    ways (one reader's pages moved, the other's stayed) and counted its remote shared faults
    local inside the group's two active nodes."""
    from harness.checks.numagroup import replay_group

    recording = _load("numa-group")
    decisions = replay_group(recording.facts, recording.observations, recording.notes).figures["group_decisions"]
    assert any("favours the destination" in k for k in decisions) and any("keeps the page" in k for k in decisions)
    assert any("counted local" in k for k in decisions), decisions


def test_a_group_that_ignores_its_books_is_caught() -> None:
    """Every page the group kept, moved to the reader's node (what a kernel without the group test
    would do): the model says where each page belongs."""
    recording = _load("numa-group")
    label, _readers = _group_step("group decides")
    before = recording.observations[label.replace("-done", "-hinted")]
    start_nodes = {e.vaddr: e.node for e in before.table.within(*recording.notes["start"]["region"])}

    def moved(o: Observation) -> Observation:
        nodes = o.table.node.copy()
        for i, e in enumerate(o.table):
            if e.vaddr in start_nodes and e.node == start_nodes[e.vaddr]:
                nodes[i] = 1 - e.node
        return replace(o, table=replace(o.table, node=nodes))
    diffs = _in_decides(moved)
    assert any(d.startswith("group decides: pages") for d in diffs), diffs


def test_remote_shared_faults_counted_remote_are_caught() -> None:
    _label, readers = _group_step("group decides")

    def remote(o: Observation) -> Observation:
        threads = list(o.threads)
        for r in readers:
            remote_, local, failed = threads[r].locality
            threads[r] = replace(threads[r], locality=(remote_ + local, 0, failed))
        return replace(o, threads=tuple(threads))
    diffs = _in_decides(remote)
    assert any("numa_faults_locality" in d for d in diffs), diffs


def test_cpu_books_not_weighted_by_runtime_are_caught() -> None:
    """A placement that copied the raw CPU-fault buffer into NUMA_CPU (no f_weight)."""
    def unweighted(o: Observation) -> Observation:
        groups = []
        for g in o.groups:
            groups.append(None if g is None else replace(g, faults={**g.faults, "cpu": [(s, p // 1000) for s, p in
                                                                                       g.faults["cpu"]]}))
        return replace(o, groups=tuple(groups))
    diffs = _in_decides(unweighted)
    assert any(d.startswith("group decides: group books: group") and "cpu" in d for d in diffs), diffs


def test_a_pinned_member_that_keeps_the_group_node_is_caught() -> None:
    """A group member that cannot move keeps the node it runs on as its preferred node
    (task_numa_migrate); keeping the group's choice instead is caught."""
    _label, readers = _group_step("group decides")

    def stubborn(o: Observation) -> Observation:
        threads = list(o.threads)
        for r in readers:
            threads[r] = replace(threads[r], numa_preferred_nid=1 - threads[r].numa_preferred_nid)
        return replace(o, threads=tuple(threads))
    diffs = _in_decides(stubborn)
    assert any("numa_preferred_nid" in d for d in diffs), diffs


def test_active_nodes_not_recounted_are_caught() -> None:
    def stale(lbl: str, o: Observation) -> Observation:
        if not lbl.endswith("-done"):
            return o
        return replace(o, groups=tuple(None if g is None else replace(g, active_nodes=g.active_nodes + 1)
                                       for g in o.groups))
    diffs = _group(stale)
    assert any(": group books: " in d and "active_nodes" in d for d in diffs), diffs


def test_a_scan_period_bound_not_scaled_by_the_group_is_caught() -> None:
    """task_scan_max grows with a group's references and shared faults; a kernel that bounded a
    member's period as a lone task's is caught."""
    _label, readers = _group_step("group decides")

    def lone(o: Observation) -> Observation:
        threads = list(o.threads)
        for r in readers:
            threads[r] = replace(threads[r], numa_scan_period_max=3000)
        return replace(o, threads=tuple(threads))
    diffs = _in_decides(lone)
    assert any("numa_scan_period_max" in d for d in diffs), diffs


def test_a_period_kept_across_a_move_to_another_node_is_caught() -> None:
    """update_scan_period restarts the period at task_scan_start when a worker is moved away from
    its preferred node: in group decides that decides worker 2's period."""
    label, _readers = _group_step("group decides")
    before = _load("numa-group").observations[label.replace("-done", "-hinted")]

    def kept(o: Observation) -> Observation:
        return replace(o, threads=tuple(replace(t, numa_scan_period=b.numa_scan_period)
                                        for t, b in zip(o.threads, before.threads, strict=True)))
    diffs = _in_decides(kept)
    assert any("numa_scan_period " in d for d in diffs), diffs


def test_a_migrate_retry_not_rearmed_is_caught() -> None:
    """numa_migrate_preferred sets numa_migrate_retry at a member's fault; left as it was, caught."""
    label, readers = _group_step("group decides")
    before = _load("numa-group").observations[label.replace("-done", "-hinted")]

    def stale(o: Observation) -> Observation:
        return replace(o, threads=tuple(replace(t, numa_migrate_retry=b.numa_migrate_retry) if i in readers else t
                                        for i, (t, b) in enumerate(zip(o.threads, before.threads, strict=True))))
    diffs = _in_decides(stale)
    assert any("numa_migrate_retry" in d for d in diffs), diffs


def test_recorded_destination_busier_decides_alone() -> None:
    """The recording's last step moved every page of slice D by "the destination's CPU faults
    exceed 3x the source's", with books under which the 3/4 hysteresis would have kept them."""
    from harness.checks.groupcarry import DST_BUSIER_ALONE
    from harness.checks.numagroup import replay_group

    recording = _load("numa-group")
    judged = replay_group(recording.facts, recording.observations, recording.notes)
    alone = [count for key, count in judged.figures["busier_decisions"].items() if DST_BUSIER_ALONE in key]
    assert alone == [256], judged.figures["busier_decisions"]


def test_pages_a_reversed_busier_test_keeps_are_caught() -> None:
    """What a kernel whose busier test looked at the source would leave: slice D where it was."""
    from harness.checks.numagroup import DST_BUSIER

    recording = _load("numa-group")
    label, _readers = _group_step(DST_BUSIER)
    d_start, d_end = recording.notes["start"]["slices"]["D"]
    far = recording.observations["start"].table.within(d_start, d_end).node[0]

    def kept(lbl: str, o: Observation) -> Observation:
        if lbl != label:
            return o
        nodes = o.table.node.copy()
        nodes[(o.table.vaddr >= d_start) & (o.table.vaddr < d_end)] = far
        return replace(o, table=replace(o.table, node=nodes))
    diffs = _group(kept)
    assert any(d.startswith(f"{DST_BUSIER}: pages") for d in diffs), diffs


def _first_two_steps(recording: Recording) -> dict[str, Observation]:
    """A recording's observations as if its check had stopped after two steps."""
    return {k: o for k, o in recording.observations.items() if not k.startswith("step") or k[4] in "01"}


@pytest.mark.parametrize("check", ["numa-group", "numa-group-shared"])
def test_a_run_cut_short_is_judged_as_far_as_it_went(check: str) -> None:
    """The group checks stop after a step the model disagrees with: the steps they made are
    judged in full, the tests that the whole scenario kept its subject are not."""
    from harness.checks.numagroup import replay_group
    from harness.checks.numagroupshared import replay_shared

    replay = replay_group if check == "numa-group" else replay_shared
    recording = _load(check)
    first_two = _first_two_steps(recording)
    cut = replay(recording.facts, first_two, recording.notes, complete=False)
    assert not cut.diffs, cut.diffs
    whole = replay(recording.facts, first_two, recording.notes)
    assert any("lost its subject" in d for d in whole.diffs), whole.diffs


def test_a_cut_short_run_still_fails_its_last_step() -> None:
    from harness.checks.numagroup import replay_group

    recording = _load("numa-group")
    created, _ = _group_step("groups created")

    def lost(o: Observation) -> Observation:
        return replace(o, groups=(None, None))
    broken = replay_group(recording.facts, {k: lost(o) if k == created else o
                                            for k, o in _first_two_steps(recording).items()},
                          recording.notes, complete=False)
    assert any(d.startswith("groups created: groups") for d in broken.diffs), broken.diffs


def test_a_region_first_touched_elsewhere_is_inconclusive() -> None:
    from harness.checks.observe import Inconclusive

    recording = _load("numa-group")
    c_start, c_end = recording.notes["start"]["slices"]["C1"]

    def moved(lbl: str, o: Observation) -> Observation:
        if lbl != "start":
            return o
        nodes = o.table.node.copy()
        nodes[(o.table.vaddr >= c_start) & (o.table.vaddr < c_end)] ^= 1
        return replace(o, table=replace(o.table, node=nodes))
    with pytest.raises(Inconclusive, match="slice C1"):
        _group(moved)


# -- scan-timing: the scanner's clock sampled while two threads spin ------------------------------


def _timing(perturb: Callable[[list[ClockSample]], list[ClockSample]] | None = None) -> list[str]:
    from harness.checks.scantiming import judge_timing

    recording = _load("scan-timing")
    notes = recording.notes["samples"]
    samples = [ClockSample.from_json(s) for s in notes["samples"]]
    return judge_timing(recording.facts, perturb(samples) if perturb else samples, int(notes["period_ms"])).diffs


def _first_pass(samples: list[ClockSample]) -> int:
    """The index of the sample that first shows a pass."""
    return next(i for i in range(1, len(samples)) if samples[i].numa_next_scan != samples[i - 1].numa_next_scan)


def test_recorded_scan_clock_follows_the_period() -> None:
    diffs = _timing()
    assert not diffs, diffs


def test_a_clock_set_half_a_period_short_is_caught() -> None:
    hz = _load("scan-timing").facts.hz

    def halved(samples: list[ClockSample]) -> list[ClockSample]:
        i = _first_pass(samples)
        shift = hz // 2
        return [replace(s, numa_next_scan=s.numa_next_scan - shift) if k >= i else s for k, s in enumerate(samples)]
    diffs = _timing(halved)
    assert any("msecs_to_jiffies(numa_scan_period)" in d for d in diffs), diffs


def test_a_pass_charged_to_no_thread_is_caught() -> None:
    def uncharged(samples: list[ClockSample]) -> list[ClockSample]:
        i = _first_pass(samples)
        before = samples[i - 1]
        return [replace(s, node_stamp=tuple(min(x, before.node_stamp[n] + (x - before.node_stamp[n]) // 10**9 * 10**9)
                                            for n, x in enumerate(s.node_stamp))) if k == i else s
                for k, s in enumerate(samples)]
    diffs = _timing(uncharged)
    assert any("charged" in d or "node_stamp" in d for d in diffs), diffs


def test_a_trigger_that_found_the_clock_open_and_did_nothing_is_caught() -> None:
    def lost(samples: list[ClockSample]) -> list[ClockSample]:
        i = _first_pass(samples)
        # The pass never happened: the clock stays where it was, the work is not queued.
        old = samples[i - 1].numa_next_scan
        return [replace(s, numa_next_scan=old, work_pending=(False,) * len(s.work_pending)) if k == i else s
                for k, s in enumerate(samples)]
    diffs = _timing(lost)
    assert any("neither ran a pass nor has the work still queued" in d for d in diffs), diffs


# -- numa-group-shared: two processes on a MAP_SHARED buffer --------------------------------------


def _shared(perturb: Callable[[str, Observation], Observation] | None = None) -> list[str]:
    from harness.checks.numagroupshared import replay_shared

    recording = _load("numa-group-shared")
    observations = {label: perturb(label, obs) if perturb else obs for label, obs in recording.observations.items()}
    return replay_shared(recording.facts, observations, recording.notes).diffs


def _last_step_labels() -> tuple[str, str, int]:
    """The join step's done observations (worker 1, worker 2) and the reader's index."""
    recording = _load("numa-group-shared")
    last = max(int(k.split("-")[0][4:]) for k in recording.observations if k.startswith("step"))
    reader = int(recording.notes[f"step{last}-done-w1"]["reads"][0][0]) - 1
    return f"step{last}-done-w1", f"step{last}-done-w2", reader


def test_recorded_processes_share_join_and_false_share_as_predicted() -> None:
    diffs = _shared()
    assert not diffs, diffs


def test_a_worker_whose_pid_ends_in_0xff_is_predicted() -> None:
    """A real run where worker 1 was pid 1279 (0x4ff): its last_cpupid's pid bits are all ones,
    which cpupid_pid_unset takes for "unset", so worker 2's faults on its pages in "groups
    created" passed as first faults and migrated all 256 pages that a plain pid's two-stage
    filter keeps. The model mirrors that aliasing (model/faults.py:should_numa_migrate_memory);
    before it did, this run was a false alarm."""
    from harness.checks.numagroupshared import replay_shared

    recording = _load("numa-group-shared-pid-4ff")
    assert recording.notes["mapped-w1"]["pids"]["1"] & 0xFF == 0xFF
    result = replay_shared(recording.facts, recording.observations, recording.notes)
    assert not result.diffs, result.diffs


def test_false_sharing_counted_shared_is_caught() -> None:
    *labels, reader = _last_step_labels()

    def shared(lbl: str, o: Observation) -> Observation:
        if lbl != labels[reader]:
            return o
        membuf = [(s + p, 0) for s, p in o.task.faults["membuf"]]
        return _with_task(o, faults={**o.task.faults, "membuf": membuf})
    diffs = _shared(shared)
    assert any("books" in d and "private" in d for d in diffs), diffs


def test_processes_that_did_not_join_are_caught() -> None:
    *labels, reader = _last_step_labels()

    def apart(lbl: str, o: Observation) -> Observation:
        if lbl not in labels:
            return o
        g = o.groups[0]
        assert g is not None
        alone = replace(g, nr_tasks=1, gid=o.task.pid, address=g.address + (0x1000 if lbl == labels[reader] else 0))
        return replace(o, groups=(alone,))
    diffs = _shared(apart)
    assert any(": groups: " in d for d in diffs), diffs


def test_a_migration_that_left_the_other_mapping_behind_is_caught() -> None:
    recording = _load("numa-group-shared")
    label = "step0-done-w2"
    region = int(recording.notes["mapped-w1"]["region"][0])

    def stale(lbl: str, o: Observation) -> Observation:
        if lbl != label:
            return o
        # Worker 2's entry of the first page worker 1 migrated, still on the node it left.
        index = int(np.searchsorted(o.table.vaddr, np.uint64(region)))
        return _column(o, "node", index, int(recording.observations["step0-hinted-w2"].table.node[index]))
    diffs = _shared(stale)
    assert any(d.startswith("first faults: entries: worker 2") for d in diffs), diffs


def test_free_run_spin_steps_end_past_the_next_trigger_within_a_period() -> None:
    """PlacementRun.spin_length over every observation of a recording: never shorter than the
    CPU time the model says is left to the next task_tick_numa trigger (plus the tick and the
    pass), never a whole period (so a step holds one trigger), never below SPIN_MIN_S."""
    from harness.checks.placement import SPIN_MIN_S, SPIN_PAST_TRIGGER_S, PlacementRun

    recording = _load("two-stage-filter")
    labels = sorted(recording.observations)
    first = recording.notes[labels[0]]
    run = PlacementRun(recording.facts, (int(first["region"][0]), int(first["region"][1])), int(first["pid"]),
                       int(first["cpu"]), write=False, margin_ms=int(first["margin_ms"]))
    run.begin(recording.observations[labels[0]])
    assert run.free is not None
    replay = run.free.replay
    for label in labels:
        obs = recording.observations[label]
        length = run.spin_length(obs)
        due = (replay.node_stamp + replay.period_ms * 1_000_000 - obs.task.sum_exec_runtime) / 1e9
        assert SPIN_MIN_S <= length <= (replay.period_ms - 100) / 1000
        assert length >= min(due + SPIN_PAST_TRIGGER_S, (replay.period_ms - 100) / 1000) - 0.001


def test_a_setup_read_that_moved_the_region_back_is_inconclusive() -> None:
    """placement-exact's premise: the main thread's setup read left the region on the far node.
    A recording's start with the first page on the near node (as a helper whose tid read as
    "unset" in last_cpupid leaves it) is inconclusive, never a wait that ends in a failure."""
    from harness.checks.placement import _still_on

    recording = _load("placement-exact")
    label = sorted(recording.observations)[0]
    start = recording.observations[label]
    low, high = (int(x) for x in recording.notes[label]["region"])
    region = (low, high)
    far = int(start.table.within(low, high).node[0])
    _still_on(start, region, far)  # the recording's own start holds
    moved = _entries(start, (low, low + 4096), "node", lambda va, x: 1 - far)
    with pytest.raises(Inconclusive, match="moved off node"):
        _still_on(moved, region, far)


def test_6_1_a_page_left_in_place_that_lost_its_write_bit_is_caught() -> None:
    """Under 6.1's savedwrite a refused page comes back with the write bit it had (writable
    here): two-stage-filter's 6.1 refused read with one such page read-only must fail."""
    label = next(k for k in sorted(_load("two-stage-filter-6.1").notes)
                 if _load("two-stage-filter-6.1").notes[k].get("phase") == "first fault from the far node")

    def lost(k: str, o: Observation, n: dict[str, Any]) -> Observation:
        if k != label:
            return o
        start = _span(n)[0]
        return _entries(o, (start, start + 4096), "raw", lambda va, x: x & ~RW)
    diffs, _ = _accesses("two-stage-filter", lost, release="-6.1")
    assert any("write bit" in d for d in diffs), diffs
