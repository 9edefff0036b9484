"""The import contract in pyproject.toml (`lint-imports`, run by `make lint`) holds for the tree
and breaks on a forbidden import planted in a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_a_framework_imported_by_the_domain_breaks_the_contract(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    plant(tree, "conveyor/db.py", "import flask")

    result = lint_imports(tree)

    assert result.returncode == 1
    assert "The domain imports no framework and nothing outside itself BROKEN" in result.stdout


def test_a_package_importing_one_above_it_breaks_the_layers(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    plant(tree, "conveyor/events/notifications.py", "import conveyor.runs.store")

    result = lint_imports(tree)

    assert result.returncode == 1
    assert "Concern packages in layers: each imports only the ones below it BROKEN" in (
        result.stdout
    )


def test_a_circle_inside_a_package_breaks_the_contract(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    plant(tree, "conveyor/cli/users.py", "import conveyor.cli.main")

    result = lint_imports(tree)

    assert result.returncode == 1
    assert "No import cycle between the modules or packages of any package BROKEN" in (
        result.stdout
    )


def test_the_web_process_importing_a_task_body_breaks_the_contract(tmp_path: Path) -> None:
    tree = copy_of_the_tree(tmp_path)
    plant(tree, "web/admin.py", "import tasks.runs")

    result = lint_imports(tree)

    assert result.returncode == 1
    assert "The web process imports no task bodies BROKEN" in result.stdout
