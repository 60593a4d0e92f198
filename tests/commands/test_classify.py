"""Classifier fine-tuning (the book's chapter 6), `classify` and `evaluate`: on a tiny base model built here.

The base is an untrained 2-block causal LM (hidden 32, context 64) with a byte-level BPE tokenizer trained on the
test texts; the data are ~100 separable texts ("... win cash prize ..." vs "... see you at lunch ...").
"""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.cli import main
from pipelines.data.tables import balance_undersample, read_labeled_table

PREFIXES = ["hey", "ok", "so", "well", "note", "fyi", "yes", "hi", "look", "friend"]
SUFFIXES = ["now", "today", "thanks", "please", "soon", "ok", "later", "bye", "again", "tomorrow"]
HIDDEN, LAYERS, HEADS, CONTEXT = 32, 2, 4, 64


def toy_records(n_per_class=50, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n_per_class):
        rows.append(("spam", f"{rng.choice(PREFIXES)} win cash prize {rng.choice(SUFFIXES)}"))
        rows.append(("ham", f"{rng.choice(PREFIXES)} see you at lunch {rng.choice(SUFFIXES)}"))
    rng.shuffle(rows)
    return rows


def write_tsv(path: Path, rows) -> Path:
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def toy_tsv(data_dir):
    return write_tsv(data_dir / "toy.tsv", toy_records())


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny causal-LM folder: untrained model + a byte-level BPE tokenizer trained on the test texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM

    texts = [text for _, text in toy_records()] + ["the other label", "an unrelated sentence about nothing"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    config = GPTScratchConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=CONTEXT,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "base"
    GPTScratchForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def finetune_args(base, data, out, *extra):
    return [
        "finetune-classifier", "--model", str(base), "--data", str(data), "--out", str(out),
        "--mixed-precision", "no", "--log-every", "5", *map(str, extra),
    ]


@pytest.fixture(scope="module")
def trained(base_dir, toy_tsv, tmp_path_factory):
    """A classifier fine-tuned with every parameter trainable (learning rate raised for the untrained base)."""
    out = tmp_path_factory.mktemp("runs") / "clf"
    rc = main(finetune_args(base_dir, toy_tsv, out, "--trainable", "all", "--learning-rate", "3e-3", "--epochs", "5"))
    assert rc == 0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the head and freezing
# ---------------------------------------------------------------------------------------------------------------------


def expected_counts(num_labels=2, qkv_bias=True):
    h, inner = HIDDEN, 4 * HIDDEN
    block = 2 * h + (3 * h * h + (3 * h if qkv_bias else 0)) + (h * h + h) + 2 * h + (h * inner + inner) + (inner * h + h)
    head = h * num_labels + num_labels
    final_norm = 2 * h
    return block, head, final_norm


@pytest.mark.parametrize("mode", ["head", "last-block", "last-two-blocks", "all"])
def test_trainable_modes_freeze_exactly_what_they_say(base_dir, mode):
    from pipelines.commands.finetune_classifier import freeze_for
    from pipelines.runs.folders import load_base_as_classifier

    model = load_base_as_classifier(base_dir, ["ham", "spam"])
    n = freeze_for(model, mode)
    block, head, final_norm = expected_counts()
    total = sum(p.numel() for p in model.parameters())
    expected = {
        "head": head,
        "last-block": block + final_norm + head,
        "last-two-blocks": 2 * block + final_norm + head,
        "all": total,
    }[mode]
    assert n == expected
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    allowed = {
        "head": ("score.",),
        "last-block": ("score.", "transformer.final_norm.", f"transformer.blocks.{LAYERS - 1}."),
        "last-two-blocks": ("score.", "transformer.final_norm.", "transformer.blocks."),
        "all": ("",),
    }[mode]
    for name, param in model.named_parameters():
        assert param.requires_grad == name.startswith(allowed), name


def test_new_head_is_fresh_and_the_body_is_the_base(base_dir):
    from pipelines.runs.folders import load_base_as_classifier

    model = load_base_as_classifier(base_dir, ["a", "b", "c"])
    assert model.score.weight.shape == (3, HIDDEN)
    assert torch.all(model.score.bias == 0)
    assert 0.01 < model.score.weight.std().item() < 0.04  # N(0, 0.02), not left-over memory
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.label2id == {"a": 0, "b": 1, "c": 2}
    base = load_file(base_dir / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if not name.startswith("score."):
            assert torch.equal(tensor, base[name]), name


def test_truncation_is_counted(base_dir):
    from pipelines.commands.finetune_classifier import _load_tokenizer
    from pipelines.data.tables import encode_texts

    tok = _load_tokenizer(str(base_dir))
    ids, cut = encode_texts(tok, ["hey win cash prize now", "ok"], 3)
    assert cut == 1 and len(ids[0]) == 3 and ids[0] == tok("hey win cash prize now")["input_ids"][:3]


# ---------------------------------------------------------------------------------------------------------------------
# fine-tuning end to end
# ---------------------------------------------------------------------------------------------------------------------


def test_finetune_reaches_full_accuracy_and_writes_the_run_folder(trained, base_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "run_config.yaml",
                 "README.md", "plots/loss.png", "plots/accuracy.png", "modeling_gpt_scratch.py"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    final = metrics["final"]
    assert final["test_accuracy"] == 1.0
    assert final["test_f1"] == 1.0 and final["test_precision"] == 1.0 and final["test_recall"] == 1.0
    assert final["trainable"] == "all" and final["trainable_parameters"] == final["parameters"]
    assert metrics["workflow"] == "finetune-classifier"
    assert metrics["labels"] == ["ham", "spam"]
    matrix = metrics["confusion_matrix"]["rows_true_columns_predicted"]
    assert sum(map(sum, matrix)) == 20 and matrix[0][1] == matrix[1][0] == 0

    # evaluated once per epoch: 70 training examples // batch 8 = 8 steps per epoch, 5 epochs
    evals = [h["step"] for h in metrics["history"] if "val_accuracy" in h]
    assert evals == [0, 8, 16, 24, 32, 40]
    assert all(h["train_accuracy"] is not None for h in metrics["history"] if "val_accuracy" in h)

    config = json.loads((trained / "config.json").read_text())
    assert config["architectures"] == ["GPTScratchForSequenceClassification"]
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["pad_token_id"] == 0

    import yaml

    run_config = yaml.safe_load((trained / "run_config.yaml").read_text())
    assert run_config["base_model"] == str(base_dir) and run_config["trainable"] == "all"

    splits = {n: [json.loads(x) for x in (trained / "splits" / f"{n}.jsonl").read_text().splitlines()]
              for n in ("train", "val", "test")}
    assert {n: len(v) for n, v in splits.items()} == {"train": 70, "val": 10, "test": 20}
    keys = [(r["text"], r["label"]) for v in splits.values() for r in v]
    assert sorted(keys) == sorted((t, label) for label, t in toy_records())  # disjoint and covering


def test_pooling_uses_the_last_real_token_under_right_padding(trained):
    from pipelines.runs.folders import FolderKind, open_model

    model, tok = open_model(trained, (FolderKind.CLASSIFIER,))
    texts = ["hey win cash prize now", "ok", "friend see you at lunch tomorrow please"]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert tok.padding_side == "right" and (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        padded = model(**batch).logits
        alone = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_pipeline_returns_the_data_label_names(trained):
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(trained), trust_remote_code=True)
    results = classifier(["hey win cash prize now", "so see you at lunch later"])
    assert [r["label"] for r in results] == ["spam", "ham"]
    assert all(0.5 < r["score"] <= 1 for r in results)


def test_classify_cli_prints_label_and_score(trained, capsys):
    assert main(["classify", "--model", str(trained), "ok win cash prize soon", "hi see you at lunch today"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["spam", "ham"]
    assert all(0.5 < float(line.split("\t")[1]) <= 1 for line in lines)


def test_evaluate_cli_reports_accuracy(trained, tmp_path, capsys):
    result = tmp_path / "eval.json"
    test_split = trained / "splits" / "test.jsonl"
    assert main(["evaluate", "--model", str(trained), "--data", str(test_split), "--out", str(result)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "1.0000" in out
    numbers = json.loads(result.read_text())
    assert numbers["kind"] == "classifier" and numbers["accuracy"] == 1.0 and numbers["f1"] == 1.0
    assert numbers["examples"] == 20


def test_last_block_finetune_changes_only_the_last_block_norm_and_head(base_dir, toy_tsv, tmp_path):
    out = tmp_path / "lastblock"
    rc = main(finetune_args(base_dir, toy_tsv, out, "--trainable", "last-block", "--epochs", "1", "--learning-rate", "1e-3"))
    assert rc == 0
    base, tuned = load_file(base_dir / "model.safetensors"), load_file(out / "model.safetensors")
    trainable = (f"transformer.blocks.{LAYERS - 1}.", "transformer.final_norm.")
    for name, tensor in tuned.items():
        if not name.startswith(("score.",) + trainable):
            assert torch.equal(tensor, base[name]), f"{name} is frozen but changed"
    assert not torch.equal(tuned[f"transformer.blocks.{LAYERS - 1}.att.qkv_proj.weight"], base[f"transformer.blocks.{LAYERS - 1}.att.qkv_proj.weight"])
    final = json.loads((out / "metrics.json").read_text())["final"]
    block, head, final_norm = expected_counts()
    assert final["trainable"] == "last-block" and final["trainable_parameters"] == block + final_norm + head


def test_defaults_are_the_measured_ones(base_dir, toy_tsv, tmp_path):
    """The defaults chosen by the SMS sweep (BENCHMARKS.md, "Classifier defaults by measurement"): all layers, lr 5e-4,
    5 epochs; a run without --trainable trains every parameter."""
    import yaml

    from pipelines.settings import ClassifierSettings
    from pipelines.commands.finetune_classifier import trainable_mode

    cfg = ClassifierSettings()
    assert (trainable_mode(cfg), cfg.learning_rate, cfg.epochs, cfg.lr_schedule) == ("all", 5e-4, 5.0, "constant")
    assert cfg.trainable is None and cfg.lora_rank == 0
    out = tmp_path / "defaults"
    assert main(finetune_args(base_dir, toy_tsv, out, "--epochs", "1")) == 0
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["trainable"] == "all" and final["trainable_parameters"] == final["parameters"]
    assert final["trainable_percent"] == 100.0
    run_config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert run_config["trainable"] == "all" and run_config["learning_rate"] == 5e-4


# ---------------------------------------------------------------------------------------------------------------------
# evaluate on a causal LM
# ---------------------------------------------------------------------------------------------------------------------


def test_lm_windows_score_every_token_once():
    from pipelines.evals.text import lm_windows

    tokens = list(range(23))
    for length, stride in ((8, 8), (8, 3), (5, 1), (30, 30)):
        windows = lm_windows(tokens, length, stride)
        targets = [t for _, ys in windows for t in ys if t != -100]
        assert targets == tokens[1:], (length, stride)
        assert all(len(x) == len(y) <= length for x, y in windows)
        assert all(y[i] == tokens[tokens.index(x[i]) + 1] for x, y in windows for i in range(len(x)) if y[i] != -100)


def test_evaluate_lm_reports_loss_and_perplexity(base_dir, data_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "hey win cash prize now. so see you at lunch later"
    path = data_dir / "lm.txt"
    path.write_text(text, encoding="utf-8")
    result = tmp_path / "lm.json"
    assert main(["evaluate", "--model", str(base_dir), "--data", str(path), "--out", str(result)]) == 0
    assert "perplexity" in capsys.readouterr().out
    numbers = json.loads(result.read_text())
    tok = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=True)
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    model = AutoModelForCausalLM.from_pretrained(base_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        reference = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert numbers["kind"] == "causal-lm" and numbers["tokens_scored"] == len(ids) - 1
    assert numbers["loss"] == pytest.approx(reference, rel=1e-4)
    assert numbers["perplexity"] == pytest.approx(torch.tensor(reference).exp().item(), rel=1e-4)
    # overlapping windows score the same tokens; each with at least as much context
    assert main(["evaluate", "--model", str(base_dir), "--data", str(path), "--max-length", "6", "--stride", "2",
                 "--out", str(result)]) == 0
    assert json.loads(result.read_text())["tokens_scored"] == len(ids) - 1


# ---------------------------------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing left behind
# ---------------------------------------------------------------------------------------------------------------------


def assert_one_line_error(capsys, rc, *phrases):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def test_missing_column_lists_the_available_ones(base_dir, toy_tsv, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(finetune_args(base_dir, toy_tsv, out, "--text-column", "message_body"))
    assert_one_line_error(capsys, rc, "no column 'message_body'", "available columns: '0', '1'")
    assert not out.exists()


def test_one_class_only(base_dir, data_dir, tmp_path, capsys):
    data = write_tsv(data_dir / "one.tsv", [(label, text) for label, text in toy_records() if label == "ham"])
    out = tmp_path / "run"
    assert_one_line_error(capsys, main(finetune_args(base_dir, data, out)), "only one class")
    assert not out.exists()


def test_empty_text(base_dir, data_dir, tmp_path, capsys):
    rows = toy_records()
    rows[7] = ("spam", "   ")
    data = write_tsv(data_dir / "empty.tsv", rows)
    out = tmp_path / "run"
    assert_one_line_error(capsys, main(finetune_args(base_dir, data, out)), "empty text", "line 8")
    assert not out.exists()


def test_label_in_test_but_not_in_train(base_dir, toy_tsv, data_dir, tmp_path, capsys):
    test = write_tsv(data_dir / "test.tsv", [("spam", "win cash prize"), ("ham", "see you"), ("other", "the other label")])
    out = tmp_path / "run"
    rc = main(finetune_args(base_dir, toy_tsv, out, "--test-data", test))
    assert_one_line_error(capsys, rc, "'other'", "test split", "never in the training split")
    assert not out.exists()


def test_base_that_is_a_classifier(trained, toy_tsv, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(finetune_args(trained, toy_tsv, out))
    assert_one_line_error(capsys, rc, "already a classifier", "not a causal language model")
    assert not out.exists()


def test_base_without_weights(base_dir, toy_tsv, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((base_dir / name).read_bytes())
    out = tmp_path / "run"
    assert_one_line_error(capsys, main(finetune_args(broken, toy_tsv, out)), "no weights")
    assert not out.exists()


def test_base_hub_id_offline_needs_the_network(toy_tsv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    rc = main(finetune_args("nobody-here/no-such-model", toy_tsv, out))
    assert_one_line_error(capsys, rc, "needs the network")
    assert not out.exists()


def test_existing_out_is_left_alone(base_dir, toy_tsv, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(capsys, main(finetune_args(base_dir, toy_tsv, out)), "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_classify_refuses_a_causal_lm(base_dir, capsys):
    assert_one_line_error(capsys, main(["classify", "--model", str(base_dir), "hello"]), "not a classifier")


def test_evaluate_refuses_unknown_labels(trained, data_dir, capsys):
    data = write_tsv(data_dir / "unknown.tsv", [("spam", "win cash prize"), ("other", "the other label")])
    rc = main(["evaluate", "--model", str(trained), "--data", str(data)])
    assert_one_line_error(capsys, rc, "'other'", "does not know")


# ---------------------------------------------------------------------------------------------------------------------
# the real SMS Spam Collection: read, balance and split only (no training in the test suite)
# ---------------------------------------------------------------------------------------------------------------------


def test_sms_spam_collection_reads_balances_and_splits(shared_data):
    from collections import Counter
    from pipelines.settings import ClassifierSettings
    from pipelines.commands.finetune_classifier import build_splits, check_labels

    path = shared_data / "SMSSpamCollection.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    records = read_labeled_table(path)
    counts = Counter(r["label"] for r in records)
    assert counts["spam"] == 747 and set(counts) == {"ham", "spam"}
    balanced = balance_undersample(records, seed=123)
    assert Counter(r["label"] for r in balanced) == {"ham": 747, "spam": 747}

    cfg = ClassifierSettings(data=str(path))
    splits = build_splits(cfg, log=lambda *_: None)
    n = 2 * 747
    assert {k: len(v) for k, v in splits.items()} == {"train": int(0.7 * n), "val": int(0.1 * n), "test": n - int(0.7 * n) - int(0.1 * n)}
    assert {k: len(v) for k, v in splits.items()} == {"train": 1045, "val": 149, "test": 300}
    texts = [(r["text"], r["label"]) for part in splits.values() for r in part]
    assert sorted(texts) == sorted((r["text"], r["label"]) for r in balanced)
    assert check_labels(splits) == ["ham", "spam"]
