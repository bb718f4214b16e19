"""`numa-harness build` and `numa-harness config`: the kernel stage from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from harness.cli.requests import build_request
from harness.kernel.pipeline import KernelArtifact, build, merged_config


def cmd_build(args: argparse.Namespace) -> int:
    artifact = build(build_request(args))
    if args.json:
        print(json.dumps(artifact.as_json(), indent=2))
    else:
        print_artifact(artifact)
    return 0


def print_artifact(artifact: KernelArtifact) -> None:
    manifest = artifact.manifest
    verification = manifest.get("verification", {})
    how = "cache hit" if artifact.cache_hit else f"built in {manifest.get('build_seconds')} s"
    print(f"kernel {manifest.get('kernel_release')} ({how})")
    print(f"  directory  {artifact.directory}")
    print(f"  vmlinux    {artifact.vmlinux}")
    print(f"  bzImage    {artifact.bzimage}")
    print(f"  source     {manifest['source']['identity']}")
    patches = ", ".join(p["name"] for p in manifest.get("patches", [])) or "none"
    print(f"  patches    {patches}")
    base = manifest.get("base_config")
    print(f"  base       {base['origin'] if base else 'tinyconfig'}")
    if manifest.get("make_opts"):
        print(f"  make       {' '.join(manifest['make_opts'])}")
    print(f"  build-id   {manifest.get('build_id')}")
    print(
        f"  verified   DWARF v{verification.get('dwarf_version')} "
        f"({int(verification.get('debug_info_bytes', 0)) >> 20} MiB .debug_info), embedded config "
        f"{'matches .config' if verification.get('embedded_config_matches') else 'DIFFERS'}, "
        f"CONFIG_NUMA_BALANCING=y"
    )
    for name, evidence in verification.get("function_evidence", {}).items():
        print(f"  function   {name}: {evidence}")


def cmd_config(args: argparse.Namespace) -> int:
    merged = merged_config(build_request(args))
    for conflict in merged.conflicts:
        print(f"# conflict: {conflict.describe()}")
    sys.stdout.write(merged.text())
    return 0
