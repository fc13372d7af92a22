"""The layering of the package (pyproject.toml, [tool.importlinter]): checked by import-linter, and shown to catch
an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The core importing the CLI (an upward import) is refused, naming the modules."""
    shutil.copytree(ROOT / "liqwatch", tmp_path / "liqwatch", ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    engine = tmp_path / "liqwatch" / "core" / "engine.py"
    engine.write_text(engine.read_text() + "\nfrom liqwatch.cli import main as _upward  # noqa: E402,F401\n")
    r = lint(tmp_path)
    assert r.returncode != 0
    assert "liqwatch.core is not allowed to import liqwatch.cli" in r.stdout, r.stdout[-3000:]
    assert "liqwatch.core.engine -> liqwatch.cli.main" in r.stdout, r.stdout[-3000:]
