"""Fault injection: bad input and faults each get one clear line, and nothing is lost or left half-written.

Every case asserts the exit code, the one-line message (no traceback) and the state of ``--out`` afterwards.  The
kill -9 cases interrupt a tiny ``pretrain`` at exact moments through the test-only hook ``GPT_SCRATCH_FAULT``
(``pipelines.fs.fault_point``) and resume it; each must end byte-identical to an uninterrupted run.

Cost: one tokenizer, a handful of tiny model folders built with ``save_pretrained``, one uninterrupted run and six
killed runs in subprocesses (12 steps of a 2-layer, 32-wide model each); everything else runs in-process and fails
before any training.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.runs import run_folder as runfolder
from pipelines.cli import main
from tests.commands.test_pretrain import write_corpus

REPO = Path(__file__).resolve().parents[2]
LOCK = runfolder.LOCK_NAME

# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def one_line(capsys, rc, *phrases, code=2, strict=True) -> str:
    """The run failed with ``code`` and exactly one error line (the only stderr line when ``strict``), no traceback,
    holding every phrase."""
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("gpt-scratch ") and ": error: " in line]
    assert len(errors) == 1, err
    if strict:
        assert lines == errors, err
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (None: the folder does not exist)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(folder.rglob("*"))}


@pytest.fixture
def one_thread():
    """In-process training on one thread, as the subprocesses run (OMP_NUM_THREADS=1): same float sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env(**extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("GPT_SCRATCH_FAULT", None)
    env.update(extra)
    return env


def cli(args, fault=None, timeout=300):
    extra = {"GPT_SCRATCH_FAULT": fault} if fault else {}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO, env=_env(**extra),
                          capture_output=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------------------------
# fixtures: a corpus, a tokenizer, tiny model folders of every kind
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=8, words_per_doc=200)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus):
    from pipelines.runs.tokenizers import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_bpe_tokenizer([p.read_text() for p in sorted(corpus.glob("*.txt"))], 300, out_dir=out)
    return out


def run_flags(corpus, out, tokenizer_dir, **extra):
    flags = {
        "--data": corpus, "--out": out, "--tokenizer": tokenizer_dir, "--preset": "tiny", "--hidden-size": 32,
        "--num-hidden-layers": 2, "--num-attention-heads": 4, "--context-length": 16, "--batch-size": 4,
        "--max-steps": 12, "--learning-rate": 0.003, "--warmup-steps": 2, "--eval-every": 4, "--log-every": 4,
        "--sample-tokens": 4, "--mixed-precision": "no", "--seed": 7, "--checkpoint-every": 4, "--dropout": 0.1,
    }
    flags.update(extra)
    args = []
    for key, value in flags.items():
        if value is False:
            continue
        args.append(key)
        if value is not True:
            args.append(str(value))
    return args


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_dir):
    """Model folders: a causal LM, a classifier, a bare transformer, a LoRA adapter and a Hugging Face GPT-2."""
    from transformers import AutoTokenizer

    from modeling_gpt_scratch import (
        GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification, GPTScratchModel,
    )

    root = tmp_path_factory.mktemp("folders")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    eos = tokenizer.eos_token_id
    config = GPTScratchConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=128, eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    made = {}
    for name, cls, extra in (
        ("lm", GPTScratchForCausalLM, {}),
        ("classifier", GPTScratchForSequenceClassification,
         {"num_labels": 2, "id2label": {0: "ham", 1: "spam"}, "label2id": {"ham": 0, "spam": 1}}),
        ("bare", GPTScratchModel, {}),
    ):
        folder = root / name
        cfg = GPTScratchConfig(**{**config.to_dict(), **extra})
        cls(cfg).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        made[name] = folder
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(made["lm"]), "r": 2}))
    tokenizer.save_pretrained(adapter)
    made["adapter"] = adapter
    gpt2 = root / "gpt2"
    shutil.copytree(made["lm"], gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (gpt2 / "config.json").write_text(json.dumps(cfg))
    made["gpt2"] = gpt2
    return made


def damaged(folders, tmp_path, kind, what):
    """A copy of ``folders[kind]`` with one file damaged."""
    folder = tmp_path / f"{kind}-{what}"
    shutil.copytree(folders[kind], folder)
    if what == "cut-weights":
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif what == "config":
        (folder / "config.json").write_text('{"model_type": "gpt_scratch", "hidden_size": 32,')
    elif what == "tokenizer":
        (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    elif what == "no-config":
        (folder / "config.json").unlink()
    return folder


INSTRUCTIONS = [
    {"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"}
    for w in ("tokens", "model", "attention", "block", "layer", "stream", "position", "sequence", "next", "one") * 4
]


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    path = tmp_path_factory.mktemp("instr") / "records.json"
    path.write_text(json.dumps(INSTRUCTIONS))
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("tsv") / "sms.tsv"
    rows = [f"{'spam' if i % 2 else 'ham'}\t{'win money now' if i % 2 else 'see you at the model'} {i}"
            for i in range(40)]
    path.write_text("label\ttext\n" + "\n".join(rows) + "\n")
    return path


# ================================================================================================================
# 1. every setting checked before anything is written: one line naming the flag, the value and the range
# ================================================================================================================

BAD_SETTINGS = [
    (["--max-steps", "-5"], ["--max-steps -5", "at least 1"]),
    (["--epochs", "-1"], ["--epochs -1", "at least 0"]),
    (["--learning-rate", "-1"], ["--learning-rate -1", "above 0"]),
    (["--learning-rate", "nan"], ["--learning-rate nan", "finite"]),
    (["--batch-size", "0"], ["--batch-size 0", "at least 1"]),
    (["--dropout", "2"], ["--dropout 2", "below 1"]),
    (["--keep-checkpoints", "0"], ["--keep-checkpoints 0", "at least 1"]),
    (["--warmup-steps", "-1"], ["--warmup-steps -1", "at least 0"]),
    (["--val-fraction", "0"], ["--val-fraction 0", "above 0"]),
    (["--seed", "-3"], ["--seed -3", "from 0 to"]),
    (["--grad-clip", "inf"], ["--grad-clip inf", "finite"]),
    (["--adam-beta2", "1"], ["--adam-beta2 1", "below 1"]),
    (["--min-lr-ratio", "1.5"], ["--min-lr-ratio 1.5", "from 0 to 1"]),
    (["--vocab-size", "100"], ["--vocab-size 100", "at least 257"]),
    (["--trackers", "mlflow"], ["--trackers", "invalid choice: 'mlflow'"]),
    (["--layout", "zigzag"], ["--layout", "invalid choice"]),
    (["--batch-size", "eight"], ["--batch-size", "invalid int value"]),
    (["--preset", "gpt5"], ["--preset 'gpt5'", "choose one of", "gpt2-small"]),
    (["--hidden-size", "30", "--num-attention-heads", "4"], ["num_attention_heads"]),
    (["--epochs", "1", "--max-steps", "3"], ["--epochs 1 and --max-steps 3 conflict"]),
    (["--resume", "--overwrite"], ["--resume and --overwrite conflict"]),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], ["--val-fraction 0.6 and --test-fraction 0.5"]),
]


@pytest.mark.parametrize("flags,phrases", BAD_SETTINGS, ids=[" ".join(f) for f, _ in BAD_SETTINGS])
def test_pretrain_bad_setting_is_one_line_and_writes_nothing(flags, phrases, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--data", str(corpus), "--out", str(out), *flags])
    one_line(capsys, rc, *phrases)
    assert not out.exists(), "nothing may be written for a bad setting"


def test_bad_setting_in_the_config_file_names_the_file(corpus, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: -1\n")
    out = tmp_path / "run"
    rc = main(["pretrain", "--config", str(cfg), "--data", str(corpus), "--out", str(out)])
    one_line(capsys, rc, "--learning-rate -1", "c.yaml", "above 0")
    assert not out.exists()


@pytest.mark.parametrize("workflow,flags,phrases", [
    ("finetune-classifier", ["--learning-rate", "nan"], ["--learning-rate nan", "finite"]),
    ("finetune-classifier", ["--test-fraction", "2"], ["--test-fraction 2", "from 0 to 1"]),
    ("finetune-classifier", ["--epochs", "2", "--max-steps", "3"], ["--epochs 2 and --max-steps 3 conflict"]),
    ("finetune-instruct", ["--batch-size", "0"], ["--batch-size 0", "at least 1"]),
    ("finetune-instruct", ["--eval-every", "-2"], ["--eval-every -2", "at least 0"]),
    ("finetune-classifier", ["--evals-per-epoch", "2", "--eval-every", "3"],
     ["--evals-per-epoch 2 and --eval-every 3 conflict"]),
    ("finetune-instruct", ["--epochs", "2", "--max-steps", "3"], ["--epochs 2 and --max-steps 3 conflict"]),
])
def test_finetunes_check_settings_before_anything(workflow, flags, phrases, folders, instructions, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main([workflow, "--model", str(folders["lm"]), "--data", str(instructions), "--out", str(out), *flags])
    one_line(capsys, rc, *phrases)
    assert not out.exists()


def test_experiments_check_every_run_before_the_first(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    out = tmp_path / "exp"
    plan.write_text(yaml.safe_dump({"out": str(out), "baseline": {"max_steps": 2},
                                    "variants": {"hot": {"learning_rate": -1.0}}}))
    one_line(capsys, main(["experiments", "--config", str(plan)]), "run 'hot'", "--learning-rate -1", "above 0")
    assert not out.exists()


# ---- an explicit --max-steps wins over a default --epochs, in every training workflow ------------------------


def _resolve(workflow, argv):
    from pipelines.cli import build_parser

    parser, _ = build_parser(workflow)
    module = f"pipelines.commands.{workflow.replace('-', '_')}"
    return __import__(module, fromlist=["resolve"]).resolve(parser.parse_args(argv))


@pytest.mark.parametrize("workflow", ["pretrain", "finetune-classifier", "finetune-instruct"])
def test_explicit_max_steps_beats_default_epochs(workflow, tmp_path):
    base = ["--out", str(tmp_path / "o"), "--model", "m", "--data", "d"] if workflow != "pretrain" else []
    cfg = _resolve(workflow, [*base, "--max-steps", "3"])
    assert (cfg.max_steps, cfg.epochs) == (3, 0)
    cfg = _resolve(workflow, [*base, "--epochs", "1"])  # and an explicit --epochs beats a default --max-steps
    assert cfg.epochs == 1
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("epochs: 2\n")  # a flag beats a key of the file
    cfg = _resolve(workflow, ["--config", str(yaml_file), *base, "--max-steps", "4"])
    assert (cfg.max_steps, cfg.epochs) == (4, 0)
    yaml_file.write_text("epochs: 2\nmax_steps: 5\n")  # both in the file: a conflict
    from pipelines.errors import UserError

    with pytest.raises(UserError, match="--epochs 2 and --max-steps 5 conflict"):
        _resolve(workflow, ["--config", str(yaml_file), *base])


@pytest.mark.parametrize("workflow", ["pretrain", "finetune-classifier", "finetune-instruct"])
def test_explicit_eval_every_beats_the_default_cadence(workflow, tmp_path):
    """Evaluations: --eval-every N steps or --evals-per-epoch K, alternatives as --max-steps and --epochs are."""
    base = ["--out", str(tmp_path / "o"), "--model", "m", "--data", "d"] if workflow != "pretrain" else []
    default = _resolve(workflow, base)
    assert default.evals_per_epoch == {"pretrain": 0, "finetune-classifier": 1, "finetune-instruct": 4}[workflow]
    cfg = _resolve(workflow, [*base, "--eval-every", "7"])
    assert (cfg.eval_every, cfg.evals_per_epoch) == (7, 0)
    cfg = _resolve(workflow, [*base, "--evals-per-epoch", "2"])
    assert cfg.evals_per_epoch == 2
    from pipelines.errors import UserError

    with pytest.raises(UserError, match="--evals-per-epoch 2 and --eval-every 7 conflict"):
        _resolve(workflow, [*base, "--evals-per-epoch", "2", "--eval-every", "7"])


@pytest.mark.parametrize("workflow", ["finetune-classifier", "finetune-instruct"])
def test_finetune_max_steps_runs_exactly_those_steps(workflow, folders, instructions, labelled, tmp_path, capsys,
                                                     one_thread):
    """Both fine-tunes have a default --epochs; an explicit --max-steps decides the length all the same."""
    out = tmp_path / "run"
    data = instructions if workflow == "finetune-instruct" else labelled
    extra = ["--sample-count", "0"] if workflow == "finetune-instruct" else []
    rc = main([workflow, "--model", str(folders["lm"]), "--data", str(data), "--out", str(out),
               "--max-steps", "3", "--batch-size", "2", "--mixed-precision", "no", *extra])
    assert rc == 0, capsys.readouterr().err
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["step"] == 3
    assert not (out / LOCK).exists(), "the lock goes when the run ends"


# ================================================================================================================
# 2. --out: files, unwritable places, the lock, unfinished and finished runs
# ================================================================================================================


def test_out_is_an_existing_file(corpus, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("keep me")
    one_line(capsys, main(["pretrain", "--data", str(corpus), "--out", str(out)]), "is a file", str(out))
    assert out.read_text() == "keep me"


def test_out_below_a_file_cannot_be_created(corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    one_line(capsys, main(["pretrain", "--data", str(corpus), "--out", str(out)]), "cannot be created", "is a file")


def test_out_in_an_unwritable_place(corpus, tokenizer_dir, capsys):
    out = Path("/proc/gpt-scratch-fault-test/run")
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir)])
    one_line(capsys, rc, str(out), "choose a folder you can write to")


def test_train_tokenizer_out_file_with_overwrite(corpus, tmp_path, capsys):
    out = tmp_path / "tok.json"
    out.write_text("{}")
    rc = main(["train-tokenizer", "--data", str(corpus), "--vocab-size", "300", "--out", str(out), "--overwrite"])
    line = one_line(capsys, rc, "is a file, not a folder")
    assert "pass --overwrite" not in line
    assert out.read_text() == "{}"


def _lock_record(pid, **extra):
    record = {"pid": pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    record.update(extra)
    return record


HOLD = """
import sys, time
from pathlib import Path
from pipelines.runs.run_folder import _acquire
lock = _acquire(Path(sys.argv[1]))  # held while this process lives
print("held", flush=True)
time.sleep(60)
"""


def test_lock_held_by_a_live_run_is_refused_and_the_folder_untouched(corpus, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.yaml").write_text("seed: 1\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, env=_env())
    try:
        assert holder.stdout.readline().strip() == b"held"
        before = snapshot(out)
        rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir)])
        one_line(capsys, rc, "in use by another gpt-scratch run", f"pid {holder.pid}")
        assert snapshot(out) == before
        rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir), "--overwrite"])
        one_line(capsys, rc, "in use by another gpt-scratch run")  # --overwrite does not break a live lock
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("record", ["dead", "another-machine", "unreadable"])
def test_a_lock_file_nobody_holds_is_no_obstacle(record, corpus, tokenizer_dir, tmp_path, capsys, one_thread):
    """The lock is the kernel's (flock): a lock file left by a killed run, whatever its record says, is free."""
    out = tmp_path / "run"
    out.mkdir()
    text = {"dead": json.dumps(_lock_record(_dead_pid())), "unreadable": "",
            "another-machine": json.dumps(_lock_record(1, host="elsewhere.example"))}[record]
    (out / LOCK).write_text(text)
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir, **{"--max-steps": 2, "--checkpoint-every": 0})])
    assert rc == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and not (out / LOCK).exists()


def test_two_writers_on_one_out(corpus, tokenizer_dir, tmp_path, capsys, one_thread):
    """A second run on the same --out is refused while the first runs (here: hangs at step 1), names the owner;
    once the first is killed, the kernel has released its lock and the folder is free again."""
    out = tmp_path / "shared"
    log = tmp_path / "first.log"
    with open(log, "wb") as stderr:
        first = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "pretrain", *run_flags(corpus, out, tokenizer_dir)],
            cwd=REPO, env=_env(GPT_SCRATCH_FAULT="step:1:hang"), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.time() + 120
        while b"hang at step 1" not in log.read_bytes():
            assert first.poll() is None, log.read_text()
            assert time.time() < deadline, "the first run did not reach step 1"
            time.sleep(0.05)
        rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir)])
        one_line(capsys, rc, "in use by another gpt-scratch run", f"pid {first.pid}")
        rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir), "--overwrite"])
        one_line(capsys, rc, "in use by another gpt-scratch run")  # --overwrite does not break a live lock
        assert (out / LOCK).is_file()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir, **{"--max-steps": 4})])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["final"]["step"] == 4


def test_failure_after_the_claim_leaves_out_as_found(tokenizer_dir, tmp_path, capsys):
    """A corpus shorter than one context fails after the folder was claimed: the error names --context-length (the
    flag pretrain has), and --out is gone again -- no cache/, tokenizer/ or run_config.yaml to block the next run."""
    short = tmp_path / "short.txt"
    short.write_text("the model reads a sequence", encoding="utf-8")
    out = tmp_path / "run"
    rc = main(["pretrain", *run_flags(short, out, tokenizer_dir)])
    line = one_line(capsys, rc, "--context-length", strict=False)
    assert "--max-length" not in line
    assert not out.exists()
    out.mkdir()  # an empty folder stays an empty folder
    rc = main(["pretrain", *run_flags(short, out, tokenizer_dir)])
    one_line(capsys, rc, "--context-length", strict=False)
    assert out.is_dir() and not any(out.iterdir())


def test_missing_data_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--data", str(tmp_path / "nope.txt"), "--out", str(out), "--vocab-size", "300"])
    one_line(capsys, rc, "nope.txt", strict=False)
    assert not out.exists()


def test_non_text_record_says_a_number(tokenizer_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "the model"}\n{"text": 5}\n')
    out = tmp_path / "run"
    line = one_line(capsys, main(["pretrain", *run_flags(data, out, tokenizer_dir)]), "holds a number (5)",
                    strict=False)
    assert "a int" not in line
    assert not out.exists()


def test_json_error_has_no_doubled_at(tokenizer_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "the model')  # json says "Unterminated string starting at"; we add "column N"
    line = one_line(capsys, main(["pretrain", *run_flags(data, tmp_path / "run", tokenizer_dir)]),
                    "Unterminated string", strict=False)
    assert "at at" not in line


def test_a_foreign_folder_is_refused_untouched(corpus, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    before = snapshot(out)
    one_line(capsys, main(["pretrain", *run_flags(corpus, out, tokenizer_dir)]), "already exists and is not empty")
    one_line(capsys, main(["pretrain", *run_flags(corpus, out, tokenizer_dir), "--resume"]), "no checkpoint")
    assert snapshot(out) == before


def test_resume_without_any_run(corpus, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "none"
    one_line(capsys, main(["pretrain", *run_flags(corpus, out, tokenizer_dir), "--resume"]), "no checkpoint")
    assert not out.exists()


def test_an_unfinished_run_is_accepted_again(corpus, tokenizer_dir, tmp_path, capsys, one_thread):
    """Leftovers of a run that stopped before its first checkpoint (no lock: it failed cleanly long ago, or its lock
    was removed) do not need --overwrite; they are cleared, the token cache kept."""
    out = tmp_path / "run"
    for name in ("tokenizer", "cache", "checkpoints/.tmp-step-4", ".final-abc"):
        (out / name).mkdir(parents=True)
    (out / "run_config.yaml").write_text("seed: 1\n")
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir, **{"--max-steps": 2, "--checkpoint-every": 0})])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "stopped before its first checkpoint" in err
    assert not (out / "tokenizer").exists() and not (out / ".final-abc").exists()
    assert not (out / "checkpoints" / ".tmp-step-4").exists()
    assert (out / "model.safetensors").is_file() and (out / "cache").is_dir()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus, tokenizer_dir):
    """A finished 4-step run with checkpoints every 2 steps, keeping only 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("finished") / "run"
        rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir, **{"--max-steps": 4, "--checkpoint-every": 2,
                                                                          "--keep-checkpoints": 1})])
        assert rc == 0
    finally:
        torch.set_num_threads(before)
    return out


def test_keep_checkpoints_one_keeps_the_newest(finished_run):
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["step-4"]


def test_a_finished_run_is_not_started_again(finished_run, corpus, tokenizer_dir, capsys):
    before = snapshot(finished_run)
    rc = main(["pretrain", *run_flags(corpus, finished_run, tokenizer_dir, **{"--max-steps": 4})])
    one_line(capsys, rc, "already holds a finished run", "--overwrite")
    assert snapshot(finished_run) == before


def test_a_failed_overwrite_puts_the_old_run_back(finished_run, corpus, tokenizer_dir, tmp_path, capsys):
    """--overwrite with a data path that does not exist: the error comes after the folder was claimed, and the
    finished run that was there is back, byte for byte."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    rc = main(["pretrain", *run_flags(tmp_path / "typo.txt", out, tokenizer_dir), "--overwrite"])
    one_line(capsys, rc, "typo.txt", strict=False)
    assert snapshot(out) == before


def test_an_overwrite_replaces_the_old_run(finished_run, corpus, tokenizer_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "old-notes.txt").write_text("from before")
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir, **{"--max-steps": 2, "--checkpoint-every": 1}),
               "--overwrite"])
    assert rc == 0, capsys.readouterr().err
    assert not (out / "old-notes.txt").exists() and not list(out.glob(".*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]


def test_a_run_with_checkpoints_needs_resume(finished_run, corpus, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    shutil.copytree(finished_run / "checkpoints", out / "checkpoints")
    shutil.copy(finished_run / "run_config.yaml", out)
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir, **{"--max-steps": 4})])
    one_line(capsys, rc, "already holds a run with checkpoints", "step-4", "pass --resume")


@pytest.mark.parametrize("damage,phrases", [
    ("rng-garbage", ["random_states_0.pkl", "damaged", "would not be exact"]),
    ("rng-missing", ["random_states_0.pkl", "would not be exact"]),
    ("rng-wrong-shape", ["random_states_0.pkl", "damaged"]),
    ("weights-cut", ["cannot be loaded", "step-4"]),
    ("optimizer-garbage", ["cannot be loaded", "step-4"]),
    ("state-garbage", ["trainer_state.json is damaged"]),
])
def test_damaged_checkpoint_on_resume(damage, phrases, finished_run, corpus, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    ckpt = out / "checkpoints" / "step-4"
    if damage == "rng-garbage":
        (ckpt / "random_states_0.pkl").write_bytes(b"not a pickle at all")
    elif damage == "rng-missing":
        (ckpt / "random_states_0.pkl").unlink()
    elif damage == "rng-wrong-shape":
        torch.save({"random_state": (3, (), None), "torch_manual_seed": torch.zeros(3)}, ckpt / "random_states_0.pkl")
    elif damage == "weights-cut":
        path = ckpt / "model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "optimizer-garbage":
        (ckpt / "optimizer.bin").write_bytes(b"not a pickle either")
    elif damage == "state-garbage":
        (ckpt / "trainer_state.json").write_text('{"step": ')
    before = snapshot(out / "checkpoints")
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir, **{"--max-steps": 4}), "--resume"])
    one_line(capsys, rc, *phrases, strict=False)
    assert snapshot(out / "checkpoints") == before, "the checkpoint must stay as it was"
    assert (out / "model.safetensors").is_file() and not (out / LOCK).exists()


# ================================================================================================================
# 3. model folders: the kind checked against the workflow, unreadable files one line each
# ================================================================================================================


@pytest.mark.parametrize("argv,phrases", [
    (["generate", "--model", "{cut}", "--prompt", "the"], ["model.safetensors", "cut short"]),
    (["chat", "--model", "{cut}"], ["model.safetensors", "cut short"]),
    (["serve", "--model", "{cut}", "--port", "0"], ["model.safetensors", "cut short"]),
    (["evaluate", "--model", "{cut}", "--data", "{corpus}"], ["model.safetensors", "cut short"]),
    (["respond", "--model", "{cut}", "--data", "{instructions}", "--out", "{tmp}/r.json"], ["cut short"]),
    (["classify", "--model", "{cut_classifier}", "hello"], ["model.safetensors", "cut short"]),
    (["evaluate", "--model", "{cut_classifier}", "--data", "{labelled}"], ["model.safetensors", "cut short"]),
    (["generate", "--model", "{classifier}", "--prompt", "the"], ["is a classifier", "gpt-scratch classify"]),
    (["serve", "--model", "{classifier}", "--port", "0"], ["is a classifier"]),
    (["generate", "--model", "{bare}", "--prompt", "the"], ["bare transformer", "GPTScratchForCausalLM"]),
    (["generate", "--model", "{adapter}", "--prompt", "the"], ["LoRA adapter", "merged/"]),
    (["chat", "--model", "{adapter}"], ["LoRA adapter"]),
    (["generate", "--model", "{gpt2}", "--prompt", "the"], ["Hugging Face GPT-2", "gpt-scratch convert"]),
    (["evaluate", "--model", "{bare}", "--data", "{corpus}"], ["bare transformer"]),
    (["evaluate", "--model", "{adapter}", "--data", "{corpus}"], ["LoRA adapter"]),
    (["classify", "--model", "{lm}", "hello"], ["not a classifier"]),
    (["respond", "--model", "{classifier}", "--data", "{instructions}", "--out", "{tmp}/r.json"], ["is a classifier"]),
    (["generate", "--model", "{bad_config}", "--prompt", "the"], ["config.json is not valid JSON", "line 1"]),
    (["classify", "--model", "{bad_config}", "hello"], ["config.json is not valid JSON"]),
    (["generate", "--model", "{bad_tokenizer}", "--prompt", "the"], ["tokenizer.json is not valid JSON"]),
    (["generate", "--model", "{no_config}", "--prompt", "the"], ["has no config.json"]),
    (["generate", "--model", "{tmp}/missing", "--prompt", "the"], ["does not exist"]),
])
def test_model_folder_faults(argv, phrases, folders, corpus, instructions, labelled, tmp_path, capsys):
    names = {
        "cut": damaged(folders, tmp_path, "lm", "cut-weights"),
        "cut_classifier": damaged(folders, tmp_path, "classifier", "cut-weights"),
        "bad_config": damaged(folders, tmp_path, "lm", "config"),
        "bad_tokenizer": damaged(folders, tmp_path, "lm", "tokenizer"),
        "no_config": damaged(folders, tmp_path, "lm", "no-config"),
        "corpus": corpus, "instructions": instructions, "labelled": labelled, "tmp": tmp_path, **folders,
    }
    args = [a.format(**names) for a in argv]
    line = one_line(capsys, main(args), *phrases, strict=False)
    assert "cannot load the tokenizer" not in line or "bad_tokenizer" in argv[2]
    assert "no a " not in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv,phrases", [
    (["generate", "--model", "{lm}", "--prompt", "the", "--temperature", "nan"], ["--temperature nan", "finite"]),
    (["chat", "--model", "{lm}", "--temperature", "inf"], ["--temperature inf", "finite"]),
    (["generate", "--model", "{lm}", "--prompt", "the", "--top-p", "0"], ["--top-p 0"]),
    (["classify", "--model", "{classifier}", "--batch-size", "0", "hi"], ["--batch-size 0"]),
    (["respond", "--model", "{lm}", "--data", "{instructions}", "--out", "{tmp}/r.json", "--batch-size", "0"],
     ["--batch-size 0"]),
])
def test_other_workflows_check_their_numbers(argv, phrases, folders, instructions, tmp_path, capsys):
    args = [a.format(instructions=instructions, tmp=tmp_path, **folders) for a in argv]
    one_line(capsys, main(args), *phrases)
    assert not (tmp_path / "r.json").exists()


def test_resume_with_another_batch_size(finished_run, corpus, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir, **{"--max-steps": 4, "--batch-size": 2}),
               "--resume"])
    one_line(capsys, rc, "global batch of 4", "this run has 2", strict=False)


def test_model_folder_faults_print_nothing_else(folders, tmp_path, capsys):
    """The strict form: the only stderr line is the error (generate with a cut file, with a classifier)."""
    cut = damaged(folders, tmp_path, "lm", "cut-weights")
    one_line(capsys, main(["generate", "--model", str(cut), "--prompt", "x"]), "cut short")
    one_line(capsys, main(["generate", "--model", str(folders["classifier"]), "--prompt", "x"]), "classifier")


@pytest.mark.parametrize("workflow,base,data", [
    ("finetune-instruct", "classifier", "instructions"),
    ("finetune-instruct", "bare", "instructions"),
    ("finetune-instruct", "cut", "instructions"),
    ("finetune-classifier", "classifier", "labelled"),
    ("finetune-classifier", "cut", "labelled"),
    ("finetune-classifier", "gpt2", "labelled"),
])
def test_finetune_base_of_the_wrong_kind_writes_nothing(workflow, base, data, folders, instructions, labelled,
                                                        tmp_path, capsys):
    model = damaged(folders, tmp_path, "lm", "cut-weights") if base == "cut" else folders[base]
    out = tmp_path / "run"
    data_path = instructions if data == "instructions" else labelled
    rc = main([workflow, "--model", str(model), "--data", str(data_path), "--out", str(out), "--max-steps", "1",
               "--batch-size", "2", "--mixed-precision", "no"])
    phrase = {"classifier": "classifier", "bare": "bare transformer", "cut": "cut short", "gpt2": "GPT-2"}[base]
    one_line(capsys, rc, phrase, strict=False)
    assert not out.exists()


# ================================================================================================================
# 4. text that is not UTF-8, on the command line and on stdin
# ================================================================================================================


def test_prompt_with_undecodable_bytes(folders, capsys):
    rc = main(["generate", "--model", str(folders["lm"]), "--prompt", "caf\udce9"])  # b"caf\xe9" as argv holds it
    one_line(capsys, rc, "--prompt", "byte 0xe9", "pass UTF-8 text")


def test_prompt_with_undecodable_bytes_from_a_real_argv(folders):
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "generate", "--model", str(folders["lm"]).encode(),
                           b"--prompt=caf\xe9"], cwd=REPO, env=_env(), capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "gpt-scratch generate: error: the value of --prompt is not UTF-8 text (byte 0xe9 at character 4): "
        "pass UTF-8 text"
    ]


def test_chat_stdin_with_undecodable_bytes(folders, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello\ncaf\xe9\n"), encoding="utf-8"))
    rc = main(["chat", "--model", str(folders["lm"]), "--max-new-tokens", "2", "--seed", "1"])
    one_line(capsys, rc, "line 2 of the input (stdin)", "byte 0xe9", "pass UTF-8 text", strict=False)


def test_classify_stdin_with_undecodable_bytes(folders, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\n\xff\xfe\n"), encoding="utf-8"))
    one_line(capsys, main(["classify", "--model", str(folders["classifier"]), "-"]), "line 2", "byte 0xff")


# ================================================================================================================
# 5. help shows the effective defaults
# ================================================================================================================


def test_pretrain_help_shows_the_default_config_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    steps = yaml.safe_load((REPO / "configs" / "tiny-cpu.yaml").read_text())["max_steps"]
    text = text.replace("tiny- cpu", "tiny-cpu")
    max_steps_help = text.split("--max-steps MAX_STEPS")[-1].split("--epochs EPOCHS")[0]
    assert f"(default: {steps}, from configs/tiny-cpu.yaml)" in max_steps_help, max_steps_help


# ================================================================================================================
# 6. kill -9 at five moments of a pretrain run, each resumed: byte-identical to the uninterrupted run
# ================================================================================================================


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = cli(["pretrain", *run_flags(corpus, out, tokenizer_dir)])
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return out


def _losses(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    history = [(h["step"], h.get("train_loss"), h.get("val_loss")) for h in metrics["history"]]
    final = {k: v for k, v in metrics["final"].items() if k.endswith("loss") or k == "step"}
    return {"history": history, "final": final, "samples": metrics.get("samples")}


# fault point, what --out holds after the kill, the command that finishes the run
KILLS = [
    ("step:2", "before the first checkpoint: no checkpoint, a stale lock", []),
    ("checkpoint-write:1", "inside the first checkpoint write: only .tmp-step-4", ["--resume"]),
    ("step:6", "after the first checkpoint: step-4", ["--resume"]),
    ("checkpoint-write:2", "inside a later checkpoint write: step-4 and .tmp-step-8", ["--resume"]),
    ("final-write:1", "during the final write, staged: step-12 and .final-*", ["--resume"]),
    ("final-publish:3", "during the final write, 3 files published", ["--resume"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("fault,moment,finish", KILLS, ids=[k[0] for k in KILLS])
def test_kill9_then_resume_is_byte_identical(fault, moment, finish, straight, corpus, tokenizer_dir, tmp_path, capsys,
                                            one_thread):
    out = tmp_path / "run"
    proc = cli(["pretrain", *run_flags(corpus, out, tokenizer_dir)], fault=fault)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    assert (out / LOCK).is_file(), "a killed run leaves its lock"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").exists() else []
    expected = {
        "step:2": [], "checkpoint-write:1": [".tmp-step-4"], "step:6": ["step-4"],
        "checkpoint-write:2": [".tmp-step-8", "step-4"], "final-write:1": ["step-12", "step-8"],
        "final-publish:3": ["step-12", "step-8"],
    }[fault]
    assert ckpts == expected, (moment, ckpts)
    if fault.startswith("final-write"):
        assert list(out.glob(".final-*")) and not (out / "model.safetensors").exists()
    if fault.startswith("final-publish"):
        assert list(out.glob(".final-*")) and (out / "config.json").is_file()

    # the dead run's lock file stays, but the kernel released its lock: the same command with --resume continues
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir), *finish])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    resumed_from = {"step:6": "step-4", "checkpoint-write:2": "step-4"}.get(fault, "step-12")
    if ckpts and not fault.startswith("checkpoint-write:1"):
        assert f"resumed from {out / 'checkpoints' / resumed_from}" in captured.out, moment
    else:  # nothing to resume: the run starts again from step 0, said so
        assert "stopped before its first checkpoint" in captured.err and "resumed from" not in captured.out
    assert (out / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes(), moment
    assert _losses(out) == _losses(straight), moment
    leftovers = [p.name for p in [*out.iterdir(), *(out / "checkpoints").iterdir()] if p.name.startswith(".")]
    assert leftovers == [], leftovers
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-12", "step-8"]


@pytest.mark.slow
def test_kill9_during_a_resumed_run_then_resume_again(straight, corpus, tokenizer_dir, tmp_path, capsys, one_thread):
    """Killed twice (after the first checkpoint, then inside the resumed run's next checkpoint write): still exact."""
    out = tmp_path / "run"
    assert cli(["pretrain", *run_flags(corpus, out, tokenizer_dir)], fault="step:5").returncode == -signal.SIGKILL
    proc = cli(["pretrain", *run_flags(corpus, out, tokenizer_dir), "--resume"],
               fault="checkpoint-write:1")
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [".tmp-step-8", "step-4"]
    rc = main(["pretrain", *run_flags(corpus, out, tokenizer_dir), "--resume"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    assert _losses(out) == _losses(straight)
