"""``gpt-scratch finetune-instruct`` and ``gpt-scratch respond``: instruction fine-tuning (the book's chapter 7).

``finetune-instruct`` teaches a base causal LM to follow instructions from Alpaca-style records
(``{"instruction", "input" (optional), "output"}``, Taori et al., 2023, "Stanford Alpaca"):

1. read the records (JSON list, JSON Lines or a Hub dataset such as ``tatsu-lab/alpaca``) and cut them by seed into
   85 % train, 5 % validation and 10 % test; the three splits are saved in the run folder (``splits/*.json``);
2. render each record in the Alpaca template (``pipelines.prompts.format_alpaca``) and tokenise it once, remembering
   how many tokens belong to the prompt (instruction, input and the ``### Response:`` header);
3. batch with the book's collate (``pipelines.data.instruction_collate``): one end-of-text is appended so the model
   learns to stop, padding targets after it are ignored, and with ``--mask-prompt`` the prompt's targets are
   ignored too, so only the response is learned; sequences are cut to ``--max-length`` (default: the context);
4. run the shared training loop (``pipelines.train_loop.Trainer``) with the next-token loss of pretraining
   (``pipelines.pretrain.lm_loss``); at each evaluation (four per epoch) the validation loss is measured
   and answers to a few validation instructions are generated greedily (no randomness, so the global RNG and with it
   a resumed run stay untouched);
5. write the run folder: a loadable model folder whose tokenizer carries the Alpaca chat template (so
   ``tokenizer.apply_chat_template`` renders the same prompt) and whose ``generation_config.json`` decodes greedily
   and stops at end-of-text; ``metrics.json`` holds the initial and final validation loss and the test loss.

``respond`` answers every record of a file with a fine-tuned model and writes the book's
``instruction-data-with-response.json`` shape: each record plus ``model_response``.  Prompts are batched with left
padding (so every row's last prompt token sits at the same position and generation continues all rows together)
and decoded greedily until end-of-text.

The book's fine-tuning settings are the defaults: AdamW, learning rate 5e-5, weight decay 0.1, 2 epochs of batches
of 8, a constant learning rate.

With ``--lora-rank R`` every base weight is frozen and rank-R LoRA adapters on the blocks' Linears are trained instead
(``pipelines.lora``, through PEFT; the language-model head stays tied to the frozen embeddings).  The run folder is
then a PEFT adapter folder, which ``respond`` opens (base + adapter); ``--merge`` also writes ``merged/``, a full model
folder for every other workflow.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.convert import make_generation_config

from . import config as config_schema
from . import lora
from .errors import UserError
from .fsutil import atomic_write_json
from .runfolder import claims_out_dir
from .train_loop import TrainConfig, Trainer, latest_checkpoint, perplexity, plot_history

SPLIT_FRACTIONS = (0.85, 0.05, 0.10)  # train / validation / test, as in the book
DEFAULT_MAX_NEW_TOKENS = 256  # the book's answer length; always capped by what fits in the context
RESPONSE_MARKER = "### Response:"


@dataclass
class InstructConfig(lora.LoraOptions, TrainConfig):
    """An instruction fine-tune: the loop's settings (with the book's chapter-7 defaults) plus data and model."""

    model: str | None = field(default=None, metadata={"help": "base model folder (a causal LM run folder)"})
    data: str | None = field(
        default=None, metadata={"help": "instruction records: JSON list, JSONL, or a Hub dataset id"}
    )
    out: str | None = field(default=None, metadata={"help": "run folder (a loadable model folder at the end)"})
    mask_prompt: bool = field(
        default=False, metadata={"help": "learn only the response: ignore the targets of the prompt tokens"}
    )
    max_length: int = field(
        default=0, metadata={"help": "cut training sequences to N tokens (0: the model's context)", "min": 0}
    )
    val_fraction: float = field(
        default=SPLIT_FRACTIONS[1], metadata={"help": "share of records for validation", "above": 0, "below": 1}
    )
    test_fraction: float = field(
        default=SPLIT_FRACTIONS[2], metadata={"help": "share of records for the test split", "min": 0, "below": 1}
    )
    sample_count: int = field(
        default=3, metadata={"help": "validation instructions answered at each evaluation", "min": 0}
    )
    sample_tokens: int = field(default=48, metadata={"help": "tokens per sample answer", "min": 1})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --out"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})
    # the book's chapter-7 settings in place of the pretraining defaults
    seed: int = field(default=123, metadata={"help": "seed for the split, data order and dropout"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the training split (0: use max_steps)"})
    batch_size: int = field(default=8, metadata={"help": "micro-batch size per device"})
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, on matrices only"})
    lr_schedule: str = field(
        default="constant", metadata={"choices": ["cosine", "constant"], "help": "after warmup"}
    )
    adam_beta2: float = 0.999
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0: only at the end)"})
    evals_per_epoch: float = field(
        default=4.0, metadata={"help": "evaluations per pass over the training split (0: --eval-every decides)"}
    )
    log_every: int = field(default=5, metadata={"help": "log every N steps"})


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


def split_instructions(records: list[dict], seed: int, val_fraction=SPLIT_FRACTIONS[1], test_fraction=SPLIT_FRACTIONS[2]):
    """``{"train", "val", "test"}`` record lists, shuffled by ``seed`` (1100 records -> 935 / 55 / 110)."""
    from .data import split_records

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
    from .prompts import format_alpaca

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
    from .data import instruction_collate

    return functools.partial(
        instruction_collate, pad_id=tokenizer.eos_token_id, mask_prompt=mask_prompt, max_length=max_length
    )


def prepare_data(cfg: InstructConfig, tokenizer, splits: dict, max_length: int, log=print):
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


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------


def extract_response(text: str) -> str:
    """The answer in a generated continuation of an Alpaca prompt.

    The prompt ends with ``### Response:``, so the continuation is the answer; a repeated header at its start is
    dropped (as in the book), and anything from a new Alpaca block on (a model that runs on past its answer) is cut.
    """
    from .prompts import ALPACA_STOP_STRINGS

    text = text.lstrip()
    if text.startswith(RESPONSE_MARKER):
        text = text[len(RESPONSE_MARKER) :]
    cut = [i for i in (text.find(stop) for stop in ALPACA_STOP_STRINGS) if i >= 0]
    if cut:
        text = text[: min(cut)]
    return text.strip()


def generate_responses(
    model, tokenizer, records: list[dict], *, batch_size: int = 8, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = False,
) -> list[str]:
    """Greedy answers for ``records`` (in their order), decoded ``batch_size`` at a time by the engine, each row
    stopping at its own end-of-text.

    Records are batched by prompt length (less padding) and the answers put back in order.  A prompt too long for
    the context keeps its newest tokens (the ``### Response:`` header must stay).
    """
    from .engine import Engine
    from .prompts import format_alpaca

    engine = Engine(model, tokenizer)
    prompts = tokenizer([format_alpaca(r) for r in records], add_special_tokens=False)["input_ids"] if records else []
    requests = [engine.request(ids, max_new_tokens=max_new_tokens) for ids in prompts]
    too_long = sum(r.truncated > 0 for r in requests)
    if too_long and progress:
        import sys

        print(f"note: {too_long} prompt(s) too long for the context ({engine.context} tokens) keep only their "
              "newest tokens", file=sys.stderr)
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(requests), desc="respond", unit="record", dynamic_ncols=True)
    try:
        for start in range(0, len(order), max(1, batch_size)):
            chunk = [requests[i] for i in order[start : start + max(1, batch_size)]]
            engine.run(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return [extract_response(r.text) for r in requests]


def default_max_new_tokens(context: int) -> int:
    return max(1, min(DEFAULT_MAX_NEW_TOKENS, context // 2))


# ---------------------------------------------------------------------------------------------------------------
# finetune-instruct
# ---------------------------------------------------------------------------------------------------------------


def add_finetune_instruct_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file of settings (any key below); flags given here win")
    config_schema.add_schema_arguments(parser, InstructConfig, "instruction fine-tuning settings (each is also a YAML key)")


def resolve_config(args) -> InstructConfig:
    cfg = config_schema.resolve(InstructConfig, args, getattr(args, "config", None))
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


def load_base_model(model_dir: str):
    """The base causal LM and its tokenizer (pad = end-of-text) from a model folder."""
    from modeling_gpt_scratch import GPTScratchForCausalLM
    from pipelines.tokenization import load_tokenizer

    from .folders import check_model_folder, loading_weights

    # a causal LM of ours: a classifier, a bare transformer, an adapter or a GPT-2 folder is one line saying so
    folder = check_model_folder(model_dir, accept=("causal-lm",))
    tokenizer = load_tokenizer(str(folder))
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {folder} has no end-of-text (eos) token, which marks the end of an answer")
    with loading_weights(folder):  # a file cut short: one line naming it
        model = GPTScratchForCausalLM.from_pretrained(str(folder))
    return model, tokenizer


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


def finetune_instruct_main(args) -> int:
    return finetune(resolve_config(args))


@claims_out_dir
def finetune(cfg: InstructConfig) -> int:
    from accelerate.utils import set_seed

    from .data import read_instructions
    from .generate import check_model_folder
    from .losses import lm_loss
    from .prompts import ALPACA_CHAT_TEMPLATE, format_alpaca
    from .run_record import RunRecord, model_architecture
    from .runfolder import check_out_dir, prepare_out_dir, save_run_config, write_model_folder
    from .train_loop import make_accelerator

    out = Path(cfg.out)
    # everything a user can get wrong is checked before anything is written (or removed)
    check_out_dir(out, cfg.resume, cfg.overwrite, cfg.take_over_lock)  # the one-line error, touching nothing
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the run")
    if lora.is_adapter_folder(cfg.model):
        raise UserError(
            f"--model {cfg.model} is a LoRA adapter folder, not a base model: pass the base it was trained on (its "
            "adapter_config.json names it), or its merged/ folder"
        )
    check_model_folder(cfg.model, accept=("causal-lm",))  # not a classifier, a bare transformer, a GPT-2 folder
    records = read_instructions(cfg.data)
    splits = split_instructions(records, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    model, tokenizer = load_base_model(cfg.model)
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
        prepare_out_dir(out, cfg.resume, cfg.overwrite, cfg.take_over_lock)
        save_splits(out, splits, cfg.resume)
    accelerator.wait_for_everyone()
    resume_from = latest_checkpoint(out) if cfg.resume else None

    run_config = RunRecord(
        settings={
            **dataclasses.asdict(cfg),
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


# ---------------------------------------------------------------------------------------------------------------
# respond
# ---------------------------------------------------------------------------------------------------------------


def add_respond_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True,
        help="instruction-tuned model folder (the --out of finetune-instruct; a LoRA adapter folder too)",
    )
    parser.add_argument("--data", required=True, help="instruction records to answer (JSON list or JSONL)")
    parser.add_argument("--out", required=True, help="JSON file to write: each record plus 'model_response'")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None,
        help="longest answer in tokens (default: the model's generation config, else 256; capped by the context)",
    )


def respond_main(args) -> int:
    from .data import read_instructions
    from .fsutil import atomic_write_text
    from .generate import load_model_and_tokenizer

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give the path of the JSON file to write")
    records = read_instructions(args.data)
    if lora.is_adapter_folder(args.model):
        model, tokenizer = lora.load_adapter(args.model, "causal")
    else:
        model, tokenizer = load_model_and_tokenizer(args.model)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {args.model} has no end-of-text (eos) token to stop answers at")
    if torch.cuda.is_available():
        model.to("cuda")
    max_new = args.max_new_tokens or default_max_new_tokens(model.config.max_position_embeddings)
    answers = generate_responses(
        model, tokenizer, records, batch_size=args.batch_size, max_new_tokens=max_new, progress=True
    )
    results = [{**record, "model_response": answer} for record, answer in zip(records, answers)]
    atomic_write_text(out, json.dumps(results, indent=4, ensure_ascii=False) + "\n")
    print(f"wrote {len(results)} responses to {out}")
    return 0


__all__ = [
    "InstructConfig",
    "add_finetune_instruct_arguments",
    "finetune_instruct_main",
    "finetune",
    "add_respond_arguments",
    "respond_main",
    "split_instructions",
    "encode_records",
    "make_collate",
    "prepare_data",
    "generate_responses",
    "extract_response",
]
