"""From command-line style inputs to a Guest ready to boot: kernel (built, cached or given),
image, topology. Shared by `run`, `up` (through the supervisor) and the pytest plugin."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.cache import read_json
from harness.errors import BadInput
from harness.guest.image import build_image, client_identity
from harness.guest.qemu import Guest, VmConfig
from harness.guest.topology import parse_topology
from harness.kernel.pipeline import BuildRequest, KernelArtifact, build, validate_build_options


@dataclass(frozen=True)
class LaunchRequest:
    build: BuildRequest = field(default_factory=BuildRequest)
    kernel_dir: Path | None = None
    topology: str = "2x2"
    memory: str | None = None
    accel: str = "auto"
    boot_timeout: float = 120.0
    name: str = ""
    cmdline: tuple[str, ...] = ()
    # Restore from / save to a snapshot of this very guest (harness.guest.snapshot): on for
    # run, up and the pytest plugin, off for the checks until their clean-run loop covers it.
    snapshot: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, default=str)

    @classmethod
    def from_json(cls, text: str) -> LaunchRequest:
        data = json.loads(text)
        b = data.pop("build")
        build_request = BuildRequest(
            source=b["source"], series_dir=Path(b["series_dir"]) if b["series_dir"] else None,
            extra_patches=tuple(Path(p) for p in b["extra_patches"]),
            config_files=tuple(Path(p) for p in b["config_files"]), kconfig=tuple(b["kconfig"]),
            cache_dir=Path(b["cache_dir"]) if b["cache_dir"] else None, jobs=int(b["jobs"]),
            base_config=b.get("base_config"), make_opts=tuple(b.get("make_opts", ())),
        )
        return cls(
            build=build_request, kernel_dir=Path(data["kernel_dir"]) if data["kernel_dir"] else None,
            topology=data["topology"], memory=data["memory"], accel=data["accel"],
            boot_timeout=float(data["boot_timeout"]), name=data["name"], cmdline=tuple(data["cmdline"]),
            snapshot=bool(data.get("snapshot", False)),
        )


def validate(request: LaunchRequest) -> None:
    """Reject bad input before anything is built or booted: the topology and memory, --kernel, and
    --source (the default source may still be installed by the build)."""
    parse_topology(request.topology, request.memory)
    if request.kernel_dir is not None:
        _kernel_from_directory(request.kernel_dir)
    else:
        validate_build_options(request.build)


def resolve_kernel(request: LaunchRequest) -> KernelArtifact:
    """--kernel DIR (a `numa-harness build` directory, or a kbuild output directory), else build."""
    if request.kernel_dir is None:
        return build(request.build)
    return _kernel_from_directory(request.kernel_dir)


def _kernel_from_directory(kernel_dir: Path) -> KernelArtifact:
    directory = kernel_dir.resolve()
    manifest = read_json(directory / "manifest.json")
    if manifest is not None and (directory / "bzImage").is_file():
        return KernelArtifact(directory, manifest, cache_hit=True)
    if (directory / "arch/x86/boot/bzImage").is_file():
        return _kbuild_dir_artifact(directory)
    raise BadInput(
        f"--kernel {kernel_dir}: neither a `numa-harness build` directory (bzImage + manifest.json) "
        f"nor a kbuild output directory (arch/x86/boot/bzImage). Pass one of those, or leave --kernel out "
        f"to build the default kernel."
    )


def _kbuild_dir_artifact(directory: Path) -> KernelArtifact:
    # A kernel built outside the harness: use it in place, with a manifest made up from what is there.
    manifest = {"kernel_release": "unknown", "source": {"identity": f"kbuild directory {directory}"},
                "external": True}
    release = directory / "include/config/kernel.release"
    if release.is_file():
        manifest["kernel_release"] = release.read_text().strip()
    return _ExternalArtifact(directory, manifest, cache_hit=True)


class _ExternalArtifact(KernelArtifact):
    @property
    def bzimage(self) -> Path:
        return self.directory / "arch/x86/boot/bzImage"

    @property
    def config(self) -> Path:
        return self.directory / ".config"


def make_guest(request: LaunchRequest, kernel: KernelArtifact | None = None) -> Guest:
    topology = parse_topology(request.topology, request.memory)  # validated before anything starts
    kernel = kernel or resolve_kernel(request)
    cache_root = request.build.cache_root
    image = build_image(cache_root)
    config = VmConfig(
        kernel=kernel.bzimage, initramfs=image.initramfs, topology=topology, accel=request.accel,
        cmdline_extra=request.cmdline, boot_timeout=request.boot_timeout, name=request.name,
        host_key=image.host_key, vmlinux=kernel.vmlinux if kernel.vmlinux.is_file() else None,
        kernel_dir=kernel.directory, snapshot=request.snapshot,
    )
    return Guest(config, client_identity(cache_root), cache_root)
