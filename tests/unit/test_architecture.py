"""Layering rules: the online path (``stream``) never loads training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diskwatch.cli import app

REPO = Path(__file__).resolve().parents[2]

# package -> top-level packages it must not import
FORBIDDEN = {"stream": ("training",), "models": ("training", "stream")}


def module_name(path: Path) -> tuple[str, bool]:
    """Dotted module name of a file under the repo, and whether it is a package ``__init__``."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


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


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_static_imports(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    offenders = set()
    for path in files:
        module, is_package = module_name(path)
        for name in imported_modules(path.read_text(encoding="utf-8"), module, is_package=is_package):
            offenders.update(
                f"{path.relative_to(REPO)} imports {name}"
                for top in FORBIDDEN[package]
                if _is_under(name, top)
            )
    assert not offenders, sorted(offenders)


def test_stream_never_loads_training_at_runtime() -> None:
    code = (
        "import stream, pkgutil, importlib, sys; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(stream.__path__, 'stream.')]; "
        "bad = sorted(k for k in sys.modules if k == 'training' or k.startswith('training.')); "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


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
