"""The model of fair.c:task_numa_migrate (harness/model/taskmove.py) on hand-built machines: two
nodes of two CPUs each (CPUs 0-1 on node 0, 2-3 on node 1), as the guests have."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.checks.taskplacement import SwapPremise
from harness.model import (
    MEM,
    Candidate,
    Choice,
    NodeStats,
    NodeType,
    NodeView,
    Task,
    numa_imbalance_pct,
    task_numa_migrate,
    task_weight,
)
from harness.model.taskmove import _c_div, load_too_imbalanced

NODE_OF_CPU = {0: 0, 1: 0, 2: 1, 3: 1}
PCT = numa_imbalance_pct()
# Two always-running tasks on a node of two CPUs: every PELT sum at its ceiling.
BUSY = NodeStats(load=2048, runnable=2048, util=2048, nr_running=2, compute_capacity=2048, weight=2)
ONE_IDLE = NodeStats(load=1024, runnable=1024, util=1024, nr_running=1, compute_capacity=2048, weight=2)


def _task(pid: int, preferred: int, faults_on: dict[int, int]) -> Task:
    """A task whose memory faults (private) are `faults_on` per node."""
    books = [[(0, 0), (0, 0)] for _ in range(4)]
    for nid, count in faults_on.items():
        books[MEM][nid] = (0, count)
    return Task(pid, 2, numa_preferred_nid=preferred, faults=tuple(tuple(b) for b in books),
                total_numa_faults=sum(faults_on.values()))


def _node(stats: NodeStats, running: dict[int, Candidate | None]) -> NodeView:
    return NodeView.gathered(stats, running, PCT)


MOVER = Candidate(_task(10, 0, {0: 4096}), h_load=1024)  # its memory on node 0, running on CPU 2
PARTNER = Candidate(_task(20, 1, {1: 4096}), h_load=1024)  # its memory on node 1, running on CPU 0
PINNED_0 = Candidate(_task(30, -1, {}), allowed=frozenset({0, 1}), h_load=1024)
PINNED_1 = Candidate(_task(40, -1, {}), allowed=frozenset({2, 3}), h_load=1024)


def test_numa_imbalance_pct_is_half_the_numa_domains_margin() -> None:
    assert numa_imbalance_pct(117) == 108


def test_numa_classify() -> None:
    assert BUSY.classify(PCT) is NodeType.FULLY_BUSY
    assert ONE_IDLE.classify(PCT) is NodeType.HAS_SPARE
    # As many tasks as CPUs, but using little of them: spare capacity.
    assert NodeStats(600, 600, 600, 2, 2048, 2).classify(PCT) is NodeType.HAS_SPARE
    assert NodeStats(3072, 3072, 2048, 3, 2048, 2).classify(PCT) is NodeType.OVERLOADED


def test_task_weight_is_the_share_of_memory_faults_in_thousandths() -> None:
    task = _task(1, 0, {0: 3, 1: 1})
    assert (task_weight(task, 0), task_weight(task, 1)) == (750, 250)
    assert task_weight(_task(1, -1, {}), 0) == 0


def test_a_task_on_the_wrong_full_node_swaps_with_the_one_that_wants_its_node() -> None:
    """Both nodes fully busy, so the mover may not just move (it would unbalance the loads); the
    partner's gain (1000) adds to the mover's (1000), plus an eighth for moving the partner to
    its preferred node: 2250. The pinned task beside the partner cannot go to the mover's CPU."""
    nodes = {0: _node(BUSY, {0: PARTNER, 1: PINNED_0}), 1: _node(BUSY, {2: MOVER, 3: PINNED_1})}
    result = task_numa_migrate(MOVER, 2, NODE_OF_CPU, nodes)
    assert (result.choice, result.cpu, result.swap_with, result.imp) == (Choice.SWAP, 0, 20, 2250)


def test_no_swap_with_a_task_already_on_its_preferred_node() -> None:
    settled = Candidate(_task(20, 0, {0: 4096}), h_load=1024)
    nodes = {0: _node(BUSY, {0: settled, 1: PINNED_0}), 1: _node(BUSY, {2: MOVER, 3: PINNED_1})}
    assert task_numa_migrate(MOVER, 2, NODE_OF_CPU, nodes).choice is Choice.STAY


def test_no_swap_with_a_task_that_may_not_run_on_the_movers_cpu() -> None:
    nodes = {0: _node(BUSY, {0: PINNED_0, 1: PINNED_0}), 1: _node(BUSY, {2: MOVER, 3: PINNED_1})}
    assert task_numa_migrate(MOVER, 2, NODE_OF_CPU, nodes).choice is Choice.STAY


def test_an_idle_cpu_on_the_preferred_node_takes_a_move_the_imbalance_allowance_forgives() -> None:
    """One task on each node: the move leaves two against none, an imbalance of 2, which
    adjust_numa_imbalance forgives while the destination then runs no more than imb_numa_nr."""
    nodes = {0: _node(ONE_IDLE, {0: PARTNER, 1: None}), 1: _node(ONE_IDLE, {2: MOVER, 3: None})}
    result = task_numa_migrate(MOVER, 2, NODE_OF_CPU, nodes, imb_numa_nr=2)
    assert (result.choice, result.cpu) == (Choice.MOVE, 1)
    assert task_numa_migrate(MOVER, 2, NODE_OF_CPU, nodes, imb_numa_nr=1).choice is Choice.STAY


def test_no_swap_between_groupless_tasks_while_the_node_has_spare_capacity() -> None:
    """Two tasks on the node but using little of it: spare capacity, so no swap; and a move would
    leave three tasks against one, beyond what adjust_numa_imbalance forgives."""
    light = NodeStats(600, 600, 600, 2, 2048, 2)
    nodes = {0: _node(light, {0: PARTNER, 1: PINNED_0}), 1: _node(light, {2: MOVER, 3: PINNED_1})}
    assert task_numa_migrate(MOVER, 2, NODE_OF_CPU, nodes).choice is Choice.STAY


def test_a_swap_that_unbalances_the_loads_is_refused() -> None:
    """The nodes' loads are equal; swapping a heavy mover with a light partner would leave them
    apart (load_too_imbalanced)."""
    heavy = Candidate(MOVER.task, h_load=1500)
    light = Candidate(PARTNER.task, h_load=500)
    nodes = {0: _node(BUSY, {0: light, 1: PINNED_0}), 1: _node(BUSY, {2: heavy, 3: PINNED_1})}
    assert task_numa_migrate(heavy, 2, NODE_OF_CPU, nodes).choice is Choice.STAY
    assert load_too_imbalanced(2048 - 1000, 2048 + 1000, BUSY, BUSY)
    assert not load_too_imbalanced(2048, 2048, BUSY, BUSY)


def test_c_division_truncates_towards_zero() -> None:
    assert (_c_div(-17, 16), _c_div(17, 16), _c_div(-15, 16)) == (-1, 1, 0)


# -- the swap scenario's premise, as recorded in real guests (check task-swap's figures) -------

GOLDEN = Path(__file__).parent / "data" / "taskswap"


def _recorded(release: str) -> tuple[SwapPremise, dict[str, Any]]:
    data = json.loads((GOLDEN / f"premise-{release}.json").read_text())
    return SwapPremise.from_json(data["premise"]), data["prediction"]


@pytest.mark.parametrize("release", ["6.12", "6.1"])
def test_the_recorded_premise_predicts_the_swap_the_guest_made(release: str) -> None:
    """Four always-running tasks on the four CPUs: both nodes fully busy, so the mover swaps with
    the partner, onto the partner's CPU, for 1000 + 1000 plus an eighth."""
    premise, recorded = _recorded(release)
    assert premise.cast_runs_every_cpu
    assert premise.node_types() == {0: "fully busy", 1: "fully busy"}
    predicted = premise.predict()
    partner_cpu = next(c for c, load in premise.loads.items() if load.curr_pid == premise.partner)
    assert (predicted.choice, predicted.swap_with, predicted.cpu, predicted.imp) == (
        Choice.SWAP, premise.partner, partner_cpu, 2250)
    assert recorded == {"choice": "swap", "cpu": partner_cpu, "swap_with": premise.partner, "imp": 2250}
    assert SwapPremise.from_json(premise.as_json()) == premise


def test_a_recorded_premise_with_the_partners_node_half_idle_predicts_a_move_not_a_swap() -> None:
    """The blocker beside the partner gone idle: the near node has spare capacity and an idle
    CPU, and a move leaves two tasks against one, within the imbalance the NUMA domain forgives
    only when imb_numa_nr allows; with the recorded imb_numa_nr of 1 it does not, and no swap
    is considered between two groupless tasks on a node with spare capacity: the mover stays."""
    premise, _ = _recorded("6.12")
    blocker_cpu = next(c for c, load in premise.loads.items() if load.curr_pid == premise.blockers[0])
    idle = replace(premise.loads[blocker_cpu], nr_running=0, load=0, runnable=0, util=0, curr_pid=0)
    half_idle = replace(premise, loads={**premise.loads, blocker_cpu: idle})
    assert half_idle.node_types()[premise.near] == "has spare"
    assert not half_idle.cast_runs_every_cpu
    assert half_idle.domain.imb_numa_nr == 1
    assert half_idle.predict().choice is Choice.STAY
    more_allowed = replace(half_idle, domain=replace(half_idle.domain, imb_numa_nr=2))
    assert (more_allowed.predict().choice, more_allowed.predict().cpu) == (Choice.MOVE, blocker_cpu)
