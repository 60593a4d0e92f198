"""``gpt-scratch finetune-classifier`` and ``gpt-scratch classify``: a next-token predictor turned into a classifier.

The recipe of the book's chapter 6 (Raschka, *Build a Large Language Model (From Scratch)*), on the shared core:

1. read a labelled table (``pipelines.data.read_labeled_table``), balance the classes by undersampling (default on),
   cut a seeded 70/10/20 train/val/test split and save it in the run folder (``splits/*.jsonl``;
   ``pipelines.classify_data``);
2. load a causal-LM folder of ours (or a Hub id) into :class:`GPTScratchForSequenceClassification`: the transformer
   weights are kept, the vocabulary-sized LM head is dropped, and a fresh ``score`` head with one output per label
   (label names from the data, sorted; ``id2label``/``label2id`` in the config) is initialised;
3. freeze everything except the chosen part (``--trainable``: ``last-block`` = last transformer block + final
   LayerNorm + head, the book's choice; ``last-two-blocks``; ``head``; ``all``, the default, chosen by measurement,
   see BENCHMARKS.md), or, with ``--lora-rank R``, freeze every base weight and train rank-R LoRA adapters on the
   blocks' Linears plus the whole head (``pipelines.lora``, through PEFT; the run folder is then an adapter folder,
   and ``--merge`` adds ``merged/``, a full classifier folder);
4. tokenise each text (truncated to the context, with a count in the log), pad each batch to its own longest text
   (right padding; the model pools the last *real* token through the attention mask);
5. train with the shared loop on cross-entropy, evaluating once per epoch (``--evals-per-epoch``, or
   ``--eval-every`` N steps): validation loss plus validation and (capped) training accuracy
   (``pipelines.classify_metrics``);
6. score the test split: accuracy, macro precision/recall/F1 and the confusion matrix, then write the run folder
   (a classifier that ``pipeline("text-classification", model=folder, trust_remote_code=True)`` opens).

Labels: the label set is that of the training split.  A label that occurs in the validation or test records but not
in the training records is refused (``UserError``): the head could never predict it, so the scores would silently
count it as an error.  With the built-in split this only happens for very small or very skewed data; with separate
``--val-data``/``--test-data`` files it means the files disagree.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import config as config_schema
from . import lora
from .classify_data import SPLIT_NAMES, encode_split, encode_texts
from .classify_metrics import predict_ids
from .errors import UserError
from .folders import looks_like_hub_id
from .generate import quiet_hf
from .losses import classification_loss
from .runfolder import claims_out_dir
from .train_loop import TrainConfig, Trainer, latest_checkpoint, plot_history

TRAINABLE_MODES = ("last-block", "last-two-blocks", "head", "all")
# The default --trainable, chosen by measurement (BENCHMARKS.md, "Classifier defaults by measurement"): with the
# learning rate and epochs below it reaches 97% SMS test accuracy from the demo base and from random weights.
DEFAULT_TRAINABLE = "all"


@dataclass
class ClassifyConfig(lora.LoraOptions, TrainConfig):
    """A classifier fine-tune: the loop's settings plus data, base model, freezing and LoRA."""

    # The book's chapter 6 settings (AdamW, weight decay 0.1, 5 epochs, batch 8, constant learning rate), except the
    # learning rate and --trainable: all layers at 5e-4 instead of the last block at 5e-5, chosen by an SMS sweep
    # (BENCHMARKS.md) where it gave the best validation accuracy from the demo base and from random weights alike.
    seed: int = field(default=123, metadata={"help": "seed for balancing, the split, the head and the data order"})
    epochs: float = field(default=5.0, metadata={"help": "passes over the training split (0: use --max-steps)"})
    batch_size: int = field(default=8, metadata={"help": "micro-batch size per device"})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    lr_schedule: str = field(default="constant", metadata={"choices": ["cosine", "constant"], "help": "after warmup"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, on matrices only"})
    adam_beta2: float = 0.999
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0: only at the end)"})
    evals_per_epoch: float = field(
        default=1.0, metadata={"help": "evaluations per pass over the training split (0: --eval-every decides)"}
    )
    log_every: int = field(default=10, metadata={"help": "log every N steps"})

    model: str | None = field(default=None, metadata={"help": "base causal-LM folder (or Hub model id) to start from"})
    data: str | None = field(default=None, metadata={"help": "labelled table: TSV/CSV (header optional), JSON/JSONL, "
                                                      "Parquet, or a Hub dataset id"})
    out: str | None = field(default=None, metadata={"help": "run folder (a loadable classifier folder at the end)"})
    text_column: str | None = field(default=None, metadata={"help": "column (name or 0-based position) of the text"})
    label_column: str | None = field(default=None, metadata={"help": "column (name or 0-based position) of the label"})
    val_data: str | None = field(default=None, metadata={"help": "separate validation table (then --data is not "
                                                          "split for validation)"})
    test_data: str | None = field(default=None, metadata={"help": "separate test table (then --data is not split "
                                                           "for testing)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder or Hub id (default: the model's)"})
    trainable: str | None = field(
        default=None,
        metadata={"choices": list(TRAINABLE_MODES), "help": "what is trained: last-block (+ final norm + head), "
                  f"last-two-blocks, head, or all (unset: {DEFAULT_TRAINABLE}; must stay unset with --lora-rank, "
                  "which trains the adapters and the head)"},
    )
    balance: bool = field(default=True, metadata={"help": "undersample every class of --data to the smallest one"})
    train_fraction: float = field(default=0.7, metadata={"help": "share of --data for training", "range": (0, 1)})
    val_fraction: float = field(default=0.1, metadata={"help": "share of --data for validation", "range": (0, 1)})
    test_fraction: float = field(
        default=0.2, metadata={"help": "share of --data for the final test", "range": (0, 1)}
    )
    max_length: int = field(
        default=0, metadata={"help": "truncate texts to N tokens (0: the model's context)", "min": 0}
    )
    dropout: float | None = field(
        default=None, metadata={"help": "dropout while fine-tuning (default: the base's)", "min": 0, "below": 1}
    )
    train_accuracy_examples: int = field(
        default=256, metadata={"help": "training examples scored for train accuracy at each evaluation (0: all)"}
    )
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --out"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


# ======================================================================================================================
# base model
# ======================================================================================================================


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model_dir(spec: str, flag: str = "--model") -> Path:
    """A local folder for ``spec``: the folder itself, or the snapshot of a Hub model id (downloaded or cached)."""
    path = Path(str(spec)).expanduser()
    if path.exists():
        return path
    if not looks_like_hub_id(str(spec)):
        raise UserError(
            f"{flag} {spec} does not exist: pass a causal-LM folder (the --out of pretrain or convert) or a Hub model "
            "id as owner/name"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(spec)))
    except Exception as exc:  # offline, unreachable, unknown or gated repository
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _offline() or any(word in text.lower() for word in ("offline", "connect", "resolve", "timed out")):
            raise UserError(
                f"{flag} {spec} is a Hub model id that is not in the local cache; downloading it needs the network "
                f"({'HF_HUB_OFFLINE is set' if _offline() else 'the Hub could not be reached'}): connect and retry, or "
                "pass a local model folder"
            ) from None
        raise UserError(f"{flag} {spec}: cannot download it from the Hub ({text}); check the id") from None


def check_causal_lm_folder(folder: Path, need_tokenizer: bool = True, flag: str = "--model") -> dict:
    """The ``config.json`` of a gpt-scratch causal-LM folder (or a bare GPTScratchModel: the head is new anyway);
    anything else is a one-line :class:`UserError` (kinds: ``pipelines.folders``)."""
    from .folders import architecture_kind, check_model_folder, read_config, wrong_kind

    check_model_folder(folder, need_tokenizer=need_tokenizer, flag=flag)
    config = read_config(folder, flag)
    kind = architecture_kind(config)
    if kind == "classifier":
        raise UserError(
            f"{flag} {folder} is already a classifier ({', '.join(config.get('architectures') or [])}), not a causal "
            "language model: start from the base model it was fine-tuned from"
        )
    if kind not in ("causal-lm", "base"):
        raise wrong_kind(folder, kind, ("causal-lm",), flag, config)
    return config


def load_base_as_classifier(folder: Path, names: list[str], dropout: float | None = None, flag: str = "--model"):
    """A :class:`GPTScratchForSequenceClassification` with the folder's transformer and a fresh ``score`` head."""
    from modeling_gpt_scratch import GPTScratchForSequenceClassification

    from .data import label_maps
    from .folders import LOAD_ERRORS, weights_error

    id2label, label2id = label_maps(names)
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


def trainable_mode(cfg: ClassifyConfig) -> str:
    """What a run trains: the ``--trainable`` mode given, else :data:`DEFAULT_TRAINABLE`; ``"lora"`` with
    ``--lora-rank R``.

    ``--lora-rank`` (above 0) together with any ``--trainable`` value, given as a flag or a YAML key, even the
    default's name, is refused: with LoRA the base weights are frozen and the adapters plus the head train, so a
    ``--trainable`` choice would be silently overruled.
    """
    lora.check_options(cfg)
    if lora.enabled(cfg):
        if cfg.trainable is not None:
            raise UserError(
                f"--trainable {cfg.trainable} and --lora-rank {cfg.lora_rank} conflict: with LoRA every base weight is "
                "frozen and only the adapters and the score head train; drop --trainable (flag or YAML key) to "
                f"train LoRA adapters, or drop --lora-rank to train {cfg.trainable}"
            )
        return "lora"
    mode = cfg.trainable or DEFAULT_TRAINABLE
    if mode not in TRAINABLE_MODES:
        raise UserError(f"--trainable {mode}: choose one of {', '.join(TRAINABLE_MODES)}")
    return mode


def freeze_for(model, mode: str) -> int:
    """Let only the part named by ``mode`` train; returns the number of trainable parameters.

    ``head``: the ``score`` head.  ``last-block``: the last transformer block, the final LayerNorm and the head (the
    book's choice).  ``last-two-blocks``: the last two blocks, the final LayerNorm and the head.  ``all``: everything.
    """
    if mode not in TRAINABLE_MODES:
        raise UserError(f"--trainable {mode}: choose one of {', '.join(TRAINABLE_MODES)}")
    train_all = mode == "all"
    for param in model.parameters():
        param.requires_grad = train_all
    if not train_all:
        parts = [model.score]
        if mode in ("last-block", "last-two-blocks"):
            blocks = model.transformer.blocks
            parts += list(blocks[-(1 if mode == "last-block" else 2) :]) + [model.transformer.final_norm]
        for part in parts:
            for param in part.parameters():
                param.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ======================================================================================================================
# data
# ======================================================================================================================


def _load_tokenizer(spec: str):
    from pipelines.tokenization import load_tokenizer

    tokenizer = load_tokenizer(str(spec))
    if tokenizer.pad_token_id is None:
        raise UserError(f"tokenizer {spec} has neither a pad nor an end-of-text token: give a GPT-2-style tokenizer")
    return tokenizer


# ======================================================================================================================
# finetune-classifier
# ======================================================================================================================


def add_finetune_classifier_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file with any of the settings below (flags win)")
    config_schema.add_schema_arguments(parser, ClassifyConfig, "classifier fine-tuning settings (each is also a YAML key)")


def resolve_config(args) -> ClassifyConfig:
    return config_schema.resolve(ClassifyConfig, args, getattr(args, "config", None))


def finetune_classifier_main(args) -> int:
    return finetune(resolve_config(args))


def _check_out(cfg: ClassifyConfig, model_dir: Path) -> Path:
    """What ``prepare_out_dir`` will say, said before any work is done and without touching the folder."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a folder")
    if out.resolve() == model_dir.resolve():
        raise UserError(f"--out {out} is the base model folder: choose another folder for the classifier")
    from .runfolder import check_out_dir

    return check_out_dir(out, cfg.resume, cfg.overwrite, cfg.take_over_lock)


@claims_out_dir
def finetune(cfg: ClassifyConfig) -> int:
    from accelerate.utils import set_seed

    from .classify_data import build_splits, check_labels, save_splits, saved_splits
    from .classify_metrics import accuracy_hook, confusion_matrix_lines, score_splits
    from .data import label_maps, pad_collate_classification
    from .run_record import RunRecord, model_architecture
    from .runfolder import prepare_out_dir, save_run_config, write_model_folder
    from .train_loop import make_accelerator

    for flag, value in (("--model", cfg.model), ("--data", cfg.data), ("--out", cfg.out)):
        if not value:
            raise UserError(f"{flag} is required (as a flag or a key of the --config file)")
    if cfg.max_length < 0:
        raise UserError(f"--max-length {cfg.max_length} must be 0 (the model's context) or positive")
    mode = trainable_mode(cfg)

    # ---- everything that can fail on the user's input, before the run folder exists ------------------------------
    model_dir = resolve_model_dir(cfg.model)
    if lora.is_adapter_folder(model_dir):
        raise UserError(
            f"--model {model_dir} is a LoRA adapter folder, not a base model: pass the base it was trained on (its "
            "adapter_config.json names it), or its merged/ folder"
        )
    check_causal_lm_folder(model_dir, need_tokenizer=cfg.tokenizer is None)
    out = _check_out(cfg, model_dir)
    accelerator = make_accelerator(cfg, out)
    log = accelerator.print

    splits_dir = out / "splits"
    splits = saved_splits(splits_dir) if cfg.resume else None
    if splits is not None:
        log(f"resuming: the splits saved in {splits_dir} are used")
    else:
        splits = build_splits(cfg, log)
    names = check_labels(splits)
    _, label2id = label_maps(names)
    log(
        "splits: " + ", ".join(f"{n} {len(splits[n])}" for n in SPLIT_NAMES)
        + f"; labels (sorted, id = position): {', '.join(names)}"
    )

    tokenizer = _load_tokenizer(cfg.tokenizer or str(model_dir))
    set_seed(cfg.seed)  # the fresh head is drawn from this seed
    model = load_base_as_classifier(model_dir, names, cfg.dropout)
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size} embeddings: "
            "use the tokenizer the base model was trained with"
        )
    context = model.config.max_position_embeddings
    max_length = min(cfg.max_length or context, context)
    datasets, truncated = {}, {}
    for name in SPLIT_NAMES:
        datasets[name], truncated[name] = encode_split(splits[name], tokenizer, label2id, max_length)
    n_cut = sum(truncated.values())
    longest = max(len(x["input_ids"]) for part in datasets.values() for x in part)
    log(
        f"tokens: longest text {longest} tokens after truncation to {max_length}; "
        + (f"{n_cut} texts were longer and truncated ({', '.join(f'{k} {v}' for k, v in truncated.items())})"
           if n_cut else "no text was truncated")
    )

    n_params = sum(p.numel() for p in model.parameters())
    if mode == "lora":
        model = lora.add_adapters(model, cfg, "classifier")
        n_trainable = lora.trainable_parameters(model)
        trained = lora.describe(cfg, classifier=True)
    else:
        n_trainable = freeze_for(model, mode)
        trained = mode
    trainable_percent = 100 * n_trainable / n_params
    log(
        f"classifier: {n_params / 1e6:.2f}M parameters, new head {model.config.hidden_size} -> {len(names)}; "
        f"trainable ({trained}): {n_trainable:,} ({trainable_percent:.2f}% of {n_params:,})"
    )

    pad_id = tokenizer.pad_token_id
    set_seed(cfg.seed)
    trainer = Trainer(  # refuses a training split smaller than one batch, before anything is written
        model,
        cfg,
        out,
        datasets["train"],
        datasets["val"] if datasets["val"] else None,
        collate_fn=lambda batch: pad_collate_classification(batch, pad_id),
        loss_fn=classification_loss,
        on_eval=accuracy_hook(datasets, cfg.train_accuracy_examples, cfg.seed),
        accelerator=accelerator,
        run_name="finetune-classifier",
    )

    # ---- the run folder -------------------------------------------------------------------------------------------
    run_config = RunRecord(
        settings={
            **dataclasses.asdict(cfg),
            "split_sizes": {n: len(splits[n]) for n in SPLIT_NAMES},
            "max_length_used": max_length,
            "eval_every_used": trainer.eval_every,
        },
        architecture=model_architecture(model.config),
        parameters=n_params,
        base_model=cfg.model,
        labels=names,
        trainable=trained,
        trainable_parameters=n_trainable,
        trainable_percent=round(trainable_percent, 4),
    )
    if accelerator.is_main_process:
        prepare_out_dir(out, cfg.resume, cfg.overwrite, cfg.take_over_lock)
        save_splits(splits_dir, splits)
        save_run_config(out, run_config)
    accelerator.wait_for_everyone()
    resume_from = latest_checkpoint(out) if cfg.resume else None
    log(
        f"training: {trainer.total_steps} steps ({cfg.epochs:g} epoch(s) of {trainer.steps_per_epoch:g}), batch "
        f"{cfg.batch_size} x {accelerator.num_processes} devices x {trainer.accum} accumulation, lr "
        f"{cfg.learning_rate:g}, evaluation every {trainer.eval_every or trainer.total_steps} steps"
    )
    result = trainer.fit(resume_from)

    # ---- final scores ---------------------------------------------------------------------------------------------
    final = dict(result.final)
    final.pop("val_perplexity", None)  # exp(cross-entropy) says nothing about a classifier
    final.update(
        parameters=n_params, trainable_parameters=n_trainable, trainable_percent=round(trainable_percent, 4),
        trainable=trained,
    )
    raw = accelerator.unwrap_model(trainer.model)
    scores, report = score_splits(raw, datasets, names, pad_id, batch_size=max(cfg.batch_size, 32))
    final.update(scores)
    if datasets["test"]:
        final["test_loss"] = trainer.evaluate(datasets["test"])
    final["truncated_texts"] = n_cut

    if accelerator.is_main_process:
        log(
            "done: "
            + ", ".join(f"{s} accuracy {final[f'{s}_accuracy']:.4f}" for s in SPLIT_NAMES if f"{s}_accuracy" in final)
            + (f", test F1 (macro) {final['test_f1']:.4f}" if "test_f1" in final else "")
            + f" in {result.elapsed_s:.0f}s"
        )
        for line in confusion_matrix_lines(report, names) if report else []:
            log(line)
        plot_history(result.history, out / "plots" / "loss.png", "classifier fine-tuning: loss")
        plot_history(
            result.history, out / "plots" / "accuracy.png", "classifier fine-tuning: accuracy",
            keys=("train_accuracy", "val_accuracy"),
        )
        tokenizer.model_max_length = context  # so that pipeline(..., truncation=True) cuts to the context
        raw.config.pad_token_id = pad_id
        metrics = {
            "final": final,
            "history": result.history,
            "labels": names,
            "metrics_backend": "scikit-learn (the evaluate library's metric scripts need the Hub)",
            **report,
        }
        if mode == "lora":
            base_ref = lora.base_reference(cfg.model, model_dir)
            lora.write_adapter_folder(
                out, raw, tokenizer, base_ref=base_ref, metrics=metrics, run_config=run_config,
                workflow="finetune-classifier",
            )
            log(f"run folder: {out} (a LoRA adapter for {base_ref}; `gpt-scratch classify --model {out} TEXT`)")
            if cfg.merge:
                merged_dir = lora.write_merged_folder(out, raw, tokenizer, metrics, run_config, "finetune-classifier")
                log(f"merged: {merged_dir} (pipeline('text-classification', model=folder, trust_remote_code=True))")
        else:
            for param in raw.parameters():
                param.requires_grad = True
            write_model_folder(out, raw, tokenizer, metrics=metrics, run_config=run_config, workflow="finetune-classifier")
            log(f"run folder: {out} (pipeline('text-classification', model=folder, trust_remote_code=True))")
    accelerator.wait_for_everyone()
    return 0


# ======================================================================================================================
# classify
# ======================================================================================================================


def load_classifier(model_dir: str, flag: str = "--model"):
    """The classifier (eval mode) and tokenizer of a folder written by finetune-classifier: a full classifier folder,
    or a LoRA adapter folder (its base plus the adapter, through PEFT)."""
    from transformers import AutoModelForSequenceClassification

    from .folders import architecture_kind, check_model_folder, loading_weights, read_config

    if lora.is_adapter_folder(model_dir):
        return lora.load_adapter(model_dir, "classifier", flag=flag)
    folder = check_model_folder(model_dir, flag=flag)
    config = read_config(folder, flag)
    if architecture_kind(config) != "classifier":
        raise UserError(
            f"{flag} {folder} is not a classifier ({', '.join(config.get('architectures') or ['no architecture'])}): "
            "fine-tune one with `gpt-scratch finetune-classifier`"
        )
    tokenizer = _load_tokenizer(str(folder))
    with loading_weights(folder, flag), quiet_hf():  # a file cut short: one line naming it
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=True)
    model.eval()
    return model, tokenizer


def classify_texts(model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 0):
    """``[(label, score), ...]`` for each text: the most probable label and its probability."""
    context = model.config.max_position_embeddings
    ids, _ = encode_texts(tokenizer, texts, min(max_length or context, context))
    for i, row in enumerate(ids):
        if not row:
            raise UserError(f"text {i + 1} is empty: give some text to classify")
    probs = predict_ids(model, ids, tokenizer.pad_token_id, batch_size=batch_size)
    scores, best = probs.max(-1)
    return [(model.config.id2label[int(b)], float(s)) for b, s in zip(best, scores)]


def add_classify_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="classifier folder (the --out of finetune-classifier; a LoRA adapter too)"
    )
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify ('-': read one per line from stdin)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--max-length", type=int, default=0, help="truncate to N tokens (default: the context)")


def classify_main(args) -> int:
    from .textin import read_all

    texts = []
    for text in args.texts:
        if text == "-":
            texts.extend(line for line in read_all(sys.stdin).splitlines() if line.strip())
        else:
            texts.append(text)
    if not texts:
        raise UserError("no text to classify: pass one or more TEXT arguments")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    model, tokenizer = load_classifier(args.model)
    for label, score in classify_texts(model, tokenizer, texts, args.batch_size, args.max_length):
        print(f"{label}\t{score:.4f}")
    return 0
