#!/usr/bin/env bash
# GPU checks, for a machine with a CUDA device.
#
#   bench/gpu_check.sh      # PYTHON: .venv/bin/python if there, else python3; OUT=test-artifacts/gpu_check;
#                           # CKPT_DIR=$OUT/ckpt (the one-epoch checkpoints)
#
# 1. the tests marked `cuda` (seed contract within 1e-3 across batch sizes, fingerprint check on the GPU,
#    bf16 weight copies on the GPU, negative/mix on the GPU, GPU and CPU agree in fp32, blocked retrieval on the GPU).
#    Only the test files that hold such tests are collected, so a GPU machine without the notebook, MLflow or
#    video stack (which those tests do not need) still runs them;
# 2. bench/generation.py --device cuda: full-size audioldm-s-full (random weights, same cost), 5 s and 10 s clips,
#    batch 1, 8 and 32 (clips/s, peak RSS and peak GPU memory at each). Goals on one H200: a 5 s clip in
#    <= 0.3 s at batch 1, >= 20 clips/s batched; then 5 s clips again with eager UNet calls (--no-cuda-graphs),
#    the baseline of the CUDA-graph speed-up, in the same run;
# 3. one training epoch on the GPU: python -m ciap_lib train --set device=cuda epochs=1 (the synthetic set).
# Figures go to $OUT/*.json, the cuda tests' report to $OUT/cuda_tests.xml. Every part runs even if an earlier one
# failed (one machine session is short); the exit status is non-zero if any part failed, and the last line names them.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
OUT="${OUT:-test-artifacts/gpu_check}"
CKPT_DIR="${CKPT_DIR:-$OUT/ckpt}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1   # nothing comes from a hub: fail at once instead of retrying

"$PY" - <<'PYEOF' || exit 1
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device; run this on a GPU machine")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}, python {sys.version.split()[0]}")
PYEOF

failed=()
part() {   # part NAME COMMAND...: run one part, time it, remember a failure and go on
    local name=$1 t0=$SECONDS; shift
    echo "== $name"
    if "$@"; then echo "== $name: ok ($((SECONDS - t0)) s)"; else echo "== $name: FAILED ($((SECONDS - t0)) s)"; failed+=("$name"); fi
}

mapfile -t cuda_files < <(grep -rlE --include='test_*.py' 'pytest\.mark\.cuda' tests | sort)
part "1/3 tests marked cuda (${#cuda_files[@]} files)" \
    "$PY" -m pytest -m cuda -p no:cacheprovider -v --junitxml "$OUT/cuda_tests.xml" "${cuda_files[@]}"

part "2/3 generation speed on the GPU" \
    "$PY" bench/generation.py --device cuda --durations 5 10 --batch-sizes 1 8 32 --throughput-durations 5 10 \
    --json "$OUT/generation_cuda.json"

part "2/3 (A/B) the same throughput with eager UNet calls (no CUDA graphs)" \
    "$PY" bench/generation.py --device cuda --no-cuda-graphs --throughput-only --batch-sizes 1 8 32 \
    --throughput-durations 5 --json "$OUT/generation_cuda_eager.json"

part "3/3 one training epoch on the GPU" \
    "$PY" -m ciap_lib train --set device=cuda epochs=1 run_name=gpu_check "ckpt_dir=$CKPT_DIR" --json "$OUT/train_cuda.json"

if ((${#failed[@]})); then
    echo "gpu_check: FAILED: ${failed[*]}; figures in $OUT/"
    exit 1
fi
echo "gpu_check: all 3 parts passed; figures in $OUT/"
