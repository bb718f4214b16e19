"""The kernel pipeline: source + patch series + fragments -> a verified, cached, debuggable kernel.

    BuildRequest --plan--> BuildPlan (source identity, patches, merged config, cache key)
                 --build-> KernelArtifact (bzImage, vmlinux, config, manifest) in kernels/<key>/

The cache key covers everything that changes the kernel: the source identity, each patch's
content in order, the merged requested config, and, when given, the base configuration it is
merged onto and the extra make variables (plus the harness's recipe version).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import REPO_ROOT, __version__
from harness.cache import default_cache_root, ensure_dir, file_lock, read_json, staged_entry
from harness.errors import BuildOptionError, KconfigError
from harness.kernel.entries import mark_used
from harness.kernel.kbuild import configure, kernel_release, run_make
from harness.kernel.kconfig import (
    Fragment,
    KconfigIndex,
    MergedConfig,
    merge,
    parse_dotconfig,
    parse_fragment_file,
    parse_option_argument,
    unmet_options,
)
from harness.kernel.patches import Patch, extra_patch, load_series, stage_series
from harness.kernel.source import (
    SourceIdentity,
    SourceSpec,
    identify,
    kernel_version_of_tree,
    pristine_tree,
    resolve_source,
    source_release,
)
from harness.kernel.verify import verify_vmlinux
from harness.kernel.worktree import apply_overlay, create_if_missing, sync_from_directory, worktree_for

KCONFIG_DIR = REPO_ROOT / "kernel-config"
DEFAULT_SERIES_DIR = KCONFIG_DIR / "patches"
# The default series per kernel release (VERSION.PATCHLEVEL): the harness's own patches differ
# where the kernel does (6.1 keeps vmcoreinfo in kernel/crash_core.c). Another release gets the
# newest one; --series replaces it.
DEFAULT_SERIES_DIRS = {"6.12": DEFAULT_SERIES_DIR, "6.1": KCONFIG_DIR / "patches-6.1"}
# Bump when the way a kernel is built changes (targets, make flags): old entries become misses.
RECIPE_VERSION = 1
TARGETS = ("bzImage", "vmlinux")


@dataclass(frozen=True)
class BuildRequest:
    source: str | None = None
    series_dir: Path | None = None
    extra_patches: tuple[Path, ...] = ()
    config_files: tuple[Path, ...] = ()
    kconfig: tuple[str, ...] = ()
    cache_dir: Path | None = None
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Start from this configuration instead of tinyconfig: a file, or "tree" for --source's own
    # .config (a developer's tree configured in place).
    base_config: str | None = None
    # Extra make variables (VAR=VALUE: LLVM=1, CC=clang, ...), given to every make run.
    make_opts: tuple[str, ...] = ()

    @property
    def cache_root(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_root()


@dataclass(frozen=True)
class BuildPlan:
    spec: SourceSpec
    identity: SourceIdentity
    patches: tuple[Patch, ...]
    merged: MergedConfig
    key: str
    base: BaseConfig | None = None
    make_opts: tuple[str, ...] = ()


@dataclass(frozen=True)
class BaseConfig:
    """The configuration a build starts from instead of tinyconfig, and where it came from."""

    origin: str
    text: str

    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


# Variables the harness sets itself on every make command line (kbuild.make_argv).
_OWN_MAKE_VARIABLES = ("O", "ARCH")
_MAKE_OPT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


def make_options(given: tuple[str, ...]) -> tuple[str, ...]:
    """--make-opt VAR=VALUE, checked: a make variable assignment, not one of the harness's own."""
    for opt in given:
        if not _MAKE_OPT_RE.match(opt):
            raise BuildOptionError(f"--make-opt {opt!r}: expected one make variable as VAR=VALUE with no spaces, "
                                   f"for example --make-opt LLVM=1 or --make-opt CC=clang")
        if opt.split("=", 1)[0] in _OWN_MAKE_VARIABLES:
            raise BuildOptionError(f"--make-opt {opt}: the harness sets {opt.split('=', 1)[0]} itself (out-of-tree "
                                   f"build directory in its cache, x86_64); drop this option")
    return given


def validate_build_options(request: BuildRequest) -> None:
    """Reject a bad --source, --base-config or --make-opt before anything is built or booted (the
    default source may still be installed by the build)."""
    make_options(request.make_opts)
    if request.source is not None:
        base_config(request, resolve_source(request.source, install_default=False))
    elif request.base_config not in (None, "tree"):
        base_config(request, SourceSpec("tarball", Path()))
    elif request.base_config == "tree":
        raise BuildOptionError("--base-config tree needs --source TREE: the default source is a tarball, which has "
                               "no .config of its own")


def base_config(request: BuildRequest, spec: SourceSpec) -> BaseConfig | None:
    """--base-config FILE, or `tree` for the source tree's own .config; None: tinyconfig."""
    if request.base_config is None:
        return None
    if request.base_config == "tree":
        if spec.kind == "tarball":
            raise BuildOptionError(f"--base-config tree: --source {spec.path} is a tarball, which has no .config of "
                                   f"its own. Pass --source with a configured kernel tree, or --base-config FILE")
        path = spec.path / ".config"
        if not path.is_file():
            raise BuildOptionError(f"--base-config tree: {spec.path} has no .config. Configure the tree first (e.g. "
                                   f"`make defconfig` in it), or pass --base-config FILE")
        return BaseConfig(f"{path} (--base-config tree)", path.read_text())
    path = Path(request.base_config).expanduser()
    if not path.is_file():
        raise BuildOptionError(f"--base-config {request.base_config}: no such file. Pass a kernel .config, or "
                               f"`tree` for --source's own .config")
    text = path.read_text(errors="replace")
    if "CONFIG_" not in text:
        raise BuildOptionError(f"--base-config {request.base_config}: not a kernel configuration (no CONFIG_ "
                               f"line). Pass a .config written by kconfig")
    return BaseConfig(str(path.resolve()), text)


@dataclass(frozen=True)
class KernelArtifact:
    directory: Path
    manifest: dict[str, Any]
    cache_hit: bool
    compiled_objects: int = 0

    @property
    def vmlinux(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def bzimage(self) -> Path:
        return self.directory / "bzImage"

    @property
    def config(self) -> Path:
        return self.directory / "config"

    @property
    def build_log(self) -> Path:
        return self.directory / "build.log"

    @property
    def pristine_source(self) -> Path | None:
        """The untouched extraction this kernel was built from (`src/<digest>/pristine` in the
        cache), or None for a developer's tree, which the harness never copies. The cache holds
        one extraction per source release, so it is found by the manifest's digest, not by name."""
        source = self.manifest["source"]
        if source["kind"] != "tarball":
            return None
        return self.directory.parent.parent / "src" / str(source["digest"])[:16] / "pristine"

    def as_json(self) -> dict[str, Any]:
        return {
            **self.manifest,
            "directory": str(self.directory),
            "vmlinux": str(self.vmlinux),
            "bzImage": str(self.bzimage),
            "config": str(self.config),
            "build_log": str(self.build_log),
            "cache_hit": self.cache_hit,
        }


def default_fragments() -> list[Path]:
    return sorted(KCONFIG_DIR.glob("*.config"))


def merged_config(request: BuildRequest) -> MergedConfig:
    fragments: list[Fragment] = [
        parse_fragment_file(p, str(p.relative_to(REPO_ROOT))) for p in default_fragments()
    ]
    fragments += [parse_fragment_file(Path(p)) for p in request.config_files]
    if request.kconfig:
        fragments.append(Fragment("--kconfig", tuple(parse_option_argument(s) for s in request.kconfig)))
    return merge(fragments)


def default_series_dir(release: str) -> Path:
    """The harness's default series for a kernel release ("6.1.192" -> kernel-config/patches-6.1)."""
    return DEFAULT_SERIES_DIRS.get(".".join(release.split(".")[:2]), DEFAULT_SERIES_DIR)


def request_release(request: BuildRequest) -> str:
    """The kernel release of the request's source (its Makefile's VERSION.PATCHLEVEL.SUBLEVEL)."""
    spec = resolve_source(request.source)
    return source_release(spec, identify(spec, request.cache_root), request.cache_root)


def series_for(request: BuildRequest, release: str | None = None) -> tuple[Patch, ...]:
    """--series, or the default series for the source's kernel `release`; then --patch files."""
    directory = request.series_dir or (default_series_dir(release) if release else DEFAULT_SERIES_DIR)
    return load_series(directory) + tuple(extra_patch(Path(p)) for p in request.extra_patches)


def plan(request: BuildRequest, *, install_default: bool = True) -> BuildPlan:
    merged = merged_config(request)
    opts = make_options(request.make_opts)
    spec = resolve_source(request.source, install_default=install_default)
    base = base_config(request, spec)
    ensure_dir(request.cache_root)
    identity = identify(spec, request.cache_root)
    patches = series_for(request, None if request.series_dir else source_release(spec, identity, request.cache_root))
    key_material: dict[str, Any] = {
        "recipe": RECIPE_VERSION,
        "source": identity.digest,
        "patches": [[p.name, p.strip, p.sha256()] for p in patches],
        "config": merged.canonical(),
    }
    # Only when given, so that every existing cache entry keeps its key.
    if base is not None:
        key_material["base_config"] = base.digest()
    if opts:
        key_material["make"] = list(opts)
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:32]
    return BuildPlan(spec, identity, patches, merged, key, base, opts)


def cached_artifact(request: BuildRequest, build_plan: BuildPlan) -> KernelArtifact | None:
    directory = request.cache_root / "kernels" / build_plan.key
    manifest = read_json(directory / "manifest.json")
    if manifest is None or not (directory / "vmlinux").is_file():
        return None
    mark_used(directory)
    return KernelArtifact(directory, manifest, cache_hit=True)


def build(request: BuildRequest) -> KernelArtifact:
    """Build (or find in the cache) the kernel the request describes."""
    build_plan = plan(request)
    for conflict in build_plan.merged.conflicts:
        print(f"numa-harness: warning: {conflict.describe()}", file=sys.stderr)
    hit = cached_artifact(request, build_plan)
    if hit is not None:
        return hit
    root = request.cache_root
    base = pristine_tree(build_plan.spec, build_plan.identity, root)
    tree = worktree_for(build_plan.spec, build_plan.identity, base, root)
    with file_lock(tree.lock_path):
        # Another process may have built the same entry while we waited for the lock.
        hit = cached_artifact(request, build_plan)
        if hit is not None:
            return hit
        started = time.monotonic()
        phases: dict[str, float] = {}
        staged = stage_series(base, build_plan.patches)  # raises before anything is touched
        create_if_missing(tree, build_plan.spec)
        if build_plan.spec.kind != "tarball":
            sync_from_directory(tree, build_plan.spec)
        apply_overlay(tree, staged)
        builddir = root / "build" / f"{tree.root.name}-{_build_flavour(build_plan)}"
        ensure_dir(builddir)
        log_path = builddir / "build.log"
        phases["prepare"] = time.monotonic() - started
        with log_path.open("w") as log:
            final_text = configure(tree.path, builddir, build_plan.merged.canonical(), log,
                                   base=build_plan.base.text if build_plan.base else None, make_opts=build_plan.make_opts,
                                   tree_inputs=configure_inputs(build_plan.identity, staged))
            _check_requested_options(build_plan.merged, final_text, tree.path, build_plan.base)
            phases["configure"] = time.monotonic() - started - sum(phases.values())
            expected = _read_int(builddir / "numa-harness-objects") or _read_int(root / "build" / "last-cold-objects")
            result = run_make(tree.path, builddir, TARGETS, request.jobs, log, expected, build_plan.make_opts)
        if result.compiled_objects > 1000:
            (root / "build" / "last-cold-objects").write_text(f"{result.compiled_objects}\n")
        if not _read_int(builddir / "numa-harness-objects"):
            (builddir / "numa-harness-objects").write_text(f"{result.compiled_objects}\n")
        phases["make"] = result.seconds
        final_text = (builddir / ".config").read_text()
        verify_started = time.monotonic()
        verification = verify_vmlinux(builddir / "vmlinux", final_text)
        phases["verify"] = time.monotonic() - verify_started
        final = root / "kernels" / build_plan.key
        with staged_entry(final) as staging:
            store_started = time.monotonic()
            shutil.copyfile(builddir / "arch/x86/boot/bzImage", staging / "bzImage")
            shutil.copyfile(builddir / "vmlinux", staging / "vmlinux")
            shutil.copyfile(builddir / ".config", staging / "config")
            shutil.copyfile(log_path, staging / "build.log")
            phases["store"] = time.monotonic() - store_started
            manifest = _manifest(build_plan, tree.path, builddir, final_text, verification.as_dict(),
                                 time.monotonic() - started, result.compiled_objects)
            manifest["phases"] = {name: round(seconds, 2) for name, seconds in phases.items()}
            manifest["make_stages"] = dict(result.stages)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        mark_used(final)
        return KernelArtifact(final, manifest, cache_hit=False, compiled_objects=result.compiled_objects)


def configure_inputs(identity: SourceIdentity, staged: Mapping[str, bytes | None]) -> str:
    """A digest of what configuring reads from a tree: the pristine source (by identity) and
    every patched file that can change the result: Kconfig files and *.config fragments
    (tinyconfig merges kernel/configs/tiny.config), Makefiles and Kbuild files (they define the
    config targets and the flags Kconfig's $(cc-option) tests), and anything under scripts/
    (the kconfig tool and the toolchain probes). A patch to C sources leaves it unchanged."""
    rows = [identity.digest]
    for rel in sorted(staged):
        name = rel.rsplit("/", 1)[-1]
        if (name.startswith(("Kconfig", "Makefile", "Kbuild")) or name.endswith(".config")
                or rel.startswith("scripts/")):
            content = staged[rel]
            rows.append(f"{rel}\0{hashlib.sha256(content).hexdigest() if content is not None else 'deleted'}")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _manifest(build_plan: BuildPlan, srctree: Path, builddir: Path, final_text: str, verification: dict[str, Any],
              seconds: float, compiled_objects: int) -> dict[str, Any]:
    """What a cache entry records about its kernel (manifest.json)."""
    return {
        "harness_version": __version__,
        "key": build_plan.key,
        "source": {
            "kind": build_plan.identity.kind,
            "path": build_plan.identity.path,
            "identity": build_plan.identity.description,
            "digest": build_plan.identity.digest,
            "version": kernel_version_of_tree(srctree),
        },
        "patches": [{"name": p.name, "origin": p.origin, "sha256": p.sha256()} for p in build_plan.patches],
        "base_config": None if build_plan.base is None else {"origin": build_plan.base.origin,
                                                             "sha256": build_plan.base.digest()},
        "make_opts": list(build_plan.make_opts),
        "config_sha256": hashlib.sha256(final_text.encode()).hexdigest(),
        "requested_config_sha256": build_plan.merged.digest(),
        "kernel_release": kernel_release(builddir),
        "build_id": verification.get("build_id"),
        "verification": verification,
        "build_seconds": round(seconds, 1),
        "compiled_objects": compiled_objects,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _build_flavour(build_plan: BuildPlan) -> str:
    """The build directory's suffix: one per requested config and make variables, so that
    switching between them rebuilds nothing twice. A base config shares its directory with the
    same request on tinyconfig: kbuild rebuilds what the final .config changed (nothing, when
    the base is a kernel the harness built)."""
    if not build_plan.make_opts:
        return build_plan.merged.digest()[:16]
    return hashlib.sha256("\n".join([build_plan.merged.digest(), *build_plan.make_opts]).encode()).hexdigest()[:16]


def _check_requested_options(merged: MergedConfig, final_text: str, srctree: Path,
                             base: BaseConfig | None = None) -> None:
    final = parse_dotconfig(final_text)
    missing = unmet_options(merged.options, final)
    if not missing:
        return
    index = KconfigIndex.scan(srctree)
    paragraphs = [index.explain_missing(option, final) for option in missing]
    if base is not None:
        paragraphs.append(f"The build started from {base.origin} instead of tinyconfig; an option it sets or "
                          f"leaves out may be what keeps the ones above from sticking: fix it there, or add the "
                          f"option that is missing with --kconfig.")
    raise KconfigError("\n\n".join(paragraphs))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
