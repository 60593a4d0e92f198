"""Instruction fine-tuning (``finetune-instruct``) and answering (``respond``) on a tiny model, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines import cli
from pipelines.data.instructions import read_instructions
from pipelines.settings import InstructSettings
from pipelines.decoding.prompts import extract_response
from pipelines.commands.finetune_instruct import prepare_data, split_instructions
from pipelines.data.instructions import format_alpaca

REPO = Path(__file__).resolve().parents[2]

THINGS = ["sky", "grass", "sun", "snow", "coal", "rose", "sea", "lemon", "cloud", "leaf"]
COLORS = ["blue", "green", "yellow", "white", "black", "red", "blue", "yellow", "grey", "green"]
WORDS = ["cat", "dog", "bird", "tree", "house", "car", "book", "chair", "river", "lamp"]


def synthetic_records() -> list[dict]:
    """40 short Alpaca-style records in four shapes, with and without an input."""
    records = []
    for thing, color in zip(THINGS, COLORS):
        records.append({"instruction": f"What color is the {thing}?", "input": "", "output": f"The {thing} is {color}."})
    for word in WORDS:
        records.append(
            {"instruction": "Write the plural of the word.", "input": word, "output": f"The plural is {word}s."}
        )
    for i, word in enumerate(WORDS):
        records.append(
            {"instruction": "Count the letters in the word.", "input": word, "output": f"The word {word} has {len(word)} letters."}
        )
    for a, b in zip(range(2, 12), range(3, 13)):
        records.append({"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} plus {b} is {a + b}."})
    return records


@pytest.fixture(scope="module")
def records():
    return synthetic_records()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("data") / "instructions.json"
    path.write_text(json.dumps(records, indent=1))
    return path


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, records):
    """A randomly initialised tiny causal LM with a byte-level BPE tokenizer trained on the records."""
    from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
    from pipelines.runs.tokenizers import train_bpe_tokenizer

    tok = train_bpe_tokenizer([format_alpaca(r, with_response=True) for r in records], vocab_size=400)

    torch.manual_seed(0)
    config = GPTScratchConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("base")
    GPTScratchForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, base_model, data_file):
    """One short fine-tune through the CLI; the tests below inspect its run folder."""
    out = tmp_path_factory.mktemp("runs") / "instruct"
    rc = cli.main(
        [
            "finetune-instruct", "--model", str(base_model), "--data", str(data_file), "--out", str(out),
            "--epochs", "3", "--batch-size", "4", "--learning-rate", "5e-3", "--mixed-precision", "no",
            "--sample-count", "2", "--sample-tokens", "6",
        ]
    )
    assert rc == 0
    return out


# ---------------------------------------------------------------------------------------------------------------
# finetune-instruct
# ---------------------------------------------------------------------------------------------------------------


def test_finetune_lowers_validation_loss_and_records_the_run(finetuned, base_model):
    metrics = json.loads((finetuned / "metrics.json").read_text())
    final = metrics["final"]
    assert final["val_loss"] < final["initial_val_loss"] - 0.5
    assert final["test_loss"] == pytest.approx(final["test_loss"]) and final["test_loss"] > 0
    assert metrics["workflow"] == "finetune-instruct"
    evals = [h for h in metrics["history"] if h.get("eval")]
    assert len(evals) >= 3  # about every quarter epoch: 8 steps per epoch, evaluation every 2 steps
    # sample answers for the first two validation instructions at every evaluation, the initial one included
    assert len(metrics["samples"]) == 2 * (len(evals) + 1)
    assert all(isinstance(s["text"], str) and s["prompt"].endswith("### Response:\n") for s in metrics["samples"])
    import yaml

    run_config = yaml.safe_load((finetuned / "run_config.yaml").read_text())
    assert run_config["base_model"] == str(base_model)
    assert run_config["learning_rate"] == 5e-3 and run_config["weight_decay"] == 0.1
    assert run_config["records"] == {"train": 34, "val": 2, "test": 4}
    assert (finetuned / "plots" / "loss.png").is_file()


def test_splits_are_saved_in_the_books_shape(finetuned, records):
    splits = {name: json.loads((finetuned / "splits" / f"{name}.json").read_text()) for name in ("train", "val", "test")}
    assert [len(splits[n]) for n in ("train", "val", "test")] == [34, 2, 4]
    for part in splits.values():
        for rec in part:
            assert list(rec) == ["instruction", "input", "output"]
    together = sorted(json.dumps(r, sort_keys=True) for part in splits.values() for r in part)
    assert together == sorted(json.dumps(r, sort_keys=True) for r in records)
    assert splits == split_instructions(records, seed=123)  # the same seed cuts the same splits


def test_run_folder_loads_with_chat_template_and_greedy_generation_config(finetuned):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(finetuned, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(finetuned, trust_remote_code=True)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for record in (
        {"instruction": "Name a fruit.", "input": "", "output": ""},
        {"instruction": "Write the plural of the word.", "input": "lamp", "output": ""},
    ):
        message = {"role": "user", "content": record["instruction"]}
        if record["input"]:
            message["input"] = record["input"]
        rendered = tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
        assert rendered == format_alpaca(record)

    generation = GenerationConfig.from_pretrained(finetuned)
    assert generation.eos_token_id == eot and generation.pad_token_id == eot
    assert generation.do_sample is False
    assert generation.max_new_tokens is None  # no saved length overrides a caller's max_length
    assert model.generation_config.eos_token_id == eot

    # the model runs with the template and stops within its budget
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What color is the sky?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=5)
    assert out.shape[1] <= ids["input_ids"].shape[1] + 5


def test_mask_prompt_ignores_the_prompt_targets(base_model, records):
    from pipelines.runs.tokenizers import open_tokenizer

    tokenizer = open_tokenizer(str(base_model))
    splits = {"train": records[10:14], "val": records[:1], "test": []}
    outputs = {}
    for mask in (False, True):
        cfg = InstructSettings(mask_prompt=mask)
        datasets, collate, _ = prepare_data(cfg, tokenizer, splits, max_length=128, log=lambda *_: None)
        items = datasets["train"]
        batch = collate(items)
        outputs[mask] = (items, batch["input_ids"], batch["shift_labels"])
    items, inputs, plain = outputs[False]
    _, inputs_masked, masked = outputs[True]
    assert torch.equal(inputs, inputs_masked)
    eot = tokenizer.eos_token_id
    for row, item in enumerate(items):
        ids, n_prompt = item["input_ids"], item["prompt_len"]
        # the prompt tokens render exactly the prompt
        assert tokenizer.decode(ids[:n_prompt]) == format_alpaca(splits["train"][row])
        # without masking: every next token and the one end-of-text are targets
        assert plain[row, : len(ids)].tolist() == ids[1:] + [eot]
        assert (plain[row, len(ids) :] == -100).all()
        # with masking: the targets predicting prompt tokens are ignored, the response (and end-of-text) kept
        assert (masked[row, : n_prompt - 1] == -100).all()
        assert masked[row, n_prompt - 1 : len(ids)].tolist() == ids[n_prompt:] + [eot]
        assert (masked[row, len(ids) :] == -100).all()
    assert int((masked != -100).sum()) < int((plain != -100).sum())


def test_max_length_cuts_sequences(base_model, records):
    from pipelines.runs.tokenizers import open_tokenizer

    tokenizer = open_tokenizer(str(base_model))
    cfg = InstructSettings()
    datasets, collate, stats = prepare_data(
        cfg, tokenizer, {"train": records[10:20], "val": [], "test": []}, max_length=20, log=lambda *_: None
    )
    batch = collate(datasets["train"])
    inputs, targets = batch["input_ids"], batch["shift_labels"]
    assert inputs.shape == targets.shape and inputs.shape[1] == 20
    assert stats["truncated"] == 10
    # a cut sequence ends on its real next token, not on an end-of-text it never reached
    assert (targets[:, -1] != tokenizer.eos_token_id).all()
    # with --mask-prompt a record whose prompt alone fills the window has nothing to learn: it is left out
    datasets, _, stats = prepare_data(
        InstructSettings(mask_prompt=True), tokenizer, {"train": records[10:20], "val": [], "test": []},
        max_length=20, log=lambda *_: None,
    )
    assert datasets["train"] == [] and stats["dropped"] == 10


# ---------------------------------------------------------------------------------------------------------------
# respond
# ---------------------------------------------------------------------------------------------------------------


def _respond(model, data, out, *extra) -> int:
    return cli.main(["respond", "--model", str(model), "--data", str(data), "--out", str(out), *extra])


def test_respond_writes_every_record_in_order(finetuned, tmp_path):
    test_file = finetuned / "splits" / "test.json"
    out = tmp_path / "responses.json"
    assert _respond(finetuned, test_file, out, "--batch-size", "3", "--max-new-tokens", "10") == 0
    expected = json.loads(test_file.read_text())
    written = json.loads(out.read_text())
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in written] == expected
    assert all(list(r) == ["instruction", "input", "output", "model_response"] for r in written)
    assert all(isinstance(r["model_response"], str) and r["model_response"] == r["model_response"].strip()
               for r in written)


def test_respond_batches_with_left_padding(base_model, records, tmp_path):
    """Prompts of different lengths give the same greedy answers together as alone (needs correct left padding).

    The model has large random weights, so its answers are varied random strings: any padding leak changes them."""
    from modeling_gpt_scratch import GPTScratchForCausalLM

    noisy = tmp_path / "noisy"  # large random weights: varied text instead of one repeated token
    model = GPTScratchForCausalLM.from_pretrained(base_model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(noisy)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (noisy / name).write_bytes((base_model / name).read_bytes())
    data = tmp_path / "mixed.jsonl"
    chosen = [records[0], records[12], records[25], records[31], records[9]]
    data.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    lengths = {len(format_alpaca(r)) for r in chosen}
    assert len(lengths) >= 3
    batched, single = tmp_path / "batched.json", tmp_path / "single.json"
    assert _respond(noisy, data, batched, "--batch-size", "5", "--max-new-tokens", "12") == 0
    assert _respond(noisy, data, single, "--batch-size", "1", "--max-new-tokens", "12") == 0
    a, b = json.loads(batched.read_text()), json.loads(single.read_text())
    assert [r["instruction"] for r in a] == [r["instruction"] for r in chosen]
    assert all(r["model_response"] for r in a)
    assert len({r["model_response"] for r in a}) == len(a)
    assert [r["model_response"] for r in a] == [r["model_response"] for r in b]


def test_extract_response_takes_the_answer_only():
    assert extract_response(" The sky is blue. ") == "The sky is blue."
    assert extract_response("### Response:\nBlue.") == "Blue."
    assert extract_response("Blue.\n\n### Instruction:\nMore") == "Blue."


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing written
# ---------------------------------------------------------------------------------------------------------------

BAD_INPUTS = {
    "malformed": ('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]', ["record index 1"]),
    "missing-output": ('[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "x"}]',
                       ["record index 1", "'output'"]),
    "nonexistent": (None, ["does not exist"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("workflow", ["respond", "finetune-instruct"])
def test_bad_input_is_one_line_and_writes_nothing(case, workflow, base_model, tmp_path, capsys):
    text, fragments = BAD_INPUTS[case]
    data = tmp_path / "bad.json"
    if text is not None:
        data.write_text(text)
    out = tmp_path / ("out.json" if workflow == "respond" else "run")
    rc = cli.main([workflow, "--model", str(base_model), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.json"] if text is not None else [])


def test_a_hub_dataset_offline_is_a_user_error(base_model, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["finetune-instruct", "--model", str(base_model), "--data", "tatsu-lab/alpaca", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "tatsu-lab/alpaca" in err and "network" in err
    assert not out.exists()


def test_a_training_split_smaller_than_a_batch_writes_nothing(base_model, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["finetune-instruct", "--model", str(base_model), "--data", str(data_file), "--out", str(out),
                   "--batch-size", "64"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "fewer than one batch" in err.splitlines()[-1]
    assert not out.exists()


def test_cli_reports_a_missing_file_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "respond", "--model", str(tmp_path), "--data",
         str(tmp_path / "nope.json"), "--out", str(tmp_path / "out.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope.json" in proc.stderr
    assert not (tmp_path / "out.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# the book's data
# ---------------------------------------------------------------------------------------------------------------


def test_real_instruction_data_reads_and_splits_like_the_book(shared_data):
    records = read_instructions(shared_data / "instruction-data.json")
    assert len(records) == 1100
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    splits = split_instructions(records, seed=123)
    assert [len(splits[n]) for n in ("train", "val", "test")] == [935, 55, 110]
    assert splits == split_instructions(records, seed=123)
    assert splits["test"] != split_instructions(records, seed=1)["test"]
