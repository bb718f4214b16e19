"""Boot benchmark: median seconds from `numa-harness run -- true` starting to its end (QEMU start,
boot, ready marker, first SSH command output, teardown), over N boots; and virtme-ng's `vng --run
BZIMAGE --disable-kvm -- true` on the same kernel beside it when vng is installed.

Target (issue 14): ours <= 0.2x virtme-ng's time on the same kernel in the same run. virtme-ng
needs a kernel with the options its virtme-configkernel adds (9p, virtio-pci, overlayfs...);
without vng on PATH the bench prints ours alone and says so.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from harness.kernel.pipeline import BuildRequest, build


def time_command(argv: list[str], runs: int) -> tuple[list[float], str]:
    times, error = [], ""
    for _ in range(runs):
        start = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        elapsed = time.monotonic() - start
        if result.returncode != 0:
            error = (result.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
            break
        times.append(elapsed)
    return times, error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5, help="boots per tool (default 5)")
    parser.add_argument("--topology", default="2x2")
    args = parser.parse_args()
    kernel = build(BuildRequest())
    ours, error = time_command([sys.executable, "-m", "harness.cli", "run", "--kernel", str(kernel.directory),
                                "--topology", args.topology, "--", "true"], args.n)
    if error:
        print(f"numa-harness run failed: {error}")
        return 1
    median = statistics.median(ours)
    print(f"numa-harness run -- true   median {median:.2f} s over {len(ours)} boots "
          f"(min {min(ours):.2f}, max {max(ours):.2f}, stdev {statistics.pstdev(ours):.2f}), {args.topology}")
    vng = shutil.which("vng")
    if vng is None:
        print("virtme-ng: not installed (pip install virtme-ng) - no ratio")
        return 0
    theirs, error = time_command([vng, "--run", str(kernel.bzimage), "--disable-kvm", "--cpus", "4", "--memory", "2G",
                                  "--", "true"], args.n)
    if error or not theirs:
        print(f"virtme-ng: could not boot this kernel ({error}); it needs 9p/virtiofs and more than our tiny config")
        return 0
    ratio = median / statistics.median(theirs)
    print(f"vng --run ... -- true      median {statistics.median(theirs):.2f} s over {len(theirs)} boots")
    print(f"ratio ours/virtme-ng = {ratio:.2f} (target <= 0.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
