#!/usr/bin/env bash
# GPU checks, for a machine with a CUDA device (they could not be run where this was written: no GPU there).
#
#   bench/gpu_check.sh            # PYTHON=.venv/bin/python and OUT=test-artifacts/gpu_check by default
#
# 1. the tests marked `cuda` (seed contract within 1e-3 across batch sizes, fingerprint check on the GPU,
#    bf16 weight copies on the GPU, negative/mix on the GPU);
# 2. bench/generation.py --device cuda: full-size audioldm-s-full (random weights, same cost), 5 s and 10 s clips,
#    batch 1 and batch 8 (clips/s, peak RSS and peak GPU memory at each). Goals on one H200: a 5 s clip in
#    <= 0.3 s at batch 1, >= 20 clips/s batched;
# 3. one training epoch on the GPU: python -m ciap_lib train --set device=cuda epochs=1 (the synthetic set).
# Figures go to $OUT/*.json. Stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-test-artifacts/gpu_check}"
mkdir -p "$OUT"

"$PY" - <<'PYEOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device; run this on a GPU machine")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
PYEOF

echo "== 1/3 tests marked cuda"
"$PY" -m pytest -m cuda -p no:cacheprovider tests

echo "== 2/3 generation speed on the GPU"
"$PY" bench/generation.py --device cuda --durations 5 10 --batch-sizes 1 8 --throughput-durations 5 10 \
    --json "$OUT/generation_cuda.json"

echo "== 3/3 one training epoch on the GPU"
"$PY" -m ciap_lib train --set device=cuda epochs=1 run_name=gpu_check "ckpt_dir=$OUT/ckpt" --json "$OUT/train_cuda.json"

echo "gpu_check: done; figures in $OUT/"
