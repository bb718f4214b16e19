"""Page-table walk benchmark: a 1 GiB fully populated 4 KiB mapping (262,144 PTEs) walked and
decoded by harness.inspect.walk, beside drgn's per-page follow_phys loop over a sample of the
same range (extrapolated). Target: the whole 1 GiB walk in <= 0.2 s, >= 50x the per-page loop.
"""

from __future__ import annotations

import sys
import time

from drgn.helpers.linux.mm import follow_phys

from harness.guest.launch import LaunchRequest, make_guest
from harness.inspect import attach, find_mm, snapshot, walk

SAMPLE = 8192


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
            for _ in range(3):
                start = time.monotonic()
                entries = walk(prog, mm, addr, addr + length)
                runs.append(time.monotonic() - start)
            start = time.monotonic()
            for page in range(SAMPLE):
                follow_phys(mm, addr + page * 4096)
            per_page = (time.monotonic() - start) / SAMPLE
        best = min(runs)
        loop = per_page * (length // 4096)
        print(f"walk: {len(entries)} entries in {best:.3f} s (best of 3) = {len(entries) / best:,.0f} entries/s; target <= 0.2 s")
        print(f"drgn follow_phys loop: {1 / per_page:,.0f} pages/s, {loop:.1f} s for 1 GiB (from {SAMPLE} pages)")
        print(f"speed-up {loop / best:.0f}x (target >= 50x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
