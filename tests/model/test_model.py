"""The model against the contracts in GUIDE.md: sizes, aliases, errors, generation, heads, saving, remote code,
pipelines, Trainer and gradient checkpointing.  Tiny configs throughout; every oracle is independent of the code path
under test (a manual argmax loop, an unpadded run, plain cross-entropy, a clean interpreter)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    Trainer,
    TrainingArguments,
    pipeline,
)

from modeling_gpt_scratch import (
    GPTScratchConfig,
    GPTScratchForCausalLM,
    GPTScratchForSequenceClassification,
)
from pipelines.runs.folders import make_generation_config
from pipelines.runs.tokenizers import train_bpe_tokenizer

VOCAB = 128


def tiny_config(**overrides):
    cfg = dict(
        vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    cfg.update(overrides)
    return GPTScratchConfig(**cfg)


def tiny_lm(seed=0, **overrides):
    torch.manual_seed(seed)
    model = GPTScratchForCausalLM(tiny_config(**overrides)).eval()
    # larger-than-init weights give peaked, input-dependent distributions (no near-ties between greedy paths)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    return model


def ids_between(low, high, *shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g)


# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, expected", [("gpt2-small", 124_439_808), ("gpt2-small-untied", 163_009_536)]
)
def test_preset_parameter_counts(preset, expected):
    with torch.device("meta"):
        model = GPTScratchForCausalLM(GPTScratchConfig.from_preset(preset))
    # parameters() yields a shared (tied) tensor once
    assert sum(p.numel() for p in model.parameters()) == expected


def test_book_aliases():
    book_cfg = {"vocab_size": 50257, "context_length": 256, "emb_dim": 96, "n_heads": 6, "n_layers": 3,
                "drop_rate": 0.1, "qkv_bias": False}
    cfg = GPTScratchConfig(**book_cfg)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.max_position_embeddings) == (
        96, 3, 6, 256)
    assert cfg.hidden_dropout == cfg.attention_dropout == 0.1
    assert cfg.intermediate_size == 4 * 96 and cfg.qkv_bias is False
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.context_length) == (96, 3, 6, 256)
    cfg.n_layers = 5  # alias writes reach the standard attribute
    assert cfg.num_hidden_layers == 5
    saved = cfg.to_dict()
    assert saved["hidden_size"] == 96 and "emb_dim" not in saved


def test_heads_must_divide_hidden_size():
    with pytest.raises(ValueError, match=r"hidden_size \(30\).*num_attention_heads \(4\)"):
        GPTScratchConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"\(30\).*\(4\)"):
        GPTScratchConfig(emb_dim=30, n_heads=4)


def test_too_long_input_names_the_limit():
    model = tiny_lm(max_position_embeddings=16)
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly the limit is fine
    with pytest.raises(ValueError, match=r"max_position_embeddings=16") as info:
        model(torch.zeros(1, 17, dtype=torch.long))
    assert not isinstance(info.value, IndexError)


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------


def test_kv_cache_generation_matches_no_cache_and_manual_loop():
    model = tiny_lm()
    prompt = ids_between(1, VOCAB, 1, 5)
    kwargs = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 25)
    assert torch.equal(cached, uncached)
    # independent oracle: argmax over a full forward pass per step (eos suppressed as min_new_tokens does)
    seq = prompt
    with torch.no_grad():
        for _ in range(20):
            logits = model(seq, use_cache=False).logits[:, -1]
            logits[:, model.config.eos_token_id] = float("-inf")
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)


@pytest.mark.parametrize("name", ["past_key_values", "cache"])  # transformers <= 5.23 and >= 5.24 spell it so
def test_cache_argument_under_either_name(name):
    from transformers.cache_utils import DynamicCache

    model = tiny_lm()
    ids = ids_between(1, VOCAB, 2, 9)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        cache = DynamicCache(config=model.config)
        first = model(ids[:, :-1], use_cache=True, **{name: cache})
        assert first.past_key_values is cache and cache.get_seq_length() == 8
        step = model(ids[:, -1:], use_cache=True, **{name: cache}).logits[:, -1]
    assert cache.get_seq_length() == 9
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(ids, past_key_values=cache, cache=DynamicCache(config=model.config))


def test_batched_left_padding_matches_each_prompt_alone():
    model = tiny_lm()
    pad = model.config.pad_token_id
    prompts = [ids_between(1, VOCAB, 3, seed=2), ids_between(1, VOCAB, 7, seed=3), ids_between(1, VOCAB, 5, seed=4)]
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p):] = p
        attention_mask[row, width - len(p):] = 1
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=pad)
    batched = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), **kwargs)
        assert torch.equal(batched[row, width:], alone[0, len(p):]), f"prompt {row} (length {len(p)}) differs"
    # and the first-step logits agree numerically, not only their argmax
    with torch.no_grad():
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[:, -1]
        for row, p in enumerate(prompts):
            torch.testing.assert_close(logits[row], model(p[None]).logits[0, -1], atol=1e-5, rtol=1e-5)


def test_sampling_with_seed_is_reproducible():
    model = tiny_lm()
    prompt = ids_between(1, VOCAB, 1, 4)
    kwargs = dict(max_new_tokens=20, min_new_tokens=20, do_sample=True, top_k=20, temperature=1.5)
    torch.manual_seed(123)
    first = model.generate(prompt, **kwargs)
    torch.manual_seed(123)
    second = model.generate(prompt, **kwargs)
    torch.manual_seed(124)
    other = model.generate(prompt, **kwargs)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


# ---------------------------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------------------------


def test_causal_lm_loss_shifts_and_ignores_minus_100():
    model = tiny_lm()
    input_ids = ids_between(0, VOCAB, 2, 10)
    labels = input_ids.clone()
    labels[0, :4] = -100
    labels[1, 7:] = -100
    with torch.no_grad():
        out = model(input_ids, labels=labels)
    logits = out.logits[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, expected)
    # a label under the mask cannot matter, a real one does
    with torch.no_grad():
        labels3 = labels.clone()
        labels3[0, 5] = (labels3[0, 5] + 1) % VOCAB
        assert not torch.equal(model(input_ids, labels=labels3).loss, out.loss)


def test_loss_with_num_items_in_batch_matches_full_batch_mean():
    """Gradient accumulation as Trainer does it: each micro-batch sums its token losses and divides by the token
    count of the whole accumulated batch (counted over labels[..., 1:], as Trainer does for causal LMs)."""
    model = tiny_lm()
    ids = ids_between(0, VOCAB, 4, 12)
    labels = ids.clone()
    labels[0, :9] = -100  # micro-batches with very different numbers of real targets
    labels[3, 2:] = -100
    with torch.no_grad():
        full = model(ids, labels=labels).loss
        n_items = labels[:, 1:].ne(-100).sum()
        parts = [model(ids[i : i + 2], labels=labels[i : i + 2], num_items_in_batch=n_items).loss for i in (0, 2)]
    torch.testing.assert_close(sum(parts), full)
    assert model.loss_type == "ForCausalLM"  # makes Trainer count over labels[..., 1:]


def test_sequence_classification_pools_last_real_token_under_right_padding():
    torch.manual_seed(0)
    model = GPTScratchForSequenceClassification(tiny_config(num_labels=3)).eval()
    seqs = [ids_between(1, VOCAB, 4, seed=5), ids_between(1, VOCAB, 9, seed=6)]
    width = 9
    input_ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, s in enumerate(seqs):
        input_ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    with torch.no_grad():
        batched = model(input_ids, attention_mask=mask).logits
        assert batched.shape == (2, 3)
        for row, s in enumerate(seqs):
            torch.testing.assert_close(batched[row], model(s[None]).logits[0], atol=1e-5, rtol=1e-5)
        # without an attention mask the pad id (0) marks the padding
        torch.testing.assert_close(model(input_ids).logits, batched, atol=1e-5, rtol=1e-5)
        labels = torch.tensor([2, 0])
        torch.testing.assert_close(model(input_ids, attention_mask=mask, labels=labels).loss,
                                   F.cross_entropy(batched, labels))


# ---------------------------------------------------------------------------------------------------------------
# saving, remote code, pipelines
# ---------------------------------------------------------------------------------------------------------------


def test_save_pretrained_writes_code_and_stores_tied_weights_once(tmp_path):
    model = tiny_lm()
    assert model.lm_head.weight is model.transformer.tok_emb.weight
    model.save_pretrained(tmp_path)
    names = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_gpt_scratch.py", "modeling_gpt_scratch.py"} <= names
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_gpt_scratch.GPTScratchConfig"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt_scratch.GPTScratchForCausalLM"
    assert config["auto_map"]["AutoModelForSequenceClassification"].endswith("GPTScratchForSequenceClassification")
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "transformer.tok_emb.weight" in keys and "lm_head.weight" not in keys
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.tok_emb.weight.data_ptr()
    x = ids_between(0, VOCAB, 2, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)


def test_untied_model_round_trips(tmp_path):
    model = tiny_lm(tie_word_embeddings=False, qkv_bias=False)
    assert model.lm_head.weight is not model.transformer.tok_emb.weight
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "lm_head.weight" in set(f.keys())
    loaded = GPTScratchForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight.data_ptr() != loaded.transformer.tok_emb.weight.data_ptr()
    x = ids_between(0, VOCAB, 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)


CLEAN_LOADER = textwrap.dedent(
    """
    import sys

    class Blocker:  # this package must not be importable: the folders have to carry their own code
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_gpt_scratch", "pipelines"):
                raise ImportError("blocked: " + name)
            return None

    sys.meta_path.insert(0, Blocker())
    sys.modules["modeling_gpt_scratch"] = None
    try:
        import modeling_gpt_scratch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the package is importable: the test would prove nothing")

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    ref = torch.load("reference.pt")
    lm = AutoModelForCausalLM.from_pretrained("lm", trust_remote_code=True).eval()
    clf = AutoModelForSequenceClassification.from_pretrained("clf", trust_remote_code=True).eval()
    for model in (lm, clf):
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        torch.testing.assert_close(lm(ref["ids"]).logits, ref["lm"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(clf(ref["ids"]).logits, ref["clf"], atol=1e-6, rtol=1e-6)
    assert clf.config.id2label[1] == "spam"
    print("REMOTE-CODE-OK", type(lm).__name__, type(clf).__name__)
    """
)


@pytest.mark.slow
def test_remote_code_loads_in_clean_interpreter(tmp_path):
    lm = tiny_lm()
    torch.manual_seed(1)
    clf = GPTScratchForSequenceClassification(
        tiny_config(num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1})
    ).eval()
    ids = ids_between(1, VOCAB, 2, 6)
    with torch.no_grad():
        torch.save({"ids": ids, "lm": lm(ids).logits, "clf": clf(ids).logits}, tmp_path / "reference.pt")
    lm.save_pretrained(tmp_path / "lm")
    clf.save_pretrained(tmp_path / "clf")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN_LOADER], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE-CODE-OK GPTScratchForCausalLM GPTScratchForSequenceClassification" in result.stdout


@pytest.fixture(scope="module")
def tiny_tokenizer():
    words = "the cat sat on a mat and the dog ran to the park while birds sang in green trees".split()
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[i] for i in torch.randint(0, len(words), (40,), generator=g)) for _ in range(200)]
    return train_bpe_tokenizer(texts, 300)


@pytest.mark.slow
def test_text_generation_pipeline(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    assert len(tok) == 300
    model = tiny_lm(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                    pad_token_id=tok.pad_token_id)
    model.generation_config = make_generation_config(model.config)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path), trust_remote_code=True, device="cpu")
    out = generator("the cat sat", max_new_tokens=8, do_sample=False)
    text = out[0]["generated_text"]
    assert text.startswith("the cat sat")
    expected = model.generate(**tok("the cat sat", return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert text == tok.decode(expected[0], skip_special_tokens=True)
    # the saved generation config sets no length, which would override a caller's max_length (lm-eval)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert "max_new_tokens" not in saved and "max_length" not in saved
    batch = generator(["the dog", "birds sang in green trees and"], max_new_tokens=4, do_sample=False, batch_size=2)
    assert len(batch) == 2


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------


class RepeatDataset(torch.utils.data.Dataset):
    """Sequences that repeat a short pattern: easy to learn, so the loss must fall within a few steps."""

    def __init__(self, n=64, length=32):
        g = torch.Generator().manual_seed(0)
        patterns = [torch.randint(1, VOCAB, (4,), generator=g) for _ in range(4)]
        self.items = []
        for i in range(n):
            ids = patterns[i % len(patterns)].repeat(length // 4)
            self.items.append({"input_ids": ids, "labels": ids.clone()})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.slow
def test_trainer_loss_falls(tmp_path):
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config())
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=60, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        learning_rate=5e-3, warmup_steps=0, logging_steps=10, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RepeatDataset())
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) >= 4
    # an untrained model starts near ln(vocab) = 4.85; the first log averages steps 1-5, which must be near it
    assert 3.0 < losses[0] < 6.0, losses
    assert losses[-1] < 0.3 * losses[0], losses


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(tiny_config()).train()
    ids = ids_between(0, VOCAB, 2, 16)

    calls = []
    for block in model.transformer.blocks:
        # a hook at the start of the checkpointed forward (hooks on the block itself stay outside the checkpoint,
        # and non-reentrant recomputation may stop early, before a hook at the end)
        block.norm1.register_forward_pre_hook(lambda *args: calls.append(1))

    def grads():
        model.zero_grad()
        calls.clear()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    plain, plain_calls = grads()
    model.activation_checkpointing_enable()  # v5's name for gradient_checkpointing_enable
    assert model.is_activation_checkpointing
    checkpointed, ckpt_calls = grads()
    # recomputation during backward runs each block a second time: proof that checkpointing is active
    assert plain_calls == len(model.transformer.blocks)
    assert ckpt_calls == 2 * len(model.transformer.blocks)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    # asking for a cache while checkpointing must not corrupt the recomputation in backward
    model.zero_grad()
    model(ids, labels=ids, use_cache=True).loss.backward()
    emb = "transformer.tok_emb.weight"
    torch.testing.assert_close(model.transformer.tok_emb.weight.grad, plain[emb], atol=1e-6, rtol=1e-5)


def test_the_model_package_imports_only_torch_transformers_and_itself():
    """The files the Hub receives run where gpt-scratch is not installed: no import of pipelines or anything else."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "modeling_gpt_scratch"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]] if node.level == 0 else ["modeling_gpt_scratch"]
            else:
                continue
            for root in roots:
                assert root in {"torch", "transformers", "inspect", "warnings", "math", "modeling_gpt_scratch"}, (
                    f"{path.name} imports {root}"
                )
