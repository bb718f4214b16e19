"""State of the reference model of Linux NUMA balancing (6.12, and 6.1 where KernelRules say):
immutable values, so every rule is a pure function from one state to the next (easy to test,
easy to replay against the kernel)."""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE_SIZE = 4096
HPAGE_SIZE = 2 << 20
HPAGE_PMD_NR = HPAGE_SIZE // PAGE_SIZE
LAST__PID_SHIFT = 8
LAST__PID_MASK = (1 << LAST__PID_SHIFT) - 1

# include/linux/sched/sysctl.h: kernel.numa_balancing bits.
NUMA_BALANCING_NORMAL = 1
NUMA_BALANCING_MEMORY_TIERING = 2

# The kernel release (VERSION.PATCHLEVEL) whose rules the model follows by default; RULES holds
# every release it knows. On another, a check's outcome is reported as unverified
# (harness.checks.runner.judge_applicability).
MODELLED_RELEASE = "6.12"


@dataclass(frozen=True)
class KernelRules:
    """Where the NUMA-balancing rules of the releases the model knows differ (each field cites
    both sides). Compared function by function between Debian's 6.1.192 and 6.12.117 sources,
    everything else the checks that follow both releases make decide is the same:
    kernel/sched/fair.c should_numa_migrate_memory (6.12 adds the memoryless-node and tiering
    tests, which do not apply), task_numa_fault, task_numa_group, task_numa_placement (6.12's
    numa_nearest_node is 6.1's open-coded loop), numa_get_avg_runtime,
    numa_group_count_active_nodes, numa_migrate_preferred, task_numa_migrate,
    task_numa_find_cpu, task_numa_compare, task_tick_numa, init_numa_balancing, task_scan_min,
    task_scan_max, and task_numa_work's clock (its per-VMA state is 6.4's: Mechanism.VMA_NUMAB);
    mm/memory.c do_numa_page (6.1's numa_migrate_prep is 6.12's numa_migrate_check) and
    wp_page_reuse; mm/huge_memory.c do_huge_pmd_numa_page; mm/mempolicy.c mpol_misplaced; and
    mm/migrate.c's refusal on a nearly full node (migrate_balanced_pgdat, ALLOC_CMA aside).
    One more difference changes which pages are hinted: KernelRules.cow_page_count."""

    release: str
    # 6.1: mm/mprotect.c:change_pte_range keeps a writable PTE's write bit in the NUMA hint entry
    # (preserve_write -> pte_mk_savedwrite, on x86 pte_mkwrite itself), mm/memory.c:do_numa_page
    # puts it back on a page it leaves in place (was_writable = pte_savedwrite), and
    # mm/rmap.c:try_to_migrate_one makes a writable migration entry from it, so a migrated page
    # comes back writable too (and a write after it takes no wp fault: last_cpupid stays).
    # 6.12: the hint entry has no write bit; do_numa_page decides with can_change_pte_writable
    # (numa_rebuild_single_mapping) and a migrated page comes back read-only.
    savedwrite: bool
    # 6.1: kernel/sched/fair.c:update_task_scan_period's slow-down branch returns before the
    # memset of numa_faults_locality, so those counts (a migrate failure among them) carry into
    # the next placement. 6.12: "goto out", the counts are cleared on every branch.
    slow_down_keeps_locality: bool
    # 6.12 (since 6.4: "sched/numa: Enhance vma scanning logic", ef6a22b70f6d, and its
    # successors): kernel/sched/fair.c:task_numa_work gates every VMA with its numab_state (scan
    # delay, pids_active and its reset, prev_scan_seq, vma_is_accessed). 6.1: no per-VMA state,
    # every VMA that passes the skip rules is scanned from the mm's offset on.
    vma_scan_gate: bool = True
    # 6.1: mm/mprotect.c:change_pte_range skips a page of a COW mapping whose page_count is not
    # 1, so also one a per-CPU LRU add batch holds a reference to (a page faulted in moments
    # ago); 6.12 skips a folio that is likely mapped shared or DMA-pinned, whatever its count.
    # The model has 6.12's test (Page.likely_shared); a check that predicts hints under 6.1's
    # rules drains the LRU batches after mapping new pages (checks/scenario.py:drain_lru_adds),
    # and a fault that leaves a page in place keeps its count.
    cow_page_count: bool = False


RULES: dict[str, KernelRules] = {
    "6.12": KernelRules("6.12", savedwrite=False, slow_down_keeps_locality=False),
    "6.1": KernelRules("6.1", savedwrite=True, slow_down_keeps_locality=True, vma_scan_gate=False,
                       cow_page_count=True),
}
DEFAULT_RULES = RULES[MODELLED_RELEASE]


def release_series(release: str) -> str:
    """VERSION.PATCHLEVEL of a kernel release string ("6.1.192-numa" -> "6.1")."""
    return ".".join(release.split(".")[:2])


def time_after(a: int, b: int) -> bool:
    """include/linux/jiffies.h:time_after for unsigned long jiffies: a is after b, wrap-safe."""
    return ((b - a) & (1 << 63)) != 0 and (b - a) & ((1 << 64) - 1) != 0


@dataclass(frozen=True)
class Tunables:
    """kernel/sched/fair.c defaults; debugfs sched/numa_balancing/* and kernel.numa_balancing."""

    scan_delay_ms: int = 1000
    scan_period_min_ms: int = 1000
    scan_period_max_ms: int = 60000
    scan_size_mb: int = 256
    mode: int = NUMA_BALANCING_NORMAL
    hz: int = 250

    def ms_to_jiffies(self, ms: int) -> int:
        """include/linux/jiffies.h:msecs_to_jiffies for HZ dividing 1000 (rounds up)."""
        return -(-ms * self.hz // 1000)


@dataclass(frozen=True)
class NumabState:
    """include/linux/mm_types.h:struct vma_numab_state."""

    start_scan_seq: int
    prev_scan_seq: int
    next_scan: int
    pids_active_reset: int
    pids_active: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    readable: bool = True
    writable: bool = True
    executable: bool = False
    file_backed: bool = False
    shared: bool = False  # VM_SHARED
    migratable: bool = True  # mm/mempolicy.c:vma_migratable (no VM_IO/VM_PFNMAP, not DAX)
    policy_mof: bool = True  # vma_policy_mof: false for e.g. MPOL_BIND without MPOL_F_NUMA_BALANCING
    hugetlb: bool = False
    mixedmap: bool = False
    numab: NumabState | None = None

    @property
    def accessible(self) -> bool:
        """include/linux/mm.h:vma_is_accessible (VM_READ | VM_WRITE | VM_EXEC)."""
        return self.readable or self.writable or self.executable


@dataclass(frozen=True)
class Page:
    """One mapping of a folio: a base page (4 KiB) or a PMD-mapped THP (2 MiB)."""

    vaddr: int
    node: int
    size: int = PAGE_SIZE
    hint: bool = False
    zero_page: bool = False
    likely_shared: bool = False  # folio_likely_mapped_shared (e.g. COW-shared after fork)
    last_cpupid: int | None = None  # None: "pid unset" (page_cpupid_reset_last)
    # Base pages of the folio this PTE maps when that is a large folio (an mTHP: 16 for 64 KiB),
    # 0 when the folio is what the entry maps (a base page, a PMD-mapped THP).
    folio_pages: int = 0
    # The entry's write bit (for a hint entry under 6.1's rules, the saved one: KernelRules.savedwrite).
    writable: bool = False

    @property
    def huge(self) -> bool:
        return self.size == HPAGE_SIZE

    @property
    def nr_pages(self) -> int:
        return self.size // PAGE_SIZE

    @property
    def folio_nr_pages(self) -> int:
        """folio_nr_pages of the folio the entry maps."""
        return self.folio_pages or self.nr_pages


@dataclass(frozen=True)
class Mm:
    numa_scan_offset: int = 0
    numa_scan_seq: int = 0
    mm_users: int = 1


@dataclass(frozen=True)
class Counters:
    """The /proc/vmstat counters NUMA balancing moves (include/linux/vm_event_item.h)."""

    numa_pte_updates: int = 0
    numa_huge_pte_updates: int = 0
    numa_hint_faults: int = 0
    numa_hint_faults_local: int = 0
    numa_pages_migrated: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(a - b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.numa_pte_updates, self.numa_huge_pte_updates, self.numa_hint_faults,
                self.numa_hint_faults_local, self.numa_pages_migrated)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(("numa_pte_updates", "numa_huge_pte_updates", "numa_hint_faults",
                         "numa_hint_faults_local", "numa_pages_migrated"), self.as_tuple(), strict=True))


@dataclass(frozen=True)
class Task:
    """The per-task NUMA state (include/linux/sched.h), for one task without a numa_group."""

    pid: int
    nr_nodes: int
    numa_scan_seq: int = 0
    numa_scan_period: int = 1000
    numa_scan_period_max: int = 60000
    numa_preferred_nid: int = -1
    # faults[stat][nid][priv]: stat mem, cpu, membuf, cpubuf; priv 0 shared, 1 private.
    faults: tuple[tuple[tuple[int, int], ...], ...] = field(default=())
    locality: tuple[int, int, int] = (0, 0, 0)  # remote, local, migrate-failed
    total_numa_faults: int = 0
    numa_pages_migrated: int = 0

    def __post_init__(self) -> None:
        if not self.faults:
            object.__setattr__(self, "faults", tuple(tuple((0, 0) for _ in range(self.nr_nodes)) for _ in range(4)))


MEM, CPU, MEMBUF, CPUBUF = range(4)


def cpupid(cpu: int, pid: int) -> int:
    """include/linux/mm.h:cpu_pid_to_cpupid."""
    return (cpu << LAST__PID_SHIFT) | (pid & LAST__PID_MASK)


def cpupid_cpu(value: int) -> int:
    return value >> LAST__PID_SHIFT


def cpupid_pid(value: int) -> int:
    return value & LAST__PID_MASK
