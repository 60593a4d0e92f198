"""How much arithmetic training does: FLOPs per token, the accelerator's peak, and model FLOPs utilisation (MFU).

MFU is ``tokens/s x FLOPs per token / (peak FLOP/s x devices)`` (PaLM, Chowdhery et al., 2022, appendix B): the
training loop reports it next to tokens/s, and the benchmarks use the same numbers.
"""

from __future__ import annotations

import torch

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
