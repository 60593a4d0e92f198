"""What a model folder is, which kind it holds, and how to open it with one clear line when it cannot be opened.

The one place that knows the file-name sets of a folder (weights, tokenizer, config, code, adapter) and the kinds:

==============  ================================================  ==============================================
kind            what marks it                                     who writes it / who reads it
==============  ================================================  ==============================================
``causal-lm``   config.json ``architectures`` GPTScratchForCausalLM  pretrain, convert, finetune-instruct /
                (or no ``architectures`` and ``model_type``          generate, chat, serve, respond, evaluate (text),
                gpt_scratch)                                         finetune-instruct, finetune-classifier
``classifier``  GPTScratchForSequenceClassification                  finetune-classifier / classify, evaluate
``base``        GPTScratchModel (the transformer, no head)           ``save_pretrained`` of the bare model /
                                                                     finetune-classifier (a fresh head anyway)
``adapter``     adapter_config.json (a LoRA adapter, see lora.py)    a fine-tune with --lora-rank / respond, classify
``hf-gpt2``     ``model_type`` gpt2                                  Hugging Face GPT-2 / convert --from hf-gpt2
``other``       anything else                                        --
==============  ================================================  ==============================================

Every workflow that takes ``--model`` says which kinds it accepts (:func:`check_model_folder`'s ``accept``), and a
folder of another kind is refused with what it is and which workflow it belongs to -- so a classifier folder given
to ``generate`` is not silently sampled from a random LM head.  Unreadable files (a ``model.safetensors`` cut short, a
``config.json`` that is not JSON, a broken ``tokenizer.json``) are reported as one line naming the file and the
likely cause (:func:`weights_error`, :func:`read_config`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from pathlib import Path

from .errors import UserError

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
"""Environment variables that forbid reaching the Hub (any of ``1``/``true``/``yes``/``on``, case-insensitive)."""


def offline_flag(flags: tuple[str, ...] = OFFLINE_FLAGS) -> str | None:
    """The first of ``flags`` set to a true value, or None when the Hub may be reached.  Model and tokenizer
    downloads heed only ``HF_HUB_OFFLINE`` (pass ``("HF_HUB_OFFLINE",)``); data sets heed both."""
    for flag in flags:
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return flag
    return None


HUB_ID = re.compile(r"^(?P<repo>(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*)(?::(?P<config>[\w.-]+))?$")
"""A Hub repository id, ``owner/name``, optionally ``:config`` (a dataset's configuration); see looks_like_hub_id."""
_FILE_SUFFIXES = (
    ".txt", ".md", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".npy", ".bin", ".yaml", ".gz", ".bz2",
    ".xz", ".zst", ".zip", ".tar", ".safetensors", ".pth", ".pt",
)


def looks_like_hub_id(value, *, config: bool = False, bare_name: bool = False) -> bool:
    """Whether ``value`` names a Hub repository rather than a local path: ``owner/name`` (letters, digits,
    ``_ . -``; each part starting with a letter or digit), not an existing path, not ending in a file extension
    such as ``.csv`` or ``.safetensors``.  ``config``: a dataset id may end in ``:config``; ``bare_name``: a model
    id may be a bare name without owner (``gpt2``)."""
    if not isinstance(value, str) or "\\" in value or Path(value).expanduser().exists():
        return False
    match = HUB_ID.match(value)
    if match is None or (match["config"] and not config) or ("/" not in match["repo"] and not bare_name):
        return False
    return not match["repo"].lower().endswith(_FILE_SUFFIXES)


CONFIG_FILE = "config.json"
# any one of these marks a folder that holds weights / a saved tokenizer
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
# every file a saved tokenizer may consist of (what a publish uploads)
TOKENIZER_SAVE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
CODE_FILES = ("configuration_gpt_scratch.py", "modeling_gpt_scratch.py")
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

ARCHITECTURE_KINDS = {
    "GPTScratchForCausalLM": "causal-lm",
    "GPTScratchForSequenceClassification": "classifier",
    "GPTScratchModel": "base",
}
KIND_WORDS = {
    "causal-lm": "a causal language model (GPTScratchForCausalLM)",
    "classifier": "a classifier (GPTScratchForSequenceClassification)",
    "base": "a bare transformer without a head (GPTScratchModel)",
    "adapter": "a LoRA adapter folder (adapter_config.json)",
    "hf-gpt2": "a Hugging Face GPT-2 checkpoint (model_type gpt2), not a gpt-scratch model",
    "other": "not a gpt-scratch model",
}
# what to do with a folder of each kind, said when a workflow gets the wrong one
KIND_HINTS = {
    "causal-lm": "it works with generate, chat, serve, respond and evaluate; fine-tune a classifier from it with "
    "`gpt-scratch finetune-classifier --model FOLDER`",
    "classifier": "use it with `gpt-scratch classify` or `gpt-scratch evaluate`; to generate text pass the causal "
    "LM it was fine-tuned from",
    "base": "it has no language-model head: pass the GPTScratchForCausalLM folder it came from",
    "adapter": "`gpt-scratch respond` and `gpt-scratch classify` open adapters; for other workflows pass its merged/ "
    "folder (fine-tune with --merge) or the base model",
    "hf-gpt2": "import it first with `gpt-scratch convert --from hf-gpt2 --src FOLDER --out DIR` and pass DIR",
    "other": "pass the --out of a gpt-scratch workflow (pretrain, convert, finetune-*)",
}
_SAFETENSORS_CUT = ("incomplete", "not fully covered", "invalid header", "header too large", "header too small",
                    "metadata", "deserializ", "buffer")


def _load_errors() -> tuple:
    errors = [OSError, ValueError, RuntimeError, KeyError, IndexError, EOFError, pickle.UnpicklingError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency of transformers
        pass
    return tuple(errors)


# what loading a damaged folder raises: OSError/ValueError from transformers, SafetensorError for a file cut short,
# RuntimeError for tensors of the wrong shape, pickle errors for a damaged .bin
LOAD_ERRORS = _load_errors()


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit]


def json_error(exc: json.JSONDecodeError) -> str:
    """``msg at line L, column C`` (json's own messages may end in 'at', e.g. 'Unterminated string starting at')."""
    msg = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg
    return f"{msg} at line {exc.lineno}, column {exc.colno}"


def is_adapter_folder(folder) -> bool:
    return (Path(str(folder)).expanduser() / ADAPTER_CONFIG_FILE).is_file()


def read_config(folder, flag: str = "--model") -> dict:
    """``config.json`` of a model folder as a dict; unreadable or not JSON is one line naming the file."""
    folder = Path(str(folder)).expanduser()
    path = folder / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(
            f"{flag} {folder}: {CONFIG_FILE} is not UTF-8 text, so the file is damaged: copy the folder again or "
            "re-save the model"
        ) from None
    except OSError as exc:
        raise UserError(
            f"{flag} {folder}: {CONFIG_FILE} cannot be read ({exc.strerror or exc}): check the file"
        ) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "is empty" if not text.strip() else f"is not valid JSON ({json_error(exc)})"
        raise UserError(
            f"{flag} {folder}: {CONFIG_FILE} {what}: the file is damaged or cut short (or was edited by hand); fix "
            "it, copy the folder again or re-save the model"
        ) from None
    if not isinstance(config, dict):
        raise UserError(
            f"{flag} {folder}: {CONFIG_FILE} holds a JSON {type(config).__name__}, not an object of settings: "
            "re-save the model"
        )
    return config


def architecture_kind(config: dict) -> str:
    """The kind (see the module docstring) that a ``config.json`` describes."""
    model_type = config.get("model_type")
    if model_type == "gpt2":
        return "hf-gpt2"
    architectures = [str(a) for a in (config.get("architectures") or [])]
    kinds = {ARCHITECTURE_KINDS[a] for a in architectures if a in ARCHITECTURE_KINDS}
    if any("SequenceClassification" in a for a in architectures):
        return "classifier"
    for kind in ("causal-lm", "base"):
        if kind in kinds:
            return kind
    if model_type == "gpt_scratch" and not architectures:
        return "causal-lm"  # a bare config.json (config.save_pretrained): the causal LM is the default class
    return "other"


def folder_kind(folder, flag: str = "--model") -> str:
    """The kind of the model folder ``folder``: ``adapter`` for a LoRA adapter, else from its ``config.json``."""
    if is_adapter_folder(folder):
        return "adapter"
    return architecture_kind(read_config(folder, flag))


def weights_file(folder) -> Path | None:
    folder = Path(str(folder))
    for name in (*WEIGHT_FILES, ADAPTER_WEIGHTS_FILE):
        if (folder / name).is_file():
            return folder / name
    return None


def check_model_folder(
    model_dir, need_tokenizer: bool = True, flag: str = "--model", accept: tuple[str, ...] | None = None
) -> Path:
    """``model_dir`` as a Path, or one line saying why it is not a usable model folder.

    It must exist, be a folder, hold ``config.json`` (valid JSON), weights and (``need_tokenizer``) a tokenizer; with
    ``accept`` its kind must be one of those (an adapter folder is returned as it is when ``"adapter"`` is accepted:
    ``pipelines.lora`` opens it).
    """
    folder = Path(str(model_dir)).expanduser()
    if not folder.exists():
        raise UserError(f"{flag} {folder} does not exist: pass a model folder (e.g. the --out of pretrain or convert)")
    if not folder.is_dir():
        raise UserError(
            f"{flag} {folder} is a file: pass the model folder that holds config.json and model.safetensors"
        )
    if is_adapter_folder(folder):
        if accept is not None and "adapter" not in accept:
            raise wrong_kind(folder, "adapter", accept, flag)
        if accept is not None:
            return folder
    missing = []
    if not (folder / CONFIG_FILE).is_file():
        missing.append(CONFIG_FILE)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("weights (model.safetensors)")
    if need_tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer (tokenizer.json)")
    if missing:
        raise UserError(f"{flag} {folder} is not a complete model folder: it has no {' and no '.join(missing)}")
    config = read_config(folder, flag)
    if accept is not None:
        kind = architecture_kind(config)
        if kind not in accept:
            raise wrong_kind(folder, kind, accept, flag, config)
    return folder


def wrong_kind(folder, kind: str, accept, flag: str = "--model", config: dict | None = None) -> UserError:
    wanted = " or ".join(KIND_WORDS[k].split(" (")[0] for k in accept)
    what = KIND_WORDS[kind]
    if kind == "other" and config is not None:
        names = ", ".join(map(str, config.get("architectures") or [])) or f"model_type {config.get('model_type')!r}"
        what = f"{names}, {what}"
    return UserError(f"{flag} {folder} is {what}, but this workflow needs {wanted}: {KIND_HINTS[kind]}")


def weights_error(folder, exc: BaseException, flag: str = "--model", file=None) -> UserError:
    """One line for weights that do not load: the file, what went wrong, the likely cause and what to do."""
    folder = Path(str(folder))
    path = Path(file) if file is not None else weights_file(folder)
    name = path.name if path is not None else "the weights"
    text = first_line(exc)
    kind = type(exc).__name__
    low = text.lower()
    if kind == "SafetensorError" or any(word in low for word in _SAFETENSORS_CUT):
        cause = "the file is cut short or damaged (an interrupted copy, download or save?)"
    elif "size mismatch" in low or "shape" in low:
        cause = f"its tensors do not match {CONFIG_FILE} (weights and config from different models?)"
    elif isinstance(exc, (pickle.UnpicklingError, EOFError)):
        cause = "the file is damaged or cut short"
    else:
        cause = "the file is damaged, or does not belong to this config"
    return UserError(
        f"{flag} {folder}: cannot load the weights in {name} ({kind}: {text}): {cause}; copy the folder again or "
        "re-run the workflow that wrote it"
    )


@contextlib.contextmanager
def loading_weights(folder, flag: str = "--model", file=None):
    """Turn any failure of loading weights inside the block into :func:`weights_error`'s one line."""
    try:
        yield
    except UserError:
        raise
    except LOAD_ERRORS as exc:
        raise weights_error(folder, exc, flag, file) from None


def load_tokenizer(folder, flag: str = "--model"):
    """The tokenizer of a folder (pad = end-of-text), its files checked and errors one line each."""
    from pipelines.tokenization import load_tokenizer as _load

    return _load(str(folder))


def load_causal_lm(model_dir, device=None, flag: str = "--model"):
    """``(model, tokenizer)`` of a causal-LM folder, eval mode, on ``device`` when given."""
    from transformers import AutoModelForCausalLM

    folder = check_model_folder(model_dir, flag=flag, accept=("causal-lm",))
    tokenizer = load_tokenizer(folder, flag)
    with loading_weights(folder, flag):
        model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


__all__ = [
    "CONFIG_FILE", "WEIGHT_FILES", "TOKENIZER_FILES", "TOKENIZER_SAVE_FILES", "CODE_FILES", "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE", "LOAD_ERRORS", "KIND_WORDS", "is_adapter_folder", "read_config", "architecture_kind",
    "folder_kind", "weights_file", "check_model_folder", "wrong_kind", "weights_error", "loading_weights",
    "load_tokenizer", "load_causal_lm", "json_error", "first_line",
]
