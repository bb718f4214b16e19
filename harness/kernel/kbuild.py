"""Drive kbuild: configure a build directory from the merged fragment, then make.

Out-of-tree (`O=`) builds: the working tree is read-only to make, the build directory holds
objects, and re-running with the same `.config` content makes kbuild's fixdep-based
dependencies rebuild only what really changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from harness.cache import atomic_write_text, read_json
from harness.errors import BuildError

ARCH = "x86_64"
FRAGMENT_NAME = "numa-harness.config"
_COMPILED_RE = re.compile(r"^\s+(CC|AS|CC \[M\])\s+\S+\.o$")
_ERROR_RE = re.compile(r"(: error:|: fatal error:|undefined reference to|^make(\[\d+\])?: \*\*\*|Error \d+)")


@dataclass(frozen=True)
class MakeResult:
    log_path: Path
    compiled_objects: int
    seconds: float
    # Seconds per stage of the make run (MAKE_STAGES), as far as the log showed them.
    stages: tuple[tuple[str, float], ...] = ()


# Where the stages of `make vmlinux bzImage` begin, by the first kbuild line of each (quiet
# output names a step as it starts; scripts/link-vmlinux.sh prints the link steps).
MAKE_STAGES = (
    ("compile", re.compile(r"")),  # from make's start: prepare, recompile, archives
    ("link vmlinux.o", re.compile(r"^\s+LD\s+vmlinux\.o$")),
    ("modpost + kallsyms links", re.compile(r"^\s+(OBJCOPY\s+modules\.builtin\.modinfo|MODPOST\s)")),
    ("link vmlinux (DWARF)", re.compile(r"^\s+LD\s+vmlinux$")),
    ("System.map + sorttable", re.compile(r"^\s+NM\s+System\.map$")),
    ("bzImage (compress)", re.compile(r"^\s+(CC\s+arch/x86/boot/version\.o|VOFFSET\s)")),
)


def make_argv(srctree: Path, builddir: Path, targets: Sequence[str], jobs: int,
              make_opts: Sequence[str] = ()) -> list[str]:
    return ["make", "-C", str(srctree), f"O={builddir}", f"ARCH={ARCH}", *make_opts, f"-j{jobs}", *targets]


# Bumped whenever configure's steps change, so that older stamps stop matching.
CONFIGURE_RECIPE = 1
CONFIGURED_STAMP = "numa-harness-configured.json"
# The tools Kconfig asks about ($(cc-option), CC_VERSION_TEXT, LD_VERSION...), by file identity.
_TOOLCHAIN = ("gcc", "cc", "ld", "ld.bfd", "as", "clang", "ld.lld", "make", "bison", "flex")


def toolchain_identity(make_opts: Sequence[str] = ()) -> str:
    """Path, size and mtime of every tool on PATH (and named in make_opts) that configuring
    consults: a toolchain upgrade changes one of them."""
    names = list(_TOOLCHAIN)
    for option in make_opts:
        _, _, value = option.partition("=")
        names += value.split()[:1]
    rows = []
    for name in names:
        found = shutil.which(name)
        if found is not None:
            stat = Path(found).resolve().stat()
            rows.append(f"{name}={Path(found).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "\n".join(rows)


def configure(srctree: Path, builddir: Path, fragment_text: str, log: IO[str], *, base: str | None = None,
              make_opts: Sequence[str] = (), tree_inputs: str | None = None) -> str:
    """tinyconfig (or the `base` configuration given), merge our fragment on top, olddefconfig.
    Returns the final .config text. `make_opts` (LLVM=1, CC=clang, ...) reach every make: the
    compiler decides which options exist (CONFIG_CC_IS_CLANG, ...).

    `tree_inputs` is a digest of what configuring reads from the tree (its Kconfig files, the
    kconfig tool, the Makefiles; harness.kernel.pipeline: configure_inputs). Given one, a build
    directory whose last configure had the same inputs (tree, fragment, base, make variables,
    toolchain) and whose .config is still what that configure wrote is not configured again:
    the three make runs would write the same .config, and they cost 7-8 s of a one-file rebuild."""
    builddir.mkdir(parents=True, exist_ok=True)
    dotconfig, stamp = builddir / ".config", builddir / CONFIGURED_STAMP
    inputs = None
    if tree_inputs is not None:
        inputs = hashlib.sha256("\0".join([
            f"recipe {CONFIGURE_RECIPE}", tree_inputs, fragment_text, base if base is not None else "(tinyconfig)",
            *make_opts, toolchain_identity(make_opts),
        ]).encode()).hexdigest()
        last = read_json(stamp)
        if last is not None and last.get("inputs") == inputs and dotconfig.is_file():
            text = dotconfig.read_text()
            if hashlib.sha256(text.encode()).hexdigest() == last.get("config_sha256"):
                log.write(f"# configure skipped: the inputs of the last configure ({inputs[:16]}) are unchanged\n")
                return text
    stamp.unlink(missing_ok=True)
    fragment = builddir / FRAGMENT_NAME
    fragment.write_text(fragment_text)
    if base is not None:
        dotconfig.write_text(base)
    start = [] if base is not None else [make_argv(srctree, builddir, ["tinyconfig"], 1, make_opts)]
    steps = [
        *start,
        [
            "sh", str(srctree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(builddir),
            str(dotconfig), str(fragment),
        ],
        make_argv(srctree, builddir, ["olddefconfig"], 1, make_opts),
    ]
    for argv in steps:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=srctree, text=True)
        if result.returncode != 0:
            raise BuildError(
                f"Configuring the kernel failed at `{' '.join(argv[:6])} ...` (exit "
                f"{result.returncode}). The full output is in {log.name}; a fragment line Kconfig "
                f"cannot parse is the usual cause."
            )
    text = dotconfig.read_text()
    if inputs is not None:
        atomic_write_text(stamp, json.dumps({"inputs": inputs, "config_sha256": hashlib.sha256(text.encode()).hexdigest()}))
    return text


def run_make(
    srctree: Path, builddir: Path, targets: Sequence[str], jobs: int, log: IO[str], expected_objects: int | None,
    make_opts: Sequence[str] = (),
) -> MakeResult:
    """Run make, streaming its output to the log; a progress bar on a terminal, plain lines otherwise."""
    argv = make_argv(srctree, builddir, targets, jobs, make_opts)
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    start = time.monotonic()
    compiled = 0
    errors: list[str] = []
    marks = [(MAKE_STAGES[0][0], start)]
    next_stage = 1
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=srctree)
    assert proc.stdout is not None
    with _BuildProgress(expected_objects) as progress:
        try:
            for line in proc.stdout:
                log.write(line)
                if next_stage < len(MAKE_STAGES) and MAKE_STAGES[next_stage][1].match(line.rstrip("\n")):
                    marks.append((MAKE_STAGES[next_stage][0], time.monotonic()))
                    next_stage += 1
                if _COMPILED_RE.match(line.rstrip("\n")):
                    compiled += 1
                    progress.update(compiled, line.strip())
                elif _ERROR_RE.search(line) and len(errors) < 12:
                    errors.append(line.rstrip())
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    log.flush()
    seconds = time.monotonic() - start
    if returncode != 0:
        shown = "\n  ".join(errors[:12]) or "(no compiler error lines found)"
        raise BuildError(
            f"The kernel build failed (make exit {returncode}) after {seconds:.0f} s. First errors:\n"
            f"  {shown}\nFull log: {log.name}. Fix the patch or option that causes them."
        )
    ends = [at for _, at in marks[1:]] + [start + seconds]
    stages = tuple((name, round(end - at, 2)) for (name, at), end in zip(marks, ends, strict=True))
    return MakeResult(Path(log.name), compiled, seconds, stages)


class _BuildProgress:
    """rich progress bar when stderr is a terminal; otherwise a plain line every 30 seconds."""

    def __init__(self, expected: int | None) -> None:
        self.expected = expected
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.last_plain = self.start
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _BuildProgress:
        if self.tty:
            self._progress = Progress(
                TextColumn("[bold]kernel build"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.description}"), transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=self.expected)
        return self

    def update(self, compiled: int, line: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=compiled, description=line[-50:])
            return
        now = time.monotonic()
        if now - self.last_plain >= 30:
            self.last_plain = now
            total = f"/~{self.expected}" if self.expected else ""
            print(f"numa-harness: build {compiled}{total} objects, {now - self.start:.0f} s", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def kernel_release(builddir: Path) -> str:
    try:
        return (builddir / "include/config/kernel.release").read_text().strip()
    except FileNotFoundError:
        return "unknown"
