"""Page-table walk benchmark: a 1 GiB fully populated 4 KiB mapping (262,144 PTEs) walked and
decoded by harness.inspect.walk, beside drgn's per-page follow_phys loop over a sample of the
same range (extrapolated). Target (issue 14): the whole 1 GiB walk >= 100x the per-page loop.
Prints the median and the spread of RUNS walks, and of the per-page loop over RUNS samples.
"""

from __future__ import annotations

import statistics
import sys
import time

from drgn.helpers.linux.mm import follow_phys

from harness.guest.launch import LaunchRequest, make_guest
from harness.inspect import attach, find_mm, snapshot, walk

SAMPLE = 8192
RUNS = 5


def main() -> int:
    with make_guest(LaunchRequest(topology="2x2", memory="3G", name="bench")) as guest:
        guest.ssh.run("sleep 100000 | nhmem hold 1024 > /tmp/hold.out 2>&1 &").check()
        words: list[str] = []
        deadline = time.monotonic() + 600
        while len(words) < 6 and time.monotonic() < deadline:
            time.sleep(1)
            words = guest.ssh.run("cat /tmp/hold.out").stdout.split()
        pid, addr, length = int(words[1]), int(words[3], 16), int(words[5])
        prog = attach(guest, guest.vmlinux)
        with snapshot(guest):
            mm = find_mm(prog, pid)
            runs = []
            for _ in range(RUNS):
                start = time.monotonic()
                entries = walk(prog, mm, addr, addr + length)
                runs.append(time.monotonic() - start)
            per_page = []
            for _ in range(RUNS):
                start = time.monotonic()
                for page in range(SAMPLE):
                    follow_phys(mm, addr + page * 4096)
                per_page.append((time.monotonic() - start) / SAMPLE)
        walk_s = statistics.median(runs)
        loop = [p * (length // 4096) for p in per_page]
        loop_s = statistics.median(loop)
        print(f"walk: {len(entries)} entries, median {walk_s:.3f} s over {RUNS} walks (min {min(runs):.3f}, "
              f"max {max(runs):.3f}) = {len(entries) / walk_s:,.0f} entries/s")
        print(f"drgn follow_phys loop: median {loop_s:.1f} s for 1 GiB (min {min(loop):.1f}, max {max(loop):.1f}; "
              f"{RUNS} samples of {SAMPLE} pages, extrapolated)")
        print(f"speed-up {loop_s / walk_s:.0f}x (target >= 100x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
