"""The one language-model loss of every workflow (pretraining, instruction tuning, ``evaluate``), and the one
classification loss.

**The label convention.**  Every language-model batch is a dict ``{"input_ids", "shift_labels"}`` (plus
``"attention_mask"`` where there is padding to hide): ``shift_labels[b, t]`` is the token that position ``t`` of row
``b`` must predict, ``-100`` where nothing is scored.  That is transformers' own name for already-shifted labels, so
``model(**batch)`` computes the same loss with transformers' loss function; this module computes it faster:

* on CPU, for our own causal LM, :class:`LinearCrossEntropy`: the head's product and the loss in one pass over
  chunks of rows, its gradients computed in the forward, so the full logits are never written (the bare demo-shape
  training step: 18,085 against 15,283 tok/s with the logits and :class:`ChunkedCrossEntropy`; ``BENCHMARKS.md``);
* on CPU, for logits already computed (evaluation, other models), :class:`ChunkedCrossEntropy`, which never allocates a tensor the size of the logits except their gradient
  (measured on 2048 x 50257 logits -- batch 8 x 256, GPT-2's vocabulary -- on a 2-core AMD EPYC: 310 ms for forward
  and backward against 570 ms for ``F.cross_entropy``, whose log-probabilities, zero-filled gradient and log-softmax
  gradient are three fresh 412 MB tensors, each paid again in page faults);
* on a GPU, or under ``torch.compile`` (which fuses it), ``F.cross_entropy``.

Loss functions return ``(mean loss, count)``: the count (tokens scored, or examples) weighs the mean when the
Trainer averages over batches (throughput counts the tokens the model reads, see ``pipelines.train_loop``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

IGNORE_INDEX = -100


def token_cross_entropy(logits, targets, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"):
    """``F.cross_entropy`` of (tokens, vocab) logits against (tokens,) targets, ``ignore_index`` skipped: the mean
    over scored targets (NaN when there are none, as ``F.cross_entropy`` gives) or, with ``reduction="sum"``, the
    sum.  Equal to ``F.cross_entropy`` to float rounding."""
    logits = logits.float()  # no copy for float32
    if logits.device.type != "cpu" or torch.compiler.is_compiling():
        return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    total = ChunkedCrossEntropy.apply(logits, targets, ignore_index)
    return total if reduction == "sum" else total / (targets != ignore_index).sum()


def lm_loss(model, batch: dict):
    """Mean next-token cross-entropy of ``model`` on an LM batch (see the module docstring) and the number of tokens
    scored.

    On CPU, for our own causal LM called as itself (not wrapped, its ``forward`` not replaced), the head and the loss
    are one step, :class:`LinearCrossEntropy`: the full logits are never written.  Elsewhere, the model's logits and
    :func:`token_cross_entropy`."""
    targets = batch["shift_labels"]
    if _head_fusable(model, batch["input_ids"]):
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                  use_cache=False).last_hidden_state
        targets = targets.to(hidden.device).reshape(-1)
        loss = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings().weight,
                                    targets)
        return loss, int((targets != IGNORE_INDEX).sum())
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False).logits
    targets = targets.to(logits.device)
    loss = token_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, int((targets != IGNORE_INDEX).sum())


def _head_fusable(model, input_ids) -> bool:
    """Whether ``model(...).logits`` is exactly ``model.get_output_embeddings()(model.base_model(...))`` here, in
    float32 on CPU, eager: our causal LM, its forward the class's own (not wrapped by a launcher or autocast)."""
    if input_ids.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    # our class (or the same file loaded as remote code), not a wrapper (PEFT, DDP) around it
    if not isinstance(model, PreTrainedModel) or type(model).__name__ != "GPTScratchForCausalLM":
        return False
    if getattr(model.forward, "__func__", None) is not type(model).forward:  # e.g. Accelerate's autocast wrapper
        return False
    head = model.get_output_embeddings()
    return (type(head) is torch.nn.Linear and head.bias is None
            and head.weight.dtype == torch.float32 and head.weight.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu"))


def linear_cross_entropy(hidden, weight, targets, ignore_index: int = IGNORE_INDEX):
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``targets`` (``ignore_index`` skipped; NaN
    when nothing is scored, as ``F.cross_entropy`` gives), computed a few rows at a time by
    :class:`LinearCrossEntropy`.  Equal to ``F.cross_entropy(hidden @ weight.T, targets)`` to float rounding, with
    its gradients."""
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    total = LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, with_grad)
    return total / (targets != ignore_index).sum()


def classification_loss(model, batch: dict):
    """Mean cross-entropy of a classifier's logits against ``batch["labels"]``, and the number of examples."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return F.cross_entropy(logits.float(), batch["labels"]), int(batch["labels"].numel())


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (tokens, vocab) float logits against targets (``ignore_index`` skipped), a few rows
    at a time.

    Forward keeps only each row's log-sum-exp; backward writes ``softmax - one_hot`` straight into the gradient, row
    chunk by row chunk (each chunk's temporaries stay small and in cache): ``exp(logits - lse) * g``, then ``-g`` at
    the target.
    """

    CHUNK_BYTES = 1 << 22  # about 4 MB of logits per chunk

    @staticmethod
    def _chunk(logits):
        return max(1, ChunkedCrossEntropy.CHUNK_BYTES // max(1, logits.shape[-1] * logits.element_size()))

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        valid = targets != ignore_index
        safe = targets.masked_fill(~valid, 0)
        lse = logits.new_empty(logits.shape[0])
        step = ChunkedCrossEntropy._chunk(logits)
        for start in range(0, logits.shape[0], step):
            torch.logsumexp(logits[start : start + step], dim=-1, out=lse[start : start + step])
        picked = logits.gather(-1, safe[:, None]).squeeze(-1)
        ctx.save_for_backward(logits, safe, valid, lse)
        return ((lse - picked) * valid).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, safe, valid, lse = ctx.saved_tensors
        scale = grad * valid.to(logits.dtype)
        out = torch.empty_like(logits)
        step = ChunkedCrossEntropy._chunk(logits)
        for start in range(0, logits.shape[0], step):
            rows = slice(start, start + step)
            chunk = out[rows]
            torch.sub(logits[rows], lse[rows, None], out=chunk)
            chunk.exp_()
            chunk.mul_(scale[rows, None])
        out.scatter_add_(-1, safe[:, None], -scale[:, None])
        return out, None, None


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of the logits ``hidden @ weight.T`` (tokens x vocabulary) against targets, with the
    head's matrix product, the log-softmax and both gradients done a chunk of rows at a time, so the logits of a
    chunk (about 8 MB, see CHUNK_BYTES) stay in cache and the full (tokens x vocabulary) logits are never written -- the idea of
    Liger Kernel's fused linear cross-entropy (Hsu et al., 2024, arXiv:2410.10989), here in plain PyTorch for CPU.

    The gradients are computed in the forward (``softmax - one_hot`` of each chunk, times the chunk's hidden states
    and the head's weight); backward only scales them by the incoming gradient.  With ``with_grad`` false
    (evaluation) only the loss is computed.
    """

    CHUNK_BYTES = 1 << 23  # 8 MB of logits per chunk: the fastest of 0.25-16 MB at 2048 x 128 x 4096 on 2 cores
    MAX_CHUNKS = 4  # at 2048 x 768 x 50257: 41-row chunks took 3.2 s, 512-row chunks 1.8 s (the unfused path's time)

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, with_grad):
        valid = targets != ignore_index
        safe = targets.masked_fill(~valid, 0)
        # chunks of about CHUNK_BYTES of logits, but at most MAX_CHUNKS of them: each chunk adds its product into
        # the whole (vocabulary x width) weight gradient, which at GPT-2's vocabulary costs more than the cache saves
        step = max(LinearCrossEntropy.CHUNK_BYTES // max(1, weight.shape[0] * hidden.element_size()),
                   -(-hidden.shape[0] // LinearCrossEntropy.MAX_CHUNKS), 1)
        grad_hidden = torch.empty_like(hidden) if with_grad and ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if with_grad and ctx.needs_input_grad[1] else None
        buffer = hidden.new_empty(min(step, hidden.shape[0]), weight.shape[0])
        total = hidden.new_zeros((), dtype=torch.float64)
        for start in range(0, hidden.shape[0], step):
            rows = slice(start, start + step)
            chunk = hidden[rows]
            logits = torch.mm(chunk, weight.t(), out=buffer[: chunk.shape[0]])
            log_probs = torch.log_softmax(logits, dim=-1)
            picked = log_probs.gather(-1, safe[rows, None]).squeeze(-1)
            total -= (picked * valid[rows]).sum(dtype=torch.float64)
            if grad_hidden is None and grad_weight is None:
                continue
            scores = log_probs.exp_()  # softmax
            scores.scatter_add_(-1, safe[rows, None], -torch.ones_like(picked)[:, None])
            scores.mul_(valid[rows, None])
            if grad_hidden is not None:
                torch.mm(scores, weight, out=grad_hidden[rows])
            if grad_weight is not None:
                grad_weight.addmm_(scores.t(), chunk)
        ctx.save_for_backward(grad_hidden, grad_weight)  # None where no gradient is needed
        return total.to(hidden.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad, None if grad_weight is None else grad_weight * grad,
                None, None, None)


__all__ = ["IGNORE_INDEX", "token_cross_entropy", "lm_loss", "linear_cross_entropy", "classification_loss",
           "ChunkedCrossEntropy", "LinearCrossEntropy"]
