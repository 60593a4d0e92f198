"""Model cards, report cards and ``gpt-scratch publish`` on tiny run folders built here.

Nothing here reaches the network: uploads are either dry runs, go to fakes, or to a closed local port.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EOT = "<|endoftext|>"
TOKEN = "hf_secretQx7Lm2Pz9Rt4Vw8Yb3Nc6Kd1Fg5Hj0Sa"  # looks like a real token; must never leak
OTHER_TOKEN = "hf_otherZZ1234567890abcdefghijklmnop"  # some other token recorded in a run config
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
CORPUS = [
    "I had always thought Jack Gisburn rather a cheap genius, though a good fellow enough.",
    "Every effort moves you closer to the goal, and every step counts.",
    "Free entry in a weekly competition to win prizes! Text WIN to claim now.",
    "Are we still meeting for lunch tomorrow? Let me know when you are free.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
] * 20

CAUSAL_FINAL = {
    "initial_val_loss": 5.71,
    "val_loss": 5.1,
    "val_perplexity": 164.02,
    "test_loss": 5.2,
    "test_perplexity": 181.27,
    "tokens_seen": 12345,
    "step": 20,
    "elapsed_s": 12.5,
    "world_size": 1,
    "global_batch_examples": 8,
}
CAUSAL_EVALS = {("loss", "validation", 5.1), ("perplexity", "validation", 164.02), ("loss", "test", 5.2),
                ("perplexity", "test", 181.27)}
CLASSIFIER_FINAL = {"val_loss": 0.2, "test_accuracy": 0.95, "test_f1": 0.9, "step": 30}
CLASSIFIER_EVALS = {("loss", "validation", 0.2), ("accuracy", "test", 0.95), ("f1", "test", 0.9)}

# A clean interpreter that cannot import the installed model package: only the folder's own code can load.
CLEAN_CHECK = r"""
import json, sys
sys.modules["modeling_gpt_scratch"] = None
folder, kind, snippet = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    import modeling_gpt_scratch
except ImportError:
    pass
else:
    raise SystemExit("the model package is importable: the check would prove nothing")
ns = {}
exec(compile(open(snippet).read(), "card-usage-snippet", "exec"), ns)
if kind == "classifier":
    clf = ns["classifier"]
    model_module = type(clf.model).__module__
    labels = [p["label"] for p in clf(["WIN a free prize now", "see you at lunch"])]
    result = {"labels": labels}
else:
    model_module = type(ns["model"]).__module__
    result = {"new_tokens": int(ns["output"].shape[1] - ns["inputs"]["input_ids"].shape[1])}
result["module"] = model_module
print("RESULT " + json.dumps(result))
"""


# ------------------------------------------------------------------------------------------------------------------
# building tiny run folders
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from pipelines.runs.tokenizers import train_bpe_tokenizer

    fast = train_bpe_tokenizer(CORPUS, vocab_size=320, model_max_length=64)
    out = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(out)  # under HF_HUB_OFFLINE=1: writes local_files_only, which publish must strip
    return out


def _tiny_config(tokenizer, **extra):
    from modeling_gpt_scratch import GPTScratchConfig

    eot = tokenizer.convert_tokens_to_ids(EOT)
    return GPTScratchConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        **extra,
    )


def build_run_folder(path: Path, tokenizer_dir: Path, kind: str = "causal") -> Path:
    """A run folder as a training workflow leaves it, plus the clutter publish must not send."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    from modeling_gpt_scratch import GPTScratchForCausalLM, GPTScratchForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    path.mkdir(parents=True)
    if kind == "classifier":
        config = _tiny_config(tokenizer, num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1})
        model = GPTScratchForSequenceClassification(config)
        metrics = {"final": CLASSIFIER_FINAL, "workflow": "finetune-classifier",
                   "history": [{"step": 30, "train_loss": 0.3, "val_loss": 0.2}]}
        run_config = {"data": "/data/SMSSpamCollection.tsv", "base_model": "alice/gpt-tiny-base", "learning_rate": 5e-5,
                      "max_steps": 30, "batch_size": 8}
    else:
        config = _tiny_config(tokenizer)
        model = GPTScratchForCausalLM(config)
        eot = tokenizer.convert_tokens_to_ids(EOT)
        model.generation_config = GenerationConfig(
            max_new_tokens=16, do_sample=True, top_k=50, eos_token_id=eot, pad_token_id=eot
        )
        metrics = {
            "final": CAUSAL_FINAL,
            "workflow": "pretrain",
            "history": [
                {"step": 10, "tokens": 6000, "train_loss": 5.6, "val_loss": 5.5, "val_perplexity": 244.7},
                {"step": 20, "tokens": 12345, "train_loss": 5.0, "val_loss": 5.1, "val_perplexity": 164.02},
            ],
            "environment": {"python": "3.11", "torch": "2.13", "transformers": "5.23", "device": "cpu"},
            "samples": [{"step": 20, "prompt": "Every effort", "text": " moves you ```closer```\n\n\nend"}],
        }
        run_config = {"data": "alice/tiny-corpus", "preset": "tiny", "learning_rate": 6e-4, "max_steps": 20,
                      "batch_size": 8, "lr_schedule": "cosine", "warmup_steps": 2, "hub_token": OTHER_TOKEN}
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "run_config.yaml").write_text(yaml.safe_dump(run_config))
    (path / "plots").mkdir()
    (path / "plots" / "loss.png").write_bytes(PNG)
    (path / "README.md").write_text("# placeholder card\n")
    (path / "report.md").write_text("# placeholder report\n")
    # clutter that is not part of the model
    (path / "checkpoints" / "step-10").mkdir(parents=True)
    (path / "checkpoints" / "step-10" / "model.safetensors").write_bytes(b"old")
    (path / "cache").mkdir()
    (path / "cache" / "tokens-000.bin").write_bytes(b"\x00" * 16)
    (path / ".final-abc123").mkdir()
    (path / ".README.md.xyz.tmp").write_text("half-written")
    (path / "train.log").write_text("log line\n")
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def all_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


def listed_files(stdout: str) -> list[str]:
    """The 'size  path' lines of a dry run's listing."""
    return [m.group(1) for m in re.finditer(r"^\s+[\d.]+ (?:B|KB|MB|GB)\s+(\S+)$", stdout, re.M)]


def clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "HF_TOKEN"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp / "modules"), HF_HOME=str(tmp / "hf-home"))
    return env


def check_in_clean_python(tmp: Path, files: list[str], source: Path, kind: str, repo_id: str) -> dict:
    """Copy exactly ``files``, then run the card's own usage snippet (pointed at the copy) in a clean interpreter."""
    sent = tmp / "sent"
    for rel in files:
        (sent / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, sent / rel)
    readme = (sent / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)\n```", readme, re.S).group(1)
    assert json.dumps(repo_id) in snippet and "trust_remote_code=True" in snippet
    (tmp / "snippet.py").write_text(snippet.replace(json.dumps(repo_id), json.dumps(str(sent))))
    work = tmp / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN_CHECK, str(sent), kind, str(tmp / "snippet.py")],
        cwd=work, env=clean_env(tmp), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["module"].startswith("transformers_modules"), result
    return result


def eval_set(card) -> set:
    return {(r.metric_type, r.dataset_split, r.metric_value) for r in card.data.eval_results}


def publish(capfd, *argv) -> tuple[int, str, str]:
    from pipelines.cli import main

    capfd.readouterr()  # drop what building the folder printed
    rc = main(["publish", *map(str, argv)])
    out, err = capfd.readouterr()
    return rc, out, err


@pytest.fixture
def forbid_network(monkeypatch):
    """Any Hub API call fails the test."""
    from huggingface_hub import HfApi

    def boom(*args, **kwargs):
        raise AssertionError("a Hub API call was made")

    for name in ("create_repo", "upload_folder", "create_commit", "create_branch", "whoami", "preupload_lfs_files"):
        monkeypatch.setattr(HfApi, name, boom)


# ------------------------------------------------------------------------------------------------------------------
# cards
# ------------------------------------------------------------------------------------------------------------------


def test_parameter_count_from_config_matches_the_model():
    from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification
    from pipelines.runs.cards import count_parameters

    base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    for extra, cls, kind in (
        ({}, GPTScratchForCausalLM, "base"),
        ({"tie_word_embeddings": False, "qkv_bias": False, "intermediate_size": 48}, GPTScratchForCausalLM, "base"),
        ({"num_labels": 3}, GPTScratchForSequenceClassification, "classifier"),
    ):
        config = GPTScratchConfig(**base, **extra)
        model = cls(config)
        assert count_parameters(config.to_dict(), kind) == sum(p.numel() for p in model.parameters()), extra


def test_cards_render_for_partial_folders(tmp_path):
    from huggingface_hub import ModelCard

    from pipelines.runs.cards import render_model_card, write_cards

    folder = tmp_path / "bare"
    folder.mkdir()
    write_cards(folder)  # nothing at all: still a card and a report
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert card.data.eval_results is None
    assert (folder / "report.md").read_text().startswith("# Training report")

    (folder / "config.json").write_text(json.dumps({"architectures": ["GPTScratchForCausalLM"], "vocab_size": 10}))
    (folder / "metrics.json").write_text(json.dumps({"final": {"val_loss": 3.0, "test_perplexity": float("nan")},
                                                     "history": "garbage", "workflow": "finetune-instruct"}))
    (folder / "run_config.yaml").write_text("data: ./local/instructions.json\nlicense: mit\nbase_model: bob/gpt-base\n")
    card = render_model_card(folder)
    assert card.data.license == "mit" and card.data.pipeline_tag == "text-generation"
    assert card.data.base_model == "bob/gpt-base" and card.data.datasets is None  # a local path is no Hub id
    assert eval_set(card) == {("loss", "validation", 3.0)}  # the NaN is left out, not written as YAML nan
    assert "### Instruction:" in card.text and "instruction-tuned" in card.data.tags
    from pipelines.data.instructions import format_alpaca

    snippet = re.search(r"```python\n(.*?)\n```", card.text, re.S).group(1)
    namespace = {}
    exec(re.search(r"^prompt = \(.*?^\)$", snippet, re.S | re.M).group(0), namespace)
    assert namespace["prompt"] == format_alpaca(  # the snippet's prompt is the fine-tune's format
        {"instruction": "Rewrite the sentence in passive voice.", "input": "The chef cooked the meal."}
    )


def test_cards_survive_garbage_metrics(tmp_path):
    from huggingface_hub import ModelCard

    from pipelines.runs.cards import write_cards

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": "many", "hidden_size": None, "id2label": [1]}))
    (tmp_path / "metrics.json").write_text(json.dumps({
        "final": {"val_loss": "low", "test_accuracy": None, "elapsed_s": "1h", "world_size": "x", "step": [1]},
        "history": [{"step": "a", "val_loss": {"x": 1}}, 3, None], "environment": ["cpu"],
        "samples": [{"step": None, "text": 7}, "junk"], "workflow": 12,
    }))
    (tmp_path / "run_config.yaml").write_text("data: [a/b, ./c.txt]\nepochs: two\nlearning_rate: fast\nmodel: 3\n")
    write_cards(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.datasets == ["a/b"] and card.data.eval_results is None


def test_report_card(tmp_path, tokenizer_dir):
    from pipelines.runs.cards import write_report

    folder = build_run_folder(tmp_path / "run", tokenizer_dir)
    text = write_report(folder).read_text()
    for needle in ("## Final metrics", "| val_loss | 5.1 |", "![loss](plots/loss.png)", "## Evaluations",
                   "## Samples", "Every effort moves you ```closer```\n\n\nend", "## Run configuration",
                   "learning_rate: 0.0006", "## Environment", "| device | cpu |"):
        assert needle in text, needle
    assert OTHER_TOKEN not in text and "hub_token: <redacted>" in text


# ------------------------------------------------------------------------------------------------------------------
# publish --dry-run
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dry_run_causal(tmp_path, tokenizer_dir, capfd, monkeypatch, forbid_network):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = build_run_folder(tmp_path / "run", tokenizer_dir)
    assert "local_files_only" in (folder / "tokenizer_config.json").read_text()
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-gpt", "--dry-run")
    assert rc == 0, err
    assert "verified:" in out and "dry run: nothing was sent" in out

    files = listed_files(out)
    assert {"config.json", "model.safetensors", "configuration_gpt_scratch.py", "modeling_gpt_scratch.py",
            "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md", "report.md",
            "metrics.json", "run_config.yaml", "plots/loss.png"} <= set(files)
    assert not [f for f in files if f.startswith(("checkpoints", "cache", ".")) or f == "train.log"], files
    assert "local_files_only" not in (folder / "tokenizer_config.json").read_text()

    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert {"gpt2", "gpt-scratch", "custom_code"} <= set(card.data.tags)
    assert card.data.datasets == ["alice/tiny-corpus"] and card.data.base_model is None
    assert card.data.model_name == "tiny-gpt" and eval_set(card) == CAUSAL_EVALS
    assert "](plots/loss.png)" in card.text and "AutoModelForCausalLM" in card.text
    assert "````text\nEvery effort moves you ```closer```\n\n\nend\n````" in card.text  # fenced, kept verbatim

    assert TOKEN not in out + err and TOKEN not in all_text(folder)
    result = check_in_clean_python(tmp_path / "check", files, folder, "causal", "alice/tiny-gpt")
    assert result["new_tokens"] > 0


@pytest.mark.slow
def test_dry_run_classifier(tmp_path, tokenizer_dir, capfd, monkeypatch, forbid_network):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = build_run_folder(tmp_path / "clf", tokenizer_dir, kind="classifier")
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-spam", "--dry-run", "--private")
    assert rc == 0, err
    assert "classified as" in out

    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.base_model == "alice/gpt-tiny-base" and card.data.datasets is None
    assert eval_set(card) == CLASSIFIER_EVALS
    assert "`ham`, `spam`" in card.text and 'pipeline("text-classification"' in card.text

    files = listed_files(out)
    assert "generation_config.json" not in files and "model.safetensors" in files
    assert TOKEN not in out + err and TOKEN not in all_text(folder)
    result = check_in_clean_python(tmp_path / "check", files, folder, "classifier", "alice/tiny-spam")
    assert set(result["labels"]) <= {"ham", "spam"} and len(result["labels"]) == 2


# ------------------------------------------------------------------------------------------------------------------
# refusals before anything is sent
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "remove, named",
    [
        (["tokenizer.json", "tokenizer_config.json"], "tokenizer"),
        (["model.safetensors"], "model.safetensors"),
        (["modeling_gpt_scratch.py", "generation_config.json"], "modeling_gpt_scratch.py; generation_config.json"),
    ],
)
def test_incomplete_folder_is_refused(tmp_path, tokenizer_dir, capfd, monkeypatch, forbid_network, remove, named):
    import pipelines.commands.publish as publish_module

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(publish_module.subprocess, "run", lambda *a, **k: pytest.fail("verification started"))
    folder = build_run_folder(tmp_path / "run", tokenizer_dir)
    for name in remove:
        (folder / name).unlink()
    before = snapshot(folder)
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-gpt")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "missing:" in lines[0] and named in lines[0], err
    assert "Traceback" not in err and TOKEN not in out + err
    assert snapshot(folder) == before  # refused before the cards were even refreshed


def test_token_in_a_file_is_refused(tmp_path, tokenizer_dir, capfd, monkeypatch, forbid_network):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = build_run_folder(tmp_path / "run", tokenizer_dir)
    with open(folder / "run_config.yaml", "a") as f:
        f.write(f"judge_api_key: {TOKEN}\n")
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-gpt", "--dry-run")
    assert rc == 2 and "run_config.yaml" in err and "contains your Hugging Face token" in err
    assert TOKEN not in out + err
    assert TOKEN not in (folder / "README.md").read_text() + (folder / "report.md").read_text()


@pytest.mark.slow
def test_code_that_needs_the_installed_package_is_refused(tmp_path, tokenizer_dir, capfd, monkeypatch,
                                                          forbid_network):
    """An absolute import of the own package works here (it is installed) but not on the Hub: caught before upload."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = build_run_folder(tmp_path / "run", tokenizer_dir)
    code = folder / "modeling_gpt_scratch.py"
    code.write_text("import modeling_gpt_scratch  # noqa\n" + code.read_text())
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-gpt", "--dry-run")
    assert rc == 2, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "does not load through remote code in a clean Python" in lines[0], err
    assert "modeling_gpt_scratch" in lines[0] and "files that would be sent" not in out


def test_no_token_is_refused(tmp_path, tokenizer_dir, capfd, monkeypatch, forbid_network):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    folder = build_run_folder(tmp_path / "run", tokenizer_dir)
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-gpt")
    assert rc == 2 and "hf auth login" in err and "HF_TOKEN" in err and len(err.strip().splitlines()) == 1


def test_offline_mode_is_refused_before_any_work(tmp_path, tokenizer_dir, capfd, monkeypatch, forbid_network):
    import pipelines.commands.publish as publish_module

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(publish_module.subprocess, "run", lambda *a, **k: pytest.fail("verification started"))
    folder = build_run_folder(tmp_path / "run", tokenizer_dir)  # the suite runs with HF_HUB_OFFLINE=1
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-gpt")
    assert rc == 2 and "HF_HUB_OFFLINE" in err and "--dry-run" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("repo_id", ["tiny-gpt", "alice/bob/tiny", "alice/tiny--gpt", "-alice/tiny", "alice/x.git",
                                     "alice/" + "x" * 100, "alice/tiny gpt"])
def test_bad_repo_id_is_refused(tmp_path, capfd, forbid_network, repo_id):
    rc, out, err = publish(capfd, "--model", tmp_path, f"--repo-id={repo_id}", "--dry-run")
    assert rc == 2 and "not a valid Hub model id" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------------------------
# the upload itself
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_upload_sends_exactly_the_listed_files(tmp_path, tokenizer_dir, capfd, monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub import HfApi, constants

    calls = {}

    def record(name, result):
        def method(self, *args, **kwargs):
            calls[name] = (self.token, args, kwargs)
            return result

        return method

    monkeypatch.setattr(HfApi, "create_repo", record("create_repo", "https://huggingface.co/alice/tiny-gpt"))
    monkeypatch.setattr(HfApi, "create_branch", record("create_branch", None))
    monkeypatch.setattr(HfApi, "upload_folder", record("upload_folder", SimpleNamespace(commit_url="https://c/1")))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; the Hub here is a fake
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = build_run_folder(tmp_path / "run", tokenizer_dir)
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-gpt", "--private", "--revision", "dev",
                           "--commit-message", "first upload")
    assert rc == 0, err
    token, args, kwargs = calls["create_repo"]
    assert token == TOKEN and args == ("alice/tiny-gpt",) and kwargs["private"] is True and kwargs["exist_ok"]
    assert calls["create_branch"][2]["branch"] == "dev"
    token, _, kwargs = calls["upload_folder"]
    assert token == TOKEN and Path(kwargs["folder_path"]) == folder
    assert kwargs["revision"] == "dev" and kwargs["commit_message"] == "first upload"
    from pipelines.commands.publish import files_to_upload

    assert sorted(kwargs["allow_patterns"]) == files_to_upload(folder)
    assert "published:" in out and TOKEN not in out + err


@pytest.mark.slow
def test_network_failure_is_one_line_and_leaves_the_folder(tmp_path, tokenizer_dir):
    """Real huggingface_hub client, real CLI process, a closed local port as the Hub."""
    folder = build_run_folder(tmp_path / "run", tokenizer_dir)
    write_cards_and_strip = {"README.md", "report.md", "tokenizer_config.json"}
    before = snapshot(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_TOKEN=TOKEN, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"),
               PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "publish", "--model", str(folder), "--repo-id", "alice/tiny-gpt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt-scratch publish: error: could not reach the Hugging Face Hub")
    assert "127.0.0.1:9" in lines[0] and "Traceback" not in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr and TOKEN not in all_text(folder)

    after = snapshot(folder)
    assert set(after) == set(before)  # no stray temp files
    assert {k for k in after if after[k] != before[k]} <= write_cards_and_strip
    tokenizer_config.pop("local_files_only")
    assert json.loads((folder / "tokenizer_config.json").read_text()) == tokenizer_config


# ------------------------------------------------------------------------------------------------------------------
# push_to_hub (inherited from PreTrainedModel) sends what save_pretrained writes
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["GPTScratchForCausalLM", "GPTScratchForSequenceClassification"])
def test_save_pretrained_carries_the_code(tmp_path, head):
    import modeling_gpt_scratch

    config = modeling_gpt_scratch.GPTScratchConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64
    )
    getattr(modeling_gpt_scratch, head)(config).save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_gpt_scratch.py", "modeling_gpt_scratch.py"} <= names
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_gpt_scratch.GPTScratchConfig"
    assert auto_map["AutoModelForCausalLM"].startswith("modeling_gpt_scratch.")
    assert auto_map["AutoModelForSequenceClassification"].startswith("modeling_gpt_scratch.")


# ------------------------------------------------------------------------------------------------------------------
# LoRA adapter folders (pipelines.training.lora): published as adapters that name their base by Hub id
# ------------------------------------------------------------------------------------------------------------------

# The adapter card's own usage snippet, in a clean interpreter that cannot import the installed model package.
ADAPTER_CHECK = r"""
import json, sys
sys.modules["modeling_gpt_scratch"] = None
kind, snippet = sys.argv[1], sys.argv[2]
ns = {}
exec(compile(open(snippet).read(), "card-usage-snippet", "exec"), ns)
if kind == "classifier":
    clf = ns["classifier"]
    result = {"labels": [p["label"] for p in clf(["WIN a free prize now", "see you at lunch"])],
              "module": type(clf.model).__module__}
else:
    result = {"new_tokens": int(ns["output"].shape[1] - ns["inputs"]["input_ids"].shape[1]),
              "module": type(ns["model"]).__module__}
print("RESULT " + json.dumps(result))
"""


def build_adapter_folder(path: Path, base: Path, kind: str = "classifier") -> Path:
    """A LoRA adapter folder as `finetune-classifier/-instruct --lora-rank 2` writes it, with non-zero adapters."""
    import torch
    from transformers import AutoTokenizer

    from pipelines.training import lora
    from pipelines.settings import ClassifierSettings
    from pipelines.runs.folders import load_base_as_classifier

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    cfg = ClassifierSettings(lora_rank=2)
    if kind == "classifier":
        model = load_base_as_classifier(base, ["ham", "spam"])
        metrics = {"final": {**CLASSIFIER_FINAL, "trainable_parameters": 1234}, "labels": ["ham", "spam"]}
        run_config = {"labels": ["ham", "spam"], "base_model": str(base), "data": "/data/SMSSpamCollection.tsv",
                      "lora_rank": 2, "trainable": "lora r=2 alpha=4 on qkv_proj,out_proj,fc_in,fc_out + score head"}
        workflow = "finetune-classifier"
    else:
        from modeling_gpt_scratch import GPTScratchForCausalLM

        model = GPTScratchForCausalLM.from_pretrained(base)
        metrics = {"final": {"val_loss": 2.0, "test_loss": 2.1, "trainable_parameters": 1234}}
        run_config = {"base_model": str(base), "data": "alice/tiny-instructions", "lora_rank": 2}
        workflow = "finetune-instruct"
    peft_model = lora.add_adapters(model, cfg, kind)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    lora.write_adapter_folder(path, peft_model, tokenizer, base_ref=str(base.resolve()), metrics=metrics,
                              run_config=run_config, workflow=workflow)
    (path / "checkpoints" / "step-10").mkdir(parents=True)  # clutter that is never sent
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "causal"])
def test_dry_run_lora_adapter(tmp_path, tokenizer_dir, capfd, monkeypatch, forbid_network, kind):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    base = build_run_folder(tmp_path / "base", tokenizer_dir)
    folder = build_adapter_folder(tmp_path / "adapter", base, kind)
    local_config = (folder / "adapter_config.json").read_text()
    assert json.loads(local_config)["base_model_name_or_path"] == str(base.resolve())

    # a base that is only a local folder cannot be named on the Hub: the id must be given
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-lora", "--dry-run")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "local base folder" in err and "--base-model-id USER/BASE" in err

    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-lora", "--dry-run",
                           "--base-model-id", "alice/gpt-tiny-base")
    assert rc == 0, err
    assert "LoRA adapter folder (base: alice/gpt-tiny-base)" in out and "adapter on it through PEFT" in out
    assert "names the base alice/gpt-tiny-base" in out
    files = listed_files(out)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md", "report.md",
            "metrics.json", "run_config.yaml"} <= set(files)
    assert not {"config.json", "model.safetensors", "modeling_gpt_scratch.py"} & set(files)
    assert not [f for f in files if f.startswith("checkpoints")]
    assert (folder / "adapter_config.json").read_text() == local_config  # the local folder keeps its base path

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "alice/gpt-tiny-base"
    assert {"peft", "lora", "gpt-scratch"} <= set(card.data.tags)
    assert "holds an adapter, not a full model" in card.text and "rank-2" in card.text
    assert "[`alice/gpt-tiny-base`](https://huggingface.co/alice/gpt-tiny-base)" in card.text
    assert TOKEN not in out + err and TOKEN not in all_text(folder)

    # the card's snippet, pointed at a copy of the sent files and at the base folder, runs in a clean Python
    sent = tmp_path / "sent"
    for rel in files:
        (sent / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / rel, sent / rel)
    snippet = re.search(r"```python\n(.*?)\n```", card.text, re.S).group(1)
    assert '"alice/tiny-lora"' in snippet and '"alice/gpt-tiny-base"' in snippet and "PeftModel" in snippet
    snippet = snippet.replace('"alice/tiny-lora"', json.dumps(str(sent))).replace(
        '"alice/gpt-tiny-base"', json.dumps(str(base)))
    if kind == "causal":  # the Alpaca example prompt does not fit this test model's 64 positions
        snippet = re.sub(r"prompt = \(\n.*?\n\)\n", 'prompt = "Every effort"\n', snippet, flags=re.S)
    (tmp_path / "snippet.py").write_text(snippet)
    (tmp_path / "work").mkdir()
    proc = subprocess.run([sys.executable, "-I", "-c", ADAPTER_CHECK, kind, str(tmp_path / "snippet.py")],
                          cwd=tmp_path / "work", env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["module"].startswith("transformers_modules"), result
    if kind == "classifier":
        assert set(result["labels"]) <= {"ham", "spam"} and len(result["labels"]) == 2
    else:
        assert result["new_tokens"] > 0


@pytest.mark.slow
def test_upload_of_an_adapter_sends_a_copy_naming_the_hub_base(tmp_path, tokenizer_dir, capfd, monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub import HfApi, constants

    sent = {}

    def upload_folder(self, **kwargs):
        root = Path(kwargs["folder_path"])
        sent["root"] = root
        sent["config"] = json.loads((root / "adapter_config.json").read_text())
        sent["patterns"] = sorted(kwargs["allow_patterns"])
        return SimpleNamespace(commit_url="https://c/2")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: "https://huggingface.co/alice/tiny-lora")
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    base = build_run_folder(tmp_path / "base", tokenizer_dir)
    folder = build_adapter_folder(tmp_path / "adapter", base)
    rc, out, err = publish(capfd, "--model", folder, "--repo-id", "alice/tiny-lora",
                           "--base-model-id", "alice/gpt-tiny-base")
    assert rc == 0, err
    assert sent["root"] != folder and not sent["root"].exists()  # a staged copy, removed afterwards
    assert sent["config"]["base_model_name_or_path"] == "alice/gpt-tiny-base"
    assert sent["config"]["r"] == 2 and sent["config"]["task_type"] == "SEQ_CLS"
    from pipelines.commands.publish import files_to_upload

    assert sent["patterns"] == files_to_upload(folder)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    assert "published:" in out and "PeftModel.from_pretrained" in out


def test_adapter_refusals(tmp_path, tokenizer_dir, capfd, monkeypatch, forbid_network):
    import pipelines.commands.publish as publish_module

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(publish_module.subprocess, "run", lambda *a, **k: pytest.fail("verification started"))
    base = build_run_folder(tmp_path / "base", tokenizer_dir)
    folder = build_adapter_folder(tmp_path / "adapter", base)

    def one_line(*argv):
        rc, out, err = publish(capfd, "--dry-run", "--repo-id", "alice/tiny-lora", *argv)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    # --base-model-id on a full model folder
    assert "only for a LoRA adapter folder" in one_line("--model", base, "--base-model-id", "alice/x")
    assert "--base-model-id 'alice/x y' is not a valid Hub model id" in one_line(
        "--model", folder, "--base-model-id", "alice/x y")
    # an adapter that names a Hub base: a different --base-model-id conflicts
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "bob/gpt-base"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert "conflicts with the base the adapter was trained on, bob/gpt-base" in one_line(
        "--model", folder, "--base-model-id", "alice/other")
    # incomplete adapter folders
    (folder / "adapter_model.safetensors").unlink()
    assert "not a complete LoRA adapter folder" in one_line("--model", folder)
    assert "adapter_model.safetensors (the adapter weights)" in one_line("--model", folder)
