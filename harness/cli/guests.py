"""Guests from the command line: `run` (boot, run CMD, tear down), and the background guests of
`up`, `ssh`, `console`, `list` and `down`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from harness.cli.options import cache_root, remote_command, say
from harness.cli.requests import launch_request
from harness.errors import BadInput, ExitCode
from harness.guest import registry
from harness.guest.console import attach_console
from harness.guest.launch import make_guest, resolve_kernel, validate
from harness.guest.view import GuestView


def _report_bugs(guest: GuestView, died: bool) -> ExitCode | None:
    """KERNEL_BUG when the guest logged a bug or died while a command ran (the titles printed)."""
    bugs = guest.new_bugs()
    for bug in bugs:
        say(f"kernel bug during the command: {bug.title}")
    if not bugs and not died:
        return None
    if not bugs:
        say("the guest died during the command")
    say(f"console log: {guest.paths.console_log}")
    return ExitCode.KERNEL_BUG


def cmd_run(args: argparse.Namespace) -> int:
    command = remote_command(list(args.cmd))
    if not command:
        raise BadInput("nothing to run; usage: numa-harness run [options] -- CMD...")
    request = launch_request(args, name="run")
    validate(request)
    guest = make_guest(request)
    if args.show_command:
        print(" ".join(shlex.quote(a) for a in guest.argv()))
        guest.remove_run_dir()
        return 0
    with guest:
        how = "restored" if guest.restored else "booted"
        say(f"guest {how} in {guest.boot_seconds:.1f} s ({guest.accel}, {guest.config.topology.describe()})"
            f"{'; ' + guest.snapshot_note if guest.snapshot_note and not guest.restored else ''}")
        guest.mark_bugs_seen()
        result = guest.ssh.run(command[0] if len(command) == 1 else shlex.join(command), timeout=args.timeout)
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.write(result.stderr)
        sys.stderr.flush()
        time.sleep(0.2)  # let the console log catch up with a report printed as the command ended
        return _report_bugs(guest, not guest.alive) or result.exit_status


def cmd_up(args: argparse.Namespace) -> int:
    root = cache_root(args)
    request = launch_request(args, name=registry.new_name(root, args.name))
    validate(request)
    # Build in the foreground (progress on this terminal); the supervisor then finds it cached.
    kernel = resolve_kernel(request)
    info = registry.start_supervised(request, kernel.directory)
    say(f"{request.name} is up: ssh port 127.0.0.1:{info.get('ssh_port')}, {info.get('accel')}, "
        f"{info.get('topology')}; console log {info.get('console_log')}"
        f"{'; ' + str(info['snapshot']) if info.get('snapshot') else ''}")
    print(request.name)
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    guest = registry.attached(cache_root(args), args.name)
    command = remote_command(list(args.cmd))
    if not command:
        # Interactive: hand over to the system ssh client with the pinned key.
        known = Path(tempfile.mkdtemp(prefix="numa-harness-ssh-")) / "known_hosts"
        known.write_text(f"[127.0.0.1]:{guest.ssh_port} {guest.host_key}\n")
        os.execvp("ssh", ["ssh", "-t", "-p", str(guest.ssh_port), "-i", str(guest.identity_file),
                          "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                          "-o", "IdentitiesOnly=yes", "root@127.0.0.1"])
    guest.mark_bugs_seen()
    result = guest.ssh.run(command[0] if len(command) == 1 else shlex.join(command), timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return _report_bugs(guest, False) or result.exit_status


def cmd_console(args: argparse.Namespace) -> int:
    return attach_console(registry.attached(cache_root(args), args.name).paths.console)


def cmd_list(args: argparse.Namespace) -> int:
    guests = registry.live_guests(cache_root(args))
    if args.json:
        print(json.dumps(guests, indent=2))
        return 0
    for name, info in guests.items():
        print(f"{name}\tssh 127.0.0.1:{info.get('ssh_port')}\t{info.get('accel')}\tqemu pid {info.get('qemu_pid')}"
              f"\t{info.get('topology')}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not args.all and not args.name:
        raise BadInput("down: name a guest or pass --all.")
    guests = registry.live_guests(cache_root(args))
    if not args.all and args.name not in guests:
        raise BadInput(f"No running guest named {args.name!r} (running: {', '.join(sorted(guests)) or 'none'}).")
    for name in sorted(guests) if args.all else [args.name]:
        registry.stop(guests[name])
        say(f"{name} is down")
    return 0
