"""The commands the README and docs show: every one parses with the command's own parser
(its options exist, its values have the right types), and the README's "One job" sequence
runs for real, on its own job file, with photos and paintings laid out as it says."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import cli_main, sample

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]
SHELL = ("", "bash", "sh", "shell", "console")
# a command in a shell block: at the start of a line, after `&&`, after `ray job submit ... --`
IN_BLOCK = re.compile(r"(?:^|&& |-- |\.venv/bin/)(stylize \S.*)$")
PLACEHOLDERS = {"N": "2"}  # `--limit N` in prose


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line) for every ``stylize`` command in a shell block of the docs, and
    every inline one with arguments (not a synopsis with [...], ..., | or <...>)."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for lang, body in _blocks(text):
            if lang not in SHELL:
                continue
            for line in body.replace("\\\n", " ").splitlines():
                m = IN_BLOCK.search(line.strip().split("  #")[0].strip())
                if m:
                    found.append((doc.name, m.group(1)))
        prose = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " ")
        for span in re.findall(r"`(stylize [^`]+)`", prose):
            if re.search(r"\.\.\.|…|\[|\||<|/--", span) or len(span.split()) < 3:
                continue
            if span.split()[1] in ("--version", "-V"):
                continue
            found.append((doc.name, span.split(" > ")[0]))
    return found


COMMANDS = documented_commands()


class Parsed(BaseException):
    """Raised by parse_args once a command line parsed: stop before anything runs."""


def test_the_docs_show_commands():
    commands = {c.split()[1] for _, c in COMMANDS}
    assert {"run", "plan", "image", "status", "report", "grid", "bench", "quality"} <= commands


@pytest.mark.parametrize("where,command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_every_documented_command_parses(where, command, monkeypatch, capsys):
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parsed = original(self, args, namespace)
        if self.prog.startswith("stylize "):  # the command's parser, not a helper's
            raise Parsed(parsed)
        return parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    argv = [PLACEHOLDERS.get(a, a) for a in shlex.split(command)[1:]]
    try:
        code = cli_main(argv)
    except Parsed:
        return
    # --help prints and exits 0; anything else means the command did not parse
    assert code == 0 and "--help" in argv, f"{where}: {command}: {capsys.readouterr().err}"


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_readme_job_runs_as_written(ray_session, tmp_path, monkeypatch, capsys):
    """The "One job" section: its job file as printed (only the size and iterations made
    tiny for a CPU), photos/ and paintings/ beside it, then its commands in their order."""
    section = _readme_section("One job")
    (yaml_block,) = [b for lang, b in _blocks(section) if lang == "yaml"]
    (shell_block,) = [b for lang, b in _blocks(section) if lang in SHELL]
    job = yaml.safe_load(yaml_block)
    job["stylize"].update(size=32, iterations=3)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    for folder, names in (
        ("photos", ["tubingen", "chelsea", "coffee", "tubingen"]),
        ("paintings", ["starry_night", "the_scream", "shipwreck"]),
    ):
        (tmp_path / folder).mkdir()
        for i, name in enumerate(names):
            (tmp_path / folder / f"{name}{i}.jpg").write_bytes(sample(name).read_bytes())
    (tmp_path / "photos" / "notes.txt").write_text("taken in 2019\n")  # a stray file

    commands = [line.split("#")[0].split() for line in shell_block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [
        ["stylize", "plan"],
        ["stylize", "run"],
        ["stylize", "run"],
        ["stylize", "status"],
        ["stylize", "report"],
    ]
    printed = []
    for argv in commands:
        code = cli_main(argv[1:])
        printed.append(capsys.readouterr().out)
        assert code == 0, (argv, printed[-1])
    plan, trial, full, status, report = printed
    assert re.search(r"contents: +4 \(1 skipped: 1 not an image", plan) and re.search(
        r"styles: +3 ", plan
    ), plan
    assert re.search(r"items: +12: 0 already done, 12 left", plan), plan
    assert trial.startswith("stylize: 8 items: 8 ok"), trial
    assert full.startswith("stylize: 12 items: 12 ok"), full
    out = tmp_path / "outputs" / "my-run"
    assert len(list(out.glob("*/*.png"))) == 12
    assert re.search(r"items: +12 of 12 done, 0 left", status), status
    assert report.strip() == f"report: {out / 'report' / 'index.html'}"
