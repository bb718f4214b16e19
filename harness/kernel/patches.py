"""Patch series: parse quilt `series` files and apply patches without touching the working tree.

`stage_series` copies just the files a series touches from the base tree into a scratch
directory and applies the patches there with GNU patch, in order, with no fuzz (a patch that
needs fuzz may land in the wrong place; offsets are fine). Only when every patch applied does
the caller get the resulting file contents, so a failing patch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import PatchApplyError, SeriesError


@dataclass(frozen=True)
class Patch:
    path: Path
    strip: int
    origin: str  # "series DIR/series:LINE" or "--patch"

    @property
    def name(self) -> str:
        return self.path.name

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Hunk:
    file: str
    number: int
    header: str


def parse_series(text: str, directory: Path, origin: str) -> tuple[Patch, ...]:
    """quilt format: `name [-pN]` per line, `#` comments, blank lines ignored."""
    patches = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        strip = 1
        for extra in fields[1:]:
            match = re.fullmatch(r"-p(\d+)", extra)
            if not match:
                raise SeriesError(
                    f"{origin}:{number}: unknown option {extra!r} after the patch name. A series "
                    f"line is `NAME.patch` optionally followed by -pN."
                )
            strip = int(match.group(1))
        path = directory / fields[0]
        if not path.is_file():
            raise SeriesError(
                f"{origin}:{number}: patch {fields[0]} is listed but {path} does not exist. Add "
                f"the file or remove the line from the series."
            )
        patches.append(Patch(path, strip, f"{origin}:{number}"))
    return tuple(patches)


def load_series(directory: Path) -> tuple[Patch, ...]:
    series = directory / "series"
    if not series.is_file():
        raise SeriesError(
            f"--series {directory}: no `series` file in it. A series directory holds the patches "
            f"and a quilt `series` file naming them in order, one per line."
        )
    return parse_series(series.read_text(), directory, str(series))


def extra_patch(path: Path) -> Patch:
    if not path.is_file():
        raise SeriesError(f"--patch {path}: no such file. Pass the path of a patch file.")
    return Patch(path.resolve(), 1, "--patch")


def touched_files(patch_text: str, strip: int) -> list[str]:
    """Paths a unified or git diff touches, after stripping `strip` leading components."""
    paths: list[str] = []
    for line in patch_text.splitlines():
        if line.startswith(("--- ", "+++ ")):
            target = line[4:].split("\t", 1)[0].strip()
            if target == "/dev/null":
                continue
            parts = target.split("/")[strip:]
            if parts:
                paths.append("/".join(parts))
        elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            paths.append(line.split(" ", 2)[2].strip())
    unique = list(dict.fromkeys(paths))
    for rel in unique:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise SeriesError(f"A patch touches {rel!r}, outside the kernel tree. Fix the patch paths.")
    return unique


def hunks(patch_text: str, strip: int) -> list[Hunk]:
    """The hunks per file, numbered as GNU patch numbers them in its messages."""
    result: list[Hunk] = []
    current: str | None = None
    count = 0
    for line in patch_text.splitlines():
        if line.startswith("+++ "):
            target = line[4:].split("\t", 1)[0].strip()
            current = "/".join(target.split("/")[strip:])
            count = 0
        elif line.startswith("@@") and current is not None:
            count += 1
            result.append(Hunk(current, count, line.strip()))
    return result


def stage_series(base: Path, patches: Sequence[Patch]) -> dict[str, bytes | None]:
    """Apply `patches` to copies of the files they touch; return rel path -> new content (None = deleted)."""
    touched: list[str] = []
    texts = {}
    for patch in patches:
        text = patch.path.read_text(errors="replace")
        texts[patch.path] = text
        touched.extend(touched_files(text, patch.strip))
    touched = list(dict.fromkeys(touched))
    scratch = Path(tempfile.mkdtemp(prefix="numa-harness-patch-"))
    try:
        for rel in touched:
            src = base / rel
            if src.is_file():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, scratch / rel)
        for patch in patches:
            _apply_one(scratch, patch, texts[patch.path])
        result: dict[str, bytes | None] = {}
        for rel in touched:
            out = scratch / rel
            result[rel] = out.read_bytes() if out.is_file() else None
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _apply_one(scratch: Path, patch: Patch, text: str) -> None:
    cmd = [
        "patch", f"-p{patch.strip}", "--batch", "--forward", "--fuzz=0",
        "--no-backup-if-mismatch", "--reject-file=-", "-d", str(scratch), "-i", str(patch.path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode == 0:
        return
    raise PatchApplyError(describe_failure(patch, text, result.stdout + result.stderr))


_FILE_RE = re.compile(r"^(?:patching|checking) file '?([^']+?)'?$")
_HUNK_FAILED_RE = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")


def describe_failure(patch: Patch, text: str, output: str) -> str:
    """One paragraph from GNU patch's output: the patch, the file, the hunk and why."""
    current_file: str | None = None
    failures: list[str] = []
    hunk_index = {(h.file, h.number): h for h in hunks(text, patch.strip)}
    for line in output.splitlines():
        match = _FILE_RE.match(line.strip())
        if match:
            current_file = match.group(1)
            continue
        failed = _HUNK_FAILED_RE.match(line.strip())
        if failed and current_file:
            number = int(failed.group(1))
            hunk = hunk_index.get((current_file, number))
            header = f" ({hunk.header})" if hunk else ""
            failures.append(f"{current_file} hunk #{number}{header} failed at line {failed.group(2)}")
        elif "can't find file to patch" in line:
            failures.append("a file it patches does not exist in this source")
        elif "Reversed (or previously applied) patch detected" in line:
            failures.append(f"{current_file or 'a file'} already contains this change (reversed or applied twice)")
        elif "malformed patch" in line or "Only garbage was found" in line:
            failures.append(f"the patch is malformed ({line.strip()})")
    if not failures:
        tail = " ".join(output.strip().splitlines()[-3:])
        failures.append(f"GNU patch said: {tail}")
    return (
        f"Patch {patch.name} ({patch.origin}) does not apply: {'; '.join(failures)}. Refresh it "
        f"against this kernel source (patches apply with offsets but no fuzz), or drop it from "
        f"the series. Nothing was changed: the working tree and the cache are as they were."
    )
