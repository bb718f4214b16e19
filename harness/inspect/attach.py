"""Attach drgn to a live guest over QEMU's QMP socket, and pause the guest for snapshots."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from drgn import Object, Program

from harness.errors import BadInput, InfrastructureError
from harness.guest.qemu import GuestView


class InspectError(InfrastructureError):
    """drgn cannot read the guest (down, no vmlinux, a read failed)."""


class NoSuchTask(InspectError, BadInput):
    """The pid asked for is not a user task of the guest."""


def attach(view: GuestView, vmlinux: Path | None) -> Program:
    """A drgn Program on the live guest (its second QMP socket) with the build's vmlinux.

    One Program per guest, reused: QEMU serves one client per QMP socket, so a second Program
    would wait forever for a greeting while the first is still alive."""
    import drgn

    cached = view._drgn_program
    if cached is not None:
        return cached
    if vmlinux is None or not vmlinux.is_file():
        raise InspectError("This guest has no vmlinux recorded; boot a kernel built by `numa-harness build`.")
    if not view.paths.drgn_qmp.exists():
        raise InspectError(f"The guest's drgn QMP socket {view.paths.drgn_qmp} is gone: is the guest still up?")
    prog = drgn.Program()
    try:
        prog.set_qemu_qmp(str(view.paths.drgn_qmp))
    except Exception as err:  # drgn raises plain exceptions for connection problems
        raise InspectError(f"drgn could not attach to {view.paths.drgn_qmp}: {err}. Is the guest still up?") from err
    prog.load_debug_info([str(vmlinux)])
    view._drgn_program = prog
    return prog


@contextlib.contextmanager
def snapshot(view: GuestView) -> Iterator[None]:
    """The guest paused (QMP stop) while reading, so what is read is one consistent state."""
    with view.paused():
        yield


def find_task(prog: Program, pid: int) -> Object:
    from drgn.helpers.linux.pid import find_task as drgn_find_task

    task = drgn_find_task(prog, pid)
    if not task:
        raise NoSuchTask(f"No task with pid {pid} in the guest. Check the pid (`numa-harness ssh NAME -- ps`).")
    return task


def find_mm(prog: Program, pid: int) -> Object:
    task = find_task(prog, pid)
    if not task.mm:
        raise NoSuchTask(f"Task {pid} ({task.comm.string_().decode()}) is a kernel thread: it has no address space.")
    return task.mm
