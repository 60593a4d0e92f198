"""Training-step throughput: ours vs ``transformers.GPT2LMHeadModel``, same config, same weights, same batch.

One step = forward, the mean next-token cross-entropy, backward, ``AdamW.step`` and ``zero_grad``: the peer with
``labels`` (transformers' loss), ours as ``gpt-scratch pretrain`` computes it (``pipelines.training.losses.lm_loss`` on a
batch of the pipelines' convention; ``--ours-loss model`` takes the model's own, transformers', loss instead).
Reported: tokens per second (batch x sequence length / median step time) and ours / peer.  (The user-level figure,
the whole ``gpt-scratch pretrain`` command against ``transformers.Trainer``, is ``bench_pretrain.py``.)

    python benchmarks/bench_train.py                       # 6-layer 384-wide GPT, batch 8 x 256 tokens
    python benchmarks/bench_train.py --size gpt2-small --batch 4 --seq 128 --repeats 3

On a GPU (picked automatically when torch sees one) both sides run under bf16 autocast with TF32 and fused AdamW, as
the training loop does, and MFU is printed; the issue's GPU rows:

    python benchmarks/bench_train.py --size gpt2-small --batch 16 --seq 1024 --compile          # 124M, tied
    python benchmarks/bench_train.py --size gpt2-small-untied --batch 16 --seq 1024 --compile   # 163M
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (sets the environment and sys.path)
import torch
from common import SIZES, interleaved, median, model_pair, print_header, report, spread

from pipelines.training.losses import lm_loss
from pipelines.training.trainer import device_peak_flops, flops_per_token


def make_step(model, ids, lr=1e-4, fused=False, autocast_dtype=None, compiled=False, pipeline_loss=False):
    """One training step as a no-argument callable (synchronised on CUDA, so wall-clock timing is honest)."""
    model.train()
    # torch's default AdamW on CPU is the multi-tensor (foreach) one, what pipelines/train_loop.py uses there
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=fused or None)
    forward = torch.compile(model) if compiled else model
    device = ids.device.type

    def step():
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if pipeline_loss:  # the workflows' batch: inputs and next-token targets, one shorter than ``ids``
                loss, _ = lm_loss(forward, {"input_ids": ids[:, :-1], "shift_labels": ids[:, 1:]})
            else:
                loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return step


def first_losses(ours, peer, ids):
    """The loss of the first step on each side: the same weights and batch must give the same loss."""
    with torch.no_grad():
        return ours(input_ids=ids, labels=ids).loss.item(), peer(input_ids=ids, labels=ids).loss.item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=list(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--peer-activation", default="gelu_new", help="gelu_new (GPT-2's own) or gelu_pytorch_tanh")
    p.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) on both sides (always on CUDA)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument(
        "--ours-loss", default="pipeline", choices=["pipeline", "model"],
        help="the workflows' loss (pipelines.training.losses.lm_loss, default) or the model's own (transformers') loss",
    )
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    if cuda:  # what pipelines/train_loop.py does on a GPU
        torch.set_float32_matmul_precision("high")
    autocast_dtype = torch.bfloat16 if cuda else None
    fused = args.fused_adamw or cuda
    print_header(f"training step: {args.size}, batch {args.batch} x {args.seq} tokens, AdamW, on {device}"
                 + (", bf16 autocast" if cuda else "") + (", torch.compile" if args.compile else ""))
    ours, peer = model_pair(args.size, activation=args.peer_activation)
    ours, peer = ours.to(device), peer.to(device)
    ids = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)
    a, b = first_losses(ours, peer, ids)
    print(f"   first-step loss: ours {a:.6f}, peer {b:.6f} (|diff| {abs(a - b):.1e})")
    if abs(a - b) > (2e-3 if cuda else 1e-4) * max(1.0, abs(b)):  # TF32 products on CUDA
        raise SystemExit("the two models disagree on the loss: the comparison would be meaningless")
    steps = {
        name: make_step(model, ids, fused=fused, autocast_dtype=autocast_dtype, compiled=args.compile,
                        pipeline_loss=name == "ours" and args.ours_loss == "pipeline")
        for name, model in (("peer", peer), ("ours", ours))
    }
    times = interleaved(steps, repeats=args.repeats, warmup=3 if args.compile else 1)
    tokens = args.batch * args.seq
    peer_tps, ours_tps = tokens / median(times["peer"]), tokens / median(times["ours"])
    note = f"spread peer {spread(times['peer'])}, ours {spread(times['ours'])}"
    peak = device_peak_flops(device)
    if peak:  # model FLOPs utilisation, as the training loop logs it
        flops = flops_per_token(ours, args.seq)
        note += f"; MFU peer {100 * peer_tps * flops / peak:.1f}%, ours {100 * ours_tps * flops / peak:.1f}%"
    report(
        f"train {args.size} b{args.batch}x{args.seq}" + (" fused AdamW" if args.fused_adamw and not cuda else "")
        + (f" {device.type} bf16" if cuda else "") + (" compiled" if args.compile else "")
        + (f" (ours: loss {args.ours_loss})" if args.ours_loss != "pipeline" else ""),
        f"GPT2LMHeadModel/{args.peer_activation}",
        peer_tps,
        ours_tps,
        "tok/s",
        note=note,
    )
    return times


if __name__ == "__main__":
    main()
