"""The one training loop behind pretraining and both fine-tunes.

What it does, in order, for each optimizer step:

1. take ``gradient_accumulation_steps`` micro-batches from a deterministic batch plan (the order depends only on the
   seed and the step, so a resumed run sees exactly the batches an uninterrupted run would);
2. forward under autocast (``pipelines.training.precision``), backward, with DDP gradient sync only on the last
micro-batch;
3. stop with a clear message on a NaN/inf loss, before the optimizer touches the weights;
4. clip the global gradient norm, set the learning rate (linear warmup, then cosine decay or constant), AdamW step;
5. every ``log_every`` steps: loss, tokens/s and MFU to the progress report (a bar on a terminal, a line in a
   log file: ``pipelines.progress``), the trackers and the history;
6. at each evaluation (:attr:`Trainer.eval_every`): validation loss and perplexity, then the workflow's ``on_eval``
   hook (its own metrics, samples);
7. every ``checkpoint_every`` steps: a checkpoint (``pipelines.runs.run_folder``), keeping the newest
   ``keep_checkpoints``.

The Trainer owns the loop's arithmetic, so that every workflow reads the same numbers from it: the optimizer steps
in a pass over the training set (:attr:`Trainer.steps_per_epoch`), the run's length (``max_steps``, or ``epochs``
passes), and the evaluation cadence (``eval_every`` steps, or ``evals_per_epoch`` evaluations per pass); it refuses a
training set smaller than one batch.

The loop knows nothing about a workflow's data format: a workflow hands it datasets, a collate function that makes
dict batches, and a ``loss_fn(model, batch) -> (mean loss, count)`` (``pipelines.training.losses``): the count (tokens
scored, or examples) weighs each batch's mean in evaluation (:meth:`Trainer.evaluate`, which takes any metric of that
shape). Throughput (tokens/s, MFU, tokens seen) counts the tokens the model reads: a batch's ``attention_mask`` ones
where it has one (a classifier's loss counts examples, an instruction loss with ``--mask-prompt`` only the response),
else the loss's count (the tokens scored: every token of a pretraining window).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator

from ..errors import UserError
from ..fs import atomic_path, fault_point
from ..progress import Progress
from ..runs.run_folder import latest_checkpoint, load_checkpoint, save_checkpoint
from ..settings import TrainSettings
from . import precision

# Peak dense bf16 tensor throughput (FLOP/s) of common accelerators, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,  # the SXM board's name in torch.cuda.get_device_name
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,
    "A100": 312e12,
    "A10G": 70e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
}


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter that multiplies (forward 2, backward 4), plus attention's
    ``12 * layers * width * seq_len`` (Kaplan et al., 2020, section 2.1; PaLM, Chowdhery et al., 2022, appendix B).

    Embedding lookups do no arithmetic: the position table is left out, and so is the token table unless the output
    head shares it (then it is the head's matrix, counted once)."""
    config = model.config
    params = {p.data_ptr(): p.numel() for p in model.parameters()}  # a tied matrix once
    lookups = [model.get_input_embeddings()]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight.data_ptr() == lookups[0].weight.data_ptr():
        lookups = []
    base = getattr(model, model.base_model_prefix, model)
    if hasattr(base, "pos_emb"):
        lookups.append(base.pos_emb)
    for table in lookups:
        params.pop(table.weight.data_ptr(), None)
    return 6 * sum(params.values()) + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def format_mfu(mfu) -> str:
    return "n/a" if mfu is None else f"{100 * mfu:.1f}%"


def compile_with_fallback(model, log: Callable[[str], None]):
    """``torch.compile(model)``; a function the compiler cannot handle (no Triton or C++ toolchain, an unsupported
    operation) runs eagerly instead of stopping the run.

    Compilation happens lazily at the first call, so the fallback is Dynamo's own ``suppress_errors``: a failing
    frame is logged by PyTorch and executed as written.  The results are the eager model's either way."""
    import torch._dynamo  # only with --compile

    torch._dynamo.config.suppress_errors = True
    try:
        compiled = torch.compile(model)
    except Exception as exc:  # torch.compile itself refuses (e.g. an unsupported Python version)
        log(f"torch.compile unavailable ({type(exc).__name__}: {exc}); training without it")
        return model
    log("torch.compile on: the first steps compile (minutes on a large model); a part that fails to compile runs "
        "eagerly, with a warning from PyTorch")
    return compiled


def learning_rate_at(step: int, cfg: TrainSettings, total_steps: int) -> float:
    """Linear warmup to the peak, then constant or cosine decay to ``min_lr_ratio`` of it (Loshchilov & Hutter,
    2017)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.learning_rate * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.learning_rate - floor) * (1 + math.cos(math.pi * progress))


def param_groups(model, weight_decay: float):
    """Weight decay on matrices (linear weights, embeddings); none on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class BatchPlan(torch.utils.data.Sampler):
    """Which examples make up each micro-batch, from ``start`` on, as a pure function of the seed.

    Each epoch is a fresh permutation (seeded with ``seed + epoch``), cut into global micro-batches of
    ``batch_size * world_size`` examples (an incomplete last one is dropped); rank ``r`` takes the ``r``-th slice.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank=0, world_size=1, start=0, shuffle=True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start, self.shuffle = rank, world_size, start, shuffle
        self.per_epoch = n // (batch_size * world_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=generator)

    def __iter__(self):
        index = self.start
        epoch, order = None, None
        while True:
            this_epoch, position = divmod(index, self.per_epoch)
            if this_epoch != epoch:
                epoch, order = this_epoch, self._order(this_epoch)
            first = (position * self.world_size + self.rank) * self.batch_size
            yield order[first : first + self.batch_size].tolist()
            index += 1


@dataclass
class TrainResult:
    step: int
    history: list[dict]
    final: dict
    elapsed_s: float
    tokens_seen: int


def _params_digest(model) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def plot_history(history: list[dict], path: Path, title: str, keys=("train_loss", "val_loss")) -> None:
    """Loss curves against tokens seen (or steps), as a PNG written atomically."""
    import matplotlib  # plotting happens once, at the end of a run

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o" if key.startswith("val") else None, markersize=3, label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss" if all("loss" in k for k in keys) else "value")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def make_accelerator(cfg: TrainSettings, out_dir: Path):
    """An Accelerator with the run's precision (``pipelines.training.precision``) and trackers; TF32 matmuls on CUDA."""
    device_type = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    resolved = precision.resolve(cfg.mixed_precision, device_type)
    if torch.cuda.is_available():
        # TF32 for float32 matrix products and convolutions (Ampere and newer): ~8x the FP32 rate, 10-bit mantissa
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    trackers = _available_trackers(cfg.trackers)
    # With no accelerator, say so explicitly: Accelerate then treats `torchrun` ranks as CPU processes (gloo).
    cpu_only = device_type == "cpu"
    return Accelerator(
        cpu=cpu_only, mixed_precision=precision.accelerate_precision(resolved, device_type),
        log_with=trackers or None, project_dir=str(out_dir)
    )


def _available_trackers(names: list[str]) -> list[str]:
    modules = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}
    wanted = list(modules) if "all" in names else names
    for name in wanted:
        if name not in modules:
            raise UserError(f"unknown tracker '{name}': choose from {', '.join(modules)} or 'all'")
    return [n for n in wanted if importlib.util.find_spec(modules[n]) is not None]


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped at ``exp(50)`` so that an untrained model's loss does not overflow."""
    return math.exp(min(loss, 50.0))


class Trainer:
    """Runs :class:`TrainSettings` over a model and datasets; see the module docstring for the step.

    ``on_eval(trainer, record)``, the workflow's one evaluation hook, runs on every rank at each evaluation, after the
    validation loss: it may add keys to ``record`` (which becomes a history entry) and may call
    :meth:`evaluate` (every rank takes part); work for the main process alone (text samples, the log) checks
    ``trainer.is_main``.  ``trainer.workflow_state`` is the workflow's own JSON-able state (its text samples): it is
    saved with each checkpoint and restored on resume.
    """

    def __init__(
        self,
        model,
        cfg: TrainSettings,
        out_dir: str | os.PathLike,
        train_data,
        val_data=None,
        *,
        collate_fn: Callable,
        loss_fn: Callable,
        tokens_per_example: int | None = None,
        on_eval: Callable | None = None,
        accelerator=None,
        run_name: str = "gpt-scratch",
        log_fn: Callable[[str], None] | None = None,
    ):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.train_data, self.val_data = train_data, val_data
        self.collate_fn, self.loss_fn, self.on_eval = collate_fn, loss_fn, on_eval
        self.accelerator = accelerator or make_accelerator(cfg, self.out_dir)
        self.precision = precision.resolve(cfg.mixed_precision, self.accelerator.device.type)  # "no", "bf16", "fp16"
        self.run_name = run_name
        acc = self.accelerator
        self.is_main = acc.is_main_process
        self.log = log_fn or (lambda msg: acc.print(msg))

        # ---- the loop's arithmetic: every workflow reads these numbers, none computes its own -------------------
        world = acc.num_processes
        self.micro_batches_per_epoch = len(train_data) // (cfg.batch_size * world)  # BatchPlan drops a partial one
        if self.micro_batches_per_epoch < 1:
            raise UserError(
                f"the training split has {len(train_data)} examples, fewer than one batch "
                f"({cfg.batch_size} per device x {world} devices): lower --batch-size or give more data"
            )
        self.accum = cfg.gradient_accumulation_steps
        if cfg.global_batch_tokens > 0:
            if not tokens_per_example:
                raise UserError("global_batch_tokens needs fixed-length examples: set gradient_accumulation_steps")
            per_micro = cfg.batch_size * world * tokens_per_example
            self.accum = max(1, round(cfg.global_batch_tokens / per_micro))
        self.global_batch = cfg.batch_size * world * self.accum
        # optimizer steps in one pass over the training set (a fraction when the accumulation does not divide it)
        self.steps_per_epoch = self.micro_batches_per_epoch / self.accum
        if cfg.epochs > 0:
            self.total_steps = max(1, math.ceil(cfg.epochs * self.micro_batches_per_epoch / self.accum))
        else:
            self.total_steps = cfg.max_steps
        # evaluate every this many steps (0: only at the end); always at step 0 and at the last step as well
        if cfg.evals_per_epoch > 0:
            self.eval_every = max(1, round(self.steps_per_epoch / cfg.evals_per_epoch))
        else:
            self.eval_every = cfg.eval_every

        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        # PyTorch's fused AdamW (one kernel per parameter, no temporaries) on CUDA and CPU: at 124M on 2 CPU cores
        # its step took 0.12 s against 0.5-0.9 s for the default per-tensor loop (BENCHMARKS.md)
        torch_fused = acc.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay),
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            fused=torch_fused or None,
        )
        self.raw_model = model
        self.model, self.optimizer = acc.prepare(model, self.optimizer)
        if cfg.compile:
            self.model = compile_with_fallback(self.model, self.log)
        self.tokens_per_example = tokens_per_example
        self.flops_per_token = flops_per_token(model, tokens_per_example or model.config.max_position_embeddings)
        self.peak_flops = device_peak_flops(acc.device)
        self.step = 0
        self.tokens_seen = 0
        self.history: list[dict] = []
        self.workflow_state: dict = {}
        self.elapsed_before = 0.0

    # ---- data -------------------------------------------------------------------------------------------------
    def _loader(self, start_micro_batch: int):
        acc = self.accelerator
        batch_order = BatchPlan(
            len(self.train_data),
            self.cfg.batch_size,
            self.cfg.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
            start=start_micro_batch,
        )
        return torch.utils.data.DataLoader(
            self.train_data,
            batch_sampler=batch_order,
            collate_fn=self.collate_fn,
            num_workers=self.cfg.num_workers,
            pin_memory=acc.device.type == "cuda",
            # the loader's own generator: creating an iterator must not draw from the global RNG, or a resumed run
            # would start its dropout masks from a different state than the uninterrupted run had at that step
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def _to_device(self, batch: dict) -> dict:
        if not isinstance(batch, dict):
            raise TypeError(f"collate_fn must make dict batches (what loss_fn reads), not {type(batch).__name__}")
        return {k: v.to(self.accelerator.device, non_blocking=True) for k, v in batch.items()}

    # ---- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, dataset, metric_fn: Callable | None = None, *, indices=None, max_batches: int = 0) -> float:
        """The mean of ``metric_fn(model, batch) -> (mean, count)`` (default: the training ``loss_fn``) over
        ``dataset``, or over its items ``indices``, each batch's mean weighted by its count.

        The items are split over the ranks and the sums reduced, so every rank must call it and gets the same
        number; NaN when nothing was counted.  Batches of ``batch_size``, in order (at most ``max_batches`` per
        rank, 0: all), under autocast, with the model in eval mode meanwhile."""
        acc = self.accelerator
        metric_fn = metric_fn or self.loss_fn
        model = self.model
        was_training = model.training
        model.eval()
        world, rank, size = acc.num_processes, acc.process_index, self.cfg.batch_size
        mine = list(range(len(dataset)) if indices is None else indices)[rank::world]
        batches = [mine[i : i + size] for i in range(0, len(mine), size)]
        if max_batches:
            batches = batches[:max_batches]
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)
        for batch_indices in batches:
            batch = self._to_device(self.collate_fn([dataset[i] for i in batch_indices]))
            with precision.autocast(acc, self.precision):
                value, count = metric_fn(model, batch)
            total[0] += value.double() * count
            total[1] += count
        total = acc.reduce(total, reduction="sum") if world > 1 else total
        if was_training:
            model.train()
        return (total[0] / total[1]).item() if total[1] > 0 else float("nan")

    # ---- checkpoints (pipelines.runs.run_folder) -----------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        return save_checkpoint(self.accelerator, self.out_dir, self._state(), self.cfg.keep_checkpoints)

    def _state(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "history": self.history,
            "workflow_state": self.workflow_state,
            "elapsed_s": self.elapsed_before + (time.time() - self._t0),
            "total_steps": self.total_steps,
            "global_batch": self.global_batch,
        }

    def load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(self.accelerator, path, self.global_batch)
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.history = state["history"]
        self.workflow_state = state.get("workflow_state", state.get("notes", {}))  # "notes": older checkpoints
        self.elapsed_before = state.get("elapsed_s", 0.0)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _eval_point(self, train_loss: float | None) -> dict:
        record = {"step": self.step, "tokens": self.tokens_seen, "train_loss": train_loss}
        if self.val_data is not None and len(self.val_data):
            loss = self.evaluate(self.val_data, max_batches=self.cfg.eval_batches)
            record.update(val_loss=loss, val_perplexity=perplexity(loss))
        if self.on_eval is not None:
            self.on_eval(self, record)
        return record

    def fit(self, resume_from: Path | None = None) -> TrainResult:
        """Train to ``total_steps`` (from ``resume_from``'s checkpoint if given); the run's final numbers."""
        with precision.use_cpu_bf16_attention(self.raw_model, self.precision, self.accelerator.device.type):
            return self._fit(resume_from)

    def _fit(self, resume_from: Path | None) -> TrainResult:
        acc = self.accelerator
        cfg = self.cfg
        self._t0 = time.time()
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            self.log(f"resumed from {resume_from} at step {self.step}/{self.total_steps}")
        if acc.log_with:
            acc.init_trackers(self.run_name, config={k: str(v) for k, v in cfg.model_dump().items()})
        if self.step == 0:
            self.history.append(self._eval_point(None))
            self._log_eval(self.history[-1])

        model = self.model
        model.train()
        batches = iter(self._loader(self.step * self.accum))
        bar = Progress(self.total_steps, self.run_name, initial=self.step, every=cfg.log_every,
                       disable=not self.is_main)
        window_tokens, window_start, window_loss, window_steps = 0, time.time(), 0.0, 0
        while self.step < self.total_steps:
            lr = learning_rate_at(self.step, cfg, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=acc.device)
            step_tokens = 0
            for micro in range(self.accum):
                batch = self._to_device(next(batches))
                sync = micro == self.accum - 1
                ctx = contextlib.nullcontext() if sync else acc.no_sync(model)
                with ctx, precision.autocast(acc, self.precision):
                    loss, count = self.loss_fn(model, batch)
                    acc.backward(loss / self.accum)
                step_loss += loss.detach() / self.accum
                # throughput counts the tokens the model reads (see the module docstring)
                step_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else count
            if acc.num_processes > 1:
                step_loss = acc.reduce(step_loss, reduction="mean")
            loss_value = step_loss.item()
            if not math.isfinite(loss_value):
                bar.close()
                last = latest_checkpoint(self.out_dir)
                raise UserError(
                    f"the loss became {loss_value} at step {self.step + 1}: training stopped before the update; "
                    + (f"the last good checkpoint is {last}; " if last else "")
                    + "lower --learning-rate, keep --grad-clip on, or use --mixed-precision bf16 instead of fp16"
                )
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            tokens = step_tokens * acc.num_processes
            self.tokens_seen += tokens
            window_tokens += tokens
            window_loss += loss_value
            window_steps += 1
            shown = {}

            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                seconds = max(time.time() - window_start, 1e-9)
                tok_s = window_tokens / seconds
                mfu = self._mfu(tok_s)
                record = {
                    "step": self.step,
                    "tokens": self.tokens_seen,
                    "train_loss": window_loss / window_steps,
                    "lr": lr,
                    "tokens_per_s": tok_s,
                    "mfu": mfu,
                }
                shown = {"loss": f"{record['train_loss']:.4f}", "tok/s": f"{tok_s:,.0f}", "mfu": format_mfu(mfu)}
                if acc.log_with:
                    acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.step)
                self.history.append(record)
                window_tokens, window_start, window_loss, window_steps = 0, time.time(), 0.0, 0
            bar.update(1, **shown)

            at_end = self.step == self.total_steps
            if (self.eval_every and self.step % self.eval_every == 0) or at_end:
                point = self._eval_point(self.history[-1].get("train_loss") if self.history else None)
                point["eval"] = True
                self.history.append(point)
                self._log_eval(point)
                window_start = time.time()
            if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or at_end):
                self.save_checkpoint()
                window_start = time.time()
            if self.is_main:
                fault_point("step", self.step)
        bar.close()

        agree = self._ranks_agree()
        elapsed = self.elapsed_before + (time.time() - self._t0)
        evals = [h for h in self.history if "val_loss" in h]
        final = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "global_batch_examples": self.global_batch,
            "world_size": acc.num_processes,
            "mixed_precision": self.precision,
            "gradient_accumulation_steps": self.accum,
            "ranks_agree": agree,
            "elapsed_s": elapsed,
        }
        if evals:
            final["initial_val_loss"] = evals[0]["val_loss"]
            final["val_loss"] = evals[-1]["val_loss"]
            final["val_perplexity"] = evals[-1]["val_perplexity"]
        if acc.log_with:
            acc.end_training()
        return TrainResult(self.step, self.history, final, elapsed, self.tokens_seen)

    def _ranks_agree(self) -> bool:
        """After DDP training every rank must hold the same weights: compare a digest across ranks."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return True
        digest = _params_digest(acc.unwrap_model(self.model))
        value = torch.tensor([int(digest[:12], 16)], dtype=torch.float64, device=acc.device)
        gathered = acc.gather(value)
        return bool((gathered == gathered[0]).all())

    def _mfu(self, tokens_per_s: float):
        if self.peak_flops is None:
            return None
        return tokens_per_s * self.flops_per_token / (self.peak_flops * self.accelerator.num_processes)

    def _log_eval(self, point: dict) -> None:
        parts = [f"step {point['step']}"]
        for key in ("train_loss", "val_loss", "val_perplexity", "val_bpb"):
            if point.get(key) is not None:
                parts.append(f"{key} {point[key]:.4f}")
        for key, value in point.items():
            if key.endswith("accuracy") and value is not None:
                parts.append(f"{key} {value:.4f}")
        self.log(" | ".join(parts))
        if self.accelerator.log_with:
            self.accelerator.log(
                {k: v for k, v in point.items() if k.startswith("val") and isinstance(v, (int, float))},
                step=point["step"],
            )

