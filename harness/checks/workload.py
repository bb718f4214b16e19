"""Drive guest-tests/nhmem in a guest: a held memory region and the accesses made to it.

The holder runs on an SSH channel of its own and reads its commands from it, so a test can send
`touch`, `read` and `spin` one at a time and know exactly which accesses happened, from which
node's CPUs, and in which order; each command is acknowledged with an `ok` line on the same
channel, seen as soon as it is written.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from harness.errors import InfrastructureError
from harness.guest.ssh import GuestCommandError, GuestStream
from harness.guest.view import GuestView


class WorkloadError(InfrastructureError):
    """The guest workload did not start or did not answer."""


class WorkloadKilled(WorkloadError):
    """The kernel killed the workload with a signal (SIGSEGV, SIGBUS, the OOM killer's SIGKILL)
    while it ran a command: a fatal signal to a program that touches only its own memory is a
    kernel failure, reported at once instead of as a step that never finishes."""


class FillKilled(WorkloadError):
    """`nhmem fill` was killed (the OOM killer's SIGKILL) before it held its node at the target:
    its chunks are sized from the node's NR_FREE_PAGES, and the per-CPU page lists a refill
    moves pages onto leave that count, so a fill near the watermarks can overshoot past min.
    The scenario's premise (a node between its watermarks) never held."""


class WorkloadStuck(WorkloadError):
    """A workload step did not finish in its bounded time: the task livelocks (e.g. faulting on
    the same hint entry forever) or the guest hangs. Cross-checks report this as a hang."""


# Touching or reading a region of at most 64 MiB, migrations included, takes at most a few
# seconds under TCG (fault-migration's 4096 migrations: about 1 s); a step that has not finished
# after ten times that on a loaded machine never will.
STEP_TIMEOUT = 45.0


@dataclass(frozen=True)
class Region:
    """What `nhmem hold` is asked for (guest-tests/nhmem.c documents each option)."""

    mib: int
    node: int | None = None  # first-touch the region on this node
    thp: bool = False  # MADV_HUGEPAGE, 2 MiB aligned
    extras: bool = False  # also map the regions the scanner must skip (PROT_NONE, MPOL_BIND, zero page)
    helper: bool = False  # a sleeping helper thread (mm_users 2)
    split: int | None = None  # first-touch the second half on this node
    split_at: int | None = None  # with split: the first page first-touched there (default the middle one)
    readonly: bool = False  # write it, then make it read-only (its hint faults carry TNF_NO_GROUP)
    # mbind it to this node with MPOL_BIND | MPOL_F_NUMA_BALANCING before writing it: its pages
    # stay there (mpol_misplaced), but they are hinted and their faults count on that node.
    bind: int | None = None
    # Exec nhmem on this node's CPUs (numactl --cpunodebind, no memory policy), so that its own
    # pages (initial stack, static data) are first touched there, not wherever the shell ran.
    exec_on: int | None = None
    # Persistent worker threads 1..workers, each taking its own commands (HeldRegion.on).
    workers: int = 0
    # Bind every other mapping without MPOL_F_NUMA_BALANCING: the scanner skips them
    # (vma_policy_mof), so only the region takes hint faults.
    quiet: bool = False
    # MAP_SHARED (shmem) instead of private anonymous memory.
    shared: bool = False
    # The workers are processes forked after the region is written; the holder then unmaps it.
    procs: bool = False

    def nhmem_args(self) -> str:
        options = [f"{self.mib}", "thp" if self.thp else "", f"node {self.node}" if self.node is not None else "",
                   "extras" if self.extras else "", "helper" if self.helper else "",
                   f"split {self.split}" if self.split is not None else "",
                   f"splitat {self.split_at}" if self.split_at is not None else "", "ro" if self.readonly else "",
                   f"bind {self.bind}" if self.bind is not None else "",
                   f"workers {self.workers}" if self.workers else "", "quiet" if self.quiet else "",
                   "shared" if self.shared else "", "procs" if self.procs else ""]
        return " ".join(o for o in options if o)

    def command(self, binary: str = "nhmem") -> str:
        prefix = f"numactl --cpunodebind={self.exec_on} " if self.exec_on is not None else ""
        return f"{prefix}{binary} hold {self.nhmem_args()}"


# The line the holder's shell prints once nhmem has ended, with its exit status (128 + the
# signal's number when a signal killed it, as POSIX shells report).
EXITED = "nhmem exited"
# How long a wait blocks on the holder's output before it looks at the console for kernel bugs.
BUG_LOOK_S = 0.25


@dataclass
class HeldRegion:
    guest: GuestView
    directory: str
    pid: int
    addr: int
    length: int
    # The holder's own SSH channel: commands go to its stdin, its answers come back on it.
    stream: GuestStream
    # With extras=True: the addresses of the 2 MiB regions the scanner must skip (guard, bound, zero).
    extras: dict[str, int] = field(default_factory=dict)
    _acks: int = 0

    @classmethod
    def start(cls, guest: GuestView, request: Region, timeout: float = 120.0) -> HeldRegion:
        directory = f"/tmp/nhmem-{time.monotonic_ns()}"
        args = request.nhmem_args()
        # A quiet holder mbinds its file-backed mappings too. The guest's root is tmpfs, and
        # mbind on any mapping of a shmem file, a private one included, sets the inode's shared
        # policy (shmem_set_policy), which outlives the process: every later nhmem would find
        # its program's mappings bound and unscannable (vma_policy_mof). A quiet holder runs its
        # own copy of the program, whose policy goes with it.
        copy = f" && cp \"$(command -v nhmem)\" {directory}/nhmem" if request.quiet else ""
        guest.ssh.run(f"mkdir {directory}{copy}").check()
        binary = f"{directory}/nhmem" if request.quiet else "nhmem"
        # The holder runs on a channel of its own for its whole life: its stdin is the channel,
        # so it sees EOF only when the harness closes it, and its answers arrive as it writes
        # them (GuestStream), with no SSH command per step to send a line or to look for the
        # `ok`. Its shell stays to say how it ended.
        stream = guest.ssh.stream(f"{request.command(binary)} 2>&1; echo \"{EXITED} $?\"")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                out = stream.output(wait=BUG_LOOK_S)
                lines = out.splitlines()
                words = lines[0].split() if lines else []
                if len(words) >= 6 and words[0] == "pid" and (not request.extras or len(lines) >= 2):
                    found = {}
                    if request.extras:
                        fields = lines[1].split()
                        found = {fields[i]: int(fields[i + 1], 16) for i in range(1, len(fields) - 1, 2)}
                    return cls(guest, directory, int(words[1]), int(words[3], 16), int(words[5]), stream, found)
                if (words and words[0] != "pid") or stream.ended():
                    raise WorkloadError(f"nhmem hold {args} failed in the guest: {out.strip()[-400:]!r}")
            raise WorkloadError(f"nhmem hold {args} did not report its region within {timeout:.0f} s")
        except BaseException:
            stream.finish(timeout=1.0)
            stream.close()
            guest.ssh.run(f"rm -rf {directory}", timeout=15)
            raise

    @property
    def end(self) -> int:
        return self.addr + self.length

    def command(self, line: str, timeout: float = STEP_TIMEOUT) -> None:
        """Send one command and wait for its `ok`."""
        self.send(line)
        self.wait(line, timeout)

    def send(self, line: str) -> None:
        """Send one command without waiting for it (wait() does): the check can observe the task
        while it runs the command."""
        self.stream.send(line + "\n")
        self._acks += 1

    def wait(self, line: str, timeout: float = STEP_TIMEOUT) -> None:
        """Wait for the `ok` of every command sent so far (`line` names the last, for errors)."""
        deadline = time.monotonic() + timeout
        out = self.stream.output()
        while True:
            # How it ended first: the shell may describe a fatal signal in words ("Bus error").
            self._still_running(line, out)
            if "error" in out:
                raise WorkloadError(f"nhmem refused {line!r}: {out.strip().splitlines()[-1]}")
            if out.splitlines().count("ok") >= self._acks:
                return
            bugs = self.guest.pending_bugs()
            if bugs:
                # A soft lockup or an oops: waiting for the step would only burn the timeout.
                raise WorkloadStuck(f"the kernel reported a bug while nhmem ran {line!r}: {bugs[0].title}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkloadStuck(f"nhmem (pid {self.pid}) did not finish {line!r} within {timeout:.0f} s: the "
                                    f"task livelocks or the guest hangs")
            out = self.stream.output(wait=min(BUG_LOOK_S, left))

    def _still_running(self, line: str, out: str) -> None:
        """Raise if the holder has ended while `line` was pending: killed by a signal (the
        kernel's doing: nhmem only ever exits on EOF or on a failed system call), exited, or its
        channel gone with the guest's SSH server."""
        status = _exit_status(out)
        if status is not None:
            if status > 128:
                name = _signal_name(status - 128)
                raise WorkloadKilled(f"the kernel killed nhmem (pid {self.pid}) with {name} while it ran {line!r}: "
                                     f"a fatal signal to a workload that only touches its own memory")
            before = [text for text in out.splitlines() if not text.startswith(EXITED)][-1:]
            raise WorkloadError(f"nhmem (pid {self.pid}) exited with status {status} while it ran {line!r}; "
                                f"its last words: {before}")
        if self.stream.ended():
            raise GuestCommandError(f"the SSH channel of nhmem (pid {self.pid}) closed while it ran {line!r}: "
                                    f"the guest's SSH server went away")

    def touch(self, node: int | None = None, pages: int | None = None, thread: bool = False,
              first: int | None = None) -> None:
        """Write every page (the first `pages`; with `first`, from page `first` on), from a CPU of `node`."""
        self.command(_op("touch", node, pages, thread) + (f" from {first}" if first is not None else ""))

    def read(self, node: int | None = None, pages: int | None = None, thread: bool = False,
             first: int | None = None) -> None:
        """Read every page (the first `pages`; with `first`, `pages` pages from page `first` on),
        from a CPU of `node`; with thread=True from a fresh thread, whose faults record its own
        tid in last_cpupid."""
        self.command(_op("read", node, pages, thread) + (f" from {first}" if first is not None else ""))

    def spin(self, seconds: float, node: int | None = None, thread: bool = False) -> None:
        self.command(_op(f"spin {seconds}", node, None, thread), timeout=seconds + STEP_TIMEOUT)

    def loop(self, seconds: float, node: int | None = None, *, wait: bool = True) -> str:
        """Read the region over and over for `seconds`, pinned to `node`'s CPUs, or with node=None
        free to run on every CPU (the scheduler and NUMA balancing's task placement choose).
        With wait=False it returns once the command is sent (wait() with the returned line ends it)."""
        where = f"node {node}" if node is not None else "free"
        line = f"loop {seconds} {where}"
        if wait:
            self.command(line, timeout=seconds + STEP_TIMEOUT)
        else:
            self.send(line)
        return line

    def worker_tid(self, worker: int) -> int:
        """The thread id of persistent worker `worker` (Region.workers; its pid with procs)."""
        self.command(f"on {worker} tid")
        out = self.stream.output()
        tids = [line.split()[2] for line in out.splitlines() if line.startswith(f"tid {worker} ")]
        if not tids:
            raise WorkloadError(f"nhmem did not say worker {worker}'s thread id: {out.strip().splitlines()[-1:]}")
        return int(tids[-1])

    def on(self, worker: int, verb: str, *, cpu: int, first: int | None = None, pages: int | None = None,
           wait: bool = True) -> str:
        """Have worker `worker` run `verb` ("read", "touch", "unmap", "spin SECS") pinned to `cpu`, on the
        region's pages [first, first + pages). With wait=False it returns once the worker has the
        command (wait_worker() waits for it to finish)."""
        words = [f"on {worker}", verb, f"cpu {cpu}"]
        if first is not None:
            words.append(f"from {first}")
        if pages is not None:
            words.append(f"pages {pages}")
        line = " ".join(words) + ("" if wait else " &")
        self.command(line)
        return line

    def wait_worker(self, worker: int, timeout: float = STEP_TIMEOUT) -> None:
        """Wait until worker `worker` has finished what it runs."""
        self.command(f"on {worker} wait", timeout=timeout)

    def stop_worker(self, worker: int) -> None:
        """End worker thread `worker`'s spin now (it then waits for its next command)."""
        self.command(f"on {worker} stop")

    def wait_running(self, tid: int, cpu: int, timeout: float = 10.0) -> None:
        """Wait until thread `tid` is running (state R) on `cpu`, as /proc says."""
        deadline = time.monotonic() + timeout
        stat = ""
        while time.monotonic() < deadline:
            stat = self.guest.ssh.run(f"cat /proc/{tid}/stat").stdout
            fields = stat.rpartition(")")[2].split()
            # After the comm: state is field 3, processor field 39 (proc(5)).
            if len(fields) > 36 and fields[0] == "R" and int(fields[36]) == cpu:
                return
            time.sleep(0.05)
        raise WorkloadError(f"thread {tid} of nhmem (pid {self.pid}) was not running on cpu {cpu} within "
                            f"{timeout:.0f} s: /proc says {stat.strip()[:120]!r}")

    def map_late(self, node: int) -> int:
        """Map a new 2 MiB VMA apart from every other, written from a CPU of `node`: a VMA the
        scanner meets only now (nhmem's `map`). Returns its address."""
        self.command(f"map node {node}")
        out = self.stream.output()
        mapped = [line.split()[1] for line in out.splitlines() if line.startswith("mapped ")]
        if not mapped:
            raise WorkloadError(f"nhmem mapped a VMA but did not say where: {out.strip().splitlines()[-1:]}")
        return int(mapped[-1], 16)

    def fork(self, node: int, pages: int) -> int:
        """Fork a child that writes the region's first `pages` pages from a CPU of `node` (COW
        copies for it: the holder's originals of those pages are then mapped once, the rest stay
        shared) and then sleeps until the holder dies (nhmem's `fork`). Returns the child's pid."""
        self.command(_op("fork", node, pages, thread=False))
        out = self.stream.output()
        children = [line.split()[1] for line in out.splitlines() if line.startswith("child ")]
        if not children:
            raise WorkloadError(f"nhmem forked but did not say which child: {out.strip().splitlines()[-1:]}")
        return int(children[-1])

    def close(self) -> None:
        """Kill the holder (a livelocked one too: the signal is taken on the way back to user
        mode). Short timeout: on a hung guest this runs while an earlier error propagates."""
        try:
            self.guest.ssh.run(f"kill {self.pid}; rm -rf {self.directory}", timeout=15)
            # Its shell exits once nhmem has (forked children follow it: PR_SET_PDEATHSIG); only
            # then may the channel be closed (GuestStream.finish says why).
            self.stream.finish(timeout=15)
        finally:
            self.stream.close()


@contextlib.contextmanager
def filled(guest: GuestView, node: int, free: int, timeout: float = 120.0) -> Iterator[int]:
    """Take pages of `node` in a sleeping process (`nhmem fill`: MPOL_BIND, in chunks) until the
    node has at most `free` free pages, for the duration; yields the free pages it left. The
    process is killed however the block ends. It runs on a channel of its own, as a holder
    does, so a fill that dies is seen at once: FillKilled when a signal ended it."""
    stream = guest.ssh.stream(f"nhmem fill {node} {free} 2>&1 & echo \"fill $!\"; wait $!; echo \"{EXITED} $?\"")
    pid: int | None = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            out = stream.output(wait=BUG_LOOK_S)
            lines = out.splitlines()
            if pid is None and lines[:1] and lines[0].startswith("fill "):
                pid = int(lines[0].split()[1])
            words = next((text.split() for text in lines if text.startswith("filled ")), [])
            if len(words) >= 4:
                yield int(words[3])
                return
            status = _exit_status(out)
            if status is not None:
                said = [text for text in lines if not text.startswith(("fill ", EXITED))][-1:]
                if status > 128:
                    raise FillKilled(f"nhmem fill {node} {free} was killed by {_signal_name(status - 128)} before "
                                     f"it held node {node} at {free} free pages{f': {said}' if said else ''}")
                raise WorkloadError(f"nhmem fill {node} {free} failed in the guest (status {status}): {said}")
            if stream.ended():
                raise GuestCommandError(f"the SSH channel of nhmem fill {node} {free} closed: the guest's SSH "
                                        f"server went away")
            if time.monotonic() > deadline:
                raise WorkloadError(f"nhmem fill {node} {free} did not finish within {timeout:.0f} s")
    finally:
        try:
            if pid is not None:
                guest.ssh.run(f"kill {pid}", timeout=15)
            stream.finish(timeout=15)
        finally:
            stream.close()


def _exit_status(out: str) -> int | None:
    """The status the shell of a holder or a fill printed after it ended (EXITED), -1 if it is
    unreadable; None while it runs."""
    ended = [text[len(EXITED):].strip() for text in out.splitlines() if text.startswith(EXITED)]
    if not ended:
        return None
    return int(ended[-1]) if ended[-1].isdigit() else -1


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _op(verb: str, node: int | None, pages: int | None, thread: bool) -> str:
    words = ["thread"] if thread else []
    words.append(verb)
    if node is not None:
        words.append(f"node {node}")
    if pages is not None:
        words.append(f"pages {pages}")
    return " ".join(words)


@dataclass(frozen=True)
class BenchSample:
    t: float  # seconds since the workers started
    local_share: float  # of all slice pages, the fraction on their thread's node
    pages_on_node: tuple[int, ...]
    thread_local_share: tuple[float, ...]
    # /proc/vmstat: numa_hint_faults, numa_hint_faults_local, numa_pages_migrated, numa_pte_updates
    vmstat: tuple[int, int, int, int]
    # Pages each thread has written so far (whole passes over its slice); () from an older nhbench.
    thread_writes: tuple[int, ...] = ()


@dataclass(frozen=True)
class BenchRun:
    workload: str
    variant: str
    mib: int
    pid: int
    child: int
    samples: tuple[BenchSample, ...]
    writes: int
    seconds: float
    # Why nhbench stopped: "deadline" (it ran its SECS), "share" or "hint-faults" (its stop
    # condition held at the last sample); "" for output from before it said.
    stopped: str = ""

    @property
    def final_share(self) -> float:
        return self.samples[-1].local_share

    @property
    def mean_share(self) -> float:
        return sum(s.local_share for s in self.samples) / len(self.samples)

    def time_to(self, share: float) -> float | None:
        """Seconds until the local share first reached `share` (None: never)."""
        return next((s.t for s in self.samples if s.local_share >= share), None)


def parse_bench_output(workload: str, variant: str, mib: int, text: str) -> BenchRun:
    """Parse guest-tests/nhbench output (its header comment documents the lines)."""
    pid = child = writes = 0
    seconds = 0.0
    stopped = ""
    samples = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "pid" and len(words) >= 4:
            pid, child = int(words[1]), int(words[3])
        elif words[0] == "sample" and len(words) in (10, 12):
            samples.append(BenchSample(
                float(words[1]), float(words[3]), tuple(int(n) for n in words[5].split(",")),
                tuple(float(x) for x in words[7].split(",")),
                tuple(int(n) for n in words[9].split(",")),  # type: ignore[arg-type]
                tuple(int(n) for n in words[11].split(",")) if len(words) == 12 else (),
            ))
        elif words[0] == "done" and len(words) in (5, 7):
            writes, seconds = int(words[2]), float(words[4])
            stopped = words[6] if len(words) == 7 else ""
    if not samples or not pid:
        raise WorkloadError(f"nhbench {workload} {variant} printed no samples; its output was:\n{text[-2000:]}")
    return BenchRun(workload, variant, mib, pid, child, tuple(samples), writes, seconds, stopped)


def run_bench(guest: GuestView, workload: str, variant: str, mib: int, seconds: float, until: str = "") -> BenchRun:
    """Run one nhbench workload to completion: `seconds`, or until its stop condition `until`
    (`share=S`: the local share reached S; `hint-faults=K`: K times the buffer's pages in hint
    faults) held at a sample."""
    command = f"nhbench {workload} {mib} {seconds} {variant}" + (f" {until}" if until else "")
    result = guest.ssh.run(command, timeout=seconds + STEP_TIMEOUT)
    if result.exit_status != 0:
        raise WorkloadError(f"{command} failed with status {result.exit_status}: {result.stderr.strip()[-500:]}")
    return parse_bench_output(workload, variant, mib, result.stdout)
