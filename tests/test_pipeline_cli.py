"""The command line without a job: usage, delegation, progress output (no Ray)."""

from __future__ import annotations

import io
import logging

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


def test_image_and_bench_parse_their_own_command_lines(capsys):
    assert main(["image"]) == 2  # pipeline.image_cmd's own one-line usage error
    assert "stylize image" in capsys.readouterr().err
    assert main(["bench", "--help"]) == 0 and "stylize bench" in capsys.readouterr().out
    assert main(["-q", "bench", "--help"]) == 0  # -v/-q are every command's


def test_schema_prints_json(capsys):
    assert main(["schema"]) == 0
    assert '"title": "stylize job"' in capsys.readouterr().out


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(caplog):
    rows = [{"status": "ok"}, {"status": "failed_decode"}]
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    p = Progress(4, stream=io.StringIO(), interval_s=0)
    p.update(rows)
    p.close()
    assert "2/4 items, 1 failed" in caplog.text and "ETA" in caplog.text
    tty = _Tty()
    bar = Progress(4, done=2, stream=tty)
    bar.update(rows)
    bar.close()
    assert "4/4" in tty.getvalue() and "failed 1" in tty.getvalue()


def test_progress_is_silent_below_info(caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.progress")
    tty = _Tty()
    p = Progress(4, stream=tty, interval_s=0)
    p.update([{"status": "ok"}])
    p.close()
    assert caplog.text == "" and tty.getvalue() == ""
