"""A map of one task's address space, 2 MiB per character, showing where NUMA hints are.

    numa-harness drgn NAME harness/examples/hint_map.py PID

Per 2 MiB chunk: '.' nothing mapped, 'h' all mapped pages are NUMA hint entries, 'H' a hinted
THP, digits the node holding most present pages, '*' a mix of hinted and present pages.
"""

import sys
from typing import Any

import numpy as np
from drgn import Program

from harness import inspect as nh

# `numa-harness drgn NAME SCRIPT` runs this with the live guest's drgn Program and the guest.
prog: Program = globals()["prog"]
guest: Any = globals()["guest"]

pid = int(sys.argv[1])
guest.pause()
try:
    mm = nh.find_mm(prog, pid)
    vmas = nh.read_vmas(prog, pid)
    table = nh.walk(prog, mm)
finally:
    guest.resume()
chunk = 2 << 20
for vma in vmas:
    part = table.within(vma.start, vma.end)
    cells = []
    for start in range(vma.start - vma.start % chunk, vma.end, chunk):
        piece = part.within(start, start + chunk)
        if not len(piece):
            cells.append(".")
        elif piece.hint.all():
            cells.append("H" if (piece.level == 1).any() else "h")
        elif piece.hint.any():
            cells.append("*")
        else:
            nodes, counts = np.unique(piece.node[piece.present], return_counts=True)
            cells.append(str(int(nodes[np.argmax(counts)])) if len(nodes) else "?")
    kind = "file" if vma.file_backed else "anon"
    scanned = f"numab seq {vma.numab['start_scan_seq']}/{vma.numab['prev_scan_seq']}" if vma.numab else "not scanned"
    print(f"{vma.start:#014x}-{vma.end:#014x} {kind} {scanned:24} {''.join(cells)[:120]}")
