"""User-level answering speed: ``gpt-scratch respond`` on 100 instructions against a ``pipeline("text-generation")``
loop over the same prompts -- what a transformers user writes -- on the same weights exported to plain GPT-2
(``gpt-scratch convert --to hf-gpt2``).

The model is the demo's shape (4 layers, 128 wide, context 128) with a 4096-entry byte-level BPE trained on the
instruction data; its weights are random (what is timed is decoding, not answer quality), so both sides decode every
answer to the same length.  Both decode greedily, ``max_new_tokens`` as ``respond``'s default for this context (64),
on the first 100 records of the book's ``instruction-data.json`` whose Alpaca prompt leaves room for the answer.
Each side runs as its own process; reported: wall time of the command and answers per second, and whether the
answers are the same text.

    python benchmarks/bench_respond.py                 # needs ../shared/data/instruction-data.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import REPO, median, print_header, report

DATA = REPO.parent / "shared" / "data" / "instruction-data.json"
CLI = [sys.executable, "-m", "pipelines"]
MAX_NEW_TOKENS = 64


def prepare(work: Path, count: int) -> tuple[Path, Path, Path]:
    """(our model folder, its GPT-2 export, the instruction file of ``count`` records)."""
    import torch

    from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
    from pipelines.runs.tokenizers import open_tokenizer, train_bpe_tokenizer
    from pipelines.data.instructions import format_alpaca
    from pipelines.runs.run_folder import write_model_folder

    records = json.loads(DATA.read_text(encoding="utf-8"))
    ours, gpt2, data = work / "ours", work / "gpt2", work / "instructions.json"
    if not (ours / "model.safetensors").is_file():
        texts = [format_alpaca(r) + r["output"] for r in records]
        train_bpe_tokenizer(texts, 4096, out_dir=work / "tokenizer", overwrite=True)
        tokenizer = open_tokenizer(str(work / "tokenizer"))
        config = GPTScratchConfig.from_preset(
            "tiny", hidden_size=128, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=128,
            vocab_size=len(tokenizer), qkv_bias=False, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(0)
        model = GPTScratchForCausalLM(config)
        write_model_folder(ours, model, tokenizer, metrics={}, run_config={}, workflow="benchmark")
        subprocess.run([*CLI, "convert", "--to", "hf-gpt2", "--src", str(ours), "--out", str(gpt2), "--overwrite"],
                       check=True, cwd=REPO, capture_output=True)
    tokenizer = open_tokenizer(str(ours))
    fitting = [r for r in records
               if len(tokenizer(format_alpaca(r), add_special_tokens=False)["input_ids"]) + MAX_NEW_TOKENS <= 128]
    data.write_text(json.dumps(fitting[:count], indent=1), encoding="utf-8")
    return ours, gpt2, data


def run_ours(model: Path, data: Path, out: Path) -> tuple[float, list[str]]:
    start = time.perf_counter()
    proc = subprocess.run([*CLI, "respond", "--model", str(model), "--data", str(data), "--out", str(out),
                           "--max-new-tokens", str(MAX_NEW_TOKENS)], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"gpt-scratch respond failed:\n{proc.stderr[-3000:]}")
    return wall, [r["model_response"] for r in json.loads(out.read_text())]


def peer_main(argv) -> None:
    """The peer (a child process): a pipeline loop over the Alpaca prompts, as a transformers user writes it."""
    model, data, out = argv
    from transformers import pipeline

    from pipelines.decoding.prompts import extract_response
    from pipelines.data.instructions import format_alpaca

    generator = pipeline("text-generation", model=model, device="cpu")
    answers = []
    for record in json.loads(Path(data).read_text(encoding="utf-8")):
        text = generator(format_alpaca(record), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                         return_full_text=False)[0]["generated_text"]
        answers.append(extract_response(text))
    Path(out).write_text(json.dumps(answers))


def run_peer(model: Path, data: Path, out: Path) -> tuple[float, list[str]]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--peer-child", str(model), str(data), str(out)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"the pipeline peer failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads(out.read_text())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is not there: this benchmark reads the book's instruction data from ../shared")
    print_header(f"respond (user level): {args.count} instructions, greedy, {MAX_NEW_TOKENS} new tokens")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-respond-"))
    work.mkdir(parents=True, exist_ok=True)
    ours_dir, gpt2_dir, data = prepare(work, args.count)
    ours, peer = [], []
    for round_ in range(args.rounds):
        wall, ours_answers = run_ours(ours_dir, data, work / "ours.json")
        ours.append(wall)
        wall, peer_answers = run_peer(gpt2_dir, data, work / "peer.json")
        peer.append(wall)
        same = sum(a == b for a, b in zip(ours_answers, peer_answers))
        print(f"   round {round_ + 1}: ours {ours[-1]:.1f} s, peer {peer[-1]:.1f} s; identical answers "
              f"{same}/{len(ours_answers)}", flush=True)
    n = len(json.loads(data.read_text()))
    report(f"gpt-scratch respond ({n} instructions)", 'pipeline("text-generation") loop, GPT-2 export',
           n / median(peer), n / median(ours), "answers/s", note=f"wall peer {median(peer):.1f} s, ours {median(ours):.1f} s")


if __name__ == "__main__":
    common.run_main_or_peer_child(main, peer_main)
