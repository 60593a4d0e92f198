"""The run folder contract: every training workflow's ``--out`` is itself a loadable Hugging Face model folder.

Layout::

    config.json  model.safetensors  configuration_gpt_scratch.py  modeling_gpt_scratch.py   (the model + its code)
    tokenizer.json  tokenizer_config.json  ...                                              (the tokenizer)
    generation_config.json   README.md (model card)   report.md (report card)
    metrics.json (final and per-eval metrics)   run_config.yaml (the resolved config)   plots/*.png
    checkpoints/step-N/  (for --resume)

Files appear atomically: everything is written into a temporary folder inside the run folder first and then
renamed into place file by file, so a killed run leaves either the old or the new version of each file.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path

import yaml

from .errors import UserError
from .fsutil import atomic_write_json, atomic_write_text, publish_files

MODEL_FILES = ("config.json", "model.safetensors", "configuration_gpt_scratch.py", "modeling_gpt_scratch.py")


def prepare_out_dir(out_dir: str | Path, resume: bool, overwrite: bool = False) -> Path:
    """Check ``--out`` against ``--resume``/``--overwrite`` before any work is done."""
    from .train_loop import latest_checkpoint

    out = Path(out_dir)
    if resume:
        if latest_checkpoint(out) is None:
            raise UserError(
                f"--resume: there is no checkpoint in '{out / 'checkpoints'}': start the run without --resume "
                "(and set --checkpoint-every N so that it can be resumed)"
            )
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"output folder '{out}' already exists and is not empty: pass --resume to continue its run, "
                "--overwrite to replace it, or choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_run_config(out_dir: Path, config: dict) -> None:
    atomic_write_text(Path(out_dir) / "run_config.yaml", yaml.safe_dump(config, sort_keys=False))


def environment() -> dict:
    import torch
    import transformers

    device = "cpu"
    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": device,
        "cpu_count": __import__("os").cpu_count(),
    }


def write_model_folder(
    out_dir: str | Path,
    model,
    tokenizer,
    *,
    metrics: dict,
    run_config: dict,
    workflow: str,
    generation_config=None,
    samples: list[dict] | None = None,
) -> Path:
    """Write the final model, tokenizer, metrics, config, card and report into ``out_dir`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    if tokenizer is not None:
        from modeling_gpt_scratch.tokenization import portable_tokenizer

        tokenizer = portable_tokenizer(tokenizer, model.config.max_position_embeddings)
        model.config.pad_token_id = tokenizer.pad_token_id
    if generation_config is not None:
        model.generation_config = generation_config
    metrics = {**metrics, "workflow": workflow, "environment": environment()}
    if samples:
        metrics["samples"] = samples
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
            strip_local_files_only(staging)
        atomic_write_json(staging / "metrics.json", metrics)
        atomic_write_text(staging / "run_config.yaml", yaml.safe_dump(run_config, sort_keys=False))
        publish_files(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    from .cards import write_cards

    write_cards(out)
    return out


def strip_local_files_only(folder: Path) -> None:
    """A tokenizer saved offline records ``local_files_only``; a published folder must not carry it."""
    path = Path(folder) / "tokenizer_config.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("local_files_only", None) is not None:
            atomic_write_json(path, data)


def read_metrics(folder: str | Path) -> dict:
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
