"""What a model folder is, which kind it holds, and how to open it -- with one clear line when it cannot be opened.

The one place that knows the file names of a folder (weights, tokenizer, config, code, adapter) and its kinds
(:class:`FolderKind`):

==============  ================================================  ==============================================
kind            what marks it                                     who writes it / who reads it
==============  ================================================  ==============================================
``causal-lm``   config.json ``architectures`` GPTScratchForCausalLM  pretrain, convert, finetune-instruct /
                (or no ``architectures`` and ``model_type``          generate, chat, serve, respond, evaluate (text),
                gpt_scratch)                                         finetune-instruct, finetune-classifier
``classifier``  GPTScratchForSequenceClassification                  finetune-classifier / classify, evaluate
``base``        GPTScratchModel (the transformer, no head)           ``save_pretrained`` of the bare model /
                                                                     finetune-classifier (a fresh head anyway)
``adapter``     adapter_config.json (a LoRA adapter through PEFT)    a fine-tune with --lora-rank / respond, classify
``hf-gpt2``     ``model_type`` gpt2                                  Hugging Face GPT-2 / convert --from hf-gpt2
``other``       anything else                                        --
==============  ================================================  ==============================================

Every workflow that takes ``--model`` opens it with :func:`open_model`, saying which kinds it accepts, and a folder of
another kind is refused with what it is and which workflow it belongs to -- so a classifier folder given to
``generate`` is not silently sampled from a random LM head.  An adapter folder opens as its base (named in its
``adapter_config.json``) with the adapter applied through PEFT.  Unreadable files (a ``model.safetensors`` cut
short, a ``config.json`` that is not JSON) are reported as one line naming the file and the likely cause.
"""

from __future__ import annotations

import contextlib
import enum
import json
import pickle
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig
from transformers.utils import logging as hf_logging

from modeling_gpt_scratch import GPTScratchForCausalLM, GPTScratchForSequenceClassification
from modeling_gpt_scratch.configuration_gpt_scratch import GPTScratchConfig

from ..errors import UserError, first_line, json_error
from ..hub import looks_like_hub_id, model_folder
from .record import RunRecord
from .tokenizers import TOKENIZER_FILES, open_tokenizer


class FolderKind(str, enum.Enum):
    """What a model folder holds (see the module docstring); compares equal to its name."""

    CAUSAL_LM = "causal-lm"
    CLASSIFIER = "classifier"
    BASE = "base"
    ADAPTER = "adapter"
    HF_GPT2 = "hf-gpt2"
    OTHER = "other"

    __hash__ = str.__hash__  # a member and its name are the same key in a dict or set

    def __str__(self) -> str:
        return self.value


ARCHITECTURE_KINDS = {
    "GPTScratchForCausalLM": FolderKind.CAUSAL_LM,
    "GPTScratchForSequenceClassification": FolderKind.CLASSIFIER,
    "GPTScratchModel": FolderKind.BASE,
}


CONFIG_FILE = "config.json"


# any one of these marks a folder that holds weights / a saved tokenizer
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)


CODE_FILES = ("configuration_gpt_scratch.py", "modeling_gpt_scratch.py")


ADAPTER_CONFIG_FILE = "adapter_config.json"


ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


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


# what loading a damaged folder raises: OSError/ValueError from transformers, SafetensorError for a file cut short,
# RuntimeError for tensors of the wrong shape, pickle errors for a damaged .bin
LOAD_ERRORS = (
    OSError, ValueError, RuntimeError, KeyError, IndexError, EOFError, pickle.UnpicklingError, SafetensorError
)


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


def architecture_kind(config: dict) -> FolderKind:
    """The kind (see the module docstring) that a ``config.json`` describes."""
    model_type = config.get("model_type")
    if model_type == "gpt2":
        return FolderKind.HF_GPT2
    architectures = [str(a) for a in (config.get("architectures") or [])]
    kinds = {ARCHITECTURE_KINDS[a] for a in architectures if a in ARCHITECTURE_KINDS}
    if any("SequenceClassification" in a for a in architectures):
        return FolderKind.CLASSIFIER
    for kind in (FolderKind.CAUSAL_LM, FolderKind.BASE):
        if kind in kinds:
            return kind
    if model_type == "gpt_scratch" and not architectures:
        return FolderKind.CAUSAL_LM  # a bare config.json (config.save_pretrained): the causal LM is the default class
    return FolderKind.OTHER


def folder_kind(folder, flag: str = "--model") -> FolderKind:
    """The kind of the model folder ``folder``: ``ADAPTER`` for a LoRA adapter, else from its ``config.json``."""
    if is_adapter_folder(folder):
        return FolderKind.ADAPTER
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
    :func:`load_adapter` opens it).
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
    return UserError(f"{flag} {folder} is {what}, not {wanted}: {KIND_HINTS[kind]}")


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



@contextlib.contextmanager
def quiet_hf():
    """Silence transformers' loading reports and progress bars for the length of a CLI command."""
    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_peft():
    """PEFT calls a transformers method that transformers 5 deprecates: silence that warning only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield



def read_adapter_config(folder, flag: str = "--model") -> dict:
    """``adapter_config.json`` of a LoRA adapter folder made here; anything else is a one-line ``UserError``."""
    folder = Path(str(folder)).expanduser()
    path = folder / ADAPTER_CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{flag} {folder}: {ADAPTER_CONFIG_FILE} cannot be read ({exc}); re-run the fine-tune"
        ) from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{flag} {folder} holds a '{kind}' PEFT adapter, not a LoRA adapter of gpt-scratch")
    if not config.get("base_model_name_or_path"):
        raise UserError(
            f"{flag} {folder}: {ADAPTER_CONFIG_FILE} names no base model (base_model_name_or_path): set it to the "
            "base model folder or Hub id the adapter was trained on"
        )
    if not (folder / ADAPTER_WEIGHTS_FILE).is_file():
        raise UserError(
            f"{flag} {folder} is a LoRA adapter folder without {ADAPTER_WEIGHTS_FILE}: re-run the fine-tune"
        )
    return config


def adapter_kind(config: dict) -> FolderKind:
    """What an adapter's base with the adapter computes: ``CLASSIFIER`` or ``CAUSAL_LM`` (its ``task_type``)."""
    return FolderKind.CLASSIFIER if str(config.get("task_type") or "").upper() == "SEQ_CLS" else FolderKind.CAUSAL_LM


def resolve_base(folder, config: dict, flag: str = "--model") -> Path:
    """A local folder for the adapter's base: its path (absolute, or relative to here or to the adapter folder), or
    the Hub cache's snapshot of its Hub id."""
    folder = Path(str(folder)).expanduser()
    spec = str(config["base_model_name_or_path"])
    candidates = [Path(spec).expanduser()]
    if not Path(spec).is_absolute():
        candidates.append(folder / spec)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if not looks_like_hub_id(spec):
        raise UserError(
            f"{flag} {folder} is a LoRA adapter for the base model {spec}, which does not exist here: restore that "
            f"folder, or set base_model_name_or_path in {folder / ADAPTER_CONFIG_FILE} to where the base is now"
        )
    return model_folder(spec, flag=f"{flag} {folder}: its base model")


def adapter_labels(folder, flag: str = "--model") -> list[str]:
    """The label names of a classifier adapter folder (those of its run record, else of metrics.json)."""
    folder = Path(str(folder))
    recorded = RunRecord.read(folder).labels
    if recorded is not None and len(recorded) >= 2:
        return recorded
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = None
    labels = metrics.get("labels") if isinstance(metrics, dict) else None
    if isinstance(labels, list) and len(labels) >= 2:
        return [str(label) for label in labels]
    raise UserError(
        f"{flag} {folder} is a classifier adapter without its label names (the 'labels' of run_config.yaml or "
        "metrics.json): re-run finetune-classifier, or restore those files"
    )


def load_adapter(folder, kind: str, flag: str = "--model", merged: bool = True):
    """``(model, tokenizer)`` from an adapter folder: its base plus the adapter through ``PeftModel.from_pretrained``;
    merged into plain weights (``merged=True``, faster) or left as the ``PeftModel``.  Eval mode."""
    from peft import PeftModel  # seconds to import; only LoRA and adapter folders need PEFT

    folder = Path(str(folder)).expanduser()
    config = read_adapter_config(folder, flag)
    found = adapter_kind(config)
    if found != kind:
        what = {FolderKind.CLASSIFIER: "a classifier", FolderKind.CAUSAL_LM: "a causal language model"}
        raise UserError(
            f"{flag} {folder} is a LoRA adapter for {what[found]}, not for {what[kind]}: "
            + ("use `gpt-scratch classify` with it" if found == FolderKind.CLASSIFIER else
               "use `gpt-scratch respond` (or the merged folder with generate/chat) with it")
        )
    base_dir = resolve_base(folder, config, flag)
    if kind == FolderKind.CLASSIFIER:
        check_causal_lm_folder(base_dir, need_tokenizer=False, flag=f"{flag} {folder}: its base model")
        model = load_base_as_classifier(base_dir, adapter_labels(folder, flag), flag=f"{flag} {folder}: its base model")
    else:
        check_model_folder(base_dir, need_tokenizer=False)
        try:
            with quiet_hf():
                model = GPTScratchForCausalLM.from_pretrained(str(base_dir))
        except LOAD_ERRORS as exc:  # a file cut short, a damaged pickle: one line naming the file
            raise weights_error(base_dir, exc, f"{flag} {folder}: its base model") from None
    try:
        with quiet_peft(), quiet_hf():
            model = PeftModel.from_pretrained(model, str(folder))
    except LOAD_ERRORS as exc:
        if type(exc).__name__ == "SafetensorError":  # the adapter file itself is cut short or damaged
            raise weights_error(folder, exc, flag, folder / ADAPTER_WEIGHTS_FILE) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{flag} {folder}: the adapter does not fit its base model {base_dir} ({first[:200]}): pass the base it "
            "was trained on"
        ) from None
    if merged:
        model = model.merge_and_unload()  # plain weights: as fast as the base
    tokenizer = open_tokenizer(folder)
    inner = model if merged else model.get_base_model()
    if tokenizer.pad_token_id is not None:
        inner.config.pad_token_id = tokenizer.pad_token_id
    if kind == FolderKind.CAUSAL_LM and (folder / "generation_config.json").is_file():
        inner.generation_config = GenerationConfig.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer



def check_causal_lm_folder(folder: Path, need_tokenizer: bool = True, flag: str = "--model") -> dict:
    """The ``config.json`` of a gpt-scratch causal-LM folder (or a bare GPTScratchModel: the head is new anyway);
    anything else is a one-line :class:`UserError` (kinds: :class:`FolderKind`)."""
    check_model_folder(folder, need_tokenizer=need_tokenizer, flag=flag)
    config = read_config(folder, flag)
    kind = architecture_kind(config)
    if kind == FolderKind.CLASSIFIER:
        raise UserError(
            f"{flag} {folder} is already a classifier ({', '.join(config.get('architectures') or [])}), not a causal "
            "language model: start from the base model it was fine-tuned from"
        )
    if kind not in ("causal-lm", "base"):
        raise wrong_kind(folder, kind, ("causal-lm",), flag, config)
    return config


def load_base_as_classifier(folder: Path, names: list[str], dropout: float | None = None, flag: str = "--model"):
    """A :class:`GPTScratchForSequenceClassification` with the folder's transformer and a fresh ``score`` head."""
    id2label, label2id = dict(enumerate(names)), {name: i for i, name in enumerate(names)}  # as data.tables does
    extra = {} if dropout is None else {"hidden_dropout": dropout, "attention_dropout": dropout}
    try:
        with quiet_hf():
            model, info = GPTScratchForSequenceClassification.from_pretrained(
                str(folder),
                num_labels=len(names),
                id2label=id2label,
                label2id=label2id,
                output_loading_info=True,
                **extra,
            )
    except LOAD_ERRORS as exc:  # a file cut short (SafetensorError), a damaged pickle, shapes that do not match
        raise weights_error(folder, exc, flag) from None
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("score."))
    if missing or info.get("mismatched_keys"):
        what = missing or sorted(str(k) for k in info["mismatched_keys"])
        raise UserError(
            f"{flag} {folder}: its weights do not match its config.json ({len(what)} missing or mismatched tensors, "
            f"e.g. {what[0]}): pass a complete causal-LM folder"
        )
    # model.score is fresh: N(0, initializer_range) weights and zero bias from _init_weights
    return model



def make_generation_config(config: GPTScratchConfig, pad_token_id=None, **settings):
    """Generation defaults for a saved folder: stop at end-of-text; sample with top-k 50 unless ``settings`` say
    otherwise (e.g. ``do_sample=False`` for an instruction follower).

    No length at all: a saved ``max_new_tokens`` would override a caller's ``max_length`` (lm-evaluation-harness
    passes ``max_length`` = prompt + tokens to generate) and run past the context, and a saved ``max_length`` makes
    every call with ``max_new_tokens`` warn.  Left unset, ``generate`` adds 20 tokens, capped at the context.
    """
    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    if pad is None:
        pad = config.eos_token_id
    defaults = dict(do_sample=True, top_k=50)
    return GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=pad, **{**defaults, **settings}
    )


def is_instruct(tokenizer) -> bool:
    """An instruct model's tokenizer carries a chat template; a base model's does not."""
    return bool(getattr(tokenizer, "chat_template", None))




def task_kind(folder) -> FolderKind:
    """``CLASSIFIER`` or ``CAUSAL_LM``: what the folder (or an adapter's base with the adapter) computes."""
    kind = folder_kind(folder)
    if kind == FolderKind.ADAPTER:
        return adapter_kind(read_adapter_config(folder))
    return FolderKind.CLASSIFIER if kind == FolderKind.CLASSIFIER else FolderKind.CAUSAL_LM


def open_model(spec, accept=(FolderKind.CAUSAL_LM,), *, flag: str = "--model", device=None, cls=None,
               merged: bool = True):
    """``(model, tokenizer)`` of the model folder ``spec``, in eval mode, on ``device`` (default: the GPU when there
    is one).  ``accept``: the kinds this workflow takes (an adapter folder opens as its base plus the adapter; give
    ``merged=False`` to keep the ``PeftModel``).  ``cls``: load with this class instead of the folder's own code
    through ``trust_remote_code`` (the fine-tunes train the package's class).  The tokenizer pads with end-of-text."""
    folder = check_model_folder(spec, flag=flag, accept=tuple(accept))
    if is_adapter_folder(folder):
        wanted = next(k for k in accept if k != FolderKind.ADAPTER)  # what the base with the adapter must be
        model, tokenizer = load_adapter(folder, wanted, flag=flag, merged=merged)
    else:
        tokenizer = open_tokenizer(folder)
        if cls is None:
            classifier = architecture_kind(read_config(folder, flag)) == FolderKind.CLASSIFIER
            cls = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
        with loading_weights(folder, flag), quiet_hf():
            model = cls.from_pretrained(str(folder), trust_remote_code=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer
