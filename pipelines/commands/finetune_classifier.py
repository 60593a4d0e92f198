"""``gpt-scratch finetune-classifier``: a next-token predictor turned into a classifier.

The recipe of the book's chapter 6 (Raschka, *Build a Large Language Model (From Scratch)*), on the shared core:

1. read a labelled table (``pipelines.data.tables.read_labeled_table``), balance the classes by undersampling
   (default on), cut a seeded 70/10/20 train/val/test split and save it in the run folder (``splits/*.jsonl``;
   :func:`build_splits` below);
2. load a causal-LM folder of ours (or a Hub id) into :class:`GPTScratchForSequenceClassification`: the transformer
   weights are kept, the vocabulary-sized LM head is dropped, and a fresh ``score`` head with one output per label
   (label names from the data, sorted; ``id2label``/``label2id`` in the config) is initialised;
3. freeze everything except the chosen part (``--trainable``: ``last-block`` = last transformer block + final
   LayerNorm + head, the book's choice; ``last-two-blocks``; ``head``; ``all``, the default, chosen by measurement,
   see BENCHMARKS.md), or, with ``--lora-rank R``, freeze every base weight and train rank-R LoRA adapters on the
   blocks' Linears plus the whole head (``pipelines.training.lora``, through PEFT; the run folder is then an adapter
   folder, and ``--merge`` adds ``merged/``, a full classifier folder);
4. tokenise each text (truncated to the context, with a count in the log), pad each batch to its own longest text
   (right padding; the model pools the last *real* token through the attention mask);
5. train with the shared loop on cross-entropy, evaluating once per epoch (``--evals-per-epoch``, or
   ``--eval-every`` N steps): validation loss plus validation and (capped) training accuracy
   (``pipelines.evals.classifier``);
6. score the test split: accuracy, macro precision/recall/F1 and the confusion matrix, then write the run folder
   (a classifier that ``pipeline("text-classification", model=folder, trust_remote_code=True)`` opens).

Labels: the label set is that of the training split.  A label that occurs in the validation or test records but not
in the training records is refused (``UserError``): the head could never predict it, so the scores would silently
count it as an error.  With the built-in split this only happens for very small or very skewed data; with separate
``--val-data``/``--test-data`` files it means the files disagree.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from accelerate.utils import set_seed

from .. import settings
from ..data.collates import pad_collate_classification
from ..data.tables import balance_undersample, encode_texts, label_maps, label_names, read_labeled_table, split_records
from ..errors import UserError
from ..evals.classifier import accuracy_hook, confusion_matrix_lines, score_splits
from ..fs import atomic_write_text
from ..hub import model_folder
from ..runs.folders import check_causal_lm_folder, is_adapter_folder, load_base_as_classifier
from ..runs.record import RunRecord, model_architecture
from ..runs.run_folder import (
    check_out_dir,
    claims_out_dir,
    latest_checkpoint,
    prepare_out_dir,
    save_run_config,
    write_model_folder,
)
from ..runs.tokenizers import open_tokenizer
from ..settings import TRAINABLE_MODES, ClassifierSettings
from ..training import lora
from ..training.losses import classification_loss
from ..training.trainer import Trainer, make_accelerator, plot_history

# The default --trainable, chosen by measurement (BENCHMARKS.md, "Classifier defaults by measurement"): with the
# learning rate and epochs below it reaches 97% SMS test accuracy from the demo base and from random weights.
DEFAULT_TRAINABLE = "all"


def trainable_mode(cfg: ClassifierSettings) -> str:
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


def _load_tokenizer(spec: str):
    tokenizer = open_tokenizer(spec)
    if tokenizer.pad_token_id is None:
        raise UserError(f"tokenizer {spec} has neither a pad nor an end-of-text token: give a GPT-2-style tokenizer")
    return tokenizer



SPLIT_NAMES = ("train", "val", "test")


def build_splits(cfg, log) -> dict[str, list[dict]]:
    """``{"train", "val", "test"}`` lists of ``{"text", "label"}`` records from --data (and the optional split
    files)."""
    fractions = (cfg.train_fraction, cfg.val_fraction, cfg.test_fraction)
    if min(fractions) < 0 or cfg.train_fraction <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(
            f"--train-fraction/--val-fraction/--test-fraction {fractions} must be non-negative, with training above "
            "0, and add up to 1"
        )
    records = read_labeled_table(cfg.data, cfg.text_column, cfg.label_column)
    counts = Counter(r["label"] for r in records)
    log(f"data: {len(records)} records from {cfg.data} ({_counts_text(counts)})")
    if cfg.balance:
        records = balance_undersample(records, seed=cfg.seed)
        counts = _counts_text(Counter(r["label"] for r in records))
        log(f"balanced by undersampling to {len(records)} records ({counts})")
    separate = {"val": cfg.val_data, "test": cfg.test_data}
    keep = [f if separate.get(name) is None else 0.0 for name, f in zip(SPLIT_NAMES, fractions)]
    total = sum(keep)
    splits = split_records(records, tuple(f / total for f in keep), seed=cfg.seed)
    for name, spec in separate.items():
        if spec is not None:
            splits[name] = read_labeled_table(spec, cfg.text_column, cfg.label_column, min_classes=1)
    return splits


def _counts_text(counts) -> str:
    return ", ".join(f"{label}: {n}" for label, n in sorted(counts.items()))


def check_labels(splits: dict[str, list[dict]]) -> list[str]:
    """The label names (sorted) of the training split; refuses a one-class training split or unseen labels."""
    names = label_names(splits["train"])
    if len(names) < 2:
        raise UserError(
            f"the training split holds only one class ({', '.join(map(repr, names)) or 'none'}): a classifier needs "
            "at least two; give more data of the other classes"
        )
    known = set(names)
    for split in ("val", "test"):
        unseen = sorted({r["label"] for r in splits[split]} - known)
        if unseen:
            n = sum(1 for r in splits[split] if r["label"] in unseen)
            raise UserError(
                f"label {', '.join(map(repr, unseen))} occurs in the {split} split ({n} records) but never in the "
                f"training split, so the classifier could not learn it: add training examples of it, or drop those "
                f"records (training labels: {', '.join(map(repr, names))})"
            )
    return names


def encode_split(records: list[dict], tokenizer, label2id: dict[str, int], max_length: int) -> tuple[list[dict], int]:
    ids, truncated = encode_texts(tokenizer, [r["text"] for r in records], max_length)
    for i, row in enumerate(ids):
        if not row:
            raise UserError(f"record {i} ({records[i]['text']!r}) has no tokens: remove it or fix its text")
    return [{"input_ids": row, "label": label2id[r["label"]]} for row, r in zip(ids, records)], truncated


def save_splits(folder: Path, splits: dict[str, list[dict]]) -> None:
    """``folder/{train,val,test}.jsonl``, one record a line, each written atomically."""
    for name in SPLIT_NAMES:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in splits[name])
        atomic_write_text(folder / f"{name}.jsonl", text)


def saved_splits(folder: Path) -> dict[str, list[dict]] | None:
    """The splits :func:`save_splits` wrote into ``folder``; None unless all three are there."""
    files = {name: folder / f"{name}.jsonl" for name in SPLIT_NAMES}
    if not all(f.is_file() for f in files.values()):
        return None
    return {name: [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
            for name, f in files.items()}



def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file with any of the settings below (flags win)")
    settings.add_arguments(parser, ClassifierSettings, "classifier fine-tuning settings (each is also a YAML key)")


def resolve(args) -> ClassifierSettings:
    return settings.resolve(ClassifierSettings, args, args.config)


def run(args) -> int:
    return finetune(resolve(args))


def _check_out(cfg: ClassifierSettings, model_dir: Path) -> Path:
    """What ``prepare_out_dir`` will say, said before any work is done and without touching the folder."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a folder")
    if out.resolve() == model_dir.resolve():
        raise UserError(f"--out {out} is the base model folder: choose another folder for the classifier")
    return check_out_dir(out, cfg.resume, cfg.overwrite)


@claims_out_dir
def finetune(cfg: ClassifierSettings) -> int:
    for flag, value in (("--model", cfg.model), ("--data", cfg.data), ("--out", cfg.out)):
        if not value:
            raise UserError(f"{flag} is required (as a flag or a key of the --config file)")
    if cfg.max_length < 0:
        raise UserError(f"--max-length {cfg.max_length} must be 0 (the model's context) or positive")
    mode = trainable_mode(cfg)

    # ---- everything that can fail on the user's input, before the run folder exists ------------------------------
    model_dir = model_folder(cfg.model)
    if is_adapter_folder(model_dir):
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
            **cfg.model_dump(),
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
        prepare_out_dir(out, cfg.resume, cfg.overwrite)
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
            write_model_folder(out, raw, tokenizer, metrics=metrics, run_config=run_config,
                               workflow="finetune-classifier")
            log(f"run folder: {out} (pipeline('text-classification', model=folder, trust_remote_code=True))")
    accelerator.wait_for_everyone()
    return 0


