"""infra/gpu_check_helper.py's summary: the verdicts against the targets, read from a real
H200 run's figures (infra/gpu-results/), and a target whose step did not finish."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
H200 = ROOT / "infra" / "gpu-results" / "2026-12-04-h200.jsonl"


@pytest.fixture
def helper(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "gpu_check_helper", ROOT / "infra" / "gpu_check_helper.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("GPU_CHECK_JSONL", str(results))
    return module, results


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
