"""``gpt-scratch pretrain``: train a GPT-2-style base model from scratch.

Steps: resolve the settings (defaults <- YAML <- flags; with no ``--config`` the packaged ``tiny-cpu`` recipe);
get a tokenizer (given, or trained on the corpus and saved in the run folder); tokenise the corpus once into cached
token shards; cut fixed train/val/test splits by seed; build a model from a preset; run the training loop; write the
run folder (model, tokenizer, metrics, plots, cards).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from accelerate.utils import set_seed

from modeling_gpt_scratch import GPTScratchForCausalLM

from .. import settings
from ..data.sources import iter_documents
from ..data.tokens import (
    get_or_build_token_shards,
    load_meta,
    load_tokens,
    pretraining_dataset,
    split_doc_starts,
    split_tokens,
)
from ..decoding.engine import Engine
from ..errors import UserError
from ..runs.folders import make_generation_config
from ..runs.record import RunRecord, model_architecture
from ..runs.run_folder import claims_out_dir, latest_checkpoint, prepare_out_dir, save_run_config, write_model_folder
from ..runs.tokenizers import bpb_from_ratio, bytes_per_token, open_tokenizer, train_bpe_tokenizer
from ..settings import PretrainSettings
from ..training.losses import lm_loss
from ..training.trainer import Trainer, make_accelerator, perplexity, plot_history

DEFAULT_RECIPE = "tiny-cpu"  # configs/tiny-cpu.yaml: what `gpt-scratch pretrain` runs with no --config


def add_arguments(parser) -> None:
    parser.add_argument("--config", help=f"YAML config, or the name of a packaged recipe (default: {DEFAULT_RECIPE}; "
                        "its values are the defaults shown below)")
    settings.add_arguments(parser, PretrainSettings, "pretraining settings (each is also a YAML key)",
                           defaults=settings.load_yaml(DEFAULT_RECIPE),
                           defaults_source=f"configs/{DEFAULT_RECIPE}.yaml")


def resolve(args) -> PretrainSettings:
    """Defaults <- the default recipe (without --config) or the --config file <- flags; all checked."""
    return settings.resolve(PretrainSettings, args, args.config, default_config=DEFAULT_RECIPE)


def run(args) -> int:
    return pretrain(resolve(args))


def get_tokenizer(cfg: PretrainSettings, out: Path, accelerator):
    """The run's tokenizer: ``--tokenizer``, else the one saved in the run folder, else one trained now."""
    if cfg.tokenizer:
        return open_tokenizer(cfg.tokenizer)
    saved = out / "tokenizer"
    if not (saved / "tokenizer.json").is_file():
        if accelerator.is_main_process:
            docs = iter_documents(cfg.data, text_column=cfg.text_column)
            if cfg.max_documents:
                docs = (d for i, d in zip(range(cfg.max_documents), docs))
            accelerator.print(f"training a byte-level BPE tokenizer (vocab {cfg.vocab_size}) on the corpus")
            train_bpe_tokenizer(docs, cfg.vocab_size, out_dir=saved)
        accelerator.wait_for_everyone()
    return open_tokenizer(str(saved))


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> str:
    """A sampled continuation (temperature 0.8, top-k 50) from its own seeded generator, so the global RNG -- and
    with it a resumed run -- is untouched."""
    engine = Engine(model, tokenizer)
    request = engine.request(prompt or "", max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=seed)
    return engine.run([request])[0].text


def build_datasets(cfg: PretrainSettings, tokenizer, out: Path, context: int):
    """Token shards (cached), a fixed split by seed, and one dataset per split in the configured layout."""
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    shard_dir = get_or_build_token_shards(
        cfg.data, tokenizer, cache_root, text_column=cfg.text_column, max_documents=cfg.max_documents
    )
    tokens = load_tokens(shard_dir)
    train_fraction = 1 - cfg.val_fraction - cfg.test_fraction
    splits = split_tokens(
        tokens, fractions=(train_fraction, cfg.val_fraction, cfg.test_fraction), seed=cfg.seed, context_length=context
    )
    doc_starts = load_meta(shard_dir)["doc_starts"] if cfg.layout == "cropped" else None
    datasets = {}
    for name, part in splits.items():
        # evaluation always uses non-overlapping windows; the book's overlapping stride applies to training only
        layout = cfg.layout if name == "train" or cfg.layout == "cropped" else "joined"
        datasets[name] = pretraining_dataset(
            layout,
            part,
            context,
            stride=cfg.stride or context,
            doc_starts=split_doc_starts(doc_starts, part.ranges) if doc_starts is not None else None,
            pad_id=tokenizer.pad_token_id,
        )
    datasets.setdefault("test", [])
    return datasets, len(tokens)


@claims_out_dir
def pretrain(cfg: PretrainSettings) -> int:
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise UserError(
            f"--val-fraction {cfg.val_fraction:g} and --test-fraction {cfg.test_fraction:g} leave nothing to train on: "
            "together they must stay below 1"
        )
    cfg.gpt_config(cfg.vocab_size)  # a shape that makes no model is refused before any work
    out = Path(cfg.out)
    accelerator = make_accelerator(cfg, out)
    if accelerator.is_main_process:
        prepare_out_dir(out, cfg.resume, cfg.overwrite)
    accelerator.wait_for_everyone()
    resume_from = latest_checkpoint(out) if cfg.resume else None
    set_seed(cfg.seed)

    tokenizer = get_tokenizer(cfg, out, accelerator)
    model_config = cfg.gpt_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
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
        settings=cfg.model_dump(), architecture=model_architecture(model_config), parameters=n_params,
        corpus_tokens=n_tokens,
    )
    if accelerator.is_main_process:
        save_run_config(out, run_config)
    accelerator.print(
        f"model: {cfg.preset} {n_params / 1e6:.2f}M parameters, context {context}; corpus {n_tokens:,} tokens "
        f"(train {len(datasets['train']):,} / val {len(datasets['val']):,} / test {len(datasets['test']):,} windows)"
    )
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


