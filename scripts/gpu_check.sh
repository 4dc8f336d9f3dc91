#!/usr/bin/env bash
# One-call GPU check (issue 14, item 6): `corticalrnn bench gpu` on a CUDA machine, then the model's
# own GPU test (real CUDA-graph capture vs the plain loop). Run from the repository root:
#
#     OUT=/some/dir bash scripts/gpu_check.sh
#
# Writes $OUT/gpu.json (the figures; rewritten after every part) and $OUT/gpu.log (everything printed);
# OUT defaults to ${TMPDIR:-/tmp}/corticalrnn-gpu-check.
# Offline-safe: no install step; the checkout is put on PYTHONPATH. It needs only what a CUDA PyTorch
# image already has (torch, numpy, tqdm, threadpoolctl). Worst case about 8 minutes: the benchmark's
# budget (BUDGET_S, default 360 s) + 45 s grace before it is killed, plus 60 s for the pytest check.
# Environment: PYTHON (default python3), BUDGET_S, BENCH_ARGS (extra options, e.g. "--device cpu --tiny"
# to try the script without a GPU). Exit status: the benchmark's (0 all parts passed, 1 a part failed
# or no CUDA, 3 a part hung and was left behind, 124 killed at the time limit).
set -uo pipefail
OUT=${OUT:-${TMPDIR:-/tmp}/corticalrnn-gpu-check}
mkdir -p "$OUT"
LOG=$OUT/gpu.log
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-360}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo} NCCL_DEBUG=${NCCL_DEBUG:-WARN}

{
  echo "== $(date -u +%FT%TZ) $(uname -m), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm --format=csv 2>&1 || true
  "$PY" -c "import sys, numpy, torch, tqdm, threadpoolctl
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| available', torch.cuda.is_available(), '| numpy', numpy.__version__)"
} 2>&1 | tee "$LOG"

# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout -k 15 $((BUDGET + 45)) "$PY" -m corticalrnn bench gpu --budget-s "$BUDGET" --json "$OUT/gpu.json" \
  ${BENCH_ARGS:-} 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "== bench gpu exit status $rc" | tee -a "$LOG"

timeout -k 5 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_model.py -k cuda_graph_capture 2>&1 \
  | tail -n 15 | tee -a "$LOG"
echo "== done $(date -u +%FT%TZ); figures in $OUT/gpu.json, log in $LOG" | tee -a "$LOG"
exit "$rc"
