"""The layer check (scripts/check_layers.py, run by `make lint`): the tree passes it, and
each rule fails when broken in a copy of the tree."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_layers  # noqa: E402


@pytest.fixture
def tree(tmp_path):
    """A copy of compliance/ to break."""
    shutil.copytree(ROOT / "compliance", tmp_path / "compliance")
    return tmp_path


def add_line(path: Path, line: str, before: str = "") -> None:
    text = path.read_text()
    if before:
        text = text.replace(before, f"{line}\n{before}", 1)
    else:
        text = f"{text}\n{line}\n"
    path.write_text(text)


def test_it_passes_the_tree_as_it_is():
    assert check_layers.violations(ROOT) == []


def test_it_fails_a_wrong_way_import(tree):
    runas = tree / "compliance/rules/runas.py"
    add_line(runas, "from compliance.web import dashboards")
    line = len(runas.read_text().splitlines())
    found = check_layers.violations(tree)
    assert found[0] == (
        f"compliance/rules/runas.py:{line}: "
        "compliance.rules.runas imports compliance.web.dashboards, a package listed after it"
    )
    # dashboards reaches runas through the models: the same import closes a cycle, and
    # brings Django into the pure rules
    assert any(f.startswith("import cycle among: ") for f in found)
    assert any("compliance.rules.runas reaches django" in f for f in found)


def test_it_fails_a_leaf_importing_another_leaf(tree):
    add_line(tree / "compliance/workers.py", "from compliance import vocabulary")
    (found,) = check_layers.violations(tree)
    assert "compliance.workers imports compliance.vocabulary" in found


@pytest.mark.parametrize(
    "path,line,expected",
    [
        ("rules/gate.py", "import django.db", "imports django.db: the pure packages keep to"),
        ("rules/gate.py", "import requests", "imports requests: the pure packages keep to"),
        (
            "rules/gate.py",
            "def later():\n    from django.conf import settings  # why\n\n    return settings",
            "imports django.conf: the pure packages keep to",
        ),
        # A leaf is lower, but params imports Django: the rules would bring it along.
        ("rules/gate.py", "from compliance import params", "reaches django through"),
        # ci/ may import collect/ by the layers, but not at the top: pip install . has no
        # Django for welkin-evaluate.
        ("ci/offline.py", "from compliance.collect import images", "reaches django through"),
        ("rules/runas.py", "from ..web import dashboards", "imports compliance.web"),
        (
            "rules/runas.py",
            "def later():\n    import importlib  # why\n\n    return importlib.import_module("
            '"compliance.web.dashboards")  # why',
            "imports compliance.web.dashboards, a package listed after it",
        ),
    ],
)
def test_it_fails_what_pip_install_or_the_layers_would_not_have(tree, path, line, expected):
    add_line(tree / "compliance" / path, line)
    found = check_layers.violations(tree)
    assert any(expected in f for f in found), found


def test_it_fails_a_cycle_within_a_package(tree):
    add_line(tree / "compliance/evidence/sink.py", "from compliance.evidence import store")
    (found,) = check_layers.violations(tree)
    assert found.startswith("import cycle among: ")
    assert {"compliance.evidence.sink", "compliance.evidence.store"} <= set(
        found.removeprefix("import cycle among: ").split(", ")
    )


def test_it_asks_an_import_inside_a_function_for_its_reason(tree):
    add_line(
        tree / "compliance/collect/reconcile.py",
        "def later():\n    from compliance.risk import acceptance\n\n    return acceptance",
    )
    (found,) = check_layers.violations(tree)
    assert "an import inside a function needs a comment on its line" in found


def test_make_lint_runs_it_and_fails_on_a_violation(tree):
    add_line(tree / "compliance/models/fleet.py", "from compliance.collect import scanning")
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts/check_layers.py"), str(tree)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "compliance.models.fleet imports compliance.collect.scanning" in run.stdout
    assert "python scripts/check_layers.py" in (ROOT / "Makefile").read_text()


def test_no_test_file_imports_another():
    """Shared fixtures live in conftest.py files, shared helpers in tests/builders.py and
    the test servers' own modules: a test file is read alone."""
    importing = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(
                n.split(".")[0] == "tests" and n.split(".")[-1].startswith("test_") for n in names
            ):
                importing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert importing == []
