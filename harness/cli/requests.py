"""The requests a command line becomes (the stages' frozen request dataclasses)."""

from __future__ import annotations

import argparse

from harness.cli.options import DEFAULT_TOPOLOGY
from harness.guest.launch import LaunchRequest
from harness.kernel.pipeline import BuildRequest


def build_request(args: argparse.Namespace) -> BuildRequest:
    return BuildRequest(source=args.source, series_dir=args.series, extra_patches=tuple(args.patch),
                        config_files=tuple(args.config), kconfig=tuple(args.kconfig), cache_dir=args.cache_dir,
                        jobs=args.jobs, base_config=args.base_config, make_opts=tuple(args.make_opt))


def launch_request(args: argparse.Namespace, name: str = "", topology: str | None = None) -> LaunchRequest:
    """The guest a command boots: `topology`, or the command's one --topology (ci's is a list: it
    passes each topology explicitly)."""
    given = getattr(args, "topology", None)
    return LaunchRequest(
        build=build_request(args), kernel_dir=getattr(args, "kernel", None),
        topology=topology or (given if isinstance(given, str) else DEFAULT_TOPOLOGY), memory=args.memory,
        accel=args.accel, boot_timeout=args.boot_timeout, name=name, cmdline=tuple(args.append),
        # Only run and up take --no-snapshot; every other command boots fresh.
        snapshot=hasattr(args, "no_snapshot") and not args.no_snapshot,
    )
