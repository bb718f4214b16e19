"""The package's shape: stages import one way (import-linter), the README's check table is the
registry, and lint (ruff, with its complexity and statement limits) and mypy --strict stay clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.checks.catalog import CHECKS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter's contracts from `root`/pyproject.toml, on the `harness` package under `root`."""
    return subprocess.run([str(BIN / "lint-imports"), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": str(BIN)}, capture_output=True, text=True)


def test_stages_import_one_way() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "reversed_import"), [
    ("harness/kernel/kbuild.py", "import harness.guest.qemu"),  # the kernel stage reaching up to the guest
    ("harness/inspect/pagetable.py", "import harness.checks.registry"),  # inspection reaching up to the checks
    ("harness/model/state.py", "import harness.errors"),  # the model leaning on the harness
])
def test_a_reversed_import_breaks_the_contract(tmp_path: Path, module: str, reversed_import: str) -> None:
    shutil.copytree(REPO / "harness", tmp_path / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / module
    text = path.read_text()
    path.write_text(text.replace("from __future__ import annotations\n",
                                 f"from __future__ import annotations\n\n{reversed_import}  # noqa\n", 1))
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and reversed_import.split()[-1] in result.stdout


def test_readme_check_table_is_the_registry() -> None:
    """The README lists every registered check, in the order they run, and nothing else."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("| check | what must hold |", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.MULTILINE)
    assert listed == list(CHECKS)


def test_every_check_explains_itself() -> None:
    for check in CHECKS.values():
        assert len(check.description) > 80, f"{check.name}: its docstring must say what must hold and why"


def test_ruff_is_clean() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "harness", "tests"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run([str(BIN / "mypy"), "harness", "tests"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
