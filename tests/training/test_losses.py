"""The one LM loss (``pipelines/losses.py``) against ``F.cross_entropy``, and the label convention against the
model's own (transformers') loss."""

import pytest
import torch
import torch.nn.functional as F

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from pipelines.training.losses import ChunkedCrossEntropy, LinearCrossEntropy, linear_cross_entropy, lm_loss, token_cross_entropy


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


@pytest.mark.parametrize("chunk_rows", [1, 5, 1000])
def test_linear_cross_entropy_equals_the_head_then_f_cross_entropy(monkeypatch, chunk_rows):
    """The fused head + loss (gradients computed chunk by chunk in the forward) against the plain product and
    ``F.cross_entropy``: the loss and both gradients, an incoming gradient other than 1, ignored rows."""
    monkeypatch.setattr(LinearCrossEntropy, "CHUNK_BYTES", chunk_rows * 50 * 4)  # rows of 50 float32 logits
    monkeypatch.setattr(LinearCrossEntropy, "MAX_CHUNKS", 100)
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[::6] = -100
    loss = linear_cross_entropy(hidden, weight, targets)
    reference = F.cross_entropy(hidden @ weight.T, targets)
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad(3.0 * loss, (hidden, weight))
    expected = torch.autograd.grad(3.0 * reference, (hidden, weight))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    frozen = linear_cross_entropy(hidden.detach(), weight, targets)  # only the weight needs a gradient
    g_weight, = torch.autograd.grad(frozen, weight)
    torch.testing.assert_close(g_weight, expected[1] / 3.0, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets), reference.detach())
    assert torch.isnan(linear_cross_entropy(hidden, weight, torch.full((37,), -100)))


def test_lm_loss_takes_the_fused_head_only_where_it_is_the_models_forward(monkeypatch):
    """On CPU our own causal LM gets the fused head + loss, with the same loss and parameter gradients as the
    model's logits and the chunked loss; wrappers (PEFT, a replaced ``forward``) and other models are run as they
    are."""
    calls = []
    real = LinearCrossEntropy.forward
    monkeypatch.setattr(LinearCrossEntropy, "forward", staticmethod(lambda *a: calls.append(1) or real(*a)))
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(GPTScratchConfig.from_preset("tiny", vocab_size=97)).train()
    tokens = torch.randint(0, 97, (3, 17))
    batch = {"input_ids": tokens[:, :-1], "shift_labels": tokens[:, 1:].clone()}
    batch["shift_labels"][0, :4] = -100
    loss, count = lm_loss(model, batch)
    assert calls and count == 3 * 16 - 4
    fused = torch.autograd.grad(loss, list(model.parameters()))
    logits = model(input_ids=batch["input_ids"]).logits
    plain = token_cross_entropy(logits.reshape(-1, 97), batch["shift_labels"].reshape(-1))
    torch.testing.assert_close(loss, plain, atol=1e-6, rtol=1e-6)
    for got, want in zip(fused, torch.autograd.grad(plain, list(model.parameters()))):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

    calls.clear()
    original = model.forward
    model.forward = lambda *a, **k: original(*a, **k)  # as Accelerate's mixed precision wraps it
    torch.testing.assert_close(lm_loss(model, batch)[0], plain)
    del model.forward
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["qkv_proj"]))
    torch.testing.assert_close(lm_loss(wrapped, batch)[0], plain)  # LoRA's B starts at zero: same loss
    assert not calls


@pytest.mark.parametrize("product_dtype", [torch.float32, torch.bfloat16])
def test_linear_cross_entropy_when_the_targets_probability_underflows(product_dtype):
    """The fused loss reads the target's log-probability off the softmax; where that probability is below
    float32's range (a confident wrong guess, logit gaps over ~90), the row is recomputed exactly, so the loss stays
    the finite ``F.cross_entropy`` value instead of inf."""
    torch.manual_seed(0)
    hidden = torch.randn(6, 8)
    weight = torch.randn(20, 8)
    weight[3] = hidden[2] * 40  # row 2 scores class 3 far above the rest
    targets = torch.tensor([1, 4, 7, 0, 19, 5])  # row 2's target is not 3: its probability underflows
    logits = (hidden.to(product_dtype) @ weight.to(product_dtype).t()).float()
    reference = F.cross_entropy(logits, targets)
    assert torch.log_softmax(logits, -1)[2, 7] < -150  # the case is real
    loss = linear_cross_entropy(hidden, weight, targets, product_dtype=product_dtype)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, reference, atol=1e-4, rtol=1e-5)
