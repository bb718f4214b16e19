"""The nightly GitHub Actions workflow: linted by actionlint, and its commands are the harness's own.

actionlint checks the workflow's syntax, expressions (`matrix.*` keys that exist), action inputs and
job dependencies; these tests add what only the harness knows: every `numa-harness` command line in
it parses with the harness's own grammar, and the shard matrix covers exactly `--shard K/N`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "nightly.yml"


def actionlint() -> str:
    beside_python = Path(sys.executable).parent / "actionlint"
    found = str(beside_python) if beside_python.exists() else shutil.which("actionlint")
    if found is None:  # installed by `bootstrap.sh --test` through the dev extra; its absence is a set-up bug
        pytest.fail("actionlint is not installed: run `sh harness/bootstrap.sh --test`")
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint(), "-no-color", str(path)], capture_output=True, text=True, check=False)


def test_the_nightly_workflow_passes_actionlint() -> None:
    result = lint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_refuses_a_broken_workflow(tmp_path: Path) -> None:
    """The lint has teeth: a matrix key the matrix does not define is an error."""
    broken = tmp_path / ".github" / "workflows" / "nightly.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("${{ matrix.shard }}/2", "${{ matrix.shards }}/2"))
    result = lint(broken)
    assert result.returncode == 1 and "shards" in result.stdout, result.stdout + result.stderr


def _jobs() -> dict[str, dict[str, object]]:
    data = yaml.safe_load(WORKFLOW.read_text())
    jobs: dict[str, dict[str, object]] = data["jobs"]
    return jobs


def _run_scripts(job: dict[str, object]) -> list[str]:
    steps = job["steps"]
    assert isinstance(steps, list)
    return [step["run"] for step in steps if "run" in step]


def _numa_harness_argv(script: str, matrix: dict[str, object]) -> list[str]:
    """The argument list of the script's `numa-harness` command, matrix values substituted."""
    joined = script.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if "numa-harness " in ln)
    command = line.split("numa-harness ", 1)[1].split("||")[0]
    command = re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", lambda m: str(matrix[m.group(1)]), command)
    command = command.replace('"${baseline[@]}"', "--baseline baseline")
    return [word.strip('"') for word in command.split()]


def test_the_shard_matrix_covers_every_share() -> None:
    shard_job = _jobs()["shard"]
    strategy = shard_job["strategy"]
    assert isinstance(strategy, dict)
    shards = strategy["matrix"]["shard"]
    script = next(s for s in _run_scripts(shard_job) if "--shard" in s)
    total = int(re.search(r'--shard "\$\{\{ matrix\.shard \}\}/(\d+)"', script).group(1))  # type: ignore[union-attr]
    assert shards == list(range(1, total + 1))
    assert strategy["matrix"]["source"] == _jobs()["merge"]["strategy"]["matrix"]["source"]  # type: ignore[index]


def test_the_workflow_commands_parse_with_the_harness_grammar() -> None:
    """A renamed or removed flag breaks the nightly job; it must break this test first."""
    from harness.cli.parser import make_parser

    parser = make_parser()
    jobs = _jobs()
    shard_argv = _numa_harness_argv(next(s for s in _run_scripts(jobs["shard"]) if "numa-harness" in s),
                                    {"source": "linux-source-6.12", "shard": 1})
    merge_argv = _numa_harness_argv(next(s for s in _run_scripts(jobs["merge"]) if "numa-harness" in s),
                                    {"source": "linux-source-6.12"})
    shard = parser.parse_args(shard_argv)
    assert shard.shard == "1/2" and shard.source == ["/usr/src/linux-source-6.12.tar.xz"] and shard.merge is None
    merge = parser.parse_args(merge_argv)
    assert merge.merge == "merge" and [str(p) for p in merge.parts] == ["parts/part-*"] and str(merge.kcidb) == "kcidb.json"
    overview = parser.parse_args(_numa_harness_argv(_run_scripts(jobs["overview"])[-1], {}))
    assert overview.merge == "overview" and [str(p) for p in overview.parts] == ["reports/numa-harness-report-*"]
    assert jobs["overview"]["needs"] == "merge" and jobs["merge"]["needs"] == "shard"
