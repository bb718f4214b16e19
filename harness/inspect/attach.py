"""
Attaching
---------

The ``harness.inspect.attach`` module attaches drgn to a live guest over QEMU's QMP socket, pauses
the guest so that a series of reads is one consistent moment, and finds tasks by pid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from drgn import Object, Program

from harness.errors import BadInput, InfrastructureError
from harness.guest.view import GuestView

__all__ = (
    "InspectError",
    "NoSuchTask",
    "attach",
    "find_mm",
    "find_task",
    "snapshot",
)


class InspectError(InfrastructureError):
    """drgn cannot read the guest (down, no vmlinux, a read failed)."""


class NoSuchTask(InspectError, BadInput):
    """The pid asked for is not a user task of the guest."""


def attach(view: GuestView, vmlinux: Path | None) -> Program:
    """
    Get the drgn program of a live guest, attaching on first use (the guest's second QMP socket,
    the build's vmlinux for debug info).

    One program per guest, reused: QEMU serves one client per QMP socket, so a second program
    would wait forever for a greeting while the first is still alive.

    :param view: The guest.
    :param vmlinux: The booted kernel's vmlinux.
    :raises InspectError: if the guest has no vmlinux or its socket is gone.
    """
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
    """
    Pause the guest (QMP ``stop``) for the duration of a ``with`` block and resume it afterwards,
    also on error, so that everything read inside is one consistent state.

    :param view: The guest.
    """
    with view.paused():
        yield


def find_task(prog: Program, pid: int) -> Object:
    """
    Return the task with the given PID, like drgn's ``find_task()`` but with an error that names
    the pid instead of a null pointer.

    :param pid: PID in the initial PID namespace.
    :return: ``struct task_struct *``
    :raises NoSuchTask: if there is no such task.
    """
    from drgn.helpers.linux.pid import find_task as drgn_find_task

    task = drgn_find_task(prog, pid)
    if not task:
        raise NoSuchTask(f"No task with pid {pid} in the guest. Check the pid (`numa-harness ssh NAME -- ps`).")
    return task


def find_mm(prog: Program, pid: int) -> Object:
    """
    Return the address space of the task with the given PID.

    :param pid: PID of a user task.
    :return: ``struct mm_struct *``
    :raises NoSuchTask: if there is no such task, or it is a kernel thread.
    """
    task = find_task(prog, pid)
    if not task.mm:
        raise NoSuchTask(f"Task {pid} ({task.comm.string_().decode()}) is a kernel thread: it has no address space.")
    return task.mm
