"""Generation throughput: ``GPTScratchForCausalLM.generate`` vs ``GPT2LMHeadModel.generate``, same weights.

Four cases, each ``max_new_tokens`` (200) new tokens: greedy and sampled (temperature 0.8, top-k 50, top-p 0.95),
at batch 1 (a 32-token prompt) and batch 8 (prompts of 17 to 32 tokens, left-padded, with an attention mask).
Reported: new tokens per second (batch x decode steps / median wall time) and ours / peer.  As a sanity check the
greedy outputs of the two models must be identical token for token.

    python benchmarks/bench_generate.py
    python benchmarks/bench_generate.py --size gpt2-small --repeats 2
"""

from __future__ import annotations

import argparse
import functools

import common  # noqa: F401  (sets the environment and sys.path)
import torch
from common import EOS_ID, interleaved, median, model_pair, print_header, report, spread

SAMPLING = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95)


def prompts(batch: int, vocab: int, seed: int = 3):
    """``(input_ids, attention_mask)``: one 32-token prompt, or ``batch`` prompts of 17..32 tokens left-padded."""
    g = torch.Generator().manual_seed(seed)
    if batch == 1:
        return torch.randint(0, vocab - 1, (1, 32), generator=g), torch.ones(1, 32, dtype=torch.long)
    lengths = [32 - (15 * i) // (batch - 1) for i in range(batch)]
    ids = torch.full((batch, 32), EOS_ID)
    mask = torch.zeros(batch, 32, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 32 - n :] = torch.randint(0, vocab - 1, (n,), generator=g)
        mask[row, 32 - n :] = 1
    return ids, mask


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "gpt2-small"])
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--modes", default="greedy,sampled")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer-activation", default="gelu_new", help="gelu_new (GPT-2's own) or gelu_pytorch_tanh")
    p.add_argument(
        "--ours", default="generate", choices=["generate", "unpacked", "no-few-rows", "mixin"],
        help="for before/after figures: our generate (default); without the weights reordered for oneDNN at batch > 1 "
        "(no packed_for_decoding); its lean loop with every projection through F.linear (no project_few_rows); or "
        "GenerationMixin.generate on our model (no override: the code before the speed work)",
    )
    args = p.parse_args(argv)

    variant = f", ours = {args.ours}" if args.ours != "generate" else ""
    print_header(f"generate: {args.size}, {args.new_tokens} new tokens{variant}")
    ours, peer = model_pair(args.size, activation=args.peer_activation)
    ours_generate = ours.generate
    if args.ours == "mixin":
        from transformers import GenerationMixin

        ours_generate = functools.partial(GenerationMixin.generate, ours)
    elif args.ours == "unpacked":
        import contextlib

        import modeling_gpt_scratch.modeling_gpt_scratch as mg

        mg.packed_for_decoding = lambda model, batch_size: contextlib.nullcontext()
    elif args.ours == "no-few-rows":
        import modeling_gpt_scratch.modeling_gpt_scratch as mg

        mg.FEW_ROWS = 0  # project_few_rows always falls back to the module call
    results = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        ids, mask = prompts(batch, ours.config.vocab_size)
        for mode in args.modes.split(","):
            kwargs = dict(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                pad_token_id=EOS_ID,
                eos_token_id=EOS_ID,
                **(SAMPLING if mode == "sampled" else dict(do_sample=False)),
            )
            outputs = {}

            def run(generate, name):
                def call():
                    torch.manual_seed(0)
                    with torch.inference_mode():
                        outputs[name] = generate(**kwargs)

                return call

            # warm-up: a few tokens each, so that first-call costs (allocations, lazy imports) are not timed
            for generate in (peer.generate, ours_generate):
                with torch.inference_mode():
                    generate(**{**kwargs, "max_new_tokens": 4})
            runs = {"peer": run(peer.generate, "peer"), "ours": run(ours_generate, "ours")}
            times = interleaved(runs, args.repeats, warmup=0)
            steps = {name: out.shape[1] - ids.shape[1] for name, out in outputs.items()}
            note = f"spread peer {spread(times['peer'])}, ours {spread(times['ours'])}"
            if mode == "greedy":
                same = torch.equal(outputs["peer"], outputs["ours"])
                note += f"; greedy tokens identical: {'yes' if same else 'NO'}"
                if not same:
                    print("   WARNING: greedy outputs differ between ours and the peer")
            row = report(
                f"generate {mode} b{batch} {args.new_tokens}tok {args.size}"
                + (f" (ours: {args.ours})" if args.ours != "generate" else ""),
                f"GPT2LMHeadModel/{args.peer_activation}",
                batch * steps["peer"] / median(times["peer"]),
                batch * steps["ours"] / median(times["ours"]),
                "tok/s",
                note=note,
            )
            results[(mode, batch)] = row
    return results


if __name__ == "__main__":
    main()
