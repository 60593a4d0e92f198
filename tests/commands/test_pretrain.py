"""Pretraining end to end: the CLI, the loop, checkpoints and resume, two CPU ranks, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.cli import main

REPO = Path(__file__).resolve().parents[2]

WORDS = (
    "the model reads a sequence of tokens and predicts the next one . attention lets every position look back at "
    "the positions before it . a transformer block adds attention and a feed forward layer to the residual stream . "
).split()


def write_corpus(folder: Path, n_docs: int = 12, words_per_doc: int = 300) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        words = [WORDS[(d * 7 + i * (1 + d % 3)) % len(WORDS)] for i in range(words_per_doc)]
        (folder / f"doc{d:02d}.txt").write_text(" ".join(words), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus):
    from pipelines.runs.tokenizers import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    train_bpe_tokenizer(texts, 300, out_dir=out)
    return out


def tiny_flags(corpus, out, tokenizer_dir=None, **extra):
    flags = {
        "--data": corpus,
        "--out": out,
        "--preset": "tiny",
        "--hidden-size": 32,
        "--num-hidden-layers": 2,
        "--num-attention-heads": 4,
        "--context-length": 32,
        "--vocab-size": 300,
        "--batch-size": 8,
        "--max-steps": 60,
        "--learning-rate": 0.003,
        "--warmup-steps": 5,
        "--eval-every": 20,
        "--log-every": 10,
        "--sample-tokens": 8,
        "--mixed-precision": "no",
        "--seed": 7,
    }
    if tokenizer_dir is not None:
        flags["--tokenizer"] = tokenizer_dir
    flags.update(extra)
    args = []
    for key, value in flags.items():
        args.append(key)
        if value is not None:
            args.append(str(value))
    return args


def test_pretrain_loss_falls_and_writes_run_folder(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_flags(corpus, out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert final["val_loss"] < final["initial_val_loss"] - 1.0, final
    assert final["test_loss"] < final["initial_val_loss"] - 1.0
    assert final["step"] == 60
    for name in ("config.json", "model.safetensors", "modeling_gpt_scratch.py", "configuration_gpt_scratch.py",
                 "tokenizer.json", "generation_config.json", "run_config.yaml", "plots/loss.png", "README.md"):
        assert (out / name).is_file(), name
    assert metrics["samples"] and all("text" in s for s in metrics["samples"])
    # the run folder is a model folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    ids = tok("the model", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids.input_ids.shape[1] + 5


def _run_cli(args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *map(str, args)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


@pytest.mark.slow
def test_kill9_and_resume_is_bit_identical(corpus, tokenizer_dir, tmp_path):
    flags = lambda out: tiny_flags(  # noqa: E731
        corpus, out, tokenizer_dir,
        **{"--max-steps": 160, "--checkpoint-every": 20, "--eval-every": 40, "--dropout": 0.1},
    )
    straight = tmp_path / "straight"
    proc = _run_cli(["pretrain", *flags(straight)])
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output

    killed = tmp_path / "killed"
    proc = _run_cli(["pretrain", *flags(killed)])
    deadline = time.time() + 240
    try:
        while not (killed / "checkpoints" / "step-40").is_dir():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists(), "the killed run must not have finished"

    # the killed run's lock went with it: --resume is the one flag needed (tests/runs/test_faults.py covers a live owner)
    proc = _run_cli(["pretrain", *flags(killed), "--resume"])
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "resumed from" in output

    a = load_file(straight / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((killed / "metrics.json").read_text())
    assert ma["final"]["test_loss"] == mb["final"]["test_loss"]
    # the samples from before the checkpoint came back with it
    assert [s["step"] for s in mb["samples"]] == [0, 40, 80, 120, 160]
    assert mb["samples"] == ma["samples"]
    kept = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert kept == ["step-140", "step-160"], kept


@pytest.mark.slow
def test_two_cpu_ranks_with_torchrun(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "ddp"
    flags = tiny_flags(corpus, out, tokenizer_dir, **{"--max-steps": 20, "--batch-size": 4,
                                                      "--gradient-accumulation-steps": 2, "--eval-every": 10})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
         str(REPO / "scripts" / "pretrain.py"), *map(str, flags)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["world_size"] == 2
    assert final["ranks_agree"] is True
    assert final["global_batch_examples"] == 4 * 2 * 2
    assert final["tokens_seen"] == 20 * 4 * 2 * 2 * 32
    # logs come from rank 0 only
    assert proc.stdout.count("done: val loss") == 1, proc.stdout


def _error_line(capsys):
    """The one error line of a failed run (progress bars may precede it), and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("gpt-scratch pretrain: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_input_missing_path(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tmp_path / "nope.txt"), "--out", str(out)]) == 2
    assert "nope.txt" in _error_line(capsys)
    assert not (out / "model.safetensors").exists()


def test_bad_input_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("", encoding="utf-8")
    assert main(["pretrain", *tiny_flags(empty, tmp_path / "run")]) == 2
    assert "empty" in _error_line(capsys).lower()


def test_bad_input_corpus_shorter_than_context(tmp_path, tokenizer_dir, capsys):
    short = tmp_path / "short.txt"
    short.write_text("the model reads a sequence", encoding="utf-8")
    assert main(["pretrain", *tiny_flags(short, tmp_path / "run", tokenizer_dir)]) == 2
    line = _error_line(capsys)
    assert "token" in line and any(ch.isdigit() for ch in line), line


def test_bad_input_non_utf8(tmp_path, capsys):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    assert main(["pretrain", *tiny_flags(folder, tmp_path / "run")]) == 2
    assert "latin1.txt" in _error_line(capsys)


def test_bad_input_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rte: 0.1\n")
    assert main(["pretrain", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "learning_rate" in _error_line(capsys)


def test_bad_input_resume_without_checkpoint(tmp_path, corpus, capsys):
    assert main(["pretrain", *tiny_flags(corpus, tmp_path / "run"), "--resume"]) == 2
    assert "no checkpoint" in _error_line(capsys)


def test_bad_input_hub_id_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["pretrain", "--data", "HuggingFaceFW/fineweb-edu", "--out", str(tmp_path / "run"), "--vocab-size", "300"]) == 2
    line = _error_line(capsys)
    assert "network" in line and "--data" in line


def test_nan_loss_stops_with_last_good_checkpoint(corpus, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    flags = tiny_flags(corpus, out, tokenizer_dir, **{"--learning-rate": 1e6, "--grad-clip": 0, "--max-steps": 40,
                                                      "--checkpoint-every": 1, "--warmup-steps": 0})
    assert main(["pretrain", *flags]) == 2
    line = _error_line(capsys)
    assert "loss became" in line and "checkpoint" in line
    assert not (out / "model.safetensors").exists()
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert ckpts, "a good checkpoint should remain"
    state = load_file(ckpts[-1] / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in state.values())


@pytest.mark.parametrize("has_bf16", [True, False])
def test_pretrain_auto_precision_follows_the_cpu_and_the_card_says_what_ran(corpus, tmp_path, monkeypatch, has_bf16):
    """``--mixed-precision auto`` is bf16 on a CPU with native bf16 products and float32 elsewhere; the run records
    what it resolved to, the card shows that (not "auto"), and the saved model is a plain SDPA float32 folder."""
    from pipelines.training import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: has_bf16)
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_flags(corpus, out, **{"--mixed-precision": "auto", "--max-steps": 30})]) == 0
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["mixed_precision"] == ("bf16" if has_bf16 else "no")
    assert final["val_loss"] < final["initial_val_loss"] - 0.5
    card = (out / "README.md").read_text()
    assert ("| precision | bf16 mixed precision |" if has_bf16 else "| precision | fp32 |") in card
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and precision.CPU_BF16_ATTENTION not in json.dumps(config)
