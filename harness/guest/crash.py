"""Kernel-bug reports in console output, each turned into a one-line title (after syzkaller's
pkg/report/linux.go): `WARNING in change_pte_range`, `BUG: unable to handle page fault in
do_numa_page`, `kernel BUG at mm/huge_memory.c:1234`, `Kernel panic - not syncing: sysrq triggered crash`.

A report runs from its header line to the end marker (`---[ end trace`, `---[ end Kernel panic`)
or to the next header; the title's function is the first frame of the report's Call Trace (or
its RIP line) that is not a reporting helper.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PREFIX = r"^(?:\[\s*\d+\.\d+\]\s*)?(?:\[\s*[CT]\d+\]\s*)?"
_TIMESTAMP_RE = re.compile(r"^\[\s*\d+\.\d+\]\s?")


@dataclass(frozen=True)
class _Kind:
    pattern: re.Pattern[str]
    # How the title is made: {fn} is the report's guilty function, groups are the header's.
    title: str


_KINDS: tuple[_Kind, ...] = (
    _Kind(re.compile(_PREFIX + r"(kernel BUG at \S+?)!?$"), "{0}"),
    # 6.12 words these "BUG: kernel NULL pointer dereference, address: ..." and
    # "BUG: unable to handle page fault for address: ..." (arch/x86/mm/fault.c:show_fault_oops).
    _Kind(re.compile(_PREFIX + r"BUG: (kernel NULL pointer dereference), address"), "BUG: {0} in {fn}"),
    _Kind(re.compile(_PREFIX + r"BUG: unable to handle (page fault|kernel paging request|kernel NULL pointer dereference)"),
          "BUG: unable to handle {0} in {fn}"),
    _Kind(re.compile(_PREFIX + r"BUG: (Bad page state|Bad page map|Bad rss-counter state)"), "BUG: {0} in {fn}"),
    _Kind(re.compile(_PREFIX + r"BUG: (soft lockup) - CPU#\d+ stuck"), "BUG: {0} in {fn}"),
    _Kind(re.compile(_PREFIX + r"BUG: (scheduling while atomic|sleeping function called from invalid context|"
                              r"spinlock \w+|workqueue lockup|KASAN: [\w-]+|KFENCE: [\w-]+)"), "BUG: {0} in {fn}"),
    _Kind(re.compile(_PREFIX + r"BUG: (.+?)(?: in \S+)?$"), "BUG: {0}"),
    _Kind(re.compile(_PREFIX + r"WARNING: (?:CPU: \d+ PID: \d+ at )(\S+?)\+0x"), "WARNING in {0}"),
    _Kind(re.compile(_PREFIX + r"WARNING: (?:CPU: \d+ PID: \d+ at )(\S+):\d+"), "WARNING in {fn}"),
    _Kind(re.compile(_PREFIX + r"WARNING: (.+)$"), "WARNING: {0}"),
    _Kind(re.compile(_PREFIX + r"(general protection fault)"), "{0} in {fn}"),
    _Kind(re.compile(_PREFIX + r"Oops: (.+)$"), "Oops: {0} in {fn}"),
    _Kind(re.compile(_PREFIX + r"UBSAN: ([\w-]+(?: [\w-]+)*) in (\S+?):\d+"), "UBSAN: {0} in {1}"),
    _Kind(re.compile(_PREFIX + r"(?:rcu: )?INFO: (rcu_\w+ (?:self-)?detected (?:expedited )?stalls?)"), "INFO: {0} in {fn}"),
    _Kind(re.compile(_PREFIX + r"INFO: task (\S+):\d+ blocked for more than \d+ seconds"), "INFO: task hung in {fn}"),
    _Kind(re.compile(_PREFIX + r"watchdog: (BUG: soft lockup) - CPU#\d+ stuck"), "BUG: soft lockup in {fn}"),
    _Kind(re.compile(_PREFIX + r"Kernel panic - not syncing: (.+?)\s*$"), "Kernel panic - not syncing: {0}"),
)

_END_RE = re.compile(_PREFIX + r"---\[ end (?:trace|Kernel panic)")
_RIP_RE = re.compile(r"RIP: [0-9a-f]{4}:(?:\[<[0-9a-f]+>\] )?([\w.]+)\+0x")
_FRAME_RE = re.compile(_PREFIX + r"\s*(?:\? )?([\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+")
# Frames that report a bug rather than cause it (syzkaller skips the same kind).
_SKIP_FRAMES = re.compile(
    r"^(dump_stack\w*|show_stack|show_regs|__warn\w*|warn_slowpath\w*|report_bug|handle_bug|exc_invalid_op|"
    r"asm_exc_\w+|exc_page_fault|asm_sysvec_\w+|sysvec_\w+|do_error_trap|do_trap|die\w*|oops_\w+|panic\w*|"
    r"bad_page\w*|print_bad_pte\w*|__schedule_bug|__might_\w+|watchdog\w*|rcu_\w*|sched_show_task|"
    r"nmi_\w+|arch_trigger_cpumask_backtrace|__x64_sys_\w+|x64_sys_call|do_syscall_64|"
    r"entry_SYSCALL_64\w*|ret_from_fork\w*|kthread|do_group_exit|do_exit|"
    r"page_fault_oops|kernelmode_fixup_or_oops|__bad_area\w*|bad_area\w*|do_user_addr_fault|"
    r"handle_page_fault|irq_exit_rcu|__irq_exit_rcu|__do_softirq|handle_softirqs|hrtimer_\w+|"
    r"__hrtimer_\w+|tick_\w+|update_process_times|timekeeping_\w+|__sysvec_\w+|"
    r"console_\w+|vprintk\w*|_printk|__sysrq_\w+|sysrq_\w+|write_sysrq_trigger|proc_reg_write|"
    r"vfs_write|ksys_write|__x64_sys_write|"
    # A hung task sleeps in the scheduler: the title names what it was doing, not schedule().
    r"__schedule|schedule\w*|io_schedule\w*|preempt_schedule\w*|wait_for_\w+|__wait_\w+|"
    r"rwsem_down_\w+|mutex_lock\w*|__mutex_lock\w*)$"
)


@dataclass(frozen=True)
class KernelBug:
    title: str
    report: str
    line: int  # 1-based line of the header in the console text

    def __str__(self) -> str:
        return self.title


def _strip(line: str) -> str:
    return _TIMESTAMP_RE.sub("", line.rstrip("\r\n"))


def _guilty_function(lines: Iterable[str]) -> str:
    rip_fn = ""
    for line in lines:
        rip = _RIP_RE.search(line)
        if rip and not rip_fn:
            rip_fn = rip.group(1)
        frame = _FRAME_RE.match(line)
        if frame and "Call Trace" not in line:
            name = frame.group(1)
            if not _SKIP_FRAMES.match(name) and "RIP:" not in line and "Code:" not in line:
                # The first useful frame after the Call Trace header names the culprit; a RIP in a
                # reporting helper (e.g. panic) falls through to it.
                if rip_fn and not _SKIP_FRAMES.match(rip_fn):
                    return rip_fn
                return name
    return rip_fn if rip_fn and not _SKIP_FRAMES.match(rip_fn) else (rip_fn or "unknown")


def find_bugs(console: str) -> list[KernelBug]:
    """Every kernel-bug report in console text, in order. A panic caused by an oops is reported as
    its own entry after it (both are useful: the oops says what, the panic that the guest died)."""
    lines = console.splitlines()
    headers: list[tuple[int, _Kind, re.Match[str]]] = []
    for index, raw in enumerate(lines):
        for kind in _KINDS:
            match = kind.pattern.match(raw.rstrip("\r"))
            if match:
                headers.append((index, kind, match))
                break
    # "Oops: ..." right after a "BUG: ..." header is the same report's second line, not a new one.
    headers = [
        header for position, header in enumerate(headers)
        if not (position and header[1].title.startswith("Oops:") and header[0] - headers[position - 1][0] <= 6)
    ]
    bugs: list[KernelBug] = []
    for position, (index, kind, match) in enumerate(headers):
        end = headers[position + 1][0] if position + 1 < len(headers) else len(lines)
        for probe in range(index + 1, end):
            if _END_RE.match(lines[probe]):
                end = probe + 1
                break
        end = min(end, index + 200)
        body = lines[index:end]
        groups = [g or "" for g in match.groups()]
        needs_fn = "{fn}" in kind.title
        fn = _guilty_function(body[1:]) if needs_fn else ""
        title = kind.title.format(*groups, fn=fn)
        if kind.title == "WARNING in {fn}" and fn == "unknown":
            title = f"WARNING in {groups[0]}"
        bugs.append(KernelBug(title.strip(), "\n".join(_strip(line) for line in body), index + 1))
    return _fold_duplicates(bugs)


def _fold_duplicates(bugs: list[KernelBug]) -> list[KernelBug]:
    """Drop headers that only introduce the report printed right after them."""
    folded: list[KernelBug] = []
    for index, bug in enumerate(bugs):
        following = bugs[index + 1] if index + 1 < len(bugs) else None
        # A header with no frames of its own, right before another header, is the same report
        # (RCU prints "detected stalls on CPUs/tasks:" and then the per-CPU stall).
        if bug.title.endswith(" in unknown") and following is not None and following.line - bug.line <= 3:
            continue
        folded.append(bug)
    return folded
