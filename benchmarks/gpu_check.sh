#!/usr/bin/env bash
# One prepared GPU run (under 8 minutes on one H100/H200-class GPU): what the CPU machines cannot measure.
#
#   1. training-step throughput and MFU, ours vs transformers' GPT2LMHeadModel in the same run: the 124M (tied) and
#      163M (untied) presets, batch 16 x 1024, bf16 autocast, TF32, fused AdamW, flash SDPA, torch.compile;
#   2. 200 steps of `gpt-scratch pretrain` (124M shape, bf16, compile) on local text, with the loss falling;
#   3. greedy decoding tokens/s at batch 1 and 32 with a static cache + torch.compile, ours vs transformers.
#
# The device image has torch, transformers, accelerate, peft, tokenizers, safetensors, huggingface-hub, numpy,
# pyyaml, tqdm and matplotlib, and no network.  Of what gpt-scratch imports on these paths only `datasets` (Hub
# data; the local text path never imports it) and the server's `fastapi`/`uvicorn` (not used here) are missing, so
# nothing has to travel as wheels for this script.  Should a later path need one: on the CPU machine, in the repo
# root, `echo /.whl/ >> .git/info/exclude` and `python3 -m pip download --no-deps --only-binary=:all:
# --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl NAME==VERSION`; carry `.whl`
# and install it first with `python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl` and
# `export PYTHONPATH=/tmp/site:$PYTHONPATH` (see the device tool's README).
#
# Run from the repository root on the GPU machine:   bash benchmarks/gpu_check.sh      (results in $OUT or ./gpu-out)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=python3
log="$out/gpu_check.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  echo "== 1. training step, 124M tied, then 163M untied"
  timeout 150 $py benchmarks/bench_train.py --size gpt2-small --batch 16 --seq 1024 --compile --repeats 10
  timeout 150 $py benchmarks/bench_train.py --size gpt2-small-untied --batch 16 --seq 1024 --compile --repeats 10
  echo "== 2. gpt-scratch pretrain, 200 steps of the 124M shape on local text"
  timeout 180 $py -m pipelines pretrain --preset gpt2-small --context-length 1024 --tie-word-embeddings \
    --qkv-bias --vocab-size 8192 --batch-size 16 --learning-rate 6e-4 --warmup-steps 20 --max-steps 200 \
    --eval-every 100 --eval-batches 4 --log-every 20 --checkpoint-every 0 --mixed-precision bf16 --compile \
    --sample-tokens 16 --out "$out/pretrain-run" --overwrite
  $py - "$out/pretrain-run/metrics.json" <<'PY'
import json, sys
history = json.load(open(sys.argv[1]))["history"]
losses = [h["val_loss"] for h in history if "val_loss" in h]
rates = [(h["tokens_per_s"], h.get("mfu")) for h in history if "tokens_per_s" in h]
print("val losses:", [round(x, 3) for x in losses], "falling:", losses[-1] < losses[0])
print("tokens/s, MFU per log window:", [(round(t), None if m is None else round(100 * m, 1)) for t, m in rates])
PY
  echo "== 3. greedy decoding with a static cache + torch.compile, batch 1 and 32"
  timeout 150 $py benchmarks/bench_generate.py --size gpt2-small --device cuda --static-compile --modes greedy \
    --batches 1,32 --new-tokens 128 --repeats 3
} 2>&1 | tee "$log"
rm -rf "$out/pretrain-run/checkpoints" "$out/pretrain-run/cache" "$out/pretrain-run/model.safetensors"
