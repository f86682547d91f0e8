"""The layering rule: ``stylize/`` is the algorithm on PyTorch and Pillow alone. No module of
it imports Ray, fsspec, pyarrow, s3fs, gcsfs or the pipeline, at the top or inside a function,
and importing the package loads none of them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import stylize

FORBIDDEN = {"ray", "fsspec", "pyarrow", "s3fs", "gcsfs", "pipeline"}
MODULES = sorted(Path(stylize.__file__).parent.glob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for a in node.names}
    return names | {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and not node.level}


def test_every_module_is_checked():
    assert {p.stem for p in MODULES} >= {"config", "engine", "model", "images", "optim", "cli"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_nothing_of_the_pipeline_layer(path):
    assert not _imports(path) & FORBIDDEN


def test_importing_the_engine_loads_none_of_them():
    code = ("import sys, stylize.engine, stylize.cli, stylize.quality, stylize.bench; "
            f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
