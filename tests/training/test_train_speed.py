"""The training loop's speed features, on CPU: the FLOP count behind MFU, torch.compile and its fallback.

The GPU-only parts (bf16 autocast, TF32, fused AdamW, flash attention) are switched on by device type in
``pipelines/train_loop.py``; what can run here is checked here.
"""

import functools
import json

import pytest
import torch

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification
from pipelines.training import trainer as throughput
from pipelines.cli import main
from tests.commands.test_pretrain import tiny_flags, write_corpus


def small_config(**overrides):
    cfg = dict(vocab_size=500, max_position_embeddings=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
    cfg.update(overrides)
    return GPTScratchConfig(**cfg)


def multiplying_params(cfg, head: bool) -> int:
    """Parameters that take part in matrix products and elementwise arithmetic, counted from the architecture."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    qkv = d * 3 * d + (3 * d if cfg.qkv_bias else 0)
    block = qkv + d * d + d + d * f + f + f * d + d + 4 * d  # attention, MLP, two LayerNorms
    return L * block + 2 * d + (cfg.vocab_size * d if head else 0)


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_counts_the_head_once_and_no_lookup_table(tied):
    cfg = small_config(tie_word_embeddings=tied, qkv_bias=not tied)
    model = GPTScratchForCausalLM(cfg)
    expected = 6 * multiplying_params(cfg, head=True) + 12 * cfg.num_hidden_layers * cfg.hidden_size * 64
    assert throughput.flops_per_token(model, 64) == expected


def test_flops_per_token_of_a_classifier_has_no_vocabulary_product():
    cfg = small_config(num_labels=2)
    model = GPTScratchForSequenceClassification(cfg)
    score = cfg.hidden_size * 2 + 2
    expected = 6 * (multiplying_params(cfg, head=False) + score) + 12 * cfg.num_hidden_layers * cfg.hidden_size * 16
    assert throughput.flops_per_token(model, 16) == expected


def test_peak_flops_names_match_cuda_device_names():
    # torch.cuda.get_device_name spells the H100 SXM board "NVIDIA H100 80GB HBM3"
    def peak(name):
        return next(v for k, v in throughput.PEAK_BF16_FLOPS.items() if k in name)

    assert peak("NVIDIA H100 80GB HBM3") == 989e12
    assert peak("NVIDIA H100 PCIe") == 756e12
    assert peak("NVIDIA H200") == 989e12
    assert peak("NVIDIA GeForce RTX 3090") == 71e12


def test_model_compiles_as_one_graph_forward_and_backward():
    """The model claims ``_can_compile_fullgraph``: Dynamo must trace training and decoding without a graph break."""
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(small_config(hidden_dropout=0.0, attention_dropout=0.0))
    ids = torch.randint(0, 500, (2, 16))
    eager = model(ids, labels=ids)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    out = compiled(ids, labels=ids)
    torch.testing.assert_close(out.loss, eager.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=6, words_per_doc=200)


def losses(out):
    history = json.loads((out / "metrics.json").read_text())["history"]
    return [h["train_loss"] for h in history if h.get("train_loss") is not None and not h.get("eval")]


def test_compile_trains_like_eager_and_falls_back_when_the_compiler_fails(corpus, tmp_path, monkeypatch):
    extra = {"--max-steps": 12, "--eval-every": 0, "--log-every": 2, "--sample-tokens": 0}
    eager = tmp_path / "eager"
    assert main(["pretrain", *tiny_flags(corpus, eager, **extra)]) == 0

    real_compile = torch.compile
    calls = []

    def failing_backend(graph_module, example_inputs):
        calls.append(len(example_inputs))
        raise RuntimeError("no compiler on this machine")

    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend=failing_backend))
    broken = tmp_path / "broken"
    assert main(["pretrain", *tiny_flags(corpus, broken, **extra), "--compile"]) == 0
    assert calls, "the compiler was never asked: --compile did not compile"
    assert losses(broken) == pytest.approx(losses(eager), rel=1e-6)

    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend="eager"))
    traced = tmp_path / "traced"
    assert main(["pretrain", *tiny_flags(corpus, traced, **extra), "--compile"]) == 0
    assert losses(traced) == pytest.approx(losses(eager), rel=1e-5)
    assert len(losses(eager)) == 6


def peer_and_ours(seed=0):
    """transformers' GPT2LMHeadModel and ours with the same weights (through the converter), dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipelines.formats.weights import build_model
    from pipelines.formats.hf_gpt2 import config_from_hf_gpt2, map_hf_gpt2_state_dict

    torch.manual_seed(seed)
    hf = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, activation_function="gelu_new")
    peer = GPT2LMHeadModel(hf)
    state, _ = map_hf_gpt2_state_dict({k: v.clone() for k, v in peer.state_dict().items()})  # no shared storage
    ours = build_model(config_from_hf_gpt2(hf.to_dict(), "test"), state, "test")
    return peer.train(), ours.train()


@pytest.mark.parametrize("batch", [2, 8])
def test_training_curve_matches_transformers_gpt2(batch):
    """The speed paths of training (chunked cross-entropy, shifted labels, fused GELU and attention) change no
    result: the same weights and batches give transformers' GPT-2 loss curve, step by step, under AdamW."""
    peer, ours = peer_and_ours()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 300, (batch, 16), generator=g) for _ in range(3)] * 6  # seen again: loss falls
    curves = []
    for model in (peer, ours):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        curve = []
        for ids in batches:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            curve.append(loss.item())
        curves.append(curve)
    assert curves[1][-1] < curves[1][0] - 0.5  # it learned: the comparison covers real updates
    assert curves[1] == pytest.approx(curves[0], rel=1e-4, abs=1e-5)
