"""`stylize schema`: the JSON Schema of a job file, what configs/job.schema.json holds, and
what every shipped config in configs/ validates against."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.cli import main
from pipeline.jobconfig import SCHEMA_FILE, load_job

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
FIRST_LINE = "# yaml-language-server: $schema=job.schema.json"


@pytest.fixture(scope="module")
def printed() -> str:
    """What `stylize schema` prints (run once for the module)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["schema"]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def validator(printed):
    schema = json.loads(printed)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_file_is_what_the_command_prints(printed):
    shipped = (ROOT / SCHEMA_FILE).read_text()
    assert shipped == printed, (
        f"{SCHEMA_FILE} is out of date with the job model; regenerate it with "
        f"`stylize schema > {SCHEMA_FILE}` and commit it"
    )


def test_there_are_configs_to_check():
    assert len(CONFIGS) >= 4, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_names_and_passes_the_schema(path, validator):
    text = path.read_text()
    assert text.splitlines()[0] == FIRST_LINE, f"{path.name}: first line must be {FIRST_LINE!r}"
    problems = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(yaml.safe_load(text))
    ]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
    load_job(str(path))  # and the loader agrees


def test_the_schema_rejects_what_the_loader_rejects(validator):
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for bad in (
        {"shard_sise": 2},
        {"mode": "append"},
        {"ray": {"num_workers": 0}},
        {"grid": {"cell_size": 2}},
        {"output_quality": 101},
    ):
        assert list(validator.iter_errors({**raw, **bad})), bad
    missing = {k: v for k, v in raw.items() if k != "output"}
    assert list(validator.iter_errors(missing))
