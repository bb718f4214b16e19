"""Attach the user's terminal to a guest's serial console socket (Ctrl-] detaches)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import tty
from pathlib import Path

from harness.errors import InfrastructureError

DETACH = b"\x1d"  # Ctrl-]


def attach_console(path: Path) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as err:
        raise InfrastructureError(f"Cannot attach to the console {path}: {err}. Is another console attached?") from err
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    print("numa-harness: attached to the serial console; Ctrl-] detaches", file=sys.stderr)
    try:
        if interactive:
            tty.setraw(stdin)
        sock.sendall(b"\n")
        while True:
            ready, _, _ = select.select([sock, stdin], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if not data or DETACH in data:
                    break
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        with contextlib.suppress(OSError):
            sock.close()
    print("\r\nnuma-harness: detached", file=sys.stderr)
    return 0
