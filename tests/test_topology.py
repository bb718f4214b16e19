"""Topology parsing and validation, QEMU argument construction, and guest-view comparison."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA

from harness.guest.qemu import VmConfig, qemu_argv
from harness.guest.topology import (
    Node,
    ObservedNode,
    Topology,
    TopologyError,
    compare,
    cpulist,
    parse_cpulist,
    parse_guest_probe,
    parse_memory,
    parse_topology,
    topology_from_mapping,
)
from harness.guest.view import RunPaths


def test_nxc_splits_cpus_and_memory() -> None:
    topology = parse_topology("2x2")
    assert topology.nodes == (Node((0, 1), 1024), Node((2, 3), 1024))
    assert topology.distances == ((10, 20), (20, 10))
    assert parse_topology("4x1", "2G").nodes[3] == Node((3,), 512)


def test_qemu_args_for_2x2() -> None:
    assert parse_topology("2x2").qemu_args() == [
        "-smp", "4,sockets=2,cores=2,threads=1", "-m", "2048M",
        "-object", "memory-backend-ram,id=nh-mem0,size=1024M",
        "-object", "memory-backend-ram,id=nh-mem1,size=1024M",
        "-numa", "node,nodeid=0,cpus=0-1,memdev=nh-mem0",
        "-numa", "node,nodeid=1,cpus=2-3,memdev=nh-mem1",
        "-numa", "dist,src=0,dst=1,val=20",
        "-numa", "dist,src=1,dst=0,val=20",
    ]


def test_memoryless_toml() -> None:
    topology = parse_topology(str(DATA / "topology/memoryless.toml"))
    assert topology.nodes[2] == Node((4, 5), 0)
    args = topology.qemu_args()
    assert "node,nodeid=2,cpus=4-5" in args  # no memdev for the memoryless node
    assert "memory-backend-ram,id=nh-mem2,size=0M" not in " ".join(args)
    assert "dist,src=2,dst=0,val=30" in args
    assert args[1] == "6,sockets=3,cores=2,threads=1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"node": [{"cpus": "0-1", "memory": "1G"}, {"cpus": "1-2", "memory": "1G"}]}, "CPU 1 is on node 0 and node 1"),
        ({"node": [{"cpus": "0", "memory": "1G"}, {"cpus": "2", "memory": "1G"}]}, "numbered 0-1 with no gaps"),
        ({"node": [{"cpus": "0", "memory": 0}]}, "no node has memory"),
        ({"node": [{"cpus": "0", "memory": "1G"}, {"cpus": "1", "memory": "1G"}], "distances": [[10, 20], [30, 10]]},
         "distance 0->1 is 20 but 1->0 is 30"),
        ({"node": [{"cpus": "0", "memory": "1G"}, {"cpus": "1", "memory": "1G"}], "distances": [[10, 10], [10, 10]]},
         "between 11 and 255"),
        ({"node": [{"cpus": "0", "memory": "1G"}], "distances": [[12]]}, "distance 0->0 must be 10"),
        ({"node": [{"cpus": "0", "memory": "1G", "distances": [[10]]}]}, "unknown key(s) distances"),
        ({"nodes": []}, "unknown top-level key(s) nodes"),
        ({"node": [{"cpus": "0", "memory": "1G"}, {"cpus": "1", "memory": "1G"}], "distances": [[10, 20]]}, "2x2 matrix"),
    ],
)
def test_invalid_topologies(data: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(TopologyError) as info:
        topology_from_mapping(data, "machine.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("machine.toml")


def test_asymmetric_allowed_when_asked() -> None:
    data = {"asymmetric": True, "node": [{"cpus": "0", "memory": "1G"}, {"cpus": "1", "memory": "1G"}],
            "distances": [[10, 20], [30, 10]]}
    assert topology_from_mapping(data, "m").distances == ((10, 20), (30, 10))


@pytest.mark.parametrize(("spec", "memory", "message"), [
    ("0x2", None, "at least 1 node"), ("3x1", "2G", "does not split evenly"), ("banana", None, "expected NxC"),
    ("2x2", "lots", "use a number of MiB"),
])
def test_bad_specs(spec: str, memory: str | None, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse_topology(spec, memory)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no such file"):
        parse_topology(str(tmp_path / "nope.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[[node]\n")
    with pytest.raises(TopologyError, match="not valid TOML"):
        parse_topology(str(broken))


def test_cpulists_and_memory() -> None:
    assert parse_cpulist("0-2,5,7-8") == (0, 1, 2, 5, 7, 8)
    assert parse_cpulist("") == ()
    assert cpulist((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert (parse_memory("2G"), parse_memory("1536M"), parse_memory("512"), parse_memory("1GiB")) == (2048, 1536, 512, 1024)


def test_guest_probe_parse_and_compare() -> None:
    online, nodes = parse_guest_probe("0-1\n1|2-3|1031692|20 10\n0|0-1|1015764|10 20\n")
    assert online == "0-1" and [n.node for n in nodes] == [0, 1]
    topology = parse_topology("2x2")
    assert compare(topology, online, nodes) == []
    wrong = [ObservedNode(0, (0, 1, 2, 3), 2_000_000, (10,))]
    problems = compare(topology, "0", wrong)
    assert "nodes online: guest says '0', asked for '0-1'" in problems
    assert "node1: missing in the guest" in problems
    memoryless = Topology((Node((0,), 1024), Node((1,), 0)), ((10, 20), (20, 10)))
    assert compare(memoryless, "0-1", [ObservedNode(0, (0,), 1_000_000, (10, 20)), ObservedNode(1, (1,), 0, (20, 10))]) == []
    assert "asked for a memoryless node" in compare(
        memoryless, "0-1", [ObservedNode(0, (0,), 1_000_000, (10, 20)), ObservedNode(1, (1,), 1024, (20, 10))])[0]


def test_qemu_argv_essentials(tmp_path: Path) -> None:
    config = VmConfig(kernel=Path("/k/bzImage"), initramfs=Path("/i/initramfs.cpio"), topology=parse_topology("2x2"),
                      cmdline_extra=("numa_balancing=enable",), name="g1")
    argv = qemu_argv(config, RunPaths(tmp_path), "tcg", 40022, "tok")
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-accel tcg,thread=multi -cpu max" in joined
    assert "-device vmcoreinfo" in joined
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in joined  # loopback only
    assert f"logfile={tmp_path}/console.log" in joined
    assert joined.count("-qmp unix:") == 2  # one for the harness, one for drgn
    append = argv[argv.index("-append") + 1]
    assert "nh_token=tok" in append and "numa_balancing=enable" in append and "panic=-1" in append
    assert "-no-reboot" in argv
    assert "-accel kvm -cpu host" in " ".join(qemu_argv(config, RunPaths(tmp_path), "kvm", 1, "t"))
