"""The one language-model loss of every workflow (pretraining, instruction tuning, ``evaluate``), and the one
classification loss.

**The label convention.**  Every language-model batch is a dict ``{"input_ids", "shift_labels"}`` (plus
``"attention_mask"`` where there is padding to hide): ``shift_labels[b, t]`` is the token that position ``t`` of row
``b`` must predict, ``-100`` where nothing is scored.  That is transformers' own name for already-shifted labels, so
``model(**batch)`` computes the same loss with transformers' loss function; this module computes it faster:

* on CPU, for our own causal LM, :class:`LinearCrossEntropy`: the head's product and the loss in one pass over
  chunks of rows, its gradients computed in the forward, so the full logits are never written (the bare demo-shape
  training step: 18,085 against 15,283 tok/s with the logits and :class:`ChunkedCrossEntropy`; ``BENCHMARKS.md``);
* on CPU, for logits already computed (evaluation, other models), :class:`ChunkedCrossEntropy`, which never
  allocates a tensor the size of the logits except their gradient (measured on 2048 x 50257 logits -- batch 8 x 256,
  GPT-2's vocabulary -- on a 2-core AMD EPYC: 310 ms for forward and backward against 570 ms for ``F.cross_entropy``,
  whose log-probabilities, zero-filled gradient and log-softmax gradient are three fresh 412 MB tensors, each paid
  again in page faults);
* under CPU bf16 autocast (``pipelines.training.precision``), the same :class:`LinearCrossEntropy` with bf16 products
  and a float32 softmax;
* on a GPU, or under ``torch.compile`` (which fuses it), ``F.cross_entropy``.

Loss functions return ``(mean loss, count)``: the count (tokens scored, or examples) weighs the mean when the
Trainer averages over batches (throughput counts the tokens the model reads, see ``pipelines.training.trainer``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..data.tokens import IGNORE_INDEX


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
                                    targets, product_dtype=_cpu_product_dtype())
        return loss, int((targets != IGNORE_INDEX).sum())
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False).logits
    targets = targets.to(logits.device)
    loss = token_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, int((targets != IGNORE_INDEX).sum())


def _head_fusable(model, input_ids) -> bool:
    """Whether ``model(...).logits`` is exactly ``model.get_output_embeddings()(model.base_model(...))`` here, with
    float32 weights on CPU, eager, outside autocast or under CPU bf16 autocast: our causal LM, its forward the
    class's own (not wrapped by a launcher or Accelerate's autocast)."""
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
            and _cpu_product_dtype() in (torch.float32, torch.bfloat16))


def _cpu_product_dtype() -> torch.dtype:
    """The dtype CPU products run in here: autocast's where it is on, else float32."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32


def linear_cross_entropy(hidden, weight, targets, ignore_index: int = IGNORE_INDEX, product_dtype=None):
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``targets`` (``ignore_index`` skipped; NaN
    when nothing is scored, as ``F.cross_entropy`` gives), computed a few rows at a time by
    :class:`LinearCrossEntropy`.  Equal to ``F.cross_entropy(hidden @ weight.T, targets)`` to float rounding, with
    its gradients.  ``product_dtype`` (default: ``hidden``'s) is the dtype of the three matrix products, as
    autocast would run them (bf16); the softmax and the sums are float32 whatever it is."""
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    total = LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, with_grad, product_dtype or hidden.dtype)
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
    head's matrix product, the softmax and both gradients done a chunk of rows at a time, so the logits of a
    chunk (about 8 MB, see CHUNK_BYTES) stay in cache and the full (tokens x vocabulary) float32 logits are never
    written -- the idea of Liger Kernel's fused linear cross-entropy (Hsu et al., 2024, arXiv:2410.10989), here in
    plain PyTorch for CPU.

    The gradients are computed in the forward (``softmax - one_hot`` of each chunk, times the chunk's hidden states
    and the head's weight); backward only scales them, in place, by the incoming gradient.  Each chunk's softmax is
    one in-place pass; the target's log-probability is the log of its softmax entry, recomputed exactly with
    ``log_softmax`` for the rare rows where that probability is below float32's range.  With ``product_dtype`` bf16
    (CPU autocast) the three products are bf16, the softmax float32, and the bf16 scores of all rows are kept so that
    each gradient is one product at the end.  The large temporaries stay in a workspace between calls (a few hundred
    MB at GPT-2's vocabulary), since a fresh one costs more in page faults than the pass that fills it.  With
    ``with_grad`` false (evaluation) only the loss is computed.
    """

    CHUNK_BYTES = 1 << 23  # 8 MB of logits per chunk: the fastest of 0.25-16 MB at 2048 x 128 x 4096 on 2 cores
    MAX_CHUNKS = 4  # at 2048 x 768 x 50257: 41-row chunks took 3.2 s, 512-row chunks 1.8 s (the unfused path's time)

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, with_grad, product_dtype):
        with torch.autocast(hidden.device.type, enabled=False):  # the products' dtype is product_dtype, as given
            return LinearCrossEntropy._forward(ctx, hidden, weight, targets, ignore_index, with_grad, product_dtype)

    @staticmethod
    def _forward(ctx, hidden, weight, targets, ignore_index, with_grad, product_dtype):
        valid = targets != ignore_index
        safe = targets.masked_fill(~valid, 0)
        cast = product_dtype != hidden.dtype or product_dtype != weight.dtype
        rows_total, vocab = hidden.shape[0], weight.shape[0]
        # chunks of about CHUNK_BYTES of logits, but at most MAX_CHUNKS of them: each chunk adds its product into
        # the whole (vocabulary x width) weight gradient, which at GPT-2's vocabulary costs more than the cache saves
        step = min(max(LinearCrossEntropy.CHUNK_BYTES // max(1, vocab * hidden.element_size()),
                       -(-rows_total // LinearCrossEntropy.MAX_CHUNKS), 1), rows_total)
        # the large temporaries live in a workspace kept between calls: a fresh tensor of a few hundred MB costs
        # more in page faults than the pass that fills it (2-core EPYC: 51 against 10 ms for a 512 x 50257 softmax)
        work = LinearCrossEntropy._workspace
        inputs = hidden.to(product_dtype)
        matrix = work("matrix", weight.shape, product_dtype).copy_(weight) if cast else weight
        logits_buffer = work("logits", (step, vocab), product_dtype)
        probs_buffer = work("probs", (step, vocab), torch.float32) if cast else logits_buffer
        grad_hidden = torch.empty_like(hidden) if with_grad and ctx.needs_input_grad[0] else None
        grad_weight = torch.empty_like(weight) if with_grad and ctx.needs_input_grad[1] else None
        wants_grad = grad_hidden is not None or grad_weight is not None
        # in bf16 the scores of all rows are kept (half the bytes of float32 logits), and each gradient is one
        # product at the end, converted to float32 once, not a bf16 partial sum per chunk
        scores_buffer = work("scores", (rows_total, vocab), product_dtype) if cast and wants_grad else None
        product = work("weight_product", weight.shape, product_dtype) if cast and grad_weight is not None else None
        total = hidden.new_zeros((), dtype=torch.float64)
        for start in range(0, rows_total, step):
            rows = slice(start, start + step)
            chunk = inputs[rows]
            logits = torch.mm(chunk, matrix.t(), out=logits_buffer[: chunk.shape[0]])
            probs = probs_buffer[: chunk.shape[0]].copy_(logits) if cast else logits
            torch.softmax(probs, dim=-1, out=probs)  # in place: one pass, where log_softmax then exp took three
            picked = probs.gather(-1, safe[rows, None]).squeeze(-1).log()
            underflow = (picked < -80).nonzero().squeeze(-1)  # p below float32's normal range: recompute exactly
            if len(underflow):
                exact = torch.log_softmax(torch.mm(chunk[underflow], matrix.t()).float(), dim=-1)
                picked[underflow] = exact.gather(-1, safe[rows][underflow, None]).squeeze(-1)
            total -= (picked * valid[rows]).sum(dtype=torch.float64)
            if not wants_grad:
                continue
            scores = probs  # softmax - one_hot, zero on ignored rows
            scores.scatter_add_(-1, safe[rows, None], -torch.ones_like(picked)[:, None])
            scores.mul_(valid[rows, None])
            if cast:
                scores_buffer[rows].copy_(scores)
                continue
            if grad_hidden is not None:
                torch.mm(scores, matrix, out=grad_hidden[rows])
            if grad_weight is not None:
                if start == 0:
                    torch.mm(scores.t(), chunk, out=grad_weight)
                else:
                    grad_weight.addmm_(scores.t(), chunk)
        if cast and grad_hidden is not None:
            grad_hidden.copy_(torch.mm(scores_buffer, matrix))
        if cast and grad_weight is not None:
            grad_weight.copy_(torch.mm(scores_buffer.t(), inputs, out=product))
        ctx.save_for_backward(grad_hidden, grad_weight)  # None where no gradient is needed
        return total.to(torch.float32 if cast else hidden.dtype)

    _buffers: ClassVar[dict] = {}  # name -> tensor, see _workspace

    @staticmethod
    def _workspace(name: str, shape, dtype) -> torch.Tensor:
        """A tensor of this shape and dtype kept for the next call (contents undefined)."""
        buffer = LinearCrossEntropy._buffers.get(name)
        if buffer is None or buffer.shape != torch.Size(shape) or buffer.dtype != dtype:
            LinearCrossEntropy._buffers.pop(name, None)  # the old one goes before the new one is made
            buffer = LinearCrossEntropy._buffers[name] = torch.empty(shape, dtype=dtype)
        return buffer

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if getattr(ctx, "spent", False):
            raise RuntimeError("LinearCrossEntropy's backward runs once: its gradients are scaled in place")
        ctx.spent = True
        grad_hidden, grad_weight = ctx.saved_tensors  # this function's own tensors: scaled in place, not copied
        return (None if grad_hidden is None else grad_hidden.mul_(grad),
                None if grad_weight is None else grad_weight.mul_(grad), None, None, None, None)
