"""LoRA through PEFT (``pipelines.training.lora``): parameter counts, adapter folders, merging, loading, conflicts.

Tiny models only: the classifier's base and data come from tests/commands/test_classify.py, the instruction tuner's from
tests/commands/test_instruct.py (their fixtures are imported, so they are built once for this module).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.cli import main
from tests.commands.test_classify import (  # noqa: F401 - fixtures
    assert_one_line_error,
    base_dir,
    data_dir,
    finetune_args,
    toy_tsv,
)
from tests.commands.test_instruct import base_model as instruct_base  # noqa: F401 - fixture
from tests.commands.test_instruct import data_file as instruct_data  # noqa: F401 - fixture
from tests.commands.test_instruct import records  # noqa: F401 - fixture

TARGETS = ("qkv_proj", "out_proj", "fc_in", "fc_out")


def lora_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each LoRA target Linear of one block, from the config alone."""
    h = config["hidden_size"]
    inner = config.get("intermediate_size") or 4 * h
    return {"qkv_proj": (h, 3 * h), "out_proj": (h, h), "fc_in": (h, inner), "fc_out": (inner, h)}


def expected_lora_count(config: dict, rank: int, targets=TARGETS, num_labels: int | None = None) -> int:
    """R * (in + out) for each adapted Linear of each block, plus the whole score head of a classifier."""
    shapes = lora_shapes(config)
    count = config["num_hidden_layers"] * sum(rank * sum(shapes[t]) for t in targets)
    if num_labels is not None:
        count += config["hidden_size"] * num_labels + num_labels
    return count


def base_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def lora_run(base_dir, toy_tsv, tmp_path_factory):
    """A LoRA classifier (rank 4, merged too) trained through the CLI on the toy spam data."""
    out = tmp_path_factory.mktemp("lora") / "clf"
    rc = main(finetune_args(base_dir, toy_tsv, out, "--lora-rank", "4", "--learning-rate", "1e-2", "--epochs", "4",
                            "--merge"))
    assert rc == 0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# parameter counts
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank, targets", [(1, TARGETS), (4, TARGETS), (8, ("qkv_proj",)), (2, ("fc_in", "fc_out"))])
def test_classifier_trainable_count_is_exactly_the_lora_formula(base_dir, rank, targets):
    from pipelines.training import lora
    from pipelines.settings import ClassifierSettings
    from pipelines.runs.folders import load_base_as_classifier

    model = load_base_as_classifier(base_dir, ["ham", "spam"])
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = ClassifierSettings(lora_rank=rank, lora_targets=[",".join(targets)])
    peft_model = lora.add_adapters(model, cfg, "classifier")
    expected = expected_lora_count(base_config(base_dir), rank, targets, num_labels=2)
    assert lora.trainable_parameters(peft_model) == expected
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(("lora_" in n and any(f".{t}." in n for t in targets)) or ".score.modules_to_save." in n
               for n in trainable), trainable
    # every base weight is frozen, and the adapted model starts as the base (B = 0)
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n
                   and "modules_to_save" not in n)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = load_base_as_classifier(base_dir, ["ham", "spam"])
        plain.load_state_dict(base_weights)
        torch.testing.assert_close(peft_model(input_ids=ids).logits, plain.eval()(input_ids=ids).logits)


def test_causal_trainable_count_is_exactly_the_lora_formula(instruct_base):
    from modeling_gpt_scratch import GPTScratchForCausalLM
    from pipelines.training import lora
    from pipelines.settings import InstructSettings

    model = GPTScratchForCausalLM.from_pretrained(instruct_base)
    peft_model = lora.add_adapters(model, InstructSettings(lora_rank=3), "causal")
    assert lora.trainable_parameters(peft_model) == expected_lora_count(base_config(instruct_base), 3)


# ---------------------------------------------------------------------------------------------------------------------
# the classifier run folder
# ---------------------------------------------------------------------------------------------------------------------


def test_lora_classifier_run_folder(lora_run, base_dir):
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "metrics.json",
                 "run_config.yaml", "README.md", "report.md", "plots/loss.png"):
        assert (lora_run / name).is_file(), name
    # an adapter folder, not a model folder: transformers would take a config.json for a full model
    assert not (lora_run / "config.json").exists() and not (lora_run / "model.safetensors").exists()
    adapter = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["task_type"] == "SEQ_CLS" and adapter["r"] == 4
    assert adapter["lora_alpha"] == 8 and sorted(adapter["target_modules"]) == sorted(TARGETS)  # alpha = 2 x rank
    assert "score" in adapter["modules_to_save"]
    assert adapter["base_model_name_or_path"] == str(base_dir.resolve())

    final = json.loads((lora_run / "metrics.json").read_text())["final"]
    expected = expected_lora_count(base_config(base_dir), 4, num_labels=2)
    assert final["trainable_parameters"] == expected
    assert final["trainable_percent"] == pytest.approx(100 * expected / final["parameters"], abs=1e-4)
    assert final["trainable"].startswith("lora r=4") and final["test_accuracy"] >= 0.9
    import yaml

    run_config = yaml.safe_load((lora_run / "run_config.yaml").read_text())
    assert run_config["trainable_parameters"] == expected and run_config["lora_rank"] == 4

    saved = load_file(lora_run / "adapter_model.safetensors")
    assert sum(t.numel() for t in saved.values()) == expected  # the adapters and the head, nothing of the base
    card = (lora_run / "README.md").read_text()
    assert "LoRA adapter" in card and "PeftModel" in card


def test_adapter_reload_and_merged_model_agree(lora_run, base_dir):
    """Base + saved adapter through PeftModel.from_pretrained, and the merged folder, give the same logits."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipelines.runs.folders import load_base_as_classifier

    base = load_base_as_classifier(base_dir, ["ham", "spam"])
    adapted = PeftModel.from_pretrained(base, str(lora_run)).eval()
    merged_dir = lora_run / "merged"
    for name in ("config.json", "model.safetensors", "configuration_gpt_scratch.py", "modeling_gpt_scratch.py",
                 "tokenizer.json", "README.md"):
        assert (merged_dir / name).is_file(), name
    assert "AutoModelForSequenceClassification" in json.loads((merged_dir / "config.json").read_text())["auto_map"]
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(lora_run)
    batch = tok(["hey win cash prize now", "ok see you at lunch later please"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = adapted(**batch).logits
        b = merged(**batch).logits
        untrained = load_base_as_classifier(base_dir, ["ham", "spam"]).eval()(**batch).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, untrained, atol=1e-3)  # the adapter changed something
    assert merged.config.id2label == {0: "ham", 1: "spam"}


def test_classify_and_evaluate_an_adapter_folder(lora_run, capsys):
    assert main(["classify", "--model", str(lora_run), "ok win cash prize soon", "hi see you at lunch today"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["spam", "ham"]
    # the merged folder says the same
    assert main(["classify", "--model", str(lora_run / "merged"), "ok win cash prize soon",
                 "hi see you at lunch today"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines


def test_lora_run_resumes_from_its_checkpoint_exactly(base_dir, toy_tsv, tmp_path):
    """2 epochs with checkpoints, then --resume to 4, equals 4 epochs straight: the adapters and the head."""
    common = ("--lora-rank", "2", "--learning-rate", "1e-2", "--checkpoint-every", "8")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(finetune_args(base_dir, toy_tsv, straight, *common, "--epochs", "4")) == 0
    assert main(finetune_args(base_dir, toy_tsv, resumed, *common, "--epochs", "2")) == 0
    assert main(finetune_args(base_dir, toy_tsv, resumed, *common, "--epochs", "4", "--resume")) == 0
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


# ---------------------------------------------------------------------------------------------------------------------
# conflicts and bad settings: one line, non-zero exit, nothing written
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trainable", ["last-block", "all", "head"])
def test_lora_rank_with_any_trainable_is_a_conflict(base_dir, toy_tsv, tmp_path, capsys, trainable):
    out = tmp_path / "run"
    rc = main(finetune_args(base_dir, toy_tsv, out, "--lora-rank", "8", "--trainable", trainable))
    assert_one_line_error(capsys, rc, f"--trainable {trainable} and --lora-rank 8 conflict", "drop --trainable")
    assert not out.exists()


def test_lora_rank_with_trainable_in_yaml_is_a_conflict(base_dir, toy_tsv, tmp_path, capsys):
    config = tmp_path / "clf.yaml"
    config.write_text("trainable: last-two-blocks\nlora_rank: 4\n")
    out = tmp_path / "run"
    rc = main(finetune_args(base_dir, toy_tsv, out, "--config", config))
    assert_one_line_error(capsys, rc, "--trainable last-two-blocks and --lora-rank 4 conflict")
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, phrases",
    [
        (["--merge"], ["--merge needs --lora-rank R"]),
        (["--lora-alpha", "16"], ["--lora-alpha needs --lora-rank R"]),
        (["--lora-rank", "4", "--lora-targets", "qkv_proj,lm_head"], ["unknown 'lm_head'", "qkv_proj,out_proj"]),
        (["--lora-rank", "-1"], ["--lora-rank -1 must be 0"]),
        (["--lora-rank", "4", "--lora-dropout", "1.5"], ["--lora-dropout 1.5 must be in [0, 1)"]),
    ],
)
def test_bad_lora_settings(base_dir, toy_tsv, tmp_path, capsys, extra, phrases):
    out = tmp_path / "run"
    assert_one_line_error(capsys, main(finetune_args(base_dir, toy_tsv, out, *extra)), *phrases)
    assert not out.exists()


def test_an_adapter_folder_is_not_a_base(lora_run, toy_tsv, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(finetune_args(lora_run, toy_tsv, out, "--lora-rank", "4"))
    assert_one_line_error(capsys, rc, "is a LoRA adapter folder, not a base model")
    assert not out.exists()


def test_adapter_whose_base_is_gone(lora_run, tmp_path, capsys):
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(lora_run, moved, ignore=shutil.ignore_patterns("merged", "checkpoints"))
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    rc = main(["classify", "--model", str(moved), "hello"])
    assert_one_line_error(capsys, rc, "is a LoRA adapter for the base model", "does not exist here")


# ---------------------------------------------------------------------------------------------------------------------
# finetune-instruct with LoRA, and respond
# ---------------------------------------------------------------------------------------------------------------------


def test_instruct_lora_end_to_end(instruct_base, instruct_data, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modeling_gpt_scratch import GPTScratchForCausalLM

    out = tmp_path / "instruct-lora"
    rc = main([
        "finetune-instruct", "--model", str(instruct_base), "--data", str(instruct_data), "--out", str(out),
        "--epochs", "2", "--batch-size", "4", "--learning-rate", "1e-2", "--mixed-precision", "no",
        "--sample-count", "1", "--sample-tokens", "4", "--lora-rank", "2", "--lora-targets", "qkv_proj", "fc_in",
        "--merge",
    ])
    assert rc == 0, capsys.readouterr().err
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and sorted(adapter["target_modules"]) == ["fc_in", "qkv_proj"]
    assert not (out / "config.json").exists() and (out / "generation_config.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert final["trainable_parameters"] == expected_lora_count(base_config(instruct_base), 2, ("qkv_proj", "fc_in"))
    assert final["val_loss"] < final["initial_val_loss"] and metrics["samples"]
    assert "chat_template" in (out / "tokenizer_config.json").read_text() or (out / "chat_template.jinja").is_file()

    # adapter reload vs merged folder (loaded through remote code alone)
    base = GPTScratchForCausalLM.from_pretrained(instruct_base)
    adapted = PeftModel.from_pretrained(base, str(out)).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", trust_remote_code=True).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5, rtol=1e-5)

    # respond answers from the adapter folder exactly as from the merged folder
    test_split = out / "splits" / "test.json"
    answers = {}
    for name, folder in (("adapter", out), ("merged", out / "merged")):
        path = tmp_path / f"{name}.json"
        assert main(["respond", "--model", str(folder), "--data", str(test_split), "--out", str(path),
                     "--max-new-tokens", "5"]) == 0
        answers[name] = [r["model_response"] for r in json.loads(path.read_text())]
    assert answers["adapter"] == answers["merged"]
    assert len(answers["adapter"]) == len(json.loads(test_split.read_text()))


def test_respond_refuses_a_classifier_adapter(lora_run, tmp_path, capsys):
    data = tmp_path / "records.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}]))
    rc = main(["respond", "--model", str(lora_run), "--data", str(data), "--out", str(tmp_path / "r.json")])
    assert_one_line_error(capsys, rc, "is a LoRA adapter for a classifier, not for a causal language model")
