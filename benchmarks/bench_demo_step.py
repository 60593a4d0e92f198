"""The bare training step at the demo's shape (4 layers, 128 wide, context 128, vocabulary 4096, batch 16): where
``bench_pretrain.py``'s ratio comes from, with nothing around the step.

One step = forward, mean next-token cross-entropy, backward, gradient clipping at 1.0, AdamW.  Variants: ours with
the workflows' loss (``pipelines.training.losses.lm_loss``), ours with transformers' loss (``labels=``), fused AdamW,
``torch.compile``, and bf16 autocast as ``--mixed-precision bf16`` runs it on a CPU (``pipelines.training.precision``: float32
attention products, the fused head in bf16, fused AdamW); the peer is ``GPT2LMHeadModel`` of the same shape with its
own loss, in float32 and under bf16 autocast.  Median tok/s over the steps after the warm-up ones.

    python benchmarks/bench_demo_step.py
"""

from __future__ import annotations

import time

import common  # noqa: F401  (sets the environment and sys.path)
import torch
from common import print_header
from transformers import GPT2Config, GPT2LMHeadModel

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from pipelines.training import precision
from pipelines.training.losses import lm_loss

VOCAB, BATCH, SEQ = 4096, 16, 128


def tok_s(model, loss_of, fused=False, compiled=False, bf16=False, ours_bf16_path=False, steps=30, warmup=8) -> float:
    """Median tok/s of the step; ``ours_bf16_path``: with ``pipelines.training.precision``'s float32 attention products."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None)
    forward = torch.compile(model) if compiled else model
    times = []
    with precision.use_cpu_bf16_attention(model, "bf16" if ours_bf16_path else "no", "cpu"):
        for _ in range(steps):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_of(forward)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    times = sorted(times[warmup:])
    return BATCH * SEQ / times[len(times) // 2]


def main(argv=None):
    print_header(f"bare training step: demo shape, batch {BATCH} x {SEQ}, vocabulary {VOCAB}")
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1))
    batch = {"input_ids": ids[:, :-1], "shift_labels": ids[:, 1:]}
    config = GPTScratchConfig.from_preset("tiny", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                          max_position_embeddings=SEQ, vocab_size=VOCAB, qkv_bias=False,
                                          bos_token_id=0, eos_token_id=0)
    ours = lambda: GPTScratchForCausalLM(config).train()  # noqa: E731
    pipeline_loss = lambda model: lm_loss(model, batch)[0]  # noqa: E731
    model_loss = lambda model: model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss  # noqa: E731
    peer_model = lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=128, n_layer=4,  # noqa: E731
                                                    n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).train()
    peer = peer_model()
    rows = [
        ("GPT2LMHeadModel, its loss", tok_s(peer, model_loss)),
        ("ours, the workflows' loss", tok_s(ours(), pipeline_loss)),
        ("ours, transformers' loss", tok_s(ours(), model_loss)),
        ("ours, the workflows' loss, fused AdamW", tok_s(ours(), pipeline_loss, fused=True)),
        ("ours, the workflows' loss, torch.compile", tok_s(ours(), pipeline_loss, compiled=True, steps=40)),
        ("GPT2LMHeadModel, its loss, bf16 autocast", tok_s(peer_model(), model_loss, bf16=True)),
        ("ours, CPU bf16 as --mixed-precision bf16", tok_s(ours(), pipeline_loss, fused=True, bf16=True,
                                                            ours_bf16_path=True)),
    ]
    for name, rate in rows:
        print(f"   {name:<44} {rate:8.0f} tok/s   {rate / rows[0][1]:.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    main()
