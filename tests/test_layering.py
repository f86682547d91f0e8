"""The layering rules: ``stylize/`` is the algorithm on PyTorch and Pillow alone. No module of
it imports Ray, fsspec, pyarrow, s3fs, gcsfs or the pipeline, at the top or inside a function,
and importing the package loads none of them; nor is any of it a command shell (no argument
parsing, no printing, no log handlers: the engine raises and logs, ``pipeline/`` prints)."""

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
    names = {
        a.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
    }
    return names | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and not node.level
    }


def test_every_module_is_checked():
    assert {p.stem for p in MODULES} >= {"config", "engine", "model", "images", "optim", "bench"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_nothing_of_the_pipeline_layer(path):
    assert not _imports(path) & FORBIDDEN


def test_importing_the_engine_loads_none_of_them():
    code = (
        "import sys, stylize.engine, stylize.api, stylize.quality, stylize.bench; "
        f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


# The engine is a library: the command shell (argument parsing, what reaches the terminal,
# where log lines go) is pipeline/shell.py, pipeline/cli.py and the pipeline's *_cmd modules.
SHELL_MODULES = {"argparse", "getopt", "optparse", "click"}
SHELL_CALLS = {"print", "input", "basicConfig", "addHandler", "dictConfig", "fileConfig"}
SHELL_NAMES = {"stdout", "stderr", "stdin", "argv", "exit"}  # of sys


def _shell_habits(path: Path) -> list[str]:
    """What in ``path`` belongs to a command shell: an argument parser's import, a print, a
    log handler or logging set-up, sys's streams, argv or exit, a ``__main__`` block."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [f"imports {m}" for m in sorted(_imports(path) & SHELL_MODULES)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if name in SHELL_CALLS:
                found.append(f"line {node.lineno}: calls {name}()")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
            and node.attr in SHELL_NAMES
        ):
            found.append(f"line {node.lineno}: sys.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            found += [
                f"line {node.lineno}: sys.{a.name}" for a in node.names if a.name in SHELL_NAMES
            ]
        elif isinstance(node, ast.Constant) and node.value == "__main__":
            found.append(f"line {node.lineno}: a __main__ block")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_engine_module_is_no_command_shell(path):
    assert not _shell_habits(path), _shell_habits(path)


def test_the_shell_check_sees_a_shell(tmp_path):
    shell = tmp_path / "shell.py"
    shell.write_text(
        "import argparse, logging, sys\n"
        "logging.getLogger().addHandler(logging.StreamHandler())\n"
        "print('x', file=sys.stderr)\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(argparse.ArgumentParser().parse_args(sys.argv[1:]))\n",
        encoding="utf-8",
    )
    found = " ".join(_shell_habits(shell))
    for habit in ("imports argparse", "addHandler", "print", "sys.stderr", "sys.argv", "sys.exit"):
        assert habit in found, habit
    assert "__main__" in found


# The layout of a run folder is spelled in pipeline/runfolder.py alone: no other module of the
# pipeline holds one of its file names as a string literal (docstrings may mention them,
# f-strings may be built from runfolder's constants).
PIPELINE = sorted(Path(__file__).resolve().parents[1].joinpath("pipeline").glob("*.py"))
RUN_FOLDER_NAMES = re.compile(
    r"(?<![\w.])_manifest\b|(?<![\w.])_staging\b|"
    r"\bmanifest\.parquet\b|\brun\.json\b|\bjob\.json\b|"
    r"\bgrid[-\w*{}:]*\.png\b|\bgrid-sweep-"
)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                out.add(id(body[0].value))
    return out


def _strings(tree: ast.AST):
    """(node, text) of each string literal but docstrings; an f-string as one text, its
    replacement fields as ``{}`` (f"grid-{n:03d}.png" is seen whole)."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in node.values}
            yield (
                node,
                "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values),
            )
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        ):
            yield node, node.value


def _run_folder_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.name}:{node.lineno}: {text!r}"
        for node, text in _strings(tree)
        if RUN_FOLDER_NAMES.search(text)
    ]


def test_the_run_folder_names_are_spelled_in_runfolder_alone():
    assert {p.stem for p in PIPELINE} >= {"runfolder", "manifest", "driver", "report", "grid"}
    runfolder = next(p for p in PIPELINE if p.stem == "runfolder")
    assert _run_folder_names(runfolder)  # the check does see the names
    found = [hit for p in PIPELINE if p.stem != "runfolder" for hit in _run_folder_names(p)]
    assert not found, "run folder names spelled outside pipeline/runfolder.py:\n" + "\n".join(found)


def test_runfolder_imports_the_standard_library_alone():
    tree = ast.parse(next(p for p in PIPELINE if p.stem == "runfolder").read_text(encoding="utf-8"))
    modules = {
        a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
    }
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names} == set()


# ----------------------------------------------------------- the pipeline's own layers

ROOT = Path(__file__).resolve().parents[1]


def _module_imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (full dotted names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    mods = {
        f"{pkg}.{p.stem}": p
        for pkg in ("pipeline", "stylize")
        for p in (ROOT / pkg).glob("*.py")
        if p.stem != "__init__"
    }
    return {m: {i for i in _module_imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_only_the_ray_executor_imports_ray():
    users = sorted(
        p.stem
        for p in PIPELINE
        if any(m == "ray" or m.startswith("ray.") for m in _module_imports(p))
    )
    assert users == ["raydata", "raypool"] or users == ["raypool"], users


@pytest.mark.parametrize(
    "module",
    [
        "pipeline.scheduler",
        "pipeline.rows",
        "pipeline.items",
        "pipeline.jobconfig",
        "pipeline.runfolder",
    ],
)
def test_policy_rows_items_and_job_model_load_no_storage_table_or_cluster_library(module):
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('fsspec', 'pyarrow', 'ray', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]", f"{module} loads {out}"


VIEWS = ("report", "report_pages", "charts", "status", "grid", "sweepgrid")


@pytest.mark.parametrize("view", VIEWS)
def test_views_read_a_run_folder_never_the_driver(view):
    imports = _graph()[f"pipeline.{view}"]
    assert not imports & {
        "pipeline.driver",
        "pipeline.finish",
        "pipeline.raypool",
        "pipeline.inline",
        "pipeline.resume",
    }, imports


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(" -> ".join(path[path.index(n) :] + [n]) if n in path else n)
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


def test_the_engine_never_imports_the_pipeline():
    graph = _graph()
    assert not [
        (m, i)
        for m, deps in graph.items()
        if m.startswith("stylize.")
        for i in deps
        if i.startswith("pipeline.")
    ]


def test_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = sorted(
        m
        for m in _graph()
        if f"`{m.split('.')[1]}`" not in doc and f"{m.replace('.', '/')}.py" not in doc
    )
    assert not missing, f"docs/architecture.md does not name: {missing}"
