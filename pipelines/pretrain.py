"""``gpt-scratch pretrain``: train a GPT-2-style base model from scratch.

Steps: resolve the config (defaults <- YAML <- flags); get a tokenizer (given, or trained on the corpus and saved in
the run folder); tokenise the corpus once into cached token shards; cut fixed train/val/test splits by seed; build a
model from a preset; run the shared training loop; write the run folder (model, tokenizer, metrics, plots, card).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import config as config_schema
from .errors import UserError
from .losses import lm_loss
from .runfolder import claims_out_dir
from .train_loop import TrainConfig, Trainer, latest_checkpoint, perplexity, plot_history

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny-cpu.yaml"


def _preset_names() -> list[str]:
    """The model presets (read when a config is checked, so that ``--help`` does not import transformers)."""
    from modeling_gpt_scratch.configuration_gpt_scratch import PRESETS

    return list(PRESETS)


@dataclass
class PretrainConfig(TrainConfig):
    """Everything a pretraining run needs: the loop's settings plus data, tokenizer and model."""

    data: str | None = field(default=None, metadata={"help": "text file/folder, JSONL/CSV, or Hub dataset id"})
    text_column: str = field(default="text", metadata={"help": "column holding the text in JSONL/CSV/Hub data"})
    max_documents: int = field(
        default=0, metadata={"help": "read at most N documents (useful for Hub streams; 0: all)", "min": 0}
    )
    out: str = field(default="runs/pretrain", metadata={"help": "run folder (a loadable model folder at the end)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder or Hub id; none: train one"})
    vocab_size: int = field(  # at least the 256 byte symbols + <|endoftext|> (tokenization.MIN_VOCAB_SIZE)
        default=4096, metadata={"help": "vocabulary of a tokenizer trained for this run", "min": 257}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "token-shard cache (default: <out>/cache)"})
    preset: str = field(
        default="tiny",
        metadata={"help": "model preset: tiny, gpt2-small, gpt2-small-untied, ...", "choices": _preset_names},
    )
    hidden_size: int = field(default=0, metadata={"help": "override the preset (0: keep)", "min": 0})
    num_hidden_layers: int = field(default=0, metadata={"help": "override the preset (0: keep)", "min": 0})
    num_attention_heads: int = field(default=0, metadata={"help": "override the preset (0: keep)", "min": 0})
    context_length: int = field(
        default=0, metadata={"help": "context / max_position_embeddings (0: keep)", "min": 0}
    )
    dropout: float = field(
        default=0.0, metadata={"help": "dropout on embeddings, attention and residuals", "min": 0, "below": 1}
    )
    qkv_bias: bool = field(default=False, metadata={"help": "biases on the query/key/value projections"})
    tie_word_embeddings: bool = field(default=False, metadata={"help": "share input embedding and output head"})
    layout: str = field(
        default="joined",
        metadata={
            "choices": ["joined", "sliding", "cropped"],
            "help": "joined: documents concatenated with EOS, cut into contexts; sliding: the same with --stride; "
            "cropped: one document per example, cropped to the context",
        },
    )
    stride: int = field(
        default=0, metadata={"help": "sliding layout: window stride in tokens (0: the context)", "min": 0}
    )
    val_fraction: float = field(
        default=0.05, metadata={"help": "share of tokens held out for validation", "above": 0, "below": 1}
    )
    test_fraction: float = field(
        default=0.05, metadata={"help": "share of tokens held out for the final test", "min": 0, "below": 1}
    )
    sample_prompt: str = field(default="", metadata={"help": "prompt for the text samples at each evaluation"})
    sample_tokens: int = field(default=48, metadata={"help": "tokens per sample (0: empty samples)", "min": 0})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --out"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


def add_pretrain_arguments(parser) -> None:
    shown = DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])
    parser.add_argument("--config", help=f"YAML config (default: {shown}; its values are the defaults shown below)")
    try:
        defaults = config_schema.load_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else {}
    except UserError:
        defaults = {}
    config_schema.add_schema_arguments(
        parser, PretrainConfig, "pretraining settings (each is also a YAML key)", defaults=defaults,
        defaults_source=str(shown),
    )


def resolve_config(args) -> PretrainConfig:
    """Defaults <- the default config file (without --config) or the --config file <- flags; all checked."""
    default = str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None
    return config_schema.resolve(PretrainConfig, args, args.config, default_config=default)


def build_model_config(cfg: PretrainConfig, tokenizer):
    from modeling_gpt_scratch import PRESETS, GPTScratchConfig

    if cfg.preset not in PRESETS:
        raise UserError(f"unknown preset '{cfg.preset}': choose one of {', '.join(PRESETS)}")
    overrides = {
        key: value
        for key, value in dict(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            max_position_embeddings=cfg.context_length,
        ).items()
        if value
    }
    try:
        return GPTScratchConfig.from_preset(
            cfg.preset,
            **overrides,
            vocab_size=len(tokenizer),
            hidden_dropout=cfg.dropout,
            attention_dropout=cfg.dropout,
            qkv_bias=cfg.qkv_bias,
            tie_word_embeddings=cfg.tie_word_embeddings,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def get_tokenizer(cfg: PretrainConfig, out: Path, accelerator):
    """The run's tokenizer: ``--tokenizer``, else the one saved in the run folder, else one trained now."""
    from pipelines.tokenization import load_tokenizer, train_bpe_tokenizer

    from .data import iter_documents

    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    saved = out / "tokenizer"
    if not (saved / "tokenizer.json").is_file():
        if accelerator.is_main_process:
            docs = iter_documents(cfg.data, text_column=cfg.text_column)
            if cfg.max_documents:
                docs = (d for i, d in zip(range(cfg.max_documents), docs))
            accelerator.print(f"training a byte-level BPE tokenizer (vocab {cfg.vocab_size}) on the corpus")
            train_bpe_tokenizer(docs, cfg.vocab_size, out_dir=saved)
        accelerator.wait_for_everyone()
    return load_tokenizer(str(saved))


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> str:
    """A sampled continuation (temperature 0.8, top-k 50) from its own seeded generator, so the global RNG -- and
    with it a resumed run -- is untouched."""
    from .engine import Engine

    engine = Engine(model, tokenizer)
    request = engine.request(prompt or "", max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=seed)
    return engine.run([request])[0].text


def build_datasets(cfg: PretrainConfig, tokenizer, out: Path, context: int):
    """Token shards (cached), a fixed split by seed, and one dataset per split in the configured layout."""
    from . import data

    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    shard_dir = data.get_or_build_token_shards(
        cfg.data, tokenizer, cache_root, text_column=cfg.text_column, max_documents=cfg.max_documents
    )
    tokens = data.load_tokens(shard_dir)
    train_fraction = 1 - cfg.val_fraction - cfg.test_fraction
    splits = data.split_tokens(
        tokens, fractions=(train_fraction, cfg.val_fraction, cfg.test_fraction), seed=cfg.seed, context_length=context
    )
    doc_starts = data.load_meta(shard_dir)["doc_starts"] if cfg.layout == "cropped" else None
    datasets = {}
    for name, part in splits.items():
        # evaluation always uses non-overlapping windows; the book's overlapping stride applies to training only
        layout = cfg.layout if name == "train" or cfg.layout == "cropped" else "joined"
        datasets[name] = data.pretraining_dataset(
            layout,
            part,
            context,
            stride=cfg.stride or context,
            doc_starts=data.split_doc_starts(doc_starts, part.ranges) if doc_starts is not None else None,
            pad_id=tokenizer.pad_token_id,
        )
    datasets.setdefault("test", [])
    return datasets, len(tokens)


def pretrain_main(args) -> int:
    cfg = resolve_config(args)
    return pretrain(cfg)


def check_model_shape(cfg: PretrainConfig) -> None:
    """The preset with its overrides must make a valid model (e.g. heads divide the width): said before any work."""
    from modeling_gpt_scratch.configuration_gpt_scratch import PRESETS, GPTScratchConfig

    if cfg.preset not in PRESETS:
        raise UserError(f"unknown preset '{cfg.preset}': choose one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                                        num_attention_heads=cfg.num_attention_heads,
                                        max_position_embeddings=cfg.context_length).items() if v}
    try:
        GPTScratchConfig.from_preset(cfg.preset, **overrides, vocab_size=cfg.vocab_size, hidden_dropout=cfg.dropout,
                                     attention_dropout=cfg.dropout, bos_token_id=None, eos_token_id=None)
    except ValueError as exc:
        raise UserError(str(exc)) from None


@claims_out_dir
def pretrain(cfg: PretrainConfig) -> int:
    from accelerate.utils import set_seed

    from modeling_gpt_scratch import GPTScratchForCausalLM

    from .run_record import RunRecord, model_architecture
    from .runfolder import prepare_out_dir, save_run_config, write_model_folder
    from .train_loop import make_accelerator

    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise UserError(
            f"--val-fraction {cfg.val_fraction:g} and --test-fraction {cfg.test_fraction:g} leave nothing to train on: "
            "together they must stay below 1"
        )
    check_model_shape(cfg)
    out = Path(cfg.out)
    accelerator = make_accelerator(cfg, out)
    if accelerator.is_main_process:
        prepare_out_dir(out, cfg.resume, cfg.overwrite, cfg.take_over_lock)
    accelerator.wait_for_everyone()
    resume_from = latest_checkpoint(out) if cfg.resume else None
    set_seed(cfg.seed)

    tokenizer = get_tokenizer(cfg, out, accelerator)
    model_config = build_model_config(cfg, tokenizer)
    context = model_config.max_position_embeddings
    if accelerator.is_main_process:
        datasets, n_tokens = build_datasets(cfg, tokenizer, out, context)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        datasets, n_tokens = build_datasets(cfg, tokenizer, out, context)  # cache hit: built by rank 0
    set_seed(cfg.seed)
    model = GPTScratchForCausalLM(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    run_config = RunRecord(
        settings=dataclasses.asdict(cfg), architecture=model_architecture(model_config), parameters=n_params,
        corpus_tokens=n_tokens,
    )
    if accelerator.is_main_process:
        save_run_config(out, run_config)
    accelerator.print(
        f"model: {cfg.preset} {n_params / 1e6:.2f}M parameters, context {context}; corpus {n_tokens:,} tokens "
        f"(train {len(datasets['train']):,} / val {len(datasets['val']):,} / test {len(datasets['test']):,} windows)"
    )
    from .bpb import bpb_from_ratio, bytes_per_token

    # UTF-8 bytes per token of each held-out split, measured once: bits per byte = loss / ln 2 / this ratio
    byte_ratio = {n: bytes_per_token(tokenizer, d.tokens) for n, d in datasets.items() if n != "train" and len(d)}

    def on_eval(trainer, record):
        if record.get("val_loss") is not None and "val" in byte_ratio:
            record["val_bpb"] = bpb_from_ratio(record["val_loss"], byte_ratio["val"])
        if not trainer.is_main:
            return
        text = sample_text(trainer.model, tokenizer, cfg.sample_prompt, cfg.sample_tokens, cfg.seed)
        # saved with each checkpoint, so a resumed run still lists the samples from before its checkpoint
        trainer.workflow_state.setdefault("samples", []).append(
            {"step": record["step"], "prompt": cfg.sample_prompt, "text": text}
        )
        trainer.log(f"sample @ step {record['step']}: {cfg.sample_prompt}{text!r}")

    trainer = Trainer(
        model,
        cfg,
        out,
        datasets["train"],
        datasets["val"],
        collate_fn=torch.utils.data.default_collate,
        loss_fn=lm_loss,
        tokens_per_example=context,
        on_eval=on_eval,
        accelerator=accelerator,
        run_name="pretrain",
    )
    accelerator.print(
        f"global batch: {cfg.batch_size} per device x {accelerator.num_processes} devices x "
        f"{trainer.accum} accumulation = {trainer.global_batch} sequences ({trainer.global_batch * context:,} tokens)"
        f"; {trainer.total_steps} steps"
    )
    result = trainer.fit(resume_from)
    samples = trainer.workflow_state.get("samples", [])
    final = dict(result.final)
    if len(datasets["test"]):
        test_loss = trainer.evaluate(datasets["test"])
        final.update(test_loss=test_loss, test_perplexity=perplexity(test_loss))
    for name, ratio in byte_ratio.items():
        final[f"{name}_bytes_per_token"] = ratio
        if f"{name}_loss" in final:
            final[f"{name}_bpb"] = bpb_from_ratio(final[f"{name}_loss"], ratio)
    final["parameters"] = n_params
    if accelerator.is_main_process:
        accelerator.print(
            f"done: val loss {final.get('initial_val_loss', math.nan):.4f} -> {final.get('val_loss', math.nan):.4f}, "
            f"test loss {final.get('test_loss', math.nan):.4f} (val bpb {final.get('val_bpb', math.nan):.4f}, "
            f"test bpb {final.get('test_bpb', math.nan):.4f}) in {result.elapsed_s:.0f}s"
        )
        plot_history(result.history, out / "plots" / "loss.png", "pretraining loss")
        from pipelines.convert import make_generation_config

        generation = make_generation_config(
            accelerator.unwrap_model(trainer.model).config, tokenizer.pad_token_id, temperature=0.8
        )
        write_model_folder(
            out,
            accelerator.unwrap_model(trainer.model),
            tokenizer,
            metrics={"final": final, "history": result.history},
            run_config=run_config,
            workflow="pretrain",
            generation_config=generation,
            samples=samples,
        )
        if samples:
            accelerator.print(f"final sample: {cfg.sample_prompt}{samples[-1]['text']}")
        accelerator.print(f"run folder: {out} (load with AutoModelForCausalLM.from_pretrained)")
    accelerator.wait_for_everyone()
    return 0
