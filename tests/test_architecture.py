"""The import rules from docs/architecture.md, checked on every module of the project by parsing its
imports (`import` and `from ... import`, at any depth, relative ones resolved):

- configs <- storage <- tasks <- flows: a package imports only itself and the ones before it, so
  nothing outside flows imports flows; configs and storage import no Prefect, DuckDB / Delta (configs)
  or torch, transformers and TRL;
- Prefect only in tasks/stages/ (a stage's one task) and flows/;
- TRL only in tasks/training/ (the reward and the curriculum stay usable from verl's compute_score);
- the installed packages never import tests/ or benchmarks/ (neither is installed); from tests/,
  benchmarks/ import only tests/support/, and tests import their helpers from tests/support/ too,
  never from a test module or from conftest.

Each rule also runs on synthetic sources that break it (below): a rule that cannot fail checks nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import PROJECT_ROOT

PACKAGES = ("configs", "storage", "tasks", "flows")  # the installed ones, in import order
LAYERS = {package: rank for rank, package in enumerate(PACKAGES)}
FORBIDDEN_THIRD_PARTY = {
    "configs": {"prefect", "duckdb", "deltalake", "torch", "transformers"},
    "storage": {"prefect", "torch", "transformers", "trl"},
}
PREFECT_HOMES = ("tasks/stages/", "flows/")
TRL_HOMES = ("tasks/training/",)
SCANNED = (*PACKAGES, "benchmarks", "tests")


# (file, imported module) -> why the rules let that file import that module (and what is in it).
def imported_modules(source: str, path: str) -> set[str]:
    """Every module `source` (the file at `path`, relative to the project root) imports, as dotted
    names: `import a.b` gives a.b; `from a import b` gives a and a.b (b may be a module); relative
    imports are resolved against the file's package."""
    package = list(Path(path).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            elif node.level - 1 <= len(package):
                base = ".".join(
                    package[: len(package) - (node.level - 1)] + ([node.module] if node.module else [])
                )
            else:  # above the top-level package: Python refuses it too
                continue
            if node.module or node.level:
                names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {name for name in names if name}


def _is_test_module(name: str) -> bool:
    """tests.test_x, tests.conftest, or the same imported by a bare name (rootdir on sys.path)."""
    parts = name.split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    return bool(parts) and (parts[0].startswith("test_") or parts[0] == "conftest")


def _problems(path: str, name: str) -> list[str]:
    """What is wrong with the file at `path` importing module `name` (nothing: [])."""
    where, head = path.split("/")[0], name.split(".")[0]
    problems = []
    if where in LAYERS:
        if head in LAYERS and LAYERS[head] > LAYERS[where]:
            problems.append(
                "nothing outside flows imports flows"
                if head == "flows"
                else f"{where} must not import {head}"
            )
        if head in FORBIDDEN_THIRD_PARTY.get(where, ()):
            problems.append(f"{where} must not import {head}")
        if head == "prefect" and not path.startswith(PREFECT_HOMES):
            problems.append("Prefect is imported only in tasks/stages/ and flows/")
        if head == "trl" and not path.startswith(TRL_HOMES):
            problems.append("TRL is imported only in tasks/training/")
        if head in ("tests", "benchmarks") or _is_test_module(name):
            problems.append("the installed packages never import tests/ or benchmarks/")
    elif (
        where in ("benchmarks", "tests")
        and (head == "tests" or _is_test_module(name))
        and name not in ("tests", "tests.support")
        and not name.startswith("tests.support.")
    ):
        problems.append(
            f"{where} import helpers from tests/support/ only, never from a test module or conftest"
        )
    return problems


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def violations(files: dict[str, str]) -> list[str]:
    """Every broken rule in `files` (path relative to the project root -> source), one line each."""
    found = []
    for path, source in sorted(files.items()):
        reported: set[str] = set()
        for name in sorted(imported_modules(source, path)):  # a module sorts before what is in it
            prefixes = _prefixes(name)
            if reported.intersection(prefixes):
                continue
            problems = _problems(path, name)
            found.extend(f"{path}: imports {name}: {problem}" for problem in problems)
            reported.update([name] if problems else [])
    return found


def project_files() -> dict[str, str]:
    files = {}
    for top in SCANNED:
        for path in sorted((PROJECT_ROOT / top).rglob("*.py")):
            relative = path.relative_to(PROJECT_ROOT)
            if not any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                files[relative.as_posix()] = path.read_text(encoding="utf-8")
    return files


def test_the_project_follows_the_import_rules():
    files = project_files()
    assert {"configs/schema.py", "tasks/stages/train.py", "flows/cli.py", "benchmarks/kill_drill.py",
            "tests/conftest.py", "tests/support/recipes.py"} <= set(files)  # fmt: skip
    assert violations(files) == []


# Each source breaks one rule; `violations` must name it (the import may sit inside a function).
BROKEN = [
    ("configs/x.py", "from storage import open_storage\n", "configs must not import storage"),
    ("storage/x.py", "import tasks.registry\n", "storage must not import tasks"),
    ("storage/x.py", "import flows.cli\n", "nothing outside flows imports flows"),
    ("tasks/x.py", "def f():\n    from flows import pipeline\n", "nothing outside flows imports flows"),
    ("configs/x.py", "import duckdb\n", "configs must not import duckdb"),
    ("storage/x.py", "def f():\n    import torch.nn\n", "storage must not import torch"),
    ("tasks/llm/serving.py", "def f():\n    from prefect import flow\n", "Prefect is imported only in"),
    ("tasks/x.py", "import prefect.artifacts\n", "Prefect is imported only in"),
    ("storage/x.py", "from prefect import task\n", "Prefect is imported only in"),
    ("tasks/rewards/pairwise.py", "def f():\n    from trl import GRPOTrainer\n", "TRL is imported only in"),
    ("tasks/curriculum/x.py", "import trl.trainer.utils\n", "TRL is imported only in"),
    ("flows/cli.py", "from trl import SFTTrainer\n", "TRL is imported only in"),
    ("tasks/x.py", "from tests.support.recipes import write_recipe\n", "never import tests/ or benchmarks/"),
    ("flows/x.py", "def f():\n    import benchmarks.kill_drill\n", "never import tests/ or benchmarks/"),
    (
        "benchmarks/x.py",
        "def f():\n    from tests.test_training import train_recipe\n",
        "tests/support/ only",
    ),
    ("benchmarks/x.py", "from tests.conftest import write_recipe\n", "tests/support/ only"),
    ("benchmarks/x.py", "from tests import test_cli\n", "tests/support/ only"),
    ("tests/test_a.py", "from tests.test_cli import wrl\n", "tests/support/ only"),
    ("tests/test_a.py", "import tests.test_cli as cli\n", "tests/support/ only"),
    ("tests/test_a.py", "def f():\n    from .test_cli import wrl\n", "tests/support/ only"),
    ("tests/test_a.py", "from . import test_cli\n", "tests/support/ only"),
    ("tests/test_a.py", "from test_cli import wrl\n", "tests/support/ only"),
    ("tests/test_a.py", "from tests.conftest import PROJECT_ROOT\n", "tests/support/ only"),
    ("tests/support/x.py", "from ..test_training import train_recipe\n", "tests/support/ only"),
]


@pytest.mark.parametrize(
    ("path", "source", "says"), BROKEN, ids=[f"{p}:{s.split()[-1]}" for p, s, _ in BROKEN]
)
def test_each_rule_refuses_an_import_that_breaks_it(path, source, says):
    found = violations({path: source})
    assert any(says in line for line in found), found


# What the rules allow, written the same ways: none of these is reported.
ALLOWED = {
    "configs/schema.py": "import pydantic\nimport yaml\n",
    "storage/x.py": "from configs.loading import load_recipe\nimport duckdb\nimport deltalake\n",
    "tasks/stages/train.py": "from prefect import task\nfrom storage import open_storage\n",
    "tasks/training/trainer.py": "def f():\n    from trl import GRPOTrainer\n    import torch\n",
    "flows/x.py": "import prefect.artifacts\nfrom tasks.stages import train\nfrom . import pipeline\n",
    "benchmarks/x.py": "from tests.support.recipes import train_recipe\nfrom tests import support\nimport trl\n",
    "tests/test_a.py": "from tests.support import recipes\nfrom .support.paths import PROJECT_ROOT\n"
    "import prefect\nimport trl\nfrom flows.cli import app\nfrom benchmarks.kill_drill import _recipe\n",
    "tests/support/x.py": "from .recipes import write_recipe\nfrom tests.support.paths import PROJECT_ROOT\n",
}


def test_what_the_rules_allow_is_not_reported():
    assert violations(ALLOWED) == []


def test_relative_imports_resolve_against_the_files_package():
    assert imported_modules("from .test_cli import wrl\n", "tests/test_a.py") == {
        "tests.test_cli",
        "tests.test_cli.wrl",
    }
    assert imported_modules("from . import x\n", "tasks/llm/__init__.py") == {"tasks.llm", "tasks.llm.x"}
    assert imported_modules("from ..base import y\n", "tasks/llm/a.py") == {"tasks.base", "tasks.base.y"}
    assert "tests.test_cli" in imported_modules("from tests import test_cli\n", "benchmarks/x.py")
