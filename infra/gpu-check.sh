#!/usr/bin/env bash
# The GPU figures in one run, for a bare GPU machine without network or package index.
#
#   bash infra/gpu-check.sh OUT_DIR          # on a CUDA machine (under 8 minutes on an H100/H200)
#   bash infra/gpu-check.sh OUT_DIR --cpu    # dry run on a CPU at tiny sizes (CI: tests/test_gpu.py)
#   bash infra/gpu-check.sh OUT_DIR --only bench_512,pytest   # a rerun of some steps
#
# Writes OUT_DIR/results.jsonl, summary.txt (the figures against the targets of
# shared/PERF.md) and log.txt. The steps, their time limits, the budget and the exit status
# are infra/gpu_check.py's (this only finds the Python to run it with).
#
# Environment: PYTHON (interpreter; default python3 if it imports torch, else .venv/bin/python),
# GPU_CHECK_BUDGET_S (overall seconds; default 470 on a GPU, 600 with --cpu).

set -u
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif python3 -c 'import torch' 2>/dev/null; then PY=python3
elif [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=python3
fi
# exec: SIGTERM and SIGINT reach the Python process, which stops the step in hand and still
# writes the summary
exec "$PY" "$REPO/infra/gpu_check.py" "$@"
