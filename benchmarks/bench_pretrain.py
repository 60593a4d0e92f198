"""User-level pretraining speed: the ``gpt-scratch pretrain`` command against ``transformers.Trainer`` on
``GPT2LMHeadModel`` -- the tool a user would pick instead -- on the same tokens, batch, optimizer and schedule.

Both sides run as the user runs them, each as its own process: ours is the real CLI; the peer is a short script of
the kind transformers' documentation teaches (a dataset of token windows, ``TrainingArguments``, ``Trainer.train``).
Same model shape (GPT-2's architecture; ours without QKV biases where the config says so), same token stream and
windows, batch, AdamW (lr, betas 0.9/0.95, weight decay 0.1), warmup then cosine to 10%, gradient clipping at 1.0,
no evaluation or checkpoints in between.  Reported for each side, from the same run:

* **steady tokens/s**: median over the logging windows after the first (what each tool shows while it trains);
* **wall time** of the whole command (start-up, data preparation, training, saving).

Precision: each round runs both sides in bf16 mixed precision (``--mixed-precision bf16``;
``TrainingArguments(bf16=True)``, autocast on the CPU), then both in float32 (``--mixed-precision no``; the
Trainer's default).  Three comparisons come out: the defaults (ours ``auto``, which is bf16 on a CPU with
AVX512-BF16 or AMX and fp32 elsewhere, against the Trainer's fp32), both bf16, and both fp32.

Shapes: ``demo`` is ``make demo``'s (``configs/tiny-cpu.yaml``: 4 layers, 128 wide, context 128, vocabulary 4096,
batch 16, on CPython's own documentation text); ``gpt2-small`` is OpenAI's 124M shape (12 layers, 768 wide, context
1024, vocabulary 50257) on a synthetic corpus with a 50257-entry tokenizer, a few steps.

    python benchmarks/bench_pretrain.py                       # demo shape, 150 steps, 2 rounds
    python benchmarks/bench_pretrain.py --shape gpt2-small    # 124M, batch 2 x 1024, 8 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import REPO, median, print_header, report

from pipelines.training import precision

SHAPES = {
    "demo": dict(steps=150, batch=16, seq=128, lr=0.002, warmup=30, log_every=10),
    "gpt2-small": dict(steps=8, batch=2, seq=1024, lr=6e-4, warmup=2, log_every=2),
}
CLI = [sys.executable, "-m", "pipelines"]


# ----------------------------------------------------------------------------------------------------------------
# data both sides read
# ----------------------------------------------------------------------------------------------------------------


def synthetic_corpus(path: Path, megabytes: float = 6.0, seed: int = 0) -> Path:
    """Text of pseudo-words from a fixed syllable set: enough distinct pieces for a 50257-entry BPE."""
    import random

    if path.is_file():
        return path
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiouy"] + list("aeiou")
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(60000)]
    lines, size = [], 0
    while size < megabytes * 1e6:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) + ".\n"
        lines.append(line)
        size += len(line)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def prepare(shape: str, work: Path) -> dict:
    """Corpus and tokenizer of a shape: ``{"data": path or None, "tokenizer": folder or None, "args": [...]}``."""
    if shape == "demo":
        return {"data": None, "tokenizer": None, "args": []}
    corpus = synthetic_corpus(work / "corpus.txt")
    tokenizer = work / "tokenizer-50257"
    if not (tokenizer / "tokenizer.json").is_file():
        subprocess.run([*CLI, "train-tokenizer", "--data", str(corpus), "--vocab-size", "50257", "--out",
                        str(tokenizer), "--overwrite"], check=True, cwd=REPO)
    return {
        "data": str(corpus),
        "tokenizer": str(tokenizer),
        # every size explicit: the default config file (the demo's) sets hidden_size and the rest over the preset
        "args": ["--preset", "gpt2-small", "--hidden-size", "768", "--num-hidden-layers", "12",
                 "--num-attention-heads", "12", "--context-length", "1024",
                 # the peer evaluates nothing: hold out only a sliver, so that our final val/test losses cost little
                 "--val-fraction", "0.002", "--test-fraction", "0.002", "--tie-word-embeddings",
                 "--qkv-bias", "--data", str(corpus), "--tokenizer", str(tokenizer)],
    }


# ----------------------------------------------------------------------------------------------------------------
# ours: the CLI
# ----------------------------------------------------------------------------------------------------------------


OURS_EXTRA: list[str] = []  # --ours-args: extra flags for our side (e.g. --compile)


def run_ours(shape: str, setup: dict, out: Path, precision: str) -> dict:
    s = SHAPES[shape]
    args = [*CLI, "pretrain", "--out", str(out), "--overwrite", "--max-steps", str(s["steps"]), "--batch-size",
            str(s["batch"]), "--learning-rate", str(s["lr"]), "--warmup-steps", str(s["warmup"]), "--eval-every", "0",
            "--checkpoint-every", "0", "--log-every", str(s["log_every"]), "--eval-batches", "1",
            "--sample-tokens", "1", "--mixed-precision", precision, *setup["args"], *OURS_EXTRA]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"gpt-scratch pretrain failed:\n{proc.stderr[-3000:]}")
    history = json.loads((out / "metrics.json").read_text())["history"]
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    return {"tok_s": statistics.median(rates[1:] or rates), "wall_s": wall, "tokenizer": str(out / "tokenizer")}


# ----------------------------------------------------------------------------------------------------------------
# the peer: transformers.Trainer on GPT2LMHeadModel, in its own process
# ----------------------------------------------------------------------------------------------------------------


def peer_main(argv) -> None:
    """The peer's script (run as a child process): what a transformers user writes for the same run."""
    p = argparse.ArgumentParser()
    p.add_argument("--shape", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--result", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--bf16", action="store_true", help="TrainingArguments(bf16=True): autocast on the CPU")
    args = p.parse_args(argv)
    s = {**SHAPES[args.shape], "steps": args.steps}
    start = time.perf_counter()
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.data:
        documents = [Path(args.data).read_text(encoding="utf-8")]
        n_layer, n_embd, n_head = 12, 768, 12
    else:  # the demo's corpus: CPython's documentation topics
        from pipelines.data.sources import default_corpus

        documents = default_corpus()
        n_layer, n_embd, n_head = 4, 128, 4
    stream = []
    for doc in documents:
        stream += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    seq = s["seq"]
    windows = [stream[i : i + seq] for i in range(0, len(stream) - seq, seq)]
    dataset = [{"input_ids": torch.tensor(w), "labels": torch.tensor(w)} for w in windows]
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=seq, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1337)
    model = GPT2LMHeadModel(config)
    rates = []

    class Rate(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step % s["log_every"] == 0:
                now = time.perf_counter()
                if hasattr(self, "last"):
                    rates.append(s["log_every"] * s["batch"] * seq / (now - self.last))
                self.last = now

    training = TrainingArguments(
        output_dir=str(Path(args.result).parent / "peer-out"), per_device_train_batch_size=s["batch"],
        max_steps=s["steps"], learning_rate=s["lr"], weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
        warmup_steps=s["warmup"], lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        max_grad_norm=1.0, logging_steps=s["log_every"], save_strategy="no", eval_strategy="no", report_to=[],
        dataloader_num_workers=0, use_cpu=True, seed=1337, disable_tqdm=True, bf16=args.bf16,
    )
    trainer = Trainer(model=model, args=training, train_dataset=dataset, callbacks=[Rate()])
    trainer.train()
    trainer.save_model(str(Path(args.result).parent / "peer-model"))
    Path(args.result).write_text(json.dumps({"rates": rates, "inside_s": time.perf_counter() - start}))


def run_peer(shape: str, setup: dict, tokenizer: str, work: Path, precision: str) -> dict:
    result = work / "peer.json"
    args = [sys.executable, __file__, "--peer-child", "--shape", shape, "--tokenizer", tokenizer, "--result",
            str(result), "--steps", str(SHAPES[shape]["steps"])] + (["--data", setup["data"]] if setup["data"] else [])
    args += ["--bf16"] if precision == "bf16" else []
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"the transformers.Trainer peer failed:\n{proc.stderr[-3000:]}")
    rates = json.loads(result.read_text())["rates"]
    return {"tok_s": statistics.median(rates[1:] or rates), "wall_s": wall}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="demo", choices=list(SHAPES))
    p.add_argument("--rounds", type=int, default=2,
                   help="each round runs ours and the peer in bf16 mixed precision, then both in fp32 (interleaved)")
    p.add_argument("--steps", type=int, default=0, help="override the shape's step count")
    p.add_argument("--ours-args", default="", help="extra flags for gpt-scratch pretrain, e.g. '--compile'")
    p.add_argument("--work", default=None, help="folder for runs and the synthetic corpus (default: a temp folder)")
    args = p.parse_args(argv)
    if args.steps:
        SHAPES[args.shape]["steps"] = args.steps
    OURS_EXTRA[:] = args.ours_args.split()
    s = SHAPES[args.shape]
    print_header(f"pretrain (user level): {args.shape}, {s['steps']} steps of {s['batch']} x {s['seq']} tokens")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = prepare(args.shape, work)
    default = precision.resolve("auto", "cpu")  # what `gpt-scratch pretrain` picks here with no flag
    runs = {f"{side}-{mp}": [] for side in ("ours", "peer") for mp in ("bf16", "no")}
    for round_ in range(args.rounds):
        for mp in ("bf16", "no"):
            runs[f"ours-{mp}"].append(run_ours(args.shape, setup, work / f"ours-{mp}-{round_}", mp))
            tokenizer = setup["tokenizer"] or runs[f"ours-{mp}"][-1]["tokenizer"]
            runs[f"peer-{mp}"].append(run_peer(args.shape, setup, tokenizer, work, mp))
        print(f"   round {round_ + 1}: " + ", ".join(f"{name} {r[-1]['tok_s']:,.0f} tok/s ({r[-1]['wall_s']:.0f} s)"
                                                    for name, r in runs.items()), flush=True)
    command = f"gpt-scratch pretrain ({args.shape}{' ' + args.ours_args if args.ours_args else ''})"
    peer_name = "transformers.Trainer + GPT2LMHeadModel"
    rows = [  # (what is compared, ours, peer)
        (f"defaults (ours: auto = {'bf16 mixed' if default == 'bf16' else 'fp32'}; Trainer: fp32)",
         f"ours-{default}", "peer-no"),
        ("both bf16 mixed precision (--mixed-precision bf16; TrainingArguments(bf16=True))", "ours-bf16", "peer-bf16"),
        ("both fp32 (--mixed-precision no; the Trainer's default)", "ours-no", "peer-no"),
    ]
    for label, ours_key, peer_key in rows:
        print(f"   -- {label}")
        report(f"{command} steady tok/s", peer_name, median([r["tok_s"] for r in runs[peer_key]]),
               median([r["tok_s"] for r in runs[ours_key]]), "tok/s")
        report(f"{command} wall time", peer_name, median([r["wall_s"] for r in runs[peer_key]]),
               median([r["wall_s"] for r in runs[ours_key]]), "s", higher_is_better=False)

if __name__ == "__main__":
    common.run_main_or_peer_child(main, peer_main)
