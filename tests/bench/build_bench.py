"""Kernel pipeline benchmark: prints cold build, cache-hit and one-file incremental rebuild seconds.

Targets on a 2-core machine: cold <= 6 min, cache hit <= 2 s, incremental <= 30 s.
`--cold` builds from scratch in a temporary cache directory (extraction included; ~5 min);
without it the cold figure is read from the default kernel's manifest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.kernel.pipeline import BuildRequest, build


def timed_cli(*args: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "harness.cli", "build", "--json", *args],
                         capture_output=True, text=True, check=True).stdout
    return time.monotonic() - start, json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="also time a cold build in a fresh cache")
    args = parser.parse_args()
    rows = []
    if args.cold:
        cache = Path(tempfile.mkdtemp(prefix="nh-bench-cache-"))
        try:
            seconds, data = timed_cli("--cache-dir", str(cache))
            rows.append(("cold build (fresh cache, incl. extraction)", seconds, 360.0, f"{data['compiled_objects']} objects"))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    default = build(BuildRequest())  # make sure the default kernel is there
    if not args.cold:
        rows.append(("cold build (from the default kernel's manifest)", float(default.manifest["build_seconds"]), 360.0,
                     f"{default.manifest.get('compiled_objects')} objects"))
    hits = sorted(timed_cli()[0] for _ in range(3))
    rows.append(("cache hit (CLI process, median of 3)", hits[1], 2.0, ""))
    with tempfile.TemporaryDirectory() as tmp:
        assert default.pristine_source is not None
        source = (default.pristine_source / "mm/mprotect.c").read_text()
        first, second = source.splitlines(keepends=True)[:2]
        patch = Path(tmp) / "bench.patch"
        patch.write_text("--- a/mm/mprotect.c\n+++ b/mm/mprotect.c\n@@ -1,2 +1,3 @@\n"
                         f" {first}+/* numa-harness bench {time.time()} */\n {second}")
        start = time.monotonic()
        artifact = build(BuildRequest(extra_patches=(patch,)))
        incremental = time.monotonic() - start
        rows.append(("one-file incremental rebuild", incremental, 30.0, f"{artifact.compiled_objects} objects compiled"))
        breakdown = [f"  {name}: {seconds:.2f} s" for name, seconds in artifact.manifest.get("phases", {}).items()]
        stages = [f"    make: {name}: {seconds:.2f} s" for name, seconds in artifact.manifest.get("make_stages", {}).items()]
        shutil.rmtree(artifact.directory)
    for label, seconds, target, note in rows:
        verdict = "ok" if seconds <= target else "OVER TARGET"
        print(f"{label:50s} {seconds:8.2f} s   target <= {target:g} s   {verdict}   {note}")
    print("the one-file rebuild by phase (manifest.json phases, make_stages):")
    print("\n".join(breakdown + stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
