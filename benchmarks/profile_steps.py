"""Where the time goes: ``torch.profiler`` tables (top operators by self CPU time) of one training step and of
decoding, ours and the peer (``GPT2LMHeadModel``), same weights.

    python benchmarks/profile_steps.py                 # 6-layer 384-wide GPT; train batch 8 x 256; decode batch 1
    python benchmarks/profile_steps.py --rows 20 --decode-batch 8

Decoding is profiled over ``--decode-tokens`` greedy tokens of ``generate`` (after a 32-token prompt) and shown per
token, so the per-step overhead of the generation loop is included.
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (sets the environment and sys.path)
import torch
from bench_generate import prompts
from bench_train import make_step
from common import EOS_ID, model_pair, print_header
from torch.profiler import ProfilerActivity, profile


def table(prof, rows: int, per: int = 1) -> str:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    lines = [f"   {'operator':<52} {'self CPU ms':>12} {'%':>6} {'calls':>7}"]
    for e in events[:rows]:
        lines.append(f"   {e.key[:52]:<52} {e.self_cpu_time_total / 1e3 / per:>12.2f} "
                     f"{100 * e.self_cpu_time_total / total:>5.1f}% {e.count // per:>7}")
    lines.append(f"   {'total self CPU':<52} {total / 1e3 / per:>12.2f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "gpt2-small"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--decode-tokens", type=int, default=20)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--only", default="train,decode")
    args = p.parse_args(argv)
    print_header(f"profiles: {args.size}")
    ours, peer = model_pair(args.size)
    if "train" in args.only:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq), generator=g)
        for name, model in (("ours", ours), ("peer", peer)):
            step = make_step(model, ids)
            step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            print(f"\n-- one training step, {name}: batch {args.batch} x {args.seq}, forward + backward + AdamW")
            print(table(prof, args.rows))
        ours.eval(), peer.eval()
    if "decode" in args.only:
        ids, mask = prompts(args.decode_batch, ours.config.vocab_size)
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=args.decode_tokens, do_sample=False,
                      pad_token_id=EOS_ID, eos_token_id=EOS_ID)
        for name, model in (("ours", ours), ("peer", peer)):
            with torch.inference_mode():
                model.generate(**{**kwargs, "max_new_tokens": 3})
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    model.generate(**kwargs)
            print(f"\n-- decoding, {name}: generate, batch {args.decode_batch}, per token "
                  f"(total / {args.decode_tokens}; the prompt's forward pass included)")
            print(table(prof, args.rows, per=args.decode_tokens))


if __name__ == "__main__":
    main()
