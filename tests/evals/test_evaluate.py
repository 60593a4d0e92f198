"""`gpt-scratch evaluate` the way the field reports it: HellaSwag, bits per byte, a FineWeb-style test slice,
lm-evaluation-harness, and the numbers recorded into metrics.json and the cards.

The oracle is transformers' own ``GPT2LMHeadModel``: a random tiny one (every parameter perturbed, so a wrong position,
target or mask moves the numbers far past the tolerances) is converted to our model, and every number `evaluate`
reports is recomputed here directly from the GPT-2 model with the same weights.
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pipelines.formats.hf_gpt2 import convert_hf_gpt2
from pipelines.runs.tokenizers import train_bpe_tokenizer
from pipelines.cli import main
from pipelines.data.tokens import load_tokens, split_tokens

VOCAB, CONTEXT = 300, 64
WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in green trees".split()


def sentence(rng, n):
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


@pytest.fixture(scope="module")
def tokenizer():
    rng = np.random.default_rng(0)
    return train_bpe_tokenizer([sentence(rng, 40) for _ in range(200)], VOCAB)


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory, tokenizer):
    """(our converted model folder, the GPT2LMHeadModel it came from)."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    reference = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    root = tmp_path_factory.mktemp("models")
    reference.save_pretrained(root / "gpt2")
    tokenizer.save_pretrained(root / "gpt2")
    return convert_hf_gpt2(str(root / "gpt2"), root / "ours"), reference


def one_error_line(capsys, rc, *phrases):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err
    return err


# ---------------------------------------------------------------------------------------------------------------------
# HellaSwag
# ---------------------------------------------------------------------------------------------------------------------


def hellaswag_items():
    rng = np.random.default_rng(1)
    items = []
    for i in range(6):
        endings = [sentence(rng, int(rng.integers(1, 7))) for _ in range(4)]
        items.append({"ind": i, "ctx": sentence(rng, int(rng.integers(3, 12))), "endings": endings, "label": i % 4})
    items[1]["label"] = str(items[1]["label"])  # the Hub's labels are strings
    items[2] = {"ctx_a": "the dog ran to the park.", "ctx_b": "birds", "endings": items[2]["endings"], "label": 2}
    items[4]["ctx"] = sentence(rng, 90)  # longer than the context: cut from the left, the ending kept
    return items


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reference_logliks(reference, tokenizer, item):
    ctx = item.get("ctx") or f"{item['ctx_a']} {item['ctx_b']}"
    ctx_ids = tokenizer(ctx)["input_ids"]
    out = []
    for ending in item["endings"]:
        end_ids = tokenizer(" " + ending)["input_ids"]
        seq = (ctx_ids + end_ids)[-(CONTEXT + 1):]
        with torch.no_grad():
            logprobs = reference(torch.tensor([seq[:-1]])).logits[0].log_softmax(-1)
        n = len(end_ids)
        out.append(sum(logprobs[j - 1, seq[j]].item() for j in range(len(seq) - n, len(seq))))
    return out


@pytest.fixture(scope="module")
def hellaswag_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("hs") / "hellaswag_val.jsonl", hellaswag_items())


def test_hellaswag_logliks_match_gpt2_and_give_acc(model_pair, tokenizer, hellaswag_file, tmp_path, capsys):
    folder, reference = model_pair
    out = tmp_path / "hs.json"
    assert main(["evaluate", "--model", str(folder), "--task", "hellaswag", "--data", str(hellaswag_file),
                 "--batch-size", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "acc_norm" in printed
    results = json.loads(out.read_text())
    items = hellaswag_items()
    assert results["items"] == 6 and results["contexts_cut"] == 1 and len(results["per_item"]) == 6
    preds, preds_norm = [], []
    for item, got in zip(items, results["per_item"]):
        expected = reference_logliks(reference, tokenizer, item)
        np.testing.assert_allclose(got["logliks"], expected, atol=1e-4, rtol=0)
        assert max(abs(a - b) for a in expected for b in expected) > 0.1  # the candidates are told apart
        lengths = [len(e.encode("utf-8")) for e in item["endings"]]
        assert got["ending_bytes"] == lengths
        preds.append(int(np.argmax(expected)))
        preds_norm.append(int(np.argmax(np.array(expected) / lengths)))
        assert (got["pred"], got["pred_norm"]) == (preds[-1], preds_norm[-1])
    labels = [int(item["label"]) for item in items]
    assert results["acc"] == pytest.approx(np.mean([p == y for p, y in zip(preds, labels)]))
    assert results["acc_norm"] == pytest.approx(np.mean([p == y for p, y in zip(preds_norm, labels)]))
    assert preds != preds_norm  # the two conventions disagree on this data, so each is checked on its own
    assert results["per_item"][4]["context_cut"] and not results["per_item"][0]["context_cut"]

    # --limit: the first N items; one item per batch gives the same numbers as four
    assert main(["evaluate", "--model", str(folder), "--task", "hellaswag", "--data", str(hellaswag_file),
                 "--batch-size", "1", "--limit", "3", "--out", str(out)]) == 0
    limited = json.loads(out.read_text())
    assert limited["items"] == 3
    for a, b in zip(limited["per_item"], results["per_item"][:3]):
        np.testing.assert_allclose(a["logliks"], b["logliks"], atol=1e-5, rtol=0)


def test_hellaswag_bad_input(model_pair, tmp_path, capsys):
    folder, _ = model_pair
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"ctx": "the cat", "endings": ["a", "b"], "label": 5}])
    rc = main(["evaluate", "--model", str(folder), "--task", "hellaswag", "--data", str(bad)])
    one_error_line(capsys, rc, "line 1", "label")
    rc = main(["evaluate", "--model", str(folder), "--task", "hellaswag"])  # the Hub default, offline
    one_error_line(capsys, rc, "Rowan/hellaswag", "HF_HUB_OFFLINE", "--data")
    rc = main(["evaluate", "--model", str(folder), "--task", "mmlu"])
    one_error_line(capsys, rc, "unknown --task", "hellaswag")
    rc = main(["evaluate", "--model", str(folder), "--task", "hellaswag", "--seq-len", "16"])
    one_error_line(capsys, rc, "--seq-len does not apply to hellaswag", "fineweb-test")


# ---------------------------------------------------------------------------------------------------------------------
# bits per byte
# ---------------------------------------------------------------------------------------------------------------------


def test_text_evaluation_reports_bits_per_byte(model_pair, tokenizer, tmp_path):
    folder, reference = model_pair
    text = "the cat sat on a mat. naïve café birds 🙂 sang in green trees\nand the dog ran to the park"
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "lm.json"
    assert main(["evaluate", "--model", str(folder), "--data", str(path), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        loss = reference(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    scored_text = tokenizer.decode(ids[1:], skip_special_tokens=True)
    n_bytes = len(scored_text.encode("utf-8"))
    assert n_bytes == len(text.encode("utf-8")) - len(tokenizer.decode(ids[:1]).encode("utf-8"))
    assert results["tokens_scored"] == len(ids) - 1 and results["bytes_scored"] == n_bytes
    assert results["loss"] == pytest.approx(loss, rel=1e-5)
    assert results["bpb"] == pytest.approx(loss / math.log(2) * (len(ids) - 1) / n_bytes, rel=1e-5)


def test_byte_counts_are_exact_inside_multibyte_characters(tokenizer):
    from pipelines.runs.tokenizers import ByteCounter, bytes_per_token

    text = "birds 🙂 sang é in green trees and the cat"
    ids = tokenizer(text)["input_ids"]
    count = ByteCounter(tokenizer)
    assert count(ids) == len(text.encode("utf-8"))
    assert count(ids + [tokenizer.eos_token_id]) == len(text.encode("utf-8"))  # the separator is no text
    # the bytes of any cut add up, even where a cut splits a character (decoding such a piece gives U+FFFD)
    assert all(count(ids[:k]) + count(ids[k:]) == len(text.encode("utf-8")) for k in range(len(ids)))
    assert bytes_per_token(tokenizer, np.array(ids)) == pytest.approx(len(text.encode("utf-8")) / len(ids))
    sampled = bytes_per_token(tokenizer, np.array(ids * 50), sample_tokens=len(ids) * 8, pieces=8)
    assert sampled == pytest.approx(len(text.encode("utf-8")) / len(ids), rel=0.1)


def test_pretraining_reports_val_and_test_bpb(tmp_path, capsys):
    from pipelines.runs.tokenizers import count_bytes
    from pipelines.runs.tokenizers import open_tokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(3)
    for d in range(8):
        (corpus / f"doc{d}.txt").write_text(sentence(rng, 250) + " é", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(corpus), "--out", str(out), "--preset", "tiny", "--hidden-size", "32",
                 "--num-hidden-layers", "1", "--num-attention-heads", "2", "--context-length", "16",
                 "--vocab-size", "300", "--batch-size", "4", "--max-steps", "6", "--eval-every", "3",
                 "--log-every", "3", "--sample-tokens", "4", "--mixed-precision", "no", "--seed", "5"]) == 0
    log = capsys.readouterr().out
    assert "val_bpb" in log and "test bpb" in log
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    # the bytes-per-token ratio of each held-out split, recomputed from the cached token stream
    tokenizer = open_tokenizer(str(out))
    shards = next((out / "cache").glob("tokens-*"))
    splits = split_tokens(load_tokens(shards), fractions=(0.9, 0.05, 0.05), seed=5, context_length=16)
    for name in ("val", "test"):
        part = np.asarray(splits[name])
        ratio = count_bytes(tokenizer, part) / len(part)
        assert final[f"{name}_bytes_per_token"] == pytest.approx(ratio)
        assert final[f"{name}_bpb"] == pytest.approx(final[f"{name}_loss"] / math.log(2) / ratio)
    evals = [h for h in metrics["history"] if "val_loss" in h]
    assert len(evals) >= 2 and all(h["val_bpb"] == pytest.approx(h["val_loss"] / math.log(2) /
                                                                  final["val_bytes_per_token"]) for h in evals)
    card = (out / "README.md").read_text()
    assert "bits per byte" in card and "type: bpb" in card
    assert "val_bpb" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# the FineWeb-style test slice
# ---------------------------------------------------------------------------------------------------------------------


def reference_slice_loss(reference, stream, start, batches, batch, seq):
    piece = torch.tensor(np.asarray(stream[start : start + batches * batch * seq + 1], dtype=np.int64))
    windows = batches * batch
    x = torch.stack([piece[k * seq : (k + 1) * seq] for k in range(windows)])
    y = torch.stack([piece[k * seq + 1 : (k + 1) * seq + 1] for k in range(windows)])
    with torch.no_grad():
        logits = reference(x).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)).item(), piece


def fineweb_args(folder, data, *extra, start=100):
    return ["evaluate", "--model", str(folder), "--task", "fineweb-test", "--data", str(data), "--start-token",
            str(start), "--batches", "3", "--batch-size", "2", "--seq-len", "16", *extra]


def test_fineweb_slice_is_exactly_the_expected_tokens(model_pair, tokenizer, tmp_path, capsys):
    from pipelines.data.tokens import build_token_shards

    folder, reference = model_pair
    rng = np.random.default_rng(4)
    docs = [sentence(rng, int(rng.integers(20, 60))) for _ in range(12)]
    eos = tokenizer.eos_token_id
    # the text stream: end-of-text before every document (llm.c's fineweb.py layout)
    stream = np.array([t for d in docs for t in [eos] + tokenizer(d)["input_ids"]], dtype=np.int64)
    assert len(stream) > 300
    expected, piece = reference_slice_loss(reference, stream, 100, 3, 2, 16)
    assert len(piece) == 97
    n_bytes = len(tokenizer.decode(piece[1:].tolist(), skip_special_tokens=True).encode("utf-8"))

    sources = {
        "jsonl": write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs]),
        "npy": tmp_path / "tokens.npy",
        "raw-bin": tmp_path / "raw.bin",
        "llmc-bin": tmp_path / "llmc.bin",
    }
    np.save(sources["npy"], stream.astype(np.uint16))
    stream.astype("<u2").tofile(sources["raw-bin"])
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(stream))
    sources["llmc-bin"].write_bytes(header.tobytes() + stream.astype("<u2").tobytes())
    for name, path in sources.items():
        out = tmp_path / f"{name}.json"
        assert main(fineweb_args(folder, path, "--out", str(out))) == 0, name
        results = json.loads(out.read_text())
        assert results["tokens_scored"] == 96 and results["slice"] == "stream[100:197]"
        assert results["loss"] == pytest.approx(expected, rel=1e-5), name
        assert results["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
        assert results["bytes_scored"] == n_bytes
        assert results["bpb"] == pytest.approx(expected / math.log(2) * 96 / n_bytes, rel=1e-5)
    assert "bpb" in capsys.readouterr().out

    # the project's own token-shard folder (end-of-text after each document): its stored stream, sliced the same way
    shard_dir = build_token_shards(docs, lambda b: [tokenizer(d)["input_ids"] for d in b], eos, tmp_path / "shards",
                                   VOCAB, shard_tokens=150)
    shard_stream = np.array([t for d in docs for t in tokenizer(d)["input_ids"] + [eos]])
    shard_expected, _ = reference_slice_loss(reference, shard_stream, 100, 3, 2, 16)
    out = tmp_path / "shards.json"
    assert main(fineweb_args(folder, shard_dir, "--out", str(out))) == 0
    assert json.loads(out.read_text())["loss"] == pytest.approx(shard_expected, rel=1e-5)
    assert shard_expected != pytest.approx(expected, rel=1e-3)  # a one-token shift is a different slice

    # one token later is another slice
    other, _ = reference_slice_loss(reference, stream, 101, 3, 2, 16)
    assert main(fineweb_args(folder, sources["npy"], "--out", str(out), start=101)) == 0
    assert json.loads(out.read_text())["loss"] == pytest.approx(other, rel=1e-5)
    assert other != pytest.approx(expected, rel=1e-3)


def test_fineweb_bad_input(model_pair, tmp_path, capsys):
    folder, _ = model_pair
    short = tmp_path / "short.npy"
    np.save(short, np.arange(150, dtype=np.uint16) % VOCAB)
    one_error_line(capsys, main(fineweb_args(folder, short)), "150 tokens", "197")
    too_big = tmp_path / "big.npy"
    np.save(too_big, np.full(400, VOCAB + 5, dtype=np.uint16))
    one_error_line(capsys, main(fineweb_args(folder, too_big)), "vocabulary")
    rc = main(["evaluate", "--model", str(folder), "--task", "fineweb-test", "--data", str(short)])
    one_error_line(capsys, rc, "--seq-len 1024", "64")
    rc = main(["evaluate", "--model", str(folder), "--task", "fineweb-test", "--seq-len", "16"])
    one_error_line(capsys, rc, "HuggingFaceFW/fineweb", "network")


# ---------------------------------------------------------------------------------------------------------------------
# lm-evaluation-harness
# ---------------------------------------------------------------------------------------------------------------------


def write_lm_eval_task(folder, data_file):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy_completion.yaml").write_text(
        "task: toy_completion\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{ctx}}"\n'
        'doc_to_choice: "{{endings}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def lm_eval_tasks(tmp_path_factory):
    """(a folder with one local multiple-choice task YAML, its JSONL data): HellaSwag-like items."""
    root = tmp_path_factory.mktemp("lm_eval")
    items = [i for i in hellaswag_items() if "ctx" in i and len(i["ctx"].split()) < 40]
    for item in items:
        item["label"] = int(item["label"])
    data_file = write_jsonl(root / "toy.jsonl", items)
    return write_lm_eval_task(root / "tasks", data_file), data_file


def test_lm_eval_task_matches_the_harness_api(model_pair, lm_eval_tasks, tmp_path, capsys):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    folder, _ = model_pair
    tasks, data_file = lm_eval_tasks
    out = tmp_path / "lm_eval.json"
    assert main(["evaluate", "--model", str(folder), "--task", "lm-eval:toy_completion", "--lm-eval-include",
                 str(tasks), "--batch-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "toy_completion" in printed and "acc_norm" in printed  # the harness's own table
    ours = json.loads(out.read_text())["tasks"]["toy_completion"]

    direct = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={folder},trust_remote_code=True", tasks=["toy_completion"],
        batch_size=2, device="cpu", task_manager=TaskManager(include_path=str(tasks)),
    )
    row = direct["results"]["toy_completion"]
    assert ours["acc"] == row["acc,none"] and ours["acc_norm"] == row["acc_norm,none"]
    assert ours["acc_stderr"] == pytest.approx(row["acc_stderr,none"])

    # the harness's log-likelihoods are our HellaSwag scorer's: the same context + " ending" convention
    hs = tmp_path / "hs.json"
    assert main(["evaluate", "--model", str(folder), "--task", "hellaswag", "--data", str(data_file),
                 "--out", str(hs)]) == 0
    per_item = json.loads(hs.read_text())["per_item"]
    for sample in direct["samples"]["toy_completion"]:
        harness = [resp[0][0] for resp in sample["resps"]]
        np.testing.assert_allclose(per_item[sample["doc_id"]]["logliks"], harness, atol=1e-4, rtol=0)


def test_lm_eval_missing_or_unknown(model_pair, lm_eval_tasks, capsys, monkeypatch):
    import importlib.util
    import sys

    folder, _ = model_pair
    if importlib.util.find_spec("lm_eval") is not None:
        rc = main(["evaluate", "--model", str(folder), "--task", "lm-eval:toy_completon", "--lm-eval-include",
                   str(lm_eval_tasks[0])])
        one_error_line(capsys, rc, "no task 'toy_completon'", "did you mean toy_completion")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    rc = main(["evaluate", "--model", str(folder), "--task", "lm-eval:hellaswag"])
    one_error_line(capsys, rc, "pip install 'gpt-scratch[lm-eval]'")
    rc = main(["evaluate", "--model", str(folder), "--task", "lm-eval:"])
    one_error_line(capsys, rc, "lm-eval:TASK")


# ---------------------------------------------------------------------------------------------------------------------
# --record: metrics.json, the model card's model-index and report.md
# ---------------------------------------------------------------------------------------------------------------------


def test_record_puts_the_numbers_in_the_cards(model_pair, tokenizer, hellaswag_file, tmp_path, capsys):
    from huggingface_hub import ModelCard

    from pipelines.runs.cards import render_model_card, render_report

    src, _ = model_pair
    run = tmp_path / "run"
    shutil.copytree(src, run)
    (run / "metrics.json").write_text(json.dumps({
        "workflow": "pretrain", "final": {"val_loss": 3.5, "test_loss": 3.6, "test_bpb": 1.25, "step": 10},
    }))
    stream = np.tile(np.arange(1, 200, dtype=np.uint16), 3)
    np.save(tmp_path / "tokens.npy", stream)
    (tmp_path / "notes.txt").write_text("the cat sat on a mat and the dog ran to the park", encoding="utf-8")
    results = {}
    for name, args in {
        "hellaswag": ["--task", "hellaswag", "--data", str(hellaswag_file)],
        "fineweb-test": fineweb_args(run, tmp_path / "tokens.npy")[3:],
        "text:notes.txt": ["--data", str(tmp_path / "notes.txt")],
    }.items():
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--model", str(run), *args, "--record", "--out", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    assert "recorded in" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"]["val_loss"] == 3.5  # the rest is kept
    evaluations = metrics["evaluations"]
    assert set(evaluations) == {"hellaswag", "fineweb-test", "text:notes.txt"}
    assert "per_item" not in evaluations["hellaswag"]
    assert evaluations["hellaswag"]["acc_norm"] == results["hellaswag"]["acc_norm"]
    assert evaluations["hellaswag"]["data"] == "hellaswag_val.jsonl"  # no local folders in a published file
    assert str(tmp_path) not in (run / "metrics.json").read_text()

    # an lm-evaluation-harness result, recorded the same way (the harness itself is tested above)
    from pipelines.evals.record import record

    lm_eval_results = {"kind": "lm-eval", "tasks": {"arc_easy": {"acc": 0.25, "acc_stderr": 0.01, "acc_norm": 0.3}},
                       "n-shot": {"arc_easy": 0}, "dataset_paths": {"arc_easy": "allenai/ai2_arc"},
                       "dataset_names": {"arc_easy": "ARC-Easy"}, "limit": None}
    assert record(run, lm_eval_results) == ["lm-eval:arc_easy"]

    card = render_model_card(run)
    index = {}
    for result in card.data.eval_results:
        index[(result.dataset_name, result.metric_type)] = result.metric_value
    assert index[("HellaSwag", "acc")] == pytest.approx(results["hellaswag"]["acc"])
    assert index[("HellaSwag", "acc_norm")] == pytest.approx(results["hellaswag"]["acc_norm"])
    slice_name = next(name for name, _ in index if "test slice" in name)
    assert index[(slice_name, "loss")] == pytest.approx(results["fineweb-test"]["loss"])
    assert index[(slice_name, "bpb")] == pytest.approx(results["fineweb-test"]["bpb"])
    assert index[("notes.txt", "bpb")] == pytest.approx(results["text:notes.txt"]["bpb"])
    assert index[("arc_easy (lm-evaluation-harness)", "acc_norm")] == 0.3
    assert ("arc_easy (lm-evaluation-harness)", "acc_stderr") not in index
    arc = next(r for r in card.data.eval_results if r.dataset_name.startswith("arc_easy"))
    assert (arc.dataset_type, arc.dataset_config, arc.dataset_args) == ("allenai/ai2_arc", "ARC-Easy",
                                                                         {"num_few_shot": 0})
    # the run's own numbers stay in the index, next to the recorded ones
    assert sum(1 for r in card.data.eval_results if r.metric_type == "bpb") == 3  # test_bpb, slice, notes.txt
    # the folder's own README.md was refreshed, and it parses back with the same model-index
    written = ModelCard.load(run / "README.md")
    assert len(written.data.eval_results) == len(card.data.eval_results)
    assert "HellaSwag (6 items, hellaswag_val.jsonl): accuracy" in str(card)
    report = render_report(run)
    assert "## Benchmark evaluations" in report and "test bits per byte" in report
    assert f"{results['fineweb-test']['bpb']:.4g}" in report

    # measured again: the entry is replaced, not added
    assert main(["evaluate", "--model", str(run), "--task", "hellaswag", "--data", str(hellaswag_file),
                 "--limit", "2", "--record"]) == 0
    again = json.loads((run / "metrics.json").read_text())["evaluations"]
    assert set(again) == {"hellaswag", "fineweb-test", "text:notes.txt", "lm-eval:arc_easy"}
    assert again["hellaswag"]["items"] == 2


def test_evaluate_dependency_is_gone():
    """The `evaluate` package's metrics are Hub scripts (offline they fail) and nothing here used them."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert not any(d.split(">")[0].split("=")[0].strip() == "evaluate" for d in project["dependencies"])
    assert any(d.startswith("lm_eval") for d in project["optional-dependencies"]["lm-eval"])
