"""Boot benchmark: seconds from `numa-harness run -- true` starting to its end (QEMU start, boot,
ready marker, first SSH command output, teardown), and virtme-ng's `vng --run BZIMAGE -- true` on
THE SAME kernel in the same run, each over N boots: median and spread, then the ratios.

Ours is timed twice: booted (`--no-snapshot`: the kernel boots, as every boot did before
snapshots) and restored (`run`'s default: the guest is restored from the snapshot an earlier boot
of it saved, harness.guest.snapshot; one untimed run first makes sure the snapshot exists).

Both boot one bench kernel: the default fragments plus `tests/bench/virtme-ng.config`, the options
virtme-ng's virtme-configkernel needs (9p, virtio-pci, overlayfs...) that our tinyconfig kernel
lacks. Built once, then a cache hit like any other kernel. Both get the same machine: 4 CPUs, 2 GiB,
two NUMA nodes of 2 CPUs and 1 GiB (`--topology 2x2` / `--numa 1G,cpus=0-1 --numa 1G,cpus=2-3`),
TCG (`--disable-kvm`; `--accel tcg` for ours, as nested KVM hangs here).

Target (issue 14): ours <= 0.2x virtme-ng's. virtme-ng comes with the dev extras (PyPI's wheel
ships its guest init); it also needs Debian's udev on the host (`bootstrap.sh --test` installs it):
its init finds its command's virtio-serial ports through udev's /dev/virtio-ports links. Without
`vng` beside this Python the bench prints ours alone and says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.kernel.pipeline import BuildRequest, build

VNG_FRAGMENT = Path(__file__).with_name("virtme-ng.config")


def time_command(argv: list[str], runs: int, env: dict[str, str] | None = None) -> tuple[list[float], str]:
    times, error = [], ""
    for _ in range(runs):
        start = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env=env)
        elapsed = time.monotonic() - start
        if result.returncode != 0:
            error = (result.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            break
        times.append(elapsed)
    return times, error


def describe(label: str, times: list[float]) -> str:
    return (f"{label:<38} median {statistics.median(times):.2f} s over {len(times)} boots "
            f"(min {min(times):.2f}, max {max(times):.2f}, stdev {statistics.pstdev(times):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5, help="boots per tool (default 5)")
    args = parser.parse_args()
    kernel = build(BuildRequest(config_files=(VNG_FRAGMENT,)))
    print(f"bench kernel: {kernel.directory.name} (default fragments + {VNG_FRAGMENT.name}), "
          f"{'cache hit' if kernel.cache_hit else 'built now'}")
    run = [sys.executable, "-m", "harness.cli", "run", "--kernel", str(kernel.directory), "--topology", "2x2",
           "--accel", "tcg"]
    booted, error = time_command([*run, "--no-snapshot", "--", "true"], args.n)
    if not error:
        _, error = time_command([*run, "--", "true"], 1)  # saves the snapshot when there is none
    restored, error = time_command([*run, "--", "true"], args.n) if not error else ([], error)
    if error:
        print(f"numa-harness run failed: {error}")
        return 1
    print(describe("numa-harness run --no-snapshot", booted))
    print(describe("numa-harness run -- true (restored)", restored))
    # vng runs virtme-run by name: the venv's bin must be on PATH even when this Python is called
    # by its path without the venv activated.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    vng = shutil.which("vng", path=env["PATH"])
    if vng is None:
        print("virtme-ng: not installed (it comes with the dev extras: pip install -e '.[dev]') - no ratio")
        return 0
    theirs, error = time_command([vng, "--run", str(kernel.bzimage), "--disable-kvm", "--cpus", "4", "--memory", "2G",
                                  "--numa", "1G,cpus=0-1", "--numa", "1G,cpus=2-3", "--", "true"], args.n, env)
    if error or not theirs:
        # Without udevd on the host, virtme-ng-init finds no /dev/virtio-ports links, falls back to
        # the console and vng exits 255 although the command ran.
        hint = "" if shutil.which("udevadm") else " (no udev on this host: apt-get install --no-install-recommends udev)"
        print(f"virtme-ng: vng --run failed on the bench kernel{hint}: {error}")
        return 1
    print(describe("vng --run BZIMAGE -- true", theirs))
    for label, ours in (("booted", booted), ("restored", restored)):
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(f"ratio ours ({label})/virtme-ng = {ratio:.2f} (target <= 0.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
