#!/bin/bash
# First device call of the GPU comparison (docs/benchmarks.md "GPU readiness"): installs the carried
# wheels, keeps the first half of the model in /tmp for the second call, and runs sft, msl and BEAR
# on the tiny model with LoRA, bf16 and both decodings on the GPU (a minute), so that a CUDA-only
# fault shows before the long call. Carry: .gpu/part-a, .gpu/whl, .gpu/data.
set -uo pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl
cp .gpu/part-a /tmp/part-a && rm -rf /tmp/data && cp -r .gpu/data /tmp/data
export PYTHONPATH="$SITE:$PWD/src" BEARREC_DATA_DIR="$PWD/.gpu/data" BEARREC_CACHE_DIR=/tmp/cache
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
small="train.max_train_examples=256 train.epochs=1 train.batch_size=32 train.valid_users=40 train.test_users=100
       analysis.pruning_users=5 decode.autocast=bfloat16"
run() {  # loss, extra overrides
  timeout 120 python3 -m bearrec run --config configs/office-tiny.yaml loss.name=$1 $small output_dir=/tmp/smoke/$1 "${@:2}" \
    > /tmp/smoke-$1.log 2>&1
}
run sft   # then LoRA on the tiny sft model, as the SmolLM2 runs use it
run msl model.name_or_path=/tmp/smoke/sft/model model.lora.enabled=true &
run bear model.name_or_path=/tmp/smoke/sft/model model.lora.enabled=true &
wait
for loss in sft msl bear; do echo "== $loss"; grep -E "Error|error|Traceback|NDCG@10" /tmp/smoke-$loss.log | tail -6; done
timeout 60 python3 -m bearrec evaluate --model /tmp/smoke/bear --split test --limit 100 --no-constrained-softmax \
  --out /tmp/smoke/bear-vocab 2>&1 | tail -4
tail -30 /tmp/smoke-bear.log
