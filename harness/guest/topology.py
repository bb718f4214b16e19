"""NUMA machine descriptions: parse (`NxC` or TOML), validate, turn into QEMU arguments, and check
what a booted guest reports in /sys/devices/system/node against what was asked for.

Validation happens before QEMU starts: memory adds up to the total, every CPU is on exactly one
node and CPUs are numbered 0..n-1, distances are 10 on the diagonal and above 10 elsewhere,
symmetric unless the TOML says `asymmetric = true`. These are the rules QEMU and the kernel's
SLIT parser (drivers/acpi/numa/srat.c:slit_valid) apply, checked early with a clear message.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import BadInput, InfrastructureError

DEFAULT_MEMORY_MB = 2048
LOCAL_DISTANCE = 10
DEFAULT_REMOTE_DISTANCE = 20


class TopologyError(BadInput):
    """An impossible or malformed NUMA machine."""


class TopologyMismatch(InfrastructureError):
    """The booted guest does not see the machine that was asked for."""


@dataclass(frozen=True)
class Node:
    cpus: tuple[int, ...]
    memory_mb: int


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]
    distances: tuple[tuple[int, ...], ...]
    name: str = ""

    @property
    def cpu_count(self) -> int:
        return sum(len(n.cpus) for n in self.nodes)

    @property
    def memory_mb(self) -> int:
        return sum(n.memory_mb for n in self.nodes)

    def describe(self) -> str:
        parts = [f"node{i}: cpus {cpulist(n.cpus) or '-'}, {n.memory_mb} MiB" for i, n in enumerate(self.nodes)]
        return "; ".join(parts)

    def qemu_args(self) -> list[str]:
        """-smp/-m/-object memory-backend-ram/-numa node/-numa dist for this machine.

        sockets = nodes (when every node has the same CPU count) so that the guest's package
        topology matches its NUMA topology, as on real hardware.
        """
        counts = {len(n.cpus) for n in self.nodes if n.cpus}
        if len(counts) == 1 and all(n.cpus for n in self.nodes):
            per = counts.pop()
            smp = f"{self.cpu_count},sockets={len(self.nodes)},cores={per},threads=1"
        else:
            smp = f"{self.cpu_count},sockets=1,cores={self.cpu_count},threads=1"
        args = ["-smp", smp, "-m", f"{self.memory_mb}M"]
        for index, node in enumerate(self.nodes):
            if node.memory_mb:
                args += ["-object", f"memory-backend-ram,id=nh-mem{index},size={node.memory_mb}M"]
        for index, node in enumerate(self.nodes):
            spec = f"node,nodeid={index}"
            for start, end in _ranges(node.cpus):
                spec += f",cpus={start}" if start == end else f",cpus={start}-{end}"
            if node.memory_mb:
                spec += f",memdev=nh-mem{index}"
            args += ["-numa", spec]
        for src, row in enumerate(self.distances):
            for dst, value in enumerate(row):
                if src != dst:
                    args += ["-numa", f"dist,src={src},dst={dst},val={value}"]
        return args


def parse_topology(spec: str, memory: str | None = None) -> Topology:
    """`NxC` (N nodes of C CPUs, memory split evenly) or a path to a TOML file."""
    total = _memory_option(memory) if memory else DEFAULT_MEMORY_MB
    match = re.fullmatch(r"(\d+)x(\d+)", spec.strip())
    if match:
        nodes, per = int(match.group(1)), int(match.group(2))
        if nodes < 1 or per < 1:
            raise TopologyError(f"--topology {spec}: need at least 1 node and 1 CPU per node, e.g. 2x2.")
        if total % nodes or (total // nodes) % 2:
            raise TopologyError(
                f"--topology {spec} with --memory {total}M: {total} MiB does not split evenly into "
                f"{nodes} nodes of a whole, even number of MiB. Pick a --memory divisible by {2 * nodes} MiB."
            )
        cpu = iter(range(nodes * per))
        node_list = tuple(Node(tuple(next(cpu) for _ in range(per)), total // nodes) for _ in range(nodes))
        distances = tuple(
            tuple(LOCAL_DISTANCE if i == j else DEFAULT_REMOTE_DISTANCE for j in range(nodes)) for i in range(nodes)
        )
        topology = Topology(node_list, distances, spec)
        validate(topology, expected_memory_mb=total)
        return topology
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        return load_topology_file(path, memory)
    raise TopologyError(
        f"--topology {spec}: expected NxC (e.g. 2x2 for 2 nodes of 2 CPUs) or the path of a TOML "
        f"file describing the nodes."
    )


def load_topology_file(path: Path, memory: str | None = None) -> Topology:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise TopologyError(f"--topology {path}: no such file. Pass NxC or an existing TOML file.") from err
    except tomllib.TOMLDecodeError as err:
        raise TopologyError(f"--topology {path}: not valid TOML ({err}). Fix the file.") from err
    return topology_from_mapping(data, str(path), _memory_option(memory) if memory else None)


def topology_from_mapping(data: Mapping[str, Any], origin: str, expected_memory_mb: int | None = None) -> Topology:
    """TOML shape: [[node]] cpus = "0-1" (or a list), memory = "1G" (0 = memoryless);
    optional distances = [[10, 20], [20, 10]], asymmetric = false."""
    unknown = set(data) - {"node", "distances", "asymmetric"}
    if unknown:
        raise TopologyError(
            f"{origin}: unknown top-level key(s) {', '.join(sorted(unknown))}; expected node, distances, asymmetric."
        )
    raw_nodes = data.get("node")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise TopologyError(f"{origin}: needs at least one [[node]] table with cpus and memory.")
    nodes = []
    for index, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict) or "memory" not in raw:
            raise TopologyError(f"{origin}: node {index} needs `memory` (e.g. \"1G\", or 0 for a memoryless node).")
        extra = set(raw) - {"cpus", "memory"}
        if extra:
            raise TopologyError(
                f"{origin}: node {index} has unknown key(s) {', '.join(sorted(extra))} (only cpus and memory). "
                f"Top-level keys such as distances must come before the first [[node]] table."
            )
        cpus_value = raw.get("cpus", [])
        cpus = parse_cpulist(cpus_value) if isinstance(cpus_value, str) else tuple(int(c) for c in cpus_value)
        nodes.append(Node(cpus, parse_memory(str(raw["memory"]))))
    count = len(nodes)
    raw_distances = data.get("distances")
    if raw_distances is None:
        distances = tuple(
            tuple(LOCAL_DISTANCE if i == j else DEFAULT_REMOTE_DISTANCE for j in range(count)) for i in range(count)
        )
    else:
        if not isinstance(raw_distances, list) or len(raw_distances) != count or any(
            not isinstance(row, list) or len(row) != count for row in raw_distances
        ):
            raise TopologyError(f"{origin}: distances must be a {count}x{count} matrix (one row per node).")
        distances = tuple(tuple(int(v) for v in row) for row in raw_distances)
    topology = Topology(tuple(nodes), distances, Path(origin).stem)
    validate(topology, expected_memory_mb=expected_memory_mb, asymmetric=bool(data.get("asymmetric", False)),
             origin=origin)
    return topology


def validate(
    topology: Topology, *, expected_memory_mb: int | None = None, asymmetric: bool = False, origin: str = "topology"
) -> None:
    problems = []
    seen: dict[int, int] = {}
    for index, node in enumerate(topology.nodes):
        for cpu in node.cpus:
            if cpu in seen:
                problems.append(f"CPU {cpu} is on node {seen[cpu]} and node {index}")
            seen[cpu] = index
        if node.memory_mb < 0 or node.memory_mb % 2:
            problems.append(f"node {index} memory must be a whole, even number of MiB (got {node.memory_mb})")
    if seen and sorted(seen) != list(range(len(seen))):
        problems.append(f"CPUs must be numbered 0-{len(seen) - 1} with no gaps (got {cpulist(tuple(sorted(seen)))})")
    if not seen:
        problems.append("no node has a CPU")
    if topology.memory_mb <= 0:
        problems.append("no node has memory")
    if expected_memory_mb is not None and topology.memory_mb != expected_memory_mb:
        problems.append(f"node memory adds up to {topology.memory_mb} MiB, not the {expected_memory_mb} MiB of --memory")
    for i, row in enumerate(topology.distances):
        for j, value in enumerate(row):
            if i == j and value != LOCAL_DISTANCE:
                problems.append(f"distance {i}->{i} must be {LOCAL_DISTANCE} (got {value})")
            elif i != j and not LOCAL_DISTANCE < value <= 255:
                problems.append(f"distance {i}->{j} must be between 11 and 255 (got {value})")
            elif i != j and not asymmetric and value != topology.distances[j][i]:
                problems.append(f"distance {i}->{j} is {value} but {j}->{i} is {topology.distances[j][i]} "
                                f"(set asymmetric = true if that is intended)")
    if problems:
        raise TopologyError(f"{origin} is not a valid NUMA machine: {'; '.join(problems)}. Fix it and retry.")


def _memory_option(text: str) -> int:
    """--memory's value, with an error that names the option."""
    try:
        return parse_memory(text)
    except TopologyError as err:
        raise TopologyError(f"--memory {text}: {err}") from err


def parse_memory(text: str) -> int:
    """"2G", "1536M", "512" (MiB) -> MiB."""
    match = re.fullmatch(r"\s*(\d+)\s*([MmGg]i?[Bb]?)?\s*", text)
    if not match:
        raise TopologyError(f"memory size {text!r}: use a number of MiB or a size like 512M or 2G.")
    value = int(match.group(1))
    unit = (match.group(2) or "M")[0].upper()
    return value * 1024 if unit == "G" else value


def parse_cpulist(text: str) -> tuple[int, ...]:
    """The kernel's cpulist format: "0-1,4" -> (0, 1, 4); "" -> ()."""
    cpus: list[int] = []
    for part in filter(None, (p.strip() for p in text.strip().split(","))):
        start, _, end = part.partition("-")
        try:
            cpus.extend(range(int(start), int(end or start) + 1))
        except ValueError as err:
            raise TopologyError(f"cpu list {text!r}: expected ranges like 0-1,4.") from err
    return tuple(cpus)


def cpulist(cpus: Sequence[int]) -> str:
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _ranges(cpus))


def _ranges(cpus: Sequence[int]) -> list[tuple[int, int]]:
    result: list[tuple[int, int]] = []
    for cpu in sorted(cpus):
        if result and cpu == result[-1][1] + 1:
            result[-1] = (result[-1][0], cpu)
        else:
            result.append((cpu, cpu))
    return result


@dataclass(frozen=True)
class ObservedNode:
    node: int
    cpus: tuple[int, ...]
    memory_kb: int
    distances: tuple[int, ...]


# Runs in the guest's busy-box shell: one line per node directory, fields separated by '|'.
GUEST_PROBE = (
    "cat /sys/devices/system/node/online; for d in /sys/devices/system/node/node[0-9]*; do "
    "n=${d##*node}; echo \"$n|$(cat $d/cpulist)|$(awk '/MemTotal/ {print $4}' $d/meminfo)|$(cat $d/distance)\"; "
    "done"
)


def parse_guest_probe(output: str) -> tuple[str, list[ObservedNode]]:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if not lines:
        raise TopologyMismatch("The guest printed nothing for /sys/devices/system/node; is sysfs mounted?")
    online = lines[0].strip()
    nodes = []
    for line in lines[1:]:
        fields = line.split("|")
        if len(fields) != 4:
            raise TopologyMismatch(f"Cannot parse the guest's node description {line!r}.")
        nodes.append(ObservedNode(
            int(fields[0]), parse_cpulist(fields[1]), int(fields[2] or 0),
            tuple(int(v) for v in fields[3].split()),
        ))
    return online, sorted(nodes, key=lambda n: n.node)


def compare(topology: Topology, online: str, observed: Sequence[ObservedNode]) -> list[str]:
    """Differences between the machine asked for and what the guest sees (empty when they agree).

    Memory is compared loosely: the guest's MemTotal excludes what firmware and the kernel
    reserve (the kernel image, memmap, ACPI tables, the <1 MiB hole), so a node with M MiB
    must report more than M - max(64, M/8) MiB and no more than M MiB; a memoryless node must
    report none.
    """
    problems = []
    wanted_online = cpulist(tuple(range(len(topology.nodes))))
    if online != wanted_online:
        problems.append(f"nodes online: guest says {online!r}, asked for {wanted_online!r}")
    by_id = {n.node: n for n in observed}
    for index, node in enumerate(topology.nodes):
        seen = by_id.get(index)
        if seen is None:
            problems.append(f"node{index}: missing in the guest")
            continue
        if tuple(sorted(seen.cpus)) != tuple(sorted(node.cpus)):
            problems.append(f"node{index}: cpus {cpulist(seen.cpus) or '-'} in the guest, asked for {cpulist(node.cpus) or '-'}")
        seen_mb = seen.memory_kb // 1024
        slack = max(64, node.memory_mb // 8)
        if node.memory_mb == 0 and seen.memory_kb != 0:
            problems.append(f"node{index}: {seen_mb} MiB in the guest, asked for a memoryless node")
        elif node.memory_mb and not node.memory_mb - slack < seen_mb <= node.memory_mb:
            problems.append(f"node{index}: {seen_mb} MiB in the guest, asked for {node.memory_mb} MiB")
        if seen.distances and seen.distances != topology.distances[index]:
            wanted = list(topology.distances[index])
            problems.append(f"node{index}: distances {list(seen.distances)} in the guest, asked for {wanted}")
    return problems
