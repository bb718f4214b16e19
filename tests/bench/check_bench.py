"""Check benchmark: `numa-harness check` run N times in a row (the kernel cached), or the JSON
files of runs already made (`--from DIR`: every run*.json in it); prints each run's wall time
and verdicts, then per check the verdicts, the median seconds and the spread, and the sum of the
per-check medians, then where each check's time went (looks with the guest paused, SSH commands,
waits for the workload, the rest, and the harness's CPU time: the JSON's `spent`).

Targets (issue 14): the full `check` <= 90 s warm on 2 cores under TCG. Figures only: nothing
here asserts a time. A run that is not all pass is shown and counted, never dropped. With
`-- --guests N` the checks of a run overlap, so a run's figure is its wall time from boot to the
last verdict (the JSON's "seconds"), not the sum of its checks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def run_checks(runs: int, extra: list[str], out: Path) -> list[tuple[Path, float, int]]:
    made = []
    for n in range(1, runs + 1):
        path = out / f"run{n}.json"
        start = time.monotonic()
        status = subprocess.run([sys.executable, "-m", "harness.cli", "check", "--json", str(path), *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode
        made.append((path, time.monotonic() - start, status))
        print(f"run {n}: exit {status}, {made[-1][1]:.0f} s wall", flush=True)
    return made


def summarise(paths: list[Path]) -> int:
    seconds: dict[str, list[float]] = defaultdict(list)
    verdicts: dict[str, Counter[str]] = defaultdict(Counter)
    spent: dict[str, list[dict[str, float]]] = defaultdict(list)
    run_spent: list[Counter[str]] = []
    totals = []
    walls = []
    for path in paths:
        data: dict[str, Any] = json.loads(path.read_text())
        checks = data["checks"]
        totals.append(sum(c["seconds"] for c in checks))
        run_spent.append(Counter())
        for c in checks:
            seconds[c["name"]].append(c["seconds"])
            verdicts[c["name"]][c["verdict"]] += 1
            if c.get("spent"):  # older files and checks not run lack it
                spent[c["name"]].append(c["spent"])
                run_spent[-1].update(c["spent"])
        wall = data.get("seconds")  # boot to the last verdict; older files lack it
        if wall is not None:
            walls.append(float(wall))
        print(f"{path.name}: {len(checks)} checks in {data.get('guests', 1)} guest(s), {totals[-1]:.0f} s of checks"
              f"{f', {wall:.0f} s from boot to the last verdict' if wall is not None else ''}, "
              f"{dict(Counter(c['verdict'] for c in checks))}")
    if not totals:
        print("no runs")
        return 1
    print(f"\n{'check':<22} {'verdicts':<28} {'median':>7} {'min':>7} {'max':>7}")
    for name in sorted(seconds, key=lambda n: -statistics.median(seconds[n])):
        s = seconds[name]
        print(f"{name:<22} {dict(verdicts[name])!s:<28} {statistics.median(s):7.1f} {min(s):7.1f} {max(s):7.1f}")
    medians = sum(statistics.median(s) for s in seconds.values())
    print(f"\n{len(totals)} runs: checks took {min(totals):.0f}-{max(totals):.0f} s a run (median "
          f"{statistics.median(totals):.0f}); per-check medians sum to {medians:.0f} s")
    if walls:
        print(f"boot to the last verdict: {min(walls):.0f}-{max(walls):.0f} s a run (median "
              f"{statistics.median(walls):.0f}, {len(walls)} runs)")
    if spent:
        print_spent(seconds, spent, [r for r in run_spent if r])
    return 0


def print_spent(seconds: dict[str, list[float]], spent: dict[str, list[dict[str, float]]],
                run_spent: list[Counter[str]]) -> None:
    """Where each check's time went (runner.time_spent), medians over the runs."""
    def median(rows: list[dict[str, float]] | list[Counter[str]], key: str) -> float:
        return statistics.median(float(r.get(key, 0)) for r in rows)

    print("\nwhere the time went (medians over the runs, seconds and counts):")
    print(SPENT_HEADER)
    for name in sorted(spent, key=lambda n: -statistics.median(seconds[n])):
        rows = spent[name]
        print(f"{name:<22} {median(rows, 'looks'):6.0f} {median(rows, 'paused_s'):7.1f} {median(rows, 'ssh_commands'):5.0f} "
              f"{median(rows, 'ssh_s'):6.1f} {median(rows, 'workload_wait_s'):8.1f} {median(rows, 'overlap_s'):7.1f} "
              f"{median(rows, 'other_s'):6.1f} "
              f"{median(rows, 'cpu_s'):6.1f}")
    print(f"{'a whole run':<22} {median(run_spent, 'looks'):6.0f} {median(run_spent, 'paused_s'):7.1f} "
          f"{median(run_spent, 'ssh_commands'):5.0f} {median(run_spent, 'ssh_s'):6.1f} "
          f"{median(run_spent, 'workload_wait_s'):8.1f} {median(run_spent, 'overlap_s'):7.1f} "
          f"{median(run_spent, 'other_s'):6.1f} "
          f"{median(run_spent, 'cpu_s'):6.1f}")


# paused: looks (the guest stopped, drgn reading it); ssh: commands to their exit; workload: waits
# for nhmem's replies (the guest running a step); overlap: of those three, what ran at once on two
# threads (convergence's sampler); other: idle waits for a pass, the model, set-up; cpu: the
# harness thread's CPU time, overlapping the others.
SPENT_HEADER = (f"{'check':<22} {'looks':>6} {'paused':>7} {'ssh#':>5} {'ssh':>6} {'workload':>8} {'overlap':>7} "
                f"{'other':>6} {'cpu':>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--from", dest="source", type=Path, help="summarise the run*.json already in DIR")
    parser.add_argument("check_args", nargs="*", help="passed to `numa-harness check` (after --)")
    args = parser.parse_args()
    if args.source is not None:
        return summarise(sorted(args.source.glob("run*.json"), key=lambda p: int(p.stem[3:])))
    with tempfile.TemporaryDirectory(prefix="check-bench-") as out:
        made = run_checks(args.n, args.check_args, Path(out))
        return summarise([p for p, _, _ in made if p.exists()])


if __name__ == "__main__":
    sys.exit(main())
