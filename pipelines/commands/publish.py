"""``gpt-scratch publish``: upload a run folder to the Hugging Face Hub, with its model card.

Steps, in this order, and nothing is sent before the last one:

1. check the repo id and that the folder is a complete model folder (weights, config with ``auto_map``, both code
   files, tokenizer, generation config for language models, model card);
2. find the Hub token (``HF_TOKEN`` or the ``hf auth login`` cache); it is handed to the client and never printed,
   logged or written;
3. refresh the model card and report card (``write_cards``) for the target repo id, and drop ``local_files_only``
   from ``tokenizer_config.json``;
4. list exactly the files to send (model, code, tokenizer, cards, metrics, run config, plots; never checkpoints,
   caches or hidden temp files) and refuse if any of them contains the token;
5. load exactly those files in a clean Python (isolated mode, empty working folder, ``modeling_gpt_scratch``
   blocked) through ``trust_remote_code=True`` and generate a few tokens / classify two texts;
6. ``create_repo`` (``exist_ok``), the branch for ``--revision`` if needed, and one ``upload_folder`` commit.

``--dry-run`` does steps 1-5 and prints the files that would be sent with their sizes.  Step 5's scripts are at the
end of this module; step 2 and step 6 (the Hub client) are in ``pipelines.hub``.

A LoRA adapter folder (the ``--out`` of a fine-tune with ``--lora-rank``, see ``pipelines.training.lora``) is
published as an adapter: ``adapter_config.json`` and ``adapter_model.safetensors`` with the tokenizer, cards, metrics
and run config, and an adapter card (``library_name: peft``, ``base_model``) that names the base.  The copy that is
sent must name the base by its Hub id: the one the adapter already names, or ``--base-model-id`` when it names a local
folder (publish that base first); the uploaded ``adapter_config.json`` carries that id, the local one keeps its path.
Step 5 then loads the base folder through remote code, applies the adapter with ``PeftModel.from_pretrained`` and runs
it.  The ``merged/`` folder of ``--merge`` is a full model folder and is published like any other.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from huggingface_hub import constants

from ..errors import UserError
from ..hub import get_token, looks_like_hub_id, redact, upload
from ..runs.cards import card_kind, write_cards
from ..runs.folders import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    CODE_FILES,
    FolderKind,
    adapter_kind,
    adapter_labels,
    is_adapter_folder,
    read_adapter_config,
    resolve_base,
    task_kind,
)
from ..runs.record import RUN_RECORD_FILE
from ..runs.tokenizers import TOKENIZER_SAVE_FILES, strip_local_files_only

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")
ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)
DOC_FILES = ("README.md", "report.md", "metrics.json", RUN_RECORD_FILE)
PLOT_SUFFIXES = (".png", ".svg")
SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
REPO_ID_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
TEXT_SUFFIXES = (".json", ".md", ".yaml", ".yml", ".py", ".txt", ".jinja")
VERIFY_TIMEOUT_S = 1800


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="run folder to publish (a complete model folder)")
    parser.add_argument("--repo-id", required=True, help="target model repo on the Hub, as USER/NAME or ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it is new)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default: main)")
    parser.add_argument("--commit-message", default=None, help="commit message (default: describes the upload)")
    parser.add_argument(
        "--dry-run", action="store_true", help="do every check and refresh the cards, but send nothing: list the files"
    )
    parser.add_argument(
        "--base-model-id", default=None, metavar="OWNER/NAME",
        help="LoRA adapter folders only: the Hub id of the base model, when the adapter names a local base folder "
        "(written into the uploaded adapter_config.json and the card)",
    )


# ------------------------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------------------------


def validate_repo_id(repo_id: str, flag: str = "--repo-id") -> str:
    """``USER/NAME``: letters, digits, ``-``, ``_``, ``.``; no ``--``/``..``; at most 96 characters."""
    repo_id = (repo_id or "").strip()
    problem = None
    if not REPO_ID_RE.fullmatch(repo_id):
        problem = (
            "it must look like USER/NAME (letters, digits, '-', '_' and '.'; "
            "starting and ending with a letter or digit)"
        )
    elif "--" in repo_id or ".." in repo_id:
        problem = "'--' and '..' are not allowed"
    elif len(repo_id) > 96:
        problem = "it is longer than 96 characters"
    elif repo_id.endswith(".git"):
        problem = "it must not end with '.git'"
    if problem:
        raise UserError(f"{flag} '{repo_id}' is not a valid Hub model id: {problem}, e.g. {flag} alice/gpt-tiny")
    return repo_id


def _model_kind(folder: Path) -> str:
    """``"classifier"`` or ``"causal"``: which Auto class the folder (or an adapter's base) is loaded with."""
    return "classifier" if task_kind(folder) == FolderKind.CLASSIFIER else "causal"


def adapter_missing_pieces(folder: Path) -> list[str]:
    """What a publishable LoRA adapter folder lacks (empty list: complete)."""
    missing: list[str] = []
    config = {}
    try:
        config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        missing.append("a readable adapter_config.json")
    if not isinstance(config, dict):
        config = {}
        missing.append("a readable adapter_config.json")
    elif config and str(config.get("peft_type", "")).upper() != "LORA":
        missing.append("a LoRA adapter_config.json (peft_type LORA)")
    elif config and not config.get("base_model_name_or_path"):
        missing.append("base_model_name_or_path in adapter_config.json (the base model)")
    if not (folder / ADAPTER_WEIGHTS_FILE).is_file():
        missing.append("adapter_model.safetensors (the adapter weights)")
    has_tokenizer = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )
    if not has_tokenizer or not (folder / "tokenizer_config.json").is_file():
        missing.append("the tokenizer (tokenizer.json and tokenizer_config.json)")
    if config and adapter_kind(config) == "classifier":
        try:
            adapter_labels(folder)
        except UserError:
            missing.append("the label names ('labels' in run_config.yaml or metrics.json)")
    return missing


def missing_pieces(folder: str | os.PathLike) -> list[str]:
    """What a complete, publishable model folder (or LoRA adapter folder) lacks (empty list: complete)."""
    folder = Path(folder)
    if is_adapter_folder(folder):
        return adapter_missing_pieces(folder)
    missing: list[str] = []
    config_path = folder / "config.json"
    kind = "causal"
    if not config_path.is_file():
        missing.append("config.json")
    else:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
        if not isinstance(config, dict):
            missing.append("a readable config.json")
        else:
            kind = _model_kind(folder)
            auto_class = "AutoModelForSequenceClassification" if kind == "classifier" else "AutoModelForCausalLM"
            auto_map = config.get("auto_map") or {}
            lacking = [k for k in ("AutoConfig", auto_class) if k not in auto_map]
            if lacking:
                missing.append(f"auto_map entries {', '.join(lacking)} in config.json")
    if not (folder / "model.safetensors").is_file():
        index = folder / "model.safetensors.index.json"
        if not index.is_file():
            missing.append("model.safetensors (the weights)")
        else:
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shards = None
            if shards is None:
                missing.append("a readable model.safetensors.index.json")
            else:
                missing += [f"{s} (a weight shard)" for s in shards if not (folder / s).is_file()]
    missing += [name for name in CODE_FILES if not (folder / name).is_file()]
    has_tokenizer = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )
    if not has_tokenizer or not (folder / "tokenizer_config.json").is_file():
        missing.append("the tokenizer (tokenizer.json and tokenizer_config.json)")
    if kind == "causal" and not (folder / "generation_config.json").is_file():
        missing.append("generation_config.json")
    # no README.md is fine: publish renders the model card itself (e.g. for a folder made by `convert`)
    return missing


def check_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--model '{folder}' is not a folder: pass the --out folder of a training run")
    missing = missing_pieces(folder)
    if missing:
        what = "LoRA adapter folder" if is_adapter_folder(folder) else "model folder"
        raise UserError(
            f"'{folder}' is not a complete {what}; missing: {'; '.join(missing)}. "
            "Publish the --out folder of a finished training run (or re-save the model with save_pretrained)"
        )
    return folder


def adapter_base(folder: Path, base_model_id: str | None) -> tuple[str, Path]:
    """``(Hub id the published adapter names, local base folder to verify with)`` for a LoRA adapter folder."""
    config = read_adapter_config(folder)
    named = str(config["base_model_name_or_path"])
    named_hub = looks_like_hub_id(named)
    if base_model_id is not None:
        base_model_id = validate_repo_id(base_model_id, flag="--base-model-id")
        if named_hub and named != base_model_id:
            raise UserError(
                f"--base-model-id {base_model_id} conflicts with the base the adapter was trained on, {named} (its "
                "adapter_config.json): drop --base-model-id, or publish an adapter trained on that base"
            )
    elif not named_hub:
        raise UserError(
            f"'{folder}' is a LoRA adapter for the local base folder {named}; the Hub copy must name the base by its "
            f"Hub id: publish the base first (gpt-scratch publish --model {named} --repo-id USER/BASE), then pass "
            "--base-model-id USER/BASE"
        )
    base_dir = resolve_base(folder, config)
    missing = missing_pieces(base_dir)
    if missing:
        raise UserError(
            f"the adapter's base folder {base_dir} is not a complete model folder (missing: {'; '.join(missing)}), "
            "so the adapter cannot be checked on it: restore the base folder"
        )
    return base_model_id or named, base_dir


def stage_adapter(folder: Path, files: list[str], base_id: str, staging: Path) -> Path:
    """A copy of exactly ``files`` in ``staging``, whose ``adapter_config.json`` names the base by ``base_id``."""
    for rel in files:
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / rel, target)
    path = staging / ADAPTER_CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return staging


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """Relative paths of exactly the files that are sent: model, code, tokenizer, cards, metrics, config, plots."""
    folder = Path(folder)
    names = set(MODEL_FILES) | set(ADAPTER_FILES) | set(CODE_FILES) | set(TOKENIZER_SAVE_FILES) | set(DOC_FILES)
    chosen = [
        p.name
        for p in folder.iterdir()
        if p.is_file() and (p.name in names or SHARD_RE.fullmatch(p.name))
    ]
    plots = folder / "plots"
    if plots.is_dir():
        chosen += [
            f"plots/{p.name}"
            for p in plots.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in PLOT_SUFFIXES
        ]
    return sorted(chosen)


def _check_no_token(folder: Path, files: list[str], token: str | None) -> None:
    if not token:
        return
    for rel in files:
        if rel.endswith(TEXT_SUFFIXES):
            try:
                text = (folder / rel).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if token in text:
                raise UserError(
                    f"'{folder / rel}' contains your Hugging Face token: remove it from that file before publishing "
                    "(and consider revoking the token)"
                )


# ------------------------------------------------------------------------------------------------------------------
# verification in a clean interpreter (the scripts: at the end of this module)
# ------------------------------------------------------------------------------------------------------------------


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            return line
    return lines[-1] if lines else "no error output"


def verify_remote_code(
    folder: str | os.PathLike, files: list[str], kind: str, timeout: float = VERIFY_TIMEOUT_S,
    base: str | os.PathLike | None = None, labels: list[str] | None = None,
) -> dict:
    """Load exactly ``files`` of ``folder`` in a clean interpreter through remote code, and run the model once.

    With ``base`` (a local model folder), ``folder`` is a LoRA adapter: the base is loaded through remote code and
    the adapter applied with ``PeftModel.from_pretrained`` (``labels``: a classifier's label names)."""
    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="gpt-scratch-verify-") as tmp:
        tmp = Path(tmp)
        staged = tmp / "model"
        for rel in files:
            target = staged / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                target.symlink_to(folder / rel)
            except OSError:  # no symlinks here (e.g. Windows without the privilege): copy
                shutil.copy2(folder / rel, target)
        work = tmp / "cwd"
        work.mkdir()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PYTHON") and k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")
        }
        env.update(
            HF_HUB_OFFLINE="1",
            HF_HOME=str(tmp / "hf-home"),
            HF_MODULES_CACHE=str(tmp / "modules"),
            HF_HUB_DISABLE_TELEMETRY="1",
            TOKENIZERS_PARALLELISM="false",
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", VERIFY_SCRIPT, str(staged), kind]
                if base is None
                else [sys.executable, "-I", "-c", VERIFY_ADAPTER_SCRIPT, str(staged), kind,
                      str(Path(base).resolve()), json.dumps(labels or [])],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise UserError(
                f"loading '{folder}' through remote code in a clean Python took over {timeout:.0f}s: "
                "check that the folder loads with from_pretrained(..., trust_remote_code=True)"
            ) from None
    for line in proc.stdout.splitlines():
        if line.startswith(VERIFY_MARK):
            if proc.returncode == 0:
                return json.loads(line[len(VERIFY_MARK):])
    raise UserError(
        f"'{folder}' does not load through remote code in a clean Python ({redact(_last_error_line(proc.stderr))}): "
        "nothing was sent; re-save the model with save_pretrained from modeling_gpt_scratch and try again"
    )


# ------------------------------------------------------------------------------------------------------------------
# the workflow
# ------------------------------------------------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def run(args: argparse.Namespace) -> int:
    repo_id = validate_repo_id(args.repo_id)
    folder = check_folder(args.model)
    is_adapter = is_adapter_folder(folder)
    base_model_id = getattr(args, "base_model_id", None)
    if is_adapter:
        base_id, base_dir = adapter_base(folder, base_model_id)
    elif base_model_id is not None:
        raise UserError(
            f"--base-model-id is only for a LoRA adapter folder; '{folder}' is a full model folder (its weights "
            "include the base): drop --base-model-id"
        )
    try:
        token = get_token()
    except UserError:
        if not args.dry_run:
            raise
        token = None
    if not token and not args.dry_run:
        raise UserError(
            "no Hugging Face token found: run `hf auth login` (or set HF_TOKEN to a token with write access), "
            "then publish again; --dry-run checks the folder without one"
        )

    if constants.HF_HUB_OFFLINE and not args.dry_run:
        raise UserError(
            "HF_HUB_OFFLINE is set, so nothing can be sent to the Hub: unset HF_HUB_OFFLINE to publish, "
            "or pass --dry-run to only check the folder"
        )
    kind = _model_kind(folder)

    write_cards(folder, repo_id=repo_id, base_model_id=base_id if is_adapter else None)
    strip_local_files_only(folder)
    what = f"LoRA adapter folder (base: {base_id})" if is_adapter else "model folder"
    print(f"checked: '{folder}' is a complete {card_kind(folder)} {what}; refreshed README.md and report.md")

    files = files_to_upload(folder)
    staging = Path(tempfile.mkdtemp(prefix="gpt-scratch-adapter-")) if is_adapter else None
    try:
        source = stage_adapter(folder, files, base_id, staging) if is_adapter else folder
        return _check_verify_upload(args, repo_id, folder, source, files, kind, token,
                                    base_dir if is_adapter else None)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _check_verify_upload(args, repo_id: str, folder: Path, source: Path, files: list[str], kind: str, token,
                         base_dir: Path | None) -> int:
    """Steps 4-6 on ``source`` (the folder, or the staged copy of an adapter folder)."""
    _check_no_token(source, files, token)
    labels = adapter_labels(folder) if base_dir is not None and kind == "classifier" else None
    result = verify_remote_code(source, files, kind, base=base_dir, labels=labels)
    detail = (
        f"classified as {', '.join(result.get('predictions', []))}"
        if kind == "classifier"
        else f"generated {result.get('generated', '')[:60]!r}"
    )
    if base_dir is not None:
        print(f"verified: the base loads as {result.get('model_class')} through trust_remote_code in a clean Python "
              f"and the adapter on it through PEFT ({result.get('adapter_class')}; the copy sent names the base "
              f"{result.get('base')}); {detail}")
    else:
        print(f"verified: loads as {result.get('model_class')} through trust_remote_code in a clean Python; {detail}")

    sizes = {rel: (source / rel).stat().st_size for rel in files}
    where = f"'{repo_id}'" + (f" (branch '{args.revision}')" if args.revision else "")
    if args.dry_run:
        print(f"files that would be sent to {where} ({len(files)} files, {_size(sum(sizes.values()))}):")
        for rel in files:
            print(f"  {_size(sizes[rel]):>10}  {rel}")
        visibility = "private" if args.private else "public unless it exists already"
        print(f"dry run: nothing was sent (without --dry-run the repo is created {visibility}, then one commit)")
        if not token:
            print("note: no Hugging Face token found; a real publish needs `hf auth login` or HF_TOKEN")
        return 0

    workflow = card_kind(folder) + (" LoRA adapter" if base_dir is not None else " model")
    message = args.commit_message or f"Upload gpt-scratch {workflow} ({len(files)} files)"
    print(f"uploading {len(files)} files ({_size(sum(sizes.values()))}) to {where} ...", flush=True)
    repo_url, commit = upload(
        source, files, repo_id, token, private=args.private, revision=args.revision, commit_message=message
    )
    commit_url = getattr(commit, "commit_url", None) or repo_url
    print(f"published: {repo_url} ({commit_url})")
    if base_dir is not None:
        print(f'load it with PeftModel.from_pretrained(base, "{repo_id}") on the base {result.get("base")} '
              "(the card shows how)")
    else:
        print(
            f'load it with AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)'
            if kind == "causal"
            else f'load it with pipeline("text-classification", model="{repo_id}", trust_remote_code=True)'
        )
    return 0


# ------------------------------------------------------------------------------------------------------------------
# the programs run in a clean Python to prove that exactly the files sent load and run through trust_remote_code:
# ``python -I`` in an empty working folder, no PYTHONPATH, no user site, the installed package blocked
# ------------------------------------------------------------------------------------------------------------------

VERIFY_MARK = "GPT_SCRATCH_VERIFY "

# a causal model must generate; the result is printed on one line that starts with VERIFY_MARK
_VERIFY_SCRIPTS_END = r"""    else:
        enc = tokenizer("Every effort moves you", return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:]
        if new.numel() == 0:
            raise RuntimeError("generate produced no new tokens")
        result["generated"] = tokenizer.decode(new)
""" + f"print({VERIFY_MARK!r} + json.dumps(result))\n"

VERIFY_SCRIPT = r"""
import json, sys
sys.modules["modeling_gpt_scratch"] = None
sys.modules["pipelines"] = None
folder, kind = sys.argv[1], sys.argv[2]
import torch
from transformers import AutoConfig, AutoTokenizer
torch.manual_seed(0)
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
if kind == "classifier":
    from transformers import AutoModelForSequenceClassification as Auto
else:
    from transformers import AutoModelForCausalLM as Auto
model = Auto.from_pretrained(folder, trust_remote_code=True)
for obj in (config, model):
    if not type(obj).__module__.startswith("transformers_modules"):
        raise RuntimeError(f"{type(obj).__name__} came from {type(obj).__module__}, not from the folder's code")
result = {"model_class": type(model).__name__, "config_class": type(config).__name__}
texts = ["Congratulations, you won a free prize! Call now.", "Are we still meeting for lunch tomorrow?"]
with torch.no_grad():
    if kind == "classifier":
        enc = tokenizer(texts[:1], return_tensors="pt")
        label = model.config.id2label[int(model(**enc).logits.argmax(-1)[0])]
        from transformers import pipeline
        classify = pipeline("text-classification", model=folder, trust_remote_code=True)
        predictions = classify(texts)
        labels = set(model.config.id2label.values())
        if not all(p["label"] in labels for p in predictions):
            raise RuntimeError(f"the pipeline returned labels {predictions} outside {sorted(labels)}")
        result["predictions"] = [label] + [p["label"] for p in predictions]
""" + _VERIFY_SCRIPTS_END


# the same for a LoRA adapter: the base folder through remote code, then the adapter through PEFT.
VERIFY_ADAPTER_SCRIPT = r"""
import json, sys
sys.modules["modeling_gpt_scratch"] = None
sys.modules["pipelines"] = None
folder, kind, base, labels = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import torch
from peft import PeftModel
from transformers import AutoTokenizer
torch.manual_seed(0)
if kind == "classifier":
    from transformers import AutoModelForSequenceClassification as Auto
    extra = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                 label2id={name: i for i, name in enumerate(labels)})
else:
    from transformers import AutoModelForCausalLM as Auto
    extra = {}
base_model = Auto.from_pretrained(base, trust_remote_code=True, **extra)
if not type(base_model).__module__.startswith("transformers_modules"):
    raise RuntimeError(f"{type(base_model).__name__} came from {type(base_model).__module__}, not the base's code")
model = PeftModel.from_pretrained(base_model, folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
with open(folder + "/adapter_config.json", encoding="utf-8") as f:
    named = json.load(f)["base_model_name_or_path"]
result = {"model_class": type(base_model).__name__, "adapter_class": type(model).__name__, "base": named}
texts = ["Congratulations, you won a free prize! Call now.", "Are we still meeting for lunch tomorrow?"]
with torch.no_grad():
    if kind == "classifier":
        model.config.pad_token_id = tokenizer.pad_token_id
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        predictions = [labels[int(i)] for i in model(**enc).logits.argmax(-1)]
        result["predictions"] = predictions
""" + _VERIFY_SCRIPTS_END
