"""Training-step throughput: ours vs ``transformers.GPT2LMHeadModel``, same config, same weights, same batch.

One step = forward with ``labels`` (both models shift them and take the mean cross-entropy), backward, ``AdamW.step``
and ``zero_grad``.  Reported: tokens per second (batch x sequence length / median step time) and ours / peer.

    python benchmarks/bench_train.py                       # 6-layer 384-wide GPT, batch 8 x 256 tokens
    python benchmarks/bench_train.py --size gpt2-small --batch 4 --seq 128 --repeats 3
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (sets the environment and sys.path)
import torch
from common import interleaved, median, model_pair, print_header, report, spread


def make_step(model, ids, lr=1e-4):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def first_losses(ours, peer, ids):
    """The loss of the first step on each side: the same weights and batch must give the same loss."""
    with torch.no_grad():
        return ours(input_ids=ids, labels=ids).loss.item(), peer(input_ids=ids, labels=ids).loss.item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "gpt2-small"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--peer-activation", default="gelu_new", help="gelu_new (GPT-2's own) or gelu_pytorch_tanh")
    args = p.parse_args(argv)

    print_header(f"training step: {args.size}, batch {args.batch} x {args.seq} tokens, AdamW")
    ours, peer = model_pair(args.size, activation=args.peer_activation)
    ids = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    a, b = first_losses(ours, peer, ids)
    print(f"   first-step loss: ours {a:.6f}, peer {b:.6f} (|diff| {abs(a - b):.1e})")
    if abs(a - b) > 1e-4:
        raise SystemExit("the two models disagree on the loss: the comparison would be meaningless")
    times = interleaved({"peer": make_step(peer, ids), "ours": make_step(ours, ids)}, repeats=args.repeats, warmup=1)
    tokens = args.batch * args.seq
    peer_tps, ours_tps = tokens / median(times["peer"]), tokens / median(times["ours"])
    report(
        f"train {args.size} b{args.batch}x{args.seq}",
        f"GPT2LMHeadModel/{args.peer_activation}",
        peer_tps,
        ours_tps,
        "tok/s",
        note=f"spread peer {spread(times['peer'])}, ours {spread(times['ours'])}",
    )
    return times


if __name__ == "__main__":
    main()
