"""``gpt-scratch finetune-instruct``: instruction fine-tuning (the book's chapter 7).

``finetune-instruct`` teaches a base causal LM to follow instructions from Alpaca-style records
(``{"instruction", "input" (optional), "output"}``, Taori et al., 2023, "Stanford Alpaca"):

1. read the records (JSON list, JSON Lines or a Hub dataset such as ``tatsu-lab/alpaca``) and cut them by seed into
   85 % train, 5 % validation and 10 % test; the three splits are saved in the run folder (``splits/*.json``);
2. render each record in the Alpaca template (``pipelines.data.instructions.format_alpaca``) and tokenise it once,
   remembering how many tokens belong to the prompt (instruction, input and the ``### Response:`` header);
3. batch with the book's collate (``pipelines.data.collates.instruction_collate``): one end-of-text is appended so the
   model learns to stop, padding targets after it are ignored, and with ``--mask-prompt`` the prompt's targets are
   ignored too, so only the response is learned; sequences are cut to ``--max-length`` (default: the context);
4. run the shared training loop (``pipelines.training.trainer.Trainer``) with the next-token loss of pretraining
   (``pipelines.training.losses.lm_loss``); at each evaluation (four per epoch) the validation loss is measured
   and answers to a few validation instructions are generated greedily (no randomness, so the global RNG and with it
   a resumed run stay untouched);
5. write the run folder: a loadable model folder whose tokenizer carries the Alpaca chat template (so
   ``tokenizer.apply_chat_template`` renders the same prompt) and whose ``generation_config.json`` decodes greedily
   and stops at end-of-text; ``metrics.json`` holds the initial and final validation loss and the test loss.

The book's fine-tuning settings are the defaults: AdamW, learning rate 5e-5, weight decay 0.1, 2 epochs of batches
of 8, a constant learning rate.

With ``--lora-rank R`` every base weight is frozen and rank-R LoRA adapters on the blocks' Linears are trained instead
(``pipelines.training.lora``, through PEFT; the language-model head stays tied to the frozen embeddings). The run
folder is then a PEFT adapter folder, which ``respond`` opens (base + adapter); ``--merge`` also writes ``merged/``, a
full model folder for every other workflow.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from accelerate.utils import set_seed

from modeling_gpt_scratch import GPTScratchForCausalLM

from .. import settings
from ..data.collates import instruction_collate
from ..data.instructions import ALPACA_CHAT_TEMPLATE, format_alpaca, read_instructions
from ..data.tables import split_records
from ..decoding.prompts import generate_responses
from ..errors import UserError
from ..fs import atomic_write_json
from ..runs.folders import FolderKind, check_model_folder, is_adapter_folder, make_generation_config, open_model
from ..runs.record import RunRecord, model_architecture
from ..runs.run_folder import (
    check_out_dir,
    claims_out_dir,
    latest_checkpoint,
    prepare_out_dir,
    save_run_config,
    write_model_folder,
)
from ..settings import SPLIT_FRACTIONS, InstructSettings
from ..training import lora
from ..training.losses import lm_loss
from ..training.trainer import Trainer, make_accelerator, perplexity, plot_history


def split_instructions(records: list[dict], seed: int, val_fraction=SPLIT_FRACTIONS[1],
                       test_fraction=SPLIT_FRACTIONS[2]):
    """``{"train", "val", "test"}`` record lists, shuffled by ``seed`` (1100 records -> 935 / 55 / 110)."""
    if val_fraction <= 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise UserError("val_fraction must be > 0, test_fraction >= 0, and together below 1")
    return split_records(records, (1 - val_fraction - test_fraction, val_fraction, test_fraction), seed=seed)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_records(records: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Tokenise each record in the Alpaca template: ``({"input_ids", "prompt_len"} items, number truncated)``.

    The whole text (prompt + response) is tokenised at once; ``prompt_len`` is how many of its leading tokens
    render the prompt (the tokens it shares with the prompt tokenised alone).  Items longer than ``max_length``
    keep ``max_length + 1`` tokens, which the collate turns into ``max_length`` inputs and targets.
    """
    if not records:
        return [], 0
    full = tokenizer([format_alpaca(r, with_response=True) for r in records], add_special_tokens=False)["input_ids"]
    prompts = tokenizer([format_alpaca(r) for r in records], add_special_tokens=False)["input_ids"]
    items, truncated = [], 0
    for ids, prompt_ids in zip(full, prompts):
        prompt_len = _common_prefix(ids, prompt_ids)
        if len(ids) > max_length:
            truncated += 1
            ids = ids[: max_length + 1]
        items.append({"input_ids": list(ids), "prompt_len": min(prompt_len, len(ids))})
    return items, truncated


def make_collate(tokenizer, mask_prompt: bool, max_length: int):
    """The book's chapter-7 collate bound to this run: end-of-text as padding, optional prompt masking, cut."""
    return functools.partial(
        instruction_collate, pad_id=tokenizer.eos_token_id, mask_prompt=mask_prompt, max_length=max_length
    )


def prepare_data(cfg: InstructSettings, tokenizer, splits: dict, max_length: int, log=print):
    """Tokenised train/val/test items and the collate function, exactly as the fine-tune uses them."""
    datasets, dropped, truncated = {}, 0, 0
    for name, records in splits.items():
        items, cut = encode_records(records, tokenizer, max_length)
        truncated += cut
        if cfg.mask_prompt:
            # a prompt that overfills the window leaves no response target: nothing to learn or measure
            kept = [item for item in items if item["prompt_len"] <= max_length]
            dropped += len(items) - len(kept)
            items = kept
        datasets[name] = items
    if truncated:
        log(f"{truncated} record(s) longer than {max_length} tokens were cut to fit (--max-length)")
    if dropped:
        log(f"{dropped} record(s) whose prompt alone is longer than {max_length} tokens were left out (--mask-prompt)")
    return datasets, make_collate(tokenizer, cfg.mask_prompt, max_length), {"truncated": truncated, "dropped": dropped}


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file of settings (any key below); flags given here win")
    settings.add_arguments(parser, InstructSettings, "instruction fine-tuning settings (each is also a YAML key)")


def resolve(args) -> InstructSettings:
    cfg = settings.resolve(InstructSettings, args, args.config)
    missing = [flag for flag, value in (("--model", cfg.model), ("--data", cfg.data), ("--out", cfg.out)) if not value]
    if missing:
        raise UserError(
            f"missing {', '.join(missing)}: finetune-instruct needs --model DIR (a base model), --data PATH_OR_HUB_ID "
            "(instruction records) and --out DIR"
        )
    if cfg.max_length < 0:
        raise UserError(f"--max-length {cfg.max_length} is negative: give a token count, or 0 for the model's context")
    if cfg.sample_count < 0 or cfg.sample_tokens < 1:
        raise UserError("--sample-count must be >= 0 and --sample-tokens >= 1")
    lora.check_options(cfg)
    return cfg


def save_splits(out: Path, splits: dict, resume: bool) -> None:
    """``splits/{train,val,test}.json`` in the book's record shape; a resumed run must see the same splits."""
    folder = out / "splits"
    for name, records in splits.items():
        path = folder / f"{name}.json"
        if resume and path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved != records:
                raise UserError(
                    f"--resume: the {name} split of --data differs from {path} (the data or the seed changed): "
                    "resume with the same --data and --seed, or start a new run"
                )
        atomic_write_json(path, records)


def run(args) -> int:
    return finetune(resolve(args))


@claims_out_dir
def finetune(cfg: InstructSettings) -> int:
    out = Path(cfg.out)
    # everything a user can get wrong is checked before anything is written (or removed)
    check_out_dir(out, cfg.resume, cfg.overwrite)  # the one-line error, touching nothing
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the run")
    if is_adapter_folder(cfg.model):
        raise UserError(
            f"--model {cfg.model} is a LoRA adapter folder, not a base model: pass the base it was trained on (its "
            "adapter_config.json names it), or its merged/ folder"
        )
    # a causal LM of ours: a classifier, a bare transformer, an adapter or a GPT-2 folder is one line saying so
    check_model_folder(cfg.model, accept=(FolderKind.CAUSAL_LM,))
    records = read_instructions(cfg.data)
    splits = split_instructions(records, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    model, tokenizer = open_model(cfg.model, cls=GPTScratchForCausalLM, device="cpu")
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {cfg.model} has no end-of-text (eos) token, which marks the end of an "
                        "answer")
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    if lora.enabled(cfg):
        model = lora.add_adapters(model, cfg, "causal")
        n_trainable, trained = lora.trainable_parameters(model), lora.describe(cfg, classifier=False)
    else:
        n_trainable, trained = n_params, "all"
    context = model.config.max_position_embeddings
    max_length = cfg.max_length or context
    if max_length > context:
        raise UserError(f"--max-length {max_length} exceeds the model's context of {context} tokens")

    accelerator = make_accelerator(cfg, out)
    datasets, collate, data_stats = prepare_data(cfg, tokenizer, splits, max_length, log=accelerator.print)
    if not datasets["val"]:
        raise UserError("the validation split has no usable records: give more data or raise --max-length")
    sample_records = splits["val"][: cfg.sample_count]

    def on_eval(trainer, record):
        if not sample_records or not trainer.is_main:
            return
        answers = generate_responses(
            lora.inner_model(accelerator.unwrap_model(trainer.model)), tokenizer, sample_records,
            batch_size=len(sample_records), max_new_tokens=cfg.sample_tokens,
        )
        for rec, answer in zip(sample_records, answers):
            # "prompt" + "text" is the shape every workflow's samples share (the report card shows them); saved
            # with each checkpoint, so a resumed run still lists the earlier ones
            trainer.workflow_state.setdefault("samples", []).append(
                {"step": record["step"], "instruction": rec["instruction"], "input": rec["input"],
                 "prompt": format_alpaca(rec), "text": answer}
            )
            trainer.log(f"sample @ step {record['step']}: {rec['instruction'][:60]!r} -> {answer[:120]!r}")

    set_seed(cfg.seed)
    trainer = Trainer(
        model,
        cfg,
        out,
        datasets["train"],
        datasets["val"],
        collate_fn=collate,
        loss_fn=lm_loss,
        on_eval=on_eval,
        accelerator=accelerator,
        run_name="finetune-instruct",
    )

    if accelerator.is_main_process:
        prepare_out_dir(out, cfg.resume, cfg.overwrite)
        save_splits(out, splits, cfg.resume)
    accelerator.wait_for_everyone()
    resume_from = latest_checkpoint(out) if cfg.resume else None

    run_config = RunRecord(
        settings={
            **cfg.model_dump(),
            "max_length": max_length,
            "records": {name: len(part) for name, part in splits.items()},
            **data_stats,
        },
        architecture=model_architecture(model.config),
        parameters=n_params,
        base_model=cfg.model,
        trainable=trained,
        trainable_parameters=n_trainable,
        trainable_percent=round(100 * n_trainable / n_params, 4),
    )
    if accelerator.is_main_process:
        save_run_config(out, run_config)

    accelerator.print(
        f"base model {cfg.model}: {n_params / 1e6:.2f}M parameters, context {context}; records "
        f"train {len(datasets['train'])} / val {len(datasets['val'])} / test {len(datasets['test'])}; "
        f"max length {max_length}; {'response-only' if cfg.mask_prompt else 'prompt and response'} targets; "
        f"trainable ({trained}): {n_trainable:,} ({100 * n_trainable / n_params:.2f}% of {n_params:,})"
    )
    accelerator.print(
        f"{trainer.total_steps} steps of {trainer.global_batch} records (learning rate {cfg.learning_rate:g}); "
        f"evaluating every {trainer.eval_every or trainer.total_steps} steps"
    )
    result = trainer.fit(resume_from)
    samples = trainer.workflow_state.get("samples", [])
    final = dict(result.final)
    if datasets["test"]:
        test_loss = trainer.evaluate(datasets["test"])
        final.update(test_loss=test_loss, test_perplexity=perplexity(test_loss))
    final.update(parameters=n_params, train_records=len(datasets["train"]), val_records=len(datasets["val"]),
                 test_records=len(datasets["test"]), trainable=trained, trainable_parameters=n_trainable,
                 trainable_percent=round(100 * n_trainable / n_params, 4))
    if accelerator.is_main_process:
        accelerator.print(
            f"done: val loss {final.get('initial_val_loss', math.nan):.4f} -> {final.get('val_loss', math.nan):.4f}, "
            f"test loss {final.get('test_loss', math.nan):.4f} in {result.elapsed_s:.0f}s"
        )
        plot_history(result.history, out / "plots" / "loss.png", "instruction fine-tuning loss")
        tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
        raw = accelerator.unwrap_model(trainer.model)
        generation_config = make_generation_config(raw.config, tokenizer.pad_token_id, do_sample=False, top_k=None)
        metrics = {"final": final, "history": result.history}
        if lora.enabled(cfg):
            base_ref = lora.base_reference(cfg.model, Path(cfg.model))
            lora.write_adapter_folder(
                out, raw, tokenizer, base_ref=base_ref, metrics=metrics, run_config=run_config,
                workflow="finetune-instruct", generation_config=generation_config, samples=samples,
            )
            accelerator.print(f"LoRA adapter for {base_ref} written to {out}")
            if cfg.merge:
                merged_dir = lora.write_merged_folder(
                    out, raw, tokenizer, metrics, run_config, "finetune-instruct",
                    generation_config=generation_config, samples=samples,
                )
                accelerator.print(f"merged: {merged_dir} (a full model folder: generate, chat, serve, publish)")
        else:
            write_model_folder(
                out, raw, tokenizer, metrics=metrics, run_config=run_config, workflow="finetune-instruct",
                generation_config=generation_config, samples=samples,
            )
        accelerator.print(
            f"run folder: {out} (test split: {out / 'splits' / 'test.json'}; answer it with "
            f"`gpt-scratch respond --model {out} --data {out / 'splits' / 'test.json'} --out responses.json`)"
        )
    accelerator.wait_for_everyone()
    return 0


