"""The import contract in pyproject.toml (`lint-imports`, run by `make lint`) holds for the tree
and breaks on a forbidden import planted in a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("conveyor", "web", "worker", "tasks", "beat_schedule.py", "pyproject.toml")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_of_the_tree(tmp_path: Path) -> Path:
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


def plant(tree: Path, module: str, line: str) -> None:
    with (tree / module).open("a") as f:
        f.write(f"\n{line}  # planted\n")


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_imports(copy_of_the_tree(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        pytest.param(
            "conveyor/db.py",
            "import flask",
            "The domain imports no framework and nothing outside itself",
            id="a framework imported by the domain",
        ),
        pytest.param(
            "conveyor/events/notifications.py",
            "import conveyor.runs.store",
            "Concern packages in layers: each imports only the ones below it",
            id="a package importing one above it",
        ),
        pytest.param(
            "conveyor/cli/users.py",
            "import conveyor.cli.main",
            "No import cycle between the modules or packages of any package",
            id="a circle inside a package",
        ),
        pytest.param(
            "web/admin.py",
            "import tasks.runs",
            "The web process imports no task bodies",
            id="the web process importing a task body",
        ),
    ],
)
def test_a_planted_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    tree = copy_of_the_tree(tmp_path)
    plant(tree, module, line)

    result = lint_imports(tree)

    assert result.returncode == 1
    assert f"{contract} BROKEN" in result.stdout
