"""Layering rules, checked on the source (static imports) and at run time.

Layers, bottom to top, each a folder installed under the ``diskwatch`` namespace:
``core`` < ``models`` < ``stream`` | ``training`` < the shell (``diskwatch/``).
A layer imports only layers below it; ``stream`` and ``training`` never import each other;
nothing imports the shell. Every first-party import uses the ``diskwatch.`` namespace.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diskwatch.cli import app

REPO = Path(__file__).resolve().parents[2]

# folder -> installed package name
LAYER_PACKAGE = {
    "core": "diskwatch.core",
    "models": "diskwatch.models",
    "stream": "diskwatch.stream",
    "training": "diskwatch.training",
    "diskwatch": "diskwatch",
}
# layer -> the first-party layers it may import (``diskwatch`` alone is the namespace root,
# which holds only ``__version__``)
ALLOWED = {
    "core": {"core"},
    "models": {"core", "models"},
    "stream": {"core", "models", "stream"},
    "training": {"core", "models", "training"},
    "shell": {"core", "models", "stream", "training", "shell"},
}
BARE_TOP_LEVEL = ("models", "stream", "training", "core")
SHELL_MODULES = ("diskwatch.cli", "diskwatch.demo", "diskwatch.replay", "diskwatch.alerts", "diskwatch.smoke")


def layer_of(name: str) -> str | None:
    """The layer of a dotted first-party module name (None: not first-party, or the bare root)."""
    parts = name.split(".")
    if parts[0] != "diskwatch" or len(parts) == 1 or parts[1] == "__version__":
        return None
    return parts[1] if parts[1] in {"core", "models", "stream", "training"} else "shell"


def module_name(path: Path) -> tuple[str, bool]:
    """Installed dotted name of a file under the repo, and whether it is a package ``__init__``."""
    folder, *parts = path.relative_to(REPO).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([LAYER_PACKAGE[folder], *parts]), is_package


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of every module ``source`` imports (as module ``module``).

    Covers ``import a.b``, ``from a import b`` (both ``a`` and ``a.b``),
    relative imports, and ``importlib.import_module("a")``/``__import__("a")``
    calls with a literal name.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            func_name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if func_name in {"import_module", "__import__"} and isinstance(first, ast.Constant):
                names.add(str(first.value))
    return names


def _is_under(name: str, top: str) -> bool:
    return name == top or name.startswith(f"{top}.")


def test_import_collector_sees_every_form() -> None:
    source = (
        "import os, training.data as d\n"
        "from training import fit\n"
        "from training.bundle import save\n"
        "import importlib\n"
        "importlib.import_module('training.x')\n"
        "__import__('trainingx')\n"
        "from . import sibling\n"
        "from .sub.mod import thing\n"
        "def lazy():\n    import training.late\n"
    )
    names = imported_modules(source, "stream.worker")
    assert {"os", "training.data", "training", "training.fit", "training.bundle.save", "training.x"} <= names
    assert {"stream.sibling", "stream.sub.mod.thing", "training.late", "trainingx"} <= names
    assert "stream.pkg.sibling" in imported_modules("from . import sibling", "stream.pkg", is_package=True)
    assert not _is_under("trainingx", "training")
    assert _is_under("training.late", "training")


def _imports_under(folder: str) -> list[tuple[str, str, str]]:
    """(file, importing module, imported name) for every import in ``folder``."""
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    found = []
    for path in files:
        module, is_package = module_name(path)
        for name in imported_modules(path.read_text(encoding="utf-8"), module, is_package=is_package):
            found.append((str(path.relative_to(REPO)), module, name))
    return found


def test_layer_of() -> None:
    assert layer_of("diskwatch.core.records") == "core"
    assert layer_of("diskwatch.stream") == "stream"
    assert layer_of("diskwatch.cli") == "shell"
    assert layer_of("diskwatch.replay.x") == "shell"
    assert layer_of("diskwatch") is None
    assert layer_of("diskwatch.__version__") is None
    assert layer_of("numpy") is None


@pytest.mark.parametrize("folder", sorted(LAYER_PACKAGE))
def test_layers_only_point_down(folder: str) -> None:
    offenders = []
    for path, module, name in _imports_under(folder):
        own, target = layer_of(module) or "shell", layer_of(name)
        if target is not None and target not in ALLOWED[own]:
            offenders.append(f"{path} ({own}) imports {name} ({target})")
    assert not offenders, offenders


@pytest.mark.parametrize("folder", [*sorted(LAYER_PACKAGE), "tests"])
def test_first_party_imports_use_the_namespace(folder: str) -> None:
    if folder == "tests":
        found = [(str(p.relative_to(REPO)), "", n) for p in sorted((REPO / "tests").rglob("*.py"))
                 for n in imported_modules(p.read_text(encoding="utf-8"), "tests.x")]
    else:
        found = _imports_under(folder)
    bare = [f"{path} imports {name}" for path, _, name in found if name.split(".")[0] in BARE_TOP_LEVEL]
    assert not bare, bare


@pytest.mark.slow
def test_installed_package_has_no_generic_top_level_names(tmp_path: Path) -> None:
    """``pip install .`` puts only ``diskwatch`` on the path: ``import models`` must fail."""
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(REPO)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    tops = sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert tops == ["diskwatch"], tops
    for sub in ("core", "models", "stream", "training"):
        assert (site / "diskwatch" / sub / "__init__.py").is_file(), sub
    probe = (
        "import importlib.util, sys\n"
        f"sys.path[:] = [{str(site)!r}] + [p for p in sys.path if 'site-packages' in p]\n"
        "assert importlib.util.find_spec('diskwatch.stream.runner') is not None\n"
        "for name in ('models', 'training', 'stream', 'core'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    sys.exit(f'import {name} succeeded')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr + result.stdout


def test_cli_import_stays_light() -> None:
    code = (
        "import sys, diskwatch.cli; "
        "heavy = ('tensorflow', 'keras', 'faust', 'training', 'pandas'); "
        "heavy = sorted(m for m in heavy if m in sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_cli_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("schemas", "config", "smoke"):
        assert command in result.output
    assert "SMART" in result.output


def async_style_violations(source: str) -> list[str]:
    """What keeps a test module from the suite's one async style (sync tests + ``asyncio.run``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("test"):
            found.append(f"line {node.lineno}: async def {node.name}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] == "pytest_asyncio" for n in names):
                found.append(f"line {node.lineno}: imports pytest_asyncio")
        elif isinstance(node, ast.Attribute) and node.attr == "asyncio" and ast.unparse(node.value) == "pytest.mark":
            found.append(f"line {node.lineno}: pytest.mark.asyncio")
    return found


def test_async_style_check_sees_every_form() -> None:
    source = (
        "import pytest\nimport pytest_asyncio\nfrom pytest_asyncio import fixture\n"
        "@pytest.mark.asyncio\nasync def test_a():\n    pass\n"
        "class TestB:\n    async def test_b(self):\n        pass\n"
        "async def helper():\n    pass\n"
    )
    assert sorted(async_style_violations(source)) == [
        "line 2: imports pytest_asyncio",
        "line 3: imports pytest_asyncio",
        "line 4: pytest.mark.asyncio",
        "line 5: async def test_a",
        "line 8: async def test_b",
    ]
    assert async_style_violations("import asyncio\ndef test_c():\n    async def scenario():\n        pass\n"
                                  "    asyncio.run(scenario())\n") == []


def test_tests_use_one_async_style() -> None:
    """Tests are sync functions running their async body with ``asyncio.run``: no pytest-asyncio."""
    bad = {
        str(path.relative_to(REPO)): found
        for path in sorted((REPO / "tests").rglob("*.py"))
        if (found := async_style_violations(path.read_text()))
    }
    assert bad == {}
