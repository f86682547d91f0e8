"""infra/gpu_check.py (the command behind infra/gpu-check.sh) without a GPU: the summary's
verdicts against the targets, read from a real H200 run's figures (infra/gpu-results/), and a
target whose step did not finish; the command line, the steps' commands and limits, a step
under its time limit, and a whole run of stand-in steps. (tests/test_gpu.py runs the real
script at tiny sizes on the CPU.)"""

import importlib
import json
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
H200 = ROOT / "infra" / "gpu-results" / "2026-12-04-h200.jsonl"


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """The records and summary module (infra/gpu_check_results.py), writing to a fresh
    results.jsonl."""
    monkeypatch.syspath_prepend(str(ROOT / "infra"))
    module = importlib.import_module("gpu_check_results")
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("GPU_CHECK_JSONL", str(results))
    return module, results


@pytest.fixture
def gpu_check(helper):
    """infra/gpu_check.py, the command."""
    return importlib.import_module("gpu_check")


def _verdicts(summary: str) -> dict[str, str]:
    out = {}
    for line in summary.split("targets (shared/PERF.md):\n", 1)[1].splitlines():
        if line.startswith("  "):
            verdict, rest = line[2:10].strip(), line[10:].strip()
            out[rest.rsplit(":", 1)[0]] = verdict
    return out


def test_summary_of_a_real_run_says_which_targets_are_met(helper, tmp_path):
    module, results = helper
    lines = [json.loads(x) for x in H200.read_text().splitlines()]
    results.write_text("".join(json.dumps(x) + "\n" for x in lines if x["step"] != "summary"))
    rc = module.cmd_summary(str(tmp_path), 500)
    summary = (tmp_path / "summary.txt").read_text()
    assert rc == 0, summary
    verdicts = _verdicts(summary)
    assert verdicts["512px ms/image-iteration <= 1.2"] == "NOT MET"  # 1.78 ms
    assert verdicts["1024px ms/image-iteration <= 8"] == "NOT MET"  # 10.8 ms
    assert verdicts["mixed_run / bench images/hour >= 0.9 (once compiled)"] == "MET"  # 1.19
    assert verdicts["bf16 final loss <= 1.01 x strict fp32 (512px, 200 it)"] == "MET"
    assert verdicts["bench_512 (bf16 + compile, 500 it) final loss <= 1.01 x strict fp32"] == "MET"
    assert "1.78 ms/image-iteration" in summary
    # the summary's own record, for scripts
    record = json.loads(results.read_text().splitlines()[-1])
    met = {t["name"]: t["met"] for t in record["targets"]}
    assert met["512px ms/image-iteration <= 1.2"] is False


def test_a_step_that_did_not_finish_is_no_silent_pass(helper, tmp_path):
    module, results = helper
    env = {"step": "env", "mode": "gpu", "gpu": "NVIDIA H200"}
    bench = {"step": "bench_512", "status": "timeout", "step_s": 110}
    results.write_text(json.dumps(env) + "\n" + json.dumps(bench) + "\n")
    rc = module.cmd_summary(str(tmp_path), 120)
    summary = (tmp_path / "summary.txt").read_text()
    assert rc == 1 and "problems in bench_512" in summary
    assert _verdicts(summary) == {"bench_512: no figure (timeout)": "UNKNOWN"}


# ------------------------------------------------------------------------- records


def test_a_step_record_takes_the_last_json_line_and_the_tail_of_a_failure(helper, tmp_path):
    module, results = helper
    log = tmp_path / "step.out"
    log.write_text('warming up\n{"ms_per_image_iter": 9}\n{"ms_per_image_iter": 1.5}\ndone\n')
    module.cmd_step("bench_512", 0, 12.34, str(log), "python -m pipeline.bench_cmd")
    module.cmd_step("bench_1024", 124, 70, str(log))
    module.cmd_step("bench_224", 0, 1, str(tmp_path / "no-such.out"))
    (ok, timeout, empty) = [json.loads(x) for x in results.read_text().splitlines()]
    assert ok == {
        "step": "bench_512",
        "status": "ok",
        "ms_per_image_iter": 1.5,
        "step_s": 12.3,
        "command": "python -m pipeline.bench_cmd",
    }
    assert timeout["status"] == "timeout (rc 124)" and timeout["output_tail"][-1] == "done"
    assert empty == {"step": "bench_224", "status": "ok", "step_s": 1.0}


def test_a_step_that_says_it_skipped_is_recorded_as_skipped(helper, tmp_path):
    module, results = helper
    log = tmp_path / "mixed.out"
    log.write_text('{"status": "skipped: the pipeline does not import", "ray_hidden": true}\n')
    module.cmd_step("mixed_run", 0, 3, str(log))
    line = json.loads(results.read_text())
    assert line["status"] == "skipped: the pipeline does not import" and line["ray_hidden"]


def test_pytest_record_has_one_outcome_per_test(helper, tmp_path):
    module, results = helper
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase name="test_a" time="1.234"/>'
        '<testcase name="test_b" time="2"><failure message="assert 1 == 2">long</failure>'
        "</testcase>"
        '<testcase name="test_c" time="0"><skipped message="no GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    out = tmp_path / "pytest.out"
    out.write_text("F\n1 failed\n")
    module.cmd_pytest(1, 9.87, str(junit), str(out), "pytest -m gpu")
    line = json.loads(results.read_text())
    assert line["status"] == "failed (rc 1)" and line["step_s"] == 9.9
    assert line["outcomes"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert line["tests"][0] == {"name": "test_a", "outcome": "passed", "seconds": 1.23}
    assert line["tests"][1]["message"] == "assert 1 == 2"
    assert line["output_tail"] == ["F", "1 failed"]
    module.cmd_pytest(5, 1, str(tmp_path / "none.xml"), str(out))
    line = json.loads(results.read_text().splitlines()[-1])
    assert line["status"] == "failed (rc 5: no tests ran)"
    assert line["tests"][0]["name"] == "(junit xml)"


# ------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["out"], ("out", False, ())),
        (["out", "--cpu"], ("out", True, ())),
        (["out", "--only", "bench_512,pytest"], ("out", False, ("bench_512", "pytest"))),
        (["out", "--only=mixed_run", "--cpu"], ("out", True, ("mixed_run",))),
        (["out", "--only"], ("out", False, ())),
    ],
)
def test_command_line(gpu_check, argv, expected):
    options = gpu_check.parse_args(argv)
    assert (options.out, options.cpu, options.only) == expected
    assert options.want("pytest") == (not expected[2] or "pytest" in expected[2])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["out", "--gpu"], "gpu-check: unknown option --gpu"),
        (["out", "extra"], "gpu-check: unknown option extra"),
        (["out", "--only", "bench_512,bench_9"], "gpu-check: unknown step bench_9"),
    ],
)
def test_a_bad_command_line_exits_2_with_the_usage(gpu_check, capsys, tmp_path, argv, message):
    argv = [str(tmp_path / argv[0]), *argv[1:]]
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message + "\n") and "steps: bench_512 bench_history100" in err
    assert not (tmp_path / "out").exists()


def test_help_prints_the_usage_and_exits_2(gpu_check, capsys):
    assert gpu_check.main(["--help"]) == 2 and gpu_check.main([]) == 2
    out = capsys.readouterr().out
    assert "bash infra/gpu-check.sh OUT_DIR --cpu" in out and out.count("steps: ") == 2


def test_budget_from_the_environment(gpu_check):
    assert gpu_check.budget_s(False, {}) == 470 and gpu_check.budget_s(True, {}) == 600
    assert gpu_check.budget_s(False, {"GPU_CHECK_BUDGET_S": "300"}) == 300
    with pytest.raises(gpu_check.UsageError, match="GPU_CHECK_BUDGET_S"):
        gpu_check.budget_s(False, {"GPU_CHECK_BUDGET_S": "soon"})


# ----------------------------------------------------------------- steps and limits


def test_a_step_gets_its_limit_cut_to_what_is_left(gpu_check):
    limit = gpu_check.step_limit
    assert limit(110, elapsed_s=30, budget=470) == 110
    assert limit(110, elapsed_s=400, budget=470) == 55  # 15 s kept for the summary
    assert limit(110, elapsed_s=460, budget=470) < 0
    assert limit(110, elapsed_s=0, budget=470, stopped=True) == 0


def test_the_gpu_steps_measure_the_documented_settings(gpu_check):
    steps = gpu_check.plan(cpu=False, python="py", work="/w", per_test_timeout=True)
    assert tuple(s.name for s in steps) == gpu_check.STEPS
    by_name = {s.name: s for s in steps}
    assert [s.max_s for s in steps] == [110, 75, 70, 70, 180, 100, 240]

    def flags(name):
        argv = by_name[name].argv
        return {a: argv[i + 1] if i + 1 < len(argv) else None for i, a in enumerate(argv)}

    b512 = flags("bench_512")
    assert by_name["bench_512"].argv[:3] == ("py", "-m", "pipeline.bench_cmd")
    assert (b512["--device"], b512["--precision"], b512["--size"]) == ("cuda", "bf16", "512")
    assert (b512["--iterations"], b512["--images"], b512["--profile"]) == ("500", "16", "20")
    assert b512["--baseline-images"] == "1" and "--compile" in b512 and "--json" in b512
    assert flags("bench_history100")["--preset"] == "neural-style"
    assert flags("bench_history100")["--iterations"] == "300"
    assert (flags("bench_1024")["--size"], flags("bench_1024")["--images"]) == ("1024", "4")
    assert (flags("bench_224")["--images"], flags("bench_224")["--iterations"]) == ("64", "300")
    assert by_name["mixed_run"].argv[1].endswith("infra/gpu_check_mixed.py")
    assert by_name["mixed_run"].argv[2:] == ("0", "/w")
    pytest_argv = by_name["pytest"].argv
    assert pytest_argv[1:7] == ("-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q")
    assert "--noconftest" in pytest_argv and pytest_argv[-1] == "--junitxml=/w/junit.xml"
    assert ("--timeout", "90") == pytest_argv[-3:-1]


def test_the_cpu_dry_run_is_tiny_fp32_and_eager(gpu_check):
    steps = gpu_check.plan(cpu=True, python="py", work="/w")
    for step in steps[:4]:
        argv = step.argv
        assert argv[argv.index("--device") + 1] == "cpu" and "--compile" not in argv
        assert argv[argv.index("--precision") + 1] == "fp32"
        assert int(argv[argv.index("--size") + 1]) <= 32
    assert steps[4].argv[2] == "1" and "--timeout" not in steps[5].argv


def test_the_steps_environment(gpu_check, monkeypatch):
    base = {"PYTHONPATH": "/elsewhere", "GPU_CHECK_DEVICE": "cpu", "HOME": "/h"}
    gpu = gpu_check.step_env(base, cpu=False, results_path="/o/results.jsonl")
    assert "GPU_CHECK_DEVICE" not in gpu and gpu["GPU_CHECK_JSONL"] == "/o/results.jsonl"
    assert gpu["PYTHONPATH"] == f"{gpu_check.REPO}:/elsewhere" and gpu["HOME"] == "/h"
    assert gpu["PYTHONUNBUFFERED"] == "1"
    cpu = gpu_check.step_env({}, cpu=True, results_path="r")
    assert (cpu["GPU_CHECK_DEVICE"], cpu["OMP_NUM_THREADS"]) == ("cpu", "1")
    assert cpu["PYTHONPATH"] == gpu_check.REPO
    assert gpu_check.step_env({"OMP_NUM_THREADS": "4"}, True, "r")["OMP_NUM_THREADS"] == "4"
    assert gpu_check.with_path(cpu, "/site")["PYTHONPATH"] == f"/site:{gpu_check.REPO}"


# -------------------------------------------------------------- processes, a whole run


def _check(gpu_check, tmp_path, budget=600, only=()):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    log = gpu_check.Log(str(out / "log.txt"))
    options = gpu_check.Options(str(out), cpu=True, only=only)
    return gpu_check.GpuCheck(options, str(out), str(work), budget, log)


def _python(code):
    return (sys.executable, "-c", code)


def test_a_step_past_its_limit_is_stopped_like_timeout(gpu_check, tmp_path, capsys):
    check = _check(gpu_check, tmp_path)
    out = tmp_path / "step.out"
    assert check.guarded(_python("import time; time.sleep(30)"), 0.2, str(out)) == 124
    stubborn = ("sh", "-c", "trap '' TERM; echo started; sleep 30")  # its sleep ignores TERM too
    assert check.guarded(stubborn, 0.5, str(out), kill_after_s=0.2) == 137
    assert out.read_text() == "started\n" and "started" in capsys.readouterr().out
    assert check.guarded(_python("print('quiet')"), 10, str(out), echo=False, append=True) == 0
    assert out.read_text() == "started\nquiet\n" and not capsys.readouterr().out
    assert check.guarded(_python("import sys; sys.exit(3)"), 10, str(out)) == 3
    assert check.guarded(("/no/such/program",), 10, str(out)) == 127
    assert gpu_check.exit_status(-signal.SIGTERM) == 143


def test_steps_out_of_time_or_interrupted_are_skipped(gpu_check, helper, tmp_path, capsys):
    _, results = helper
    step = gpu_check.Step("bench_1024", 70, _python("print('never')"))
    _check(gpu_check, tmp_path, budget=30).run_step(step)
    check = _check(gpu_check, tmp_path)
    check.interrupt()
    check.run_step(step)
    check.run_pytest(gpu_check.Step("pytest", 100, _python("print('never')")))
    _check(gpu_check, tmp_path, only=("pytest",)).run_step(step)  # not wanted: no record
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert lines == [
        {"step": "bench_1024", "status": "skipped: out of time (budget 30s)"},
        {"step": "bench_1024", "status": "skipped: interrupted"},
        {"step": "pytest", "status": "skipped: interrupted"},
    ]
    out = capsys.readouterr().out
    assert "gpu-check: interrupted; stopping the current step" in out
    assert "== bench_1024: skipped, interrupted" in out and "never" not in out


def test_a_whole_run_of_stand_in_steps(gpu_check, tmp_path, monkeypatch, capfd):
    """main() with the install, the machine and the steps stood in for: every step is
    recorded, the summary written, stdout and log.txt say the same."""

    def stand_ins(cpu, python, work, per_test_timeout=False):
        figures = {"preset": "gatys2016", "size": 16, "ms_per_image_iter": 2.5}
        return [
            gpu_check.Step("bench_224", 70, _python(f"print({json.dumps(figures)!r})")),
            gpu_check.Step("mixed_run", 180, _python("import sys; print('no'); sys.exit(1)")),
        ]

    monkeypatch.setattr(gpu_check, "plan", stand_ins)
    monkeypatch.setattr(gpu_check.GpuCheck, "install", lambda self: None)
    env = {"step": "env", "mode": "cpu dry run", "python": "3"}
    monkeypatch.setattr(gpu_check.GpuCheck, "record_env", lambda self: results_append(env))
    results_append = importlib.import_module("gpu_check_results").append
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    out = tmp_path / "out"
    assert gpu_check.main([str(out), "--cpu"]) == 1  # mixed_run failed
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # put back
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == ["env", "bench_224", "mixed_run", "summary"]
    assert lines[1]["ms_per_image_iter"] == 2.5 and lines[1]["status"] == "ok"
    assert lines[2]["status"] == "failed (rc 1)" and lines[2]["output_tail"] == ["no"]
    assert lines[3]["failed_steps"] == ["mixed_run"]
    summary = (out / "summary.txt").read_text()
    assert "bench_224: gatys2016 16px" in summary and "problems in mixed_run" in summary
    stdout = capfd.readouterr().out
    assert stdout == (out / "log.txt").read_text()
    assert "== bench_224 (limit 70s): " in stdout and "== mixed_run: rc 1" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.jsonl", "summary.txt"]


def test_install_puts_the_wheels_aside_one_at_a_time_if_they_fail_together(
    gpu_check, helper, tmp_path, monkeypatch, capsys
):
    """The install step with a stand-in interpreter (no pip runs): the wheels together fail,
    then one at a time (one does not fit), the project installs editable, and the record is
    the install check's line."""
    _, results = helper
    repo = tmp_path / "repo"
    (repo / ".whl").mkdir(parents=True)
    for name in ("good-1.0-py3-none-any.whl", "bad-1.0-cp99-none-any.whl"):
        (repo / ".whl" / name).write_bytes(b"")
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$*" in\n'
        '  *install-check*) echo \'{"project": "x", "missing_required": []}\' ;;\n'
        "  *bad-1.0*) echo 'ERROR: bad is not a supported wheel'; exit 1 ;;\n"
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(gpu_check, "REPO", str(repo))
    check = _check(gpu_check, tmp_path)
    check.options = gpu_check.Options(check.out, cpu=False)
    check.python = str(fake)
    check.install()
    pip_calls = [c for c in calls.read_text().splitlines() if c.startswith("-m pip install ")]
    assert len(pip_calls) == 4  # together, good alone, bad alone, the project
    assert "--target" in pip_calls[0] and pip_calls[0].endswith("good-1.0-py3-none-any.whl")
    assert "bad-1.0" in pip_calls[0] and "good-1.0" not in pip_calls[1] + pip_calls[3]
    assert pip_calls[3].endswith(f"-e {repo}")
    out = capsys.readouterr().out
    assert "== install: 2 wheels from .whl/" in out
    assert "gpu-check: the wheels together did not install; one at a time:" in out
    assert "gpu-check: not installed: bad-1.0-cp99-none-any.whl" in out
    assert "not installed: good" not in out and "project: pip install -e ." in out
    assert check.env["PYTHONPATH"].startswith(check.site + ":")
    (record,) = [json.loads(x) for x in results.read_text().splitlines()]
    assert record["step"] == "install" and record["status"] == "ok"
    assert record["project"] == "x"
