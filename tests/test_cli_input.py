"""Bad input is named and refused before anything is built: exit 2 for every command, and the
cache directory stays empty (no source unpacked, no kernel, no image)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "harness.cli"]
BAD = [
    (["--topology", "banana"], "expected NxC"),
    (["--topology", "3x0"], "need at least 1 node and 1 CPU per node"),
    (["--memory", "lots"], "--memory"),
    (["--source", "/nonexistent/linux"], "no such file or directory"),
    (["--kernel", "/nonexistent/kernel"], "--kernel"),
]


@pytest.mark.parametrize("command", ["check", "run", "mutants", "ci"])
@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_exits_2_and_builds_nothing(tmp_path: Path, command: str, args: list[str], message: str) -> None:
    if command == "ci" and args[0] == "--kernel":
        pytest.skip("ci builds its own kernel: it has no --kernel")
    if command == "mutants" and args[0] == "--kernel":
        args, message = ["--kernel", "/nonexistent/kernel"], "--kernel cannot be used"
    cache = tmp_path / "cache"
    extra = {"run": ["--", "true"], "ci": ["--out", str(tmp_path / "out")]}.get(command, [])
    result = subprocess.run([*CLI, command, *args, "--cache-dir", str(cache), *extra], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not cache.exists() or not any(p for p in cache.rglob("*") if p.is_file()), list(cache.rglob("*"))
    assert not (tmp_path / "out").exists()


def test_a_harness_bug_exits_125_never_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 1 says "a check failed" to CI and to git bisect: an unexpected exception is the
    harness's failure (125), reported with its traceback."""
    import harness.cli.build
    from harness.cli.main import main

    def broken(args: object) -> int:
        raise ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(harness.cli.build, "cmd_build", broken)
    assert main(["build"]) == 125
    err = capsys.readouterr().err
    assert "internal error: ConnectionRefusedError" in err and "Traceback" in err
