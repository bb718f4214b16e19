"""Self-check benchmark: `numa-harness mutants` once (arguments after -- are passed on, e.g.
`-- --source 6.1` or `-- --only 0031`), or the JSON of a self-check already made (`--from FILE`);
prints each mutant's outcome, the check that killed it and its seconds, then the count killed by
the checks their headers name, the average and the longest, those over 60 s, and the total.

Targets (issue 14): <= 40 s per mutant on average after its build, none over 60 s, the whole
self-check of at least 20 mutants <= 15 min. Each line shows the mutant's whole time and its
time after the build (`build_seconds`: an incremental build, or finding its kernel in the
cache); the averages and the 60 s test use the time after the build (the whole time for JSON
written before build_seconds existed). Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OVER_S = 60.0


def summarise(data: dict[str, Any], wall: float | None) -> int:
    mutants = data["mutants"]
    if not mutants:
        print("no mutants")
        return 1
    def after_build(m: dict[str, Any]) -> float:
        return float(m["seconds"] - m.get("build_seconds", 0.0))

    for m in mutants:
        built = "built" if m.get("built") else "cached"
        print(f"{m['mutant']:<48} {m['outcome']:<9} {','.join(m['failed_checks']) or '-':<20} {m['seconds']:6.1f} s, "
              f"{after_build(m):5.1f} s after the build ({built})"
              f"{'' if m['as_expected'] else '  (not by the check its header names)'}")
    seconds = [after_build(m) for m in mutants]
    named = sum(1 for m in mutants if m["killed"] and m["as_expected"])
    longest = max(mutants, key=after_build)
    over = [m["mutant"][:4] for m in mutants if after_build(m) > OVER_S]
    print(f"\n{data['killed']} of {data['total']} killed, {named} by the check their header names; after the "
          f"build {statistics.mean(seconds):.0f} s each on average (median {statistics.median(seconds):.0f}), "
          f"longest {after_build(longest):.0f} s ({longest['mutant'][:4]}); over {OVER_S:.0f} s: {over or 'none'}; "
          f"whole times sum to {sum(m['seconds'] for m in mutants) / 60:.1f} min"
          + (f", wall {wall / 60:.1f} min" if wall is not None else ""))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from", dest="source", type=Path, help="summarise this `mutants --json` file")
    parser.add_argument("mutants_args", nargs="*", help="passed to `numa-harness mutants` (after --)")
    args = parser.parse_args()
    if args.source is not None:
        return summarise(json.loads(args.source.read_text()), None)
    with tempfile.TemporaryDirectory(prefix="mutants-bench-") as out:
        path = Path(out) / "mutants.json"
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "harness.cli", "mutants", "--json", str(path), *args.mutants_args],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        wall = time.monotonic() - start
        if not path.exists():
            print("numa-harness mutants wrote no JSON (bad input, or the base kernel could not be built)")
            return 1
        return summarise(json.loads(path.read_text()), wall)


if __name__ == "__main__":
    sys.exit(main())
