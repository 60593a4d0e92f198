"""TRL's SFTTrainer with packing (its default strategy, best-fit decreasing: padding-free rows whose position_ids
restart at each document, no attention mask) on the folder, by path with trust_remote_code, on CPU."""

import math
import tempfile

import torch
import torch.nn.functional as F
from _client import Client
from datasets import Dataset
from transformers import AutoTokenizer

from trl import SFTConfig, SFTTrainer

client = Client(packages=("torch", "transformers", "trl", "datasets", "accelerate"))
spec = client.spec
folder = spec["folders"]["tied"]
torch.set_num_threads(1)
state = {}


@client.check("sft_packing")
def _():
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    texts = [t[: 60 + 17 * (i % 7)] for i, t in enumerate(spec["train_texts"] * 2)]  # documents of varied lengths
    dataset = Dataset.from_dict({"text": texts})
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="sft-", dir="."),
        packing=True,
        max_length=spec["context"],
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        trust_remote_code=True,
        seed=0,
    )
    trainer = SFTTrainer(model=folder, args=args, train_dataset=dataset, processing_class=tokenizer)
    state["trainer"] = trainer
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "model_class": type(trainer.model).__name__,
        "packing_strategy": args.packing_strategy,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "bf16": bool(args.bf16),
        "steps": trainer.state.global_step,
        "losses": losses,
        "train_loss": result.training_loss,
        "params_changed": changed,
        "params_total": len(before),
    }


@client.check("packed_rows_keep_documents_apart")
@torch.no_grad()
def _():
    """The loss of one packed row equals the token-weighted loss of its documents run one by one."""
    trainer = state["trainer"]
    model = trainer.model.eval().float()
    batch = next(iter(trainer.get_train_dataloader()))
    ids, positions, labels = batch["input_ids"][:1], batch["position_ids"][:1], batch["labels"][:1]
    assert "attention_mask" not in batch, sorted(batch)
    starts = (positions[0] == 0).nonzero().flatten().tolist()
    real = int((labels[0] != -100).sum()) + len(starts)  # tokens of real documents (padding has labels -100 too)
    bounds = [s for s in starts if s < real] + [real]
    packed = model(input_ids=ids, position_ids=positions, labels=labels).loss
    total, count = 0.0, 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        doc = ids[:, start:end]
        if doc.shape[1] < 2:
            continue
        logits = model(input_ids=doc).logits[0, :-1]
        total += float(F.cross_entropy(logits.float(), doc[0, 1:], reduction="sum"))
        count += doc.shape[1] - 1
    return {
        "documents": len(bounds) - 1,
        "packed_loss": float(packed),
        "separate_loss": total / count,
        "finite": math.isfinite(float(packed)),
    }
