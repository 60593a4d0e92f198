"""What ``--mixed-precision`` means on this machine, and the CPU's bf16 path: the one place that knows precision.

``auto`` (every training workflow's default) is bf16 mixed precision where the hardware computes bf16 products
natively, float32 elsewhere:

* a CUDA GPU with bf16 (Ampere and newer);
* a CPU with AVX512-BF16 or AMX-BF16 (AMD Zen 4 and newer, Intel Cooper Lake / Sapphire Rapids and newer), where
  PyTorch's oneDNN bf16 products run several times faster than float32 ones (2048 x 768 x 3072 on 2 Zen 4 cores:
  655 against 133 GFLOP/s; ``BENCHMARKS.md``).  litgpt picks bf16-mixed on a CPU as well.

``no`` is float32 throughout; ``bf16`` is bf16 mixed precision on any device; ``fp16`` needs a CUDA GPU.  Mixed
precision keeps float32 weights and optimizer state and computes the products in bf16 under ``torch.autocast``.

**How it runs.**  On a GPU, Accelerate autocasts (its forward wrapper, and its gradient scaler for fp16).  On a CPU,
the Trainer autocasts the step itself (:func:`autocast`) and the model's forward stays its own, so that
``pipelines.training.losses.lm_loss`` still fuses the head and the loss (``LinearCrossEntropy``, bf16 products with a
float32 softmax).  Under CPU bf16 the attention product runs in float32 (:func:`use_cpu_bf16_attention`, a function
registered with transformers' attention interface, set on the model for the run and taken off after it): the CPU
flash-attention kernel's bf16 backward took 2.5x its float32 time (demo shape: 48.7 against 19.6 ms a step).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from ..errors import UserError

CHOICES = ("auto", "no", "bf16", "fp16")
CPU_BF16_ATTENTION = "gpt_scratch_cpu_bf16_sdpa"  # the name it is registered under with transformers


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX-BF16), read from the kernel's
    CPU flags (``/proc/cpuinfo``; ``cpuinfo`` text for a test).  False where there is no such file."""
    if cpuinfo is None:
        return _this_cpu_has_native_bf16()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


@functools.cache
def _this_cpu_has_native_bf16() -> bool:
    """:func:`cpu_has_native_bf16` of this machine, read once per process (the Accelerator and the Trainer ask)."""
    try:
        return cpu_has_native_bf16(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return False


def resolve(requested: str, device_type: str, cpu_bf16: bool | None = None) -> str:
    """The precision a run uses: ``"no"``, ``"bf16"`` or ``"fp16"``, from ``--mixed-precision`` and the device
    (``"cuda"``, ``"cpu"``, ``"mps"``).  ``cpu_bf16`` overrides the CPU check (tests)."""
    if requested not in CHOICES:
        raise UserError(f"unknown mixed precision '{requested}': choose from {', '.join(CHOICES)}")
    if requested == "fp16" and device_type != "cuda":
        raise UserError("mixed_precision fp16 needs a CUDA GPU: use --mixed-precision no (or bf16) on this machine")
    if requested != "auto":
        return requested
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device_type == "cpu":
        return "bf16" if (cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16) else "no"
    return "no"


def accelerate_precision(resolved: str, device_type: str) -> str:
    """What Accelerate is told: the precision on a GPU; ``"no"`` on a CPU, where :func:`autocast` does it."""
    return resolved if device_type == "cuda" else "no"


def autocast(accelerator, resolved: str):
    """The context a training or evaluation step runs in: Accelerate's autocast on a GPU, bf16 autocast on a CPU
    when the run is bf16, nothing otherwise."""
    if accelerator.device.type == "cpu":
        if resolved == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    return accelerator.autocast()


def _cpu_bf16_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, with bf16 queries, keys and values on a CPU computed in float32 (outside
    autocast) and the result handed back in bf16; anything else goes to SDPA as it is."""
    if query.device.type != "cpu" or query.dtype != torch.bfloat16:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        context, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                                  **kwargs)
    return context.to(torch.bfloat16), weights


@contextlib.contextmanager
def use_cpu_bf16_attention(model, resolved: str, device_type: str):
    """For the block: float32 attention products under CPU bf16 autocast, where the model uses SDPA (our model and
    any transformers model that reads the attention interface).  Elsewhere, and afterwards, the model's own."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if resolved != "bf16" or device_type != "cpu" or before != "sdpa" or not hasattr(model, "set_attn_implementation"):
        yield
        return

    AttentionInterface.register(CPU_BF16_ATTENTION, _cpu_bf16_sdpa)
    # and SDPA's mask under the same name: transformers' mask builder makes no mask for a name it does not know
    AttentionMaskInterface.register(CPU_BF16_ATTENTION, sdpa_mask)
    model.set_attn_implementation(CPU_BF16_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
