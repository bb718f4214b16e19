"""--base-config and --make-opt: checked before anything is built, in the cache key only when
given, and a base configuration that keeps the harness's options from sticking is named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA

from harness.errors import BuildOptionError, KconfigError
from harness.kernel.kconfig import Fragment, Option, merge
from harness.kernel.pipeline import (
    BaseConfig,
    BuildRequest,
    KernelArtifact,
    _check_requested_options,
    base_config,
    build,
    make_options,
    plan,
)
from harness.kernel.source import DEFAULT_TARBALL, SourceSpec

HARNESS = [sys.executable, "-m", "harness.cli"]


@pytest.mark.parametrize("opt", ["LLVM=1", "CC=clang", "KCFLAGS=-Wno-error", "W="])
def test_make_variables_are_taken(opt: str) -> None:
    assert make_options((opt,)) == (opt,)


@pytest.mark.parametrize(("opt", "says"), [
    ("LLVM", "VAR=VALUE"), ("CC=gcc -m64", "VAR=VALUE"), ("-j8", "VAR=VALUE"),
    ("O=/tmp/elsewhere", "sets O itself"), ("ARCH=arm64", "sets ARCH itself"),
])
def test_bad_make_options_are_named(opt: str, says: str) -> None:
    with pytest.raises(BuildOptionError, match=says):
        make_options((opt,))


def test_base_config_file_must_be_a_kernel_config(tmp_path: Path) -> None:
    spec = SourceSpec("tarball", tmp_path / "linux.tar.xz")
    with pytest.raises(BuildOptionError, match="no such file"):
        base_config(BuildRequest(base_config=str(tmp_path / "missing")), spec)
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(BuildOptionError, match="not a kernel configuration"):
        base_config(BuildRequest(base_config=str(tmp_path / "notes.txt")), spec)
    (tmp_path / "my.config").write_text("CONFIG_SMP=y\n")
    found = base_config(BuildRequest(base_config=str(tmp_path / "my.config")), spec)
    assert found is not None and found.text == "CONFIG_SMP=y\n"


def test_base_config_tree_needs_a_configured_tree(tmp_path: Path) -> None:
    with pytest.raises(BuildOptionError, match="is a tarball"):
        base_config(BuildRequest(base_config="tree"), SourceSpec("tarball", tmp_path / "linux.tar.xz"))
    tree = tmp_path / "linux"
    tree.mkdir()
    with pytest.raises(BuildOptionError, match=r"has no \.config"):
        base_config(BuildRequest(base_config="tree"), SourceSpec("git", tree))
    (tree / ".config").write_text("CONFIG_SMP=y\nCONFIG_NUMA=y\n")
    found = base_config(BuildRequest(base_config="tree"), SourceSpec("git", tree))
    assert found is not None and "--base-config tree" in found.origin


def test_a_base_that_blocks_an_option_is_named_with_the_option() -> None:
    merged = merge([Fragment("kernel-config/10-numa.config", (Option("NUMA_BALANCING", "y", "kernel-config/10-numa.config"),))])
    final = "CONFIG_SMP=y\nCONFIG_NUMA=y\nCONFIG_MIGRATION=y\nCONFIG_PREEMPT_RT=y\n"
    with pytest.raises(KconfigError) as raised:
        _check_requested_options(merged, final, DATA / "kconfig/tree", BaseConfig("my-distro.config", final))
    text = str(raised.value)
    assert "CONFIG_NUMA_BALANCING=y (from kernel-config/10-numa.config) did not stick" in text
    assert "PREEMPT_RT=y" in text and "started from my-distro.config instead of tinyconfig" in text


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMA_HARNESS_CACHE": str(cache)})


@pytest.mark.parametrize(("args", "says"), [
    (("--make-opt", "O=/tmp/x"), "--make-opt O=/tmp/x: the harness sets O itself"),
    (("--base-config", "/nonexistent/config"), "--base-config /nonexistent/config: no such file"),
    (("--base-config", "tree"), "--base-config tree"),
])
def test_bad_build_options_exit_2_before_anything_is_written(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    cache = tmp_path / "cache"
    result = _cli("build", *args, cache=cache)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not (cache / "kernels").exists() or not any((cache / "kernels").iterdir())


def test_build_options_enter_the_key_only_when_given(tmp_path: Path) -> None:
    if not DEFAULT_TARBALL.exists():
        pytest.skip("default source not installed")
    (tmp_path / "a.config").write_text("CONFIG_SMP=y\n")
    (tmp_path / "b.config").write_text("CONFIG_SMP=y\nCONFIG_NUMA=y\n")
    cache = tmp_path / "c"
    default = plan(BuildRequest(cache_dir=cache), install_default=False)
    keys = {default.key}
    for request in (BuildRequest(cache_dir=cache, base_config=str(tmp_path / "a.config")),
                    BuildRequest(cache_dir=cache, base_config=str(tmp_path / "b.config")),
                    BuildRequest(cache_dir=cache, make_opts=("KCFLAGS=-O2",))):
        keys.add(plan(request, install_default=False).key)
    assert len(keys) == 4
    assert plan(BuildRequest(cache_dir=cache, make_opts=()), install_default=False).key == default.key


@pytest.mark.kernel
def test_a_build_from_a_base_config_merges_and_verifies(built_kernel: KernelArtifact, tmp_path: Path) -> None:
    """The default kernel's own final .config as the base: configured from it (no tinyconfig),
    the fragments merged on top and verified, and the same configuration comes out; it shares
    the default request's build directory, so make has next to nothing to do."""
    cache = built_kernel.directory.parent.parent
    base = tmp_path / "base.config"
    base.write_text(built_kernel.config.read_text())
    artifact = build(BuildRequest(cache_dir=cache, base_config=str(base)))
    try:
        assert artifact.directory != built_kernel.directory
        assert artifact.manifest["base_config"]["origin"] == str(base.resolve())
        log = artifact.build_log.read_text()
        assert "tinyconfig" not in log and "olddefconfig" in log
        assert artifact.manifest["config_sha256"] == built_kernel.manifest["config_sha256"]
        assert artifact.manifest["verification"]["embedded_config_matches"]
        shown = _cli("build", "--base-config", str(base), "--json", cache=cache)
        assert shown.returncode == 0 and json.loads(shown.stdout)["cache_hit"], shown.stderr
    finally:
        if not artifact.cache_hit:  # a test artifact: do not let one pile up per run
            shutil.rmtree(artifact.directory)
