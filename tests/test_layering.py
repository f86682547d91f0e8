"""The layering rule: ``stylize/`` is the algorithm on PyTorch and Pillow alone. No module of
it imports Ray, fsspec, pyarrow, s3fs, gcsfs or the pipeline, at the top or inside a function,
and importing the package loads none of them."""

from __future__ import annotations

import ast
import re
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


# The layout of a run folder is spelled in pipeline/runfolder.py alone: no other module of the
# pipeline holds one of its file names as a string literal (docstrings may mention them,
# f-strings may be built from runfolder's constants).
PIPELINE = sorted(Path(__file__).resolve().parents[1].joinpath("pipeline").glob("*.py"))
RUN_FOLDER_NAMES = re.compile(r"(?<![\w.])_manifest\b|(?<![\w.])_staging\b|"
                              r"\bmanifest\.parquet\b|\brun\.json\b|\bjob\.json\b|"
                              r"\bgrid[-\w*{}:]*\.png\b|\bgrid-sweep-")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.add(id(body[0].value))
    return out


def _strings(tree: ast.AST):
    """(node, text) of each string literal but docstrings; an f-string as one text, its
    replacement fields as ``{}`` (f"grid-{n:03d}.png" is seen whole)."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in node.values}
            yield node, "".join(v.value if isinstance(v, ast.Constant) else "{}"
                                for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in skip:
            yield node, node.value


def _run_folder_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.name}:{node.lineno}: {text!r}" for node, text in _strings(tree)
            if RUN_FOLDER_NAMES.search(text)]


def test_the_run_folder_names_are_spelled_in_runfolder_alone():
    assert {p.stem for p in PIPELINE} >= {"runfolder", "manifest", "driver", "report", "grid"}
    runfolder = next(p for p in PIPELINE if p.stem == "runfolder")
    assert _run_folder_names(runfolder)  # the check does see the names
    found = [hit for p in PIPELINE if p.stem != "runfolder" for hit in _run_folder_names(p)]
    assert not found, "run folder names spelled outside pipeline/runfolder.py:\n" + "\n".join(found)


def test_runfolder_imports_storage_and_the_standard_library_alone():
    tree = ast.parse(next(p for p in PIPELINE if p.stem == "runfolder").read_text(encoding="utf-8"))
    modules = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for a in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names} == \
        {"pipeline.storage"}
