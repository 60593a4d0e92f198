"""Generation throughput on the same weights: transformers' ``GPT2LMHeadModel.generate`` (the peer) against ours --
``GPTScratchForCausalLM.generate`` (``GenerationMixin``, unchanged: the model file carries no speed work) or the
decoding engine every gpt-scratch workflow uses (``pipelines.decoding.engine.Engine``, ``--ours engine``).

Four cases, each ``max_new_tokens`` (200) new tokens: greedy and sampled (temperature 0.8, top-k 50, top-p 0.95),
at batch 1 (a 32-token prompt) and batch 8 (prompts of 17 to 32 tokens, left-padded, with an attention mask).
Reported: new tokens per second (batch x decode steps / median wall time) and ours / peer.  As a sanity check the
greedy outputs must be identical token for token.

    python benchmarks/bench_generate.py
    python benchmarks/bench_generate.py --ours engine --size gpt2-small --repeats 2
"""

from __future__ import annotations

import argparse
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


def engine_generate(model):
    """``generate``'s interface over the engine: left-padded ids in, ids with the new tokens out (end-of-text rows
    padded), as the workflows decode."""
    from pipelines.decoding.engine import Engine, Request

    class Ids:
        pad_token_id = bos_token_id = eos_token_id = EOS_ID

        def decode(self, ids, **kwargs):
            return ""

    engine = Engine(model, Ids(), eos_ids=[EOS_ID])

    def generate(input_ids, attention_mask, max_new_tokens, do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
                 **kwargs):
        requests = [
            Request(row[mask.bool()].tolist(), max_new_tokens=max_new_tokens,
                    temperature=temperature if do_sample else 0.0, top_k=top_k or 0, top_p=top_p, seed=index)
            for index, (row, mask) in enumerate(zip(input_ids, attention_mask))
        ]
        engine.run(requests)
        width = max(len(r.tokens) for r in requests)
        out = torch.full((len(requests), input_ids.shape[1] + width), EOS_ID)
        out[:, : input_ids.shape[1]] = input_ids
        for row, r in enumerate(requests):
            out[row, input_ids.shape[1] : input_ids.shape[1] + len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
        return out

    return generate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "gpt2-small"])
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--modes", default="greedy,sampled")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer-activation", default="gelu_new", help="gelu_new (GPT-2's own) or gelu_pytorch_tanh")
    p.add_argument(
        "--ours", default="generate", choices=["generate", "engine"],
        help="our model's generate (GenerationMixin), or the decoding engine of the workflows (pipelines.decoding.engine)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when torch sees one)")
    p.add_argument("--static-compile", action="store_true",
                   help="both sides: cache_implementation='static', which transformers compiles on a GPU")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))

    variant = f", ours = {args.ours}" if args.ours != "generate" else ""
    variant += ", static cache + compile" if args.static_compile else ""
    print_header(f"generate: {args.size}, {args.new_tokens} new tokens on {device}{variant}")
    ours, peer = model_pair(args.size, activation=args.peer_activation)
    if device.type == "cuda":
        ours, peer = ours.to(device, torch.bfloat16), peer.to(device, torch.bfloat16)
    ours_generate = ours.generate if args.ours == "generate" else engine_generate(ours)
    results = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        ids, mask = (t.to(device) for t in prompts(batch, ours.config.vocab_size))
        for mode in args.modes.split(","):
            kwargs = dict(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                pad_token_id=EOS_ID,
                eos_token_id=EOS_ID,
                **(SAMPLING if mode == "sampled" else dict(do_sample=False)),
                **(dict(cache_implementation="static") if args.static_compile else {}),
            )
            outputs = {}

            def run(generate, name):
                def call():
                    torch.manual_seed(0)
                    with torch.inference_mode():
                        outputs[name] = generate(**kwargs)
                    if device.type == "cuda":
                        torch.cuda.synchronize()

                return call

            # warm-up, so that first-call costs (allocations, lazy imports, compilation) are not timed
            for generate in (peer.generate, ours_generate):
                with torch.inference_mode():
                    generate(**{**kwargs, "max_new_tokens": args.new_tokens if args.static_compile else 4})
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
                + (f" {device.type}" if device.type != "cpu" else "")
                + (" static+compile" if args.static_compile else "")
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
