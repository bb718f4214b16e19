"""Build the guest initramfs from the recipe in images/guest.toml, content-addressed in the cache.

The image key covers the recipe, the files it names, every host binary and shared library
copied in (by content), the guest-tests sources, and the client's public key. The guest's SSH
host key is generated once per image and stored next to it; the client pins it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import REPO_ROOT
from harness.cache import ensure_dir, read_json, sha256_file, staged_entry
from harness.errors import InfrastructureError

IMAGES_DIR = REPO_ROOT / "images"
GUEST_TESTS_DIR = REPO_ROOT / "guest-tests"
RECIPE = IMAGES_DIR / "guest.toml"
IMAGE_RECIPE_VERSION = 1


class ImageError(InfrastructureError):
    """The guest image cannot be built (a missing package, a workload that does not compile)."""


@dataclass(frozen=True)
class SshIdentity:
    private_key: Path
    public_key: str


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    manifest: dict[str, Any]

    @property
    def initramfs(self) -> Path:
        return self.directory / "initramfs.cpio"

    @property
    def host_key(self) -> str:
        """The guest's host public key, 'ssh-ed25519 AAAA...'."""
        return str(self.manifest["host_key"])


def client_identity(cache_root: Path) -> SshIdentity:
    """The per-cache client key pair (never committed), created on first use."""
    directory = ensure_dir(cache_root / "ssh")
    os.chmod(directory, 0o700)
    key = directory / "id_ed25519"
    if not key.exists():
        tmp = directory / f".id_ed25519.{os.getpid()}"
        for leftover in (tmp, tmp.with_suffix(".pub")):
            leftover.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "numa-harness", "-f", str(tmp)], "ssh-keygen")
        os.replace(tmp.with_name(tmp.name + ".pub"), key.with_name("id_ed25519.pub"))
        os.replace(tmp, key)
    public = key.with_name("id_ed25519.pub").read_text().strip()
    return SshIdentity(key, public)


def _load_recipe() -> dict[str, Any]:
    try:
        return tomllib.loads(RECIPE.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ImageError(f"Cannot read the image recipe {RECIPE}: {err}. Restore it from git.") from err


def _shared_libraries(binary: Path) -> list[Path]:
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if result.returncode != 0 or "not a dynamic executable" in result.stdout + result.stderr:
        return []
    libs = []
    for line in result.stdout.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _inputs(recipe: dict[str, Any], identity: SshIdentity) -> dict[str, Any]:
    """Everything the image is made of, by content: its hash is the image key."""
    binaries = []
    for entry in recipe.get("binary", []):
        path = Path(entry["path"])
        if not path.is_file():
            raise ImageError(
                f"The guest image needs {path} from the Debian package {entry.get('package', '?')}, which "
                f"is not installed. Run `sh harness/bootstrap.sh` (or apt-get install --no-install-recommends "
                f"{entry.get('package', '')})."
            )
        libs = _shared_libraries(path)
        binaries.append({
            "path": str(path), "dest": entry["dest"], "sha256": sha256_file(path),
            "libs": {str(lib): sha256_file(lib) for lib in libs},
        })
    files = [
        {"src": e["src"], "dest": e["dest"], "mode": e.get("mode", 0o644),
         "sha256": sha256_file(IMAGES_DIR / e["src"])}
        for e in recipe.get("file", [])
    ]
    workloads = {p.name: sha256_file(p) for p in sorted(GUEST_TESTS_DIR.glob("*.[ch]"))}
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {
        "recipe_version": IMAGE_RECIPE_VERSION,
        "recipe_sha256": sha256_file(RECIPE),
        "binaries": binaries,
        "files": files,
        "workloads": workloads,
        "gcc": gcc,
        "authorized_key": identity.public_key,
    }


def build_image(cache_root: Path) -> GuestImage:
    identity = client_identity(cache_root)
    recipe = _load_recipe()
    inputs = _inputs(recipe, identity)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    final = cache_root / "images" / key
    manifest = read_json(final / "manifest.json")
    if manifest is not None and (final / "initramfs.cpio").is_file():
        return GuestImage(final, manifest)
    with staged_entry(final) as staging:
        root = staging / "root"
        _populate(root, recipe, inputs, identity, staging)
        host_key = _make_host_key(root)
        cpio = staging / "initramfs.cpio"
        _write_cpio(root, cpio)
        shutil.rmtree(root)
        manifest = {
            "key": key,
            "host_key": host_key,
            "inputs": inputs,
            "size_bytes": cpio.stat().st_size,
            "workloads": sorted(Path(n).stem for n in inputs["workloads"] if n.endswith(".c")),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return GuestImage(final, manifest)


def _populate(root: Path, recipe: dict[str, Any], inputs: dict[str, Any], identity: SshIdentity, staging: Path) -> None:
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc/dropbear", "proc", "sys",
                      "dev", "tmp", "run", "root/.ssh", "lib64", "var/log"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "root", 0o700)
    os.chmod(root / "root/.ssh", 0o700)
    for binary in inputs["binaries"]:
        _copy(Path(binary["path"]), root / binary["dest"].lstrip("/"), 0o755)
        for lib in binary["libs"]:
            _copy(Path(lib), root / lib.lstrip("/"), 0o755)
    for entry in inputs["files"]:
        _copy(IMAGES_DIR / entry["src"], root / entry["dest"].lstrip("/"), entry["mode"])
    # busybox applets as symlinks (the static busybox knows its own list).
    applets = subprocess.run([str(root / "bin/busybox"), "--list-full"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (root / "root/.ssh/authorized_keys").write_text(identity.public_key + "\n")
    os.chmod(root / "root/.ssh/authorized_keys", 0o600)
    dest = root / recipe.get("workloads", {}).get("dest", "/usr/local/bin").lstrip("/")
    for source in sorted(GUEST_TESTS_DIR.glob("*.c")):
        out = dest / source.stem
        result = subprocess.run(
            ["gcc", "-O2", "-Wall", "-static", "-pthread", "-o", str(out), str(source)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise ImageError(
                f"The guest workload {source.relative_to(REPO_ROOT)} does not compile:\n"
                f"{result.stderr.strip()[-1500:]}\nFix it; the image was not built."
            )


def _copy(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


def _make_host_key(root: Path) -> str:
    key = root / "etc/dropbear/dropbear_ed25519_host_key"
    _run(["dropbearkey", "-t", "ed25519", "-f", str(key)], "dropbearkey")
    shown = _run(["dropbearkey", "-y", "-f", str(key)], "dropbearkey -y")
    for line in shown.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise ImageError("dropbearkey did not print an ssh-ed25519 public key; is dropbear-bin installed correctly?")


def _write_cpio(root: Path, out: Path) -> None:
    # newc format, everything owned by root, uncompressed: under TCG, decompression costs more
    # than reading a few extra MiB.
    names = subprocess.run(["find", ".", "-mindepth", "1", "-print0"], cwd=root, capture_output=True, check=True).stdout
    with out.open("wb") as handle:
        result = subprocess.run(
            ["cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            cwd=root, input=names, stdout=handle, stderr=subprocess.PIPE,
        )
    if result.returncode != 0:
        raise ImageError(f"cpio failed: {result.stderr.decode(errors='replace').strip()}")


def _run(argv: list[str], what: str) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise ImageError(f"{argv[0]} is not installed; run `sh harness/bootstrap.sh`.") from err
    if result.returncode != 0:
        raise ImageError(f"{what} failed: {result.stderr.strip()[-500:]}")
    return result.stdout + result.stderr
