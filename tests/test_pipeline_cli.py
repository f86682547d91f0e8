"""The command line without a job: usage, delegation, progress output (no Ray)."""

from __future__ import annotations

import io

import pytest

from pipeline.cli import main
from pipeline.progress import Progress


def test_usage_and_unknown_commands(capsys):
    assert main([]) == 2 and "usage: stylize COMMAND" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "run CONFIG.yaml" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required: config" in err
    assert main(["run", "--help"]) == 0


def test_image_and_bench_delegate_to_the_engine_cli(capsys):
    assert main(["image"]) == 2  # stylize.cli's own one-line usage error
    assert "stylize image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_and_lines_otherwise():
    rows = [{"status": "ok"}, {"status": "failed_decode"}]
    log = io.StringIO()
    p = Progress(4, stream=log, interval_s=0)
    p.update(rows)
    p.close()
    assert "stylize: 2/4 items, 1 failed" in log.getvalue() and "ETA" in log.getvalue()
    tty = _Tty()
    bar = Progress(4, done=2, stream=tty)
    bar.update(rows)
    bar.close()
    assert "4/4" in tty.getvalue() and "failed 1" in tty.getvalue()
