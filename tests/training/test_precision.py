"""``pipelines/precision.py``: what ``--mixed-precision`` resolves to, the CPU bf16 path (the fused head + loss in
bf16, float32 attention products) against plain autocast and float32, and the Trainer running it."""

import json

import pytest
import torch
import torch.nn.functional as F

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
from pipelines.training import losses, precision
from pipelines.errors import UserError
from pipelines.training.losses import LinearCrossEntropy, linear_cross_entropy, lm_loss

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
    ("fpu avx512f amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
    ("fpu sse avx2 fma", False),
    ("fpu avx512f avx512bw", False),
])
def test_cpu_bf16_is_read_from_the_cpu_flags(flags, expected):
    text = f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert precision.cpu_has_native_bf16(text) is expected
    assert precision.cpu_has_native_bf16("processor : 0\n") is False  # no flags line (another OS's format)


def test_resolve_auto_explicit_and_bad_choices():
    assert precision.resolve("auto", "cpu", cpu_bf16=True) == "bf16"
    assert precision.resolve("auto", "cpu", cpu_bf16=False) == "no"
    assert precision.resolve("auto", "mps") == "no"
    for explicit in ("no", "bf16"):  # an explicit choice beats the machine's default, both ways
        assert precision.resolve(explicit, "cpu", cpu_bf16=explicit == "no") == explicit
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(UserError, match="unknown mixed precision 'half'"):
        precision.resolve("half", "cpu")
    assert precision.accelerate_precision("bf16", "cpu") == "no"  # the Trainer autocasts a CPU step itself
    assert precision.accelerate_precision("bf16", "cuda") == "bf16"


@pytest.mark.parametrize("chunk_rows", [3, 1000])
def test_linear_cross_entropy_in_bf16_equals_bf16_products_then_float32_cross_entropy(monkeypatch, chunk_rows):
    """``product_dtype=bf16``: the same bf16 products autocast would make, a float32 log-softmax; the loss and both
    float32 gradients against autograd through that same computation."""
    monkeypatch.setattr(LinearCrossEntropy, "CHUNK_BYTES", chunk_rows * 64 * 4)
    monkeypatch.setattr(LinearCrossEntropy, "MAX_CHUNKS", 100)
    torch.manual_seed(0)
    hidden = torch.randn(29, 32, requires_grad=True)
    weight = torch.randn(64, 32, requires_grad=True)
    targets = torch.randint(0, 64, (29,))
    targets[[2, 11]] = -100
    logits = (hidden.bfloat16() @ weight.bfloat16().t()).float()
    reference = F.cross_entropy(logits, targets, ignore_index=-100)
    loss = linear_cross_entropy(hidden, weight, targets, product_dtype=torch.bfloat16)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(loss * 3.0, (hidden, weight))
    references = torch.autograd.grad(reference * 3.0, (hidden, weight))
    for grad, ref in zip(grads, references):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, ref, atol=2e-2, rtol=2e-2)  # bf16 products of the same scores
    # and it is not the float32 loss under another name: the two differ by the bf16 rounding
    assert (linear_cross_entropy(hidden, weight, targets) - loss).abs() > 0


def _tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = GPTScratchConfig.from_preset("tiny", vocab_size=101, hidden_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, max_position_embeddings=32, qkv_bias=False,
                                          **overrides)
    return GPTScratchForCausalLM(config).train()


def test_lm_loss_under_cpu_bf16_autocast_fuses_the_head_and_matches_the_unfused_loss(monkeypatch):
    model = _tiny_model()
    tokens = torch.randint(0, 101, (3, 21))
    batch = {"input_ids": tokens[:, :-1], "shift_labels": tokens[:, 1:]}
    calls = []
    fused = LinearCrossEntropy.apply
    monkeypatch.setattr(LinearCrossEntropy, "apply", lambda *a: calls.append(a[-1]) or fused(*a))
    with torch.autocast(**BF16):
        loss, _ = lm_loss(model, batch)
    assert calls == [torch.bfloat16]  # the fused path, with bf16 products
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    with torch.autocast(**BF16):  # the plain path: autocast's bf16 logits, then the loss in float32
        logits = model(input_ids=batch["input_ids"]).logits
        plain = F.cross_entropy(logits.float().reshape(-1, 101), batch["shift_labels"].reshape(-1))
    plain_grads = torch.autograd.grad(plain, [p for p in model.parameters()])
    torch.testing.assert_close(loss, plain, atol=2e-2, rtol=0)
    for grad, ref in zip(grads, plain_grads):
        assert grad.dtype == torch.float32
        assert (grad - ref).norm() <= 0.05 * ref.norm() + 1e-6
    assert lm_loss(model, batch)[0].item() == pytest.approx(loss.item(), abs=2e-2)  # float32 agrees too


def test_cpu_bf16_attention_is_float32_products_for_the_run_only():
    model = _tiny_model()
    tokens = torch.randint(0, 101, (2, 17))
    mask = torch.ones_like(tokens)
    mask[0, :4] = 0  # left padding: the mask reaches the attention function
    with torch.no_grad():
        float32 = model(input_ids=tokens, attention_mask=mask).logits
        with torch.autocast(**BF16):
            sdpa_bf16 = model(input_ids=tokens, attention_mask=mask).logits.float()
    with precision.use_cpu_bf16_attention(model, "bf16", "cpu"):
        assert model.config._attn_implementation == precision.CPU_BF16_ATTENTION
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=tokens, attention_mask=mask).logits, float32)  # fp32: as is
            with torch.autocast(**BF16):
                ours = model(input_ids=tokens, attention_mask=mask).logits.float()
        with torch.autocast(**BF16):  # gradients flow through the float32 product
            model(input_ids=tokens).logits.float().sum().backward()
    assert model.config._attn_implementation == "sdpa"  # taken off after the block
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # closer to float32 than autocast's bf16 attention is, or as close
    assert (ours - float32).abs().max() <= (sdpa_bf16 - float32).abs().max() * 1.5 + 1e-3
    for resolved, device in (("no", "cpu"), ("bf16", "cuda")):  # nothing changes elsewhere
        with precision.use_cpu_bf16_attention(model, resolved, device):
            assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    with precision.use_cpu_bf16_attention(model, "bf16", "cpu"):  # a user's explicit choice is kept
        assert model.config._attn_implementation == "eager"


def test_the_trainer_runs_cpu_bf16_and_records_it(tmp_path, monkeypatch):
    """``mixed_precision="auto"`` on a CPU with bf16: the step runs under bf16 autocast with the fused head (the
    model's forward not wrapped by Accelerate), the loss falls, the run records ``bf16``, and the saved model
    uses plain SDPA again.  On a CPU without it, ``auto`` is float32."""
    from pipelines.settings import TrainSettings
    from pipelines.training.trainer import Trainer

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    seen = []

    def loss_fn(model, batch):
        seen.append((torch.is_autocast_enabled("cpu"), model.config._attn_implementation))
        return lm_loss(model, batch)

    torch.manual_seed(0)
    rows = torch.randint(0, 101, (16, 17))
    data = [{"input_ids": r[:-1], "shift_labels": r[1:]} for r in rows]
    collate = lambda items: {k: torch.stack([i[k] for i in items]) for k in items[0]}  # noqa: E731
    model = _tiny_model()
    cfg = TrainSettings(batch_size=4, max_steps=12, learning_rate=3e-3, eval_every=0, log_every=4, checkpoint_every=0,
                      mixed_precision="auto", trackers=[])
    trainer = Trainer(model, cfg, tmp_path / "run", data, data[:4], collate_fn=collate, loss_fn=loss_fn)
    assert trainer.accelerator.mixed_precision == "no" and trainer.precision == "bf16"
    assert losses._head_fusable(trainer.model, rows[:1])  # Accelerate left the forward alone
    result = trainer.fit()
    assert result.final["mixed_precision"] == "bf16"
    assert (True, precision.CPU_BF16_ATTENTION) in seen
    assert result.final["val_loss"] < result.final["initial_val_loss"] - 0.1
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path / "saved")
    assert precision.CPU_BF16_ATTENTION not in (tmp_path / "saved" / "config.json").read_text()
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["dtype"] == "float32"

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    plain = Trainer(_tiny_model(), cfg, tmp_path / "run2", data, collate_fn=collate, loss_fn=lm_loss)
    assert plain.precision == "no"
