"""The one LM loss (``pipelines/losses.py``) against ``F.cross_entropy``, and the label convention against the
model's own (transformers') loss."""

import pytest
import torch
import torch.nn.functional as F

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from pipelines.losses import ChunkedCrossEntropy, lm_loss, token_cross_entropy


@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_token_cross_entropy_equals_f_cross_entropy_with_its_gradient(monkeypatch, chunk_rows):
    monkeypatch.setattr(ChunkedCrossEntropy, "CHUNK_BYTES", chunk_rows * 40 * 4)  # rows of 40 float32 logits
    torch.manual_seed(0)
    logits = torch.randn(33, 40, requires_grad=True)
    targets = torch.randint(0, 40, (33,))
    targets[4] = targets[20:23] = -100
    reference = F.cross_entropy(logits, targets, ignore_index=-100)
    loss = token_cross_entropy(logits, targets)
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    g_ref, = torch.autograd.grad(reference, logits)
    g, = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(g, g_ref, atol=1e-7, rtol=1e-6)
    summed = token_cross_entropy(logits, targets, reduction="sum")
    torch.testing.assert_close(summed, F.cross_entropy(logits, targets, reduction="sum"))
    with torch.no_grad():  # evaluation takes the same path
        torch.testing.assert_close(token_cross_entropy(logits, targets), reference.detach())
    assert torch.isnan(token_cross_entropy(logits, torch.full((33,), -100)))  # nothing scored: NaN, as F gives


def test_lm_loss_on_the_convention_equals_the_models_own_loss():
    """``shift_labels`` are transformers' pre-shifted labels: the model's loss (transformers' loss function) and
    ``lm_loss`` agree on a batch of the convention, and both equal the book's shifted cross-entropy."""
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(GPTScratchConfig.from_preset("tiny", vocab_size=97)).train()
    tokens = torch.randint(0, 97, (3, 17))
    batch = {"input_ids": tokens[:, :-1], "shift_labels": tokens[:, 1:].clone()}
    batch["shift_labels"][1, 5:] = -100
    loss, count = lm_loss(model, batch)
    assert count == 3 * 16 - 11
    out = model(**batch)
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-6)
    labels = tokens.clone()
    labels[1, 6:] = -100
    torch.testing.assert_close(model(input_ids=tokens, labels=labels).loss.detach(), loss.detach(), atol=1e-6,
                               rtol=1e-6)  # unshifted labels on the whole row: the same targets
