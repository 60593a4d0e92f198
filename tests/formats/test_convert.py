"""Conversion parity against real oracles: transformers' own GPT2LMHeadModel and the book's GPTModel.

Every parameter of the source model is perturbed with random noise (LayerNorm scales and biases too), so a swapped,
untransposed or dropped tensor changes the logits far beyond the 1e-4 tolerance."""

import argparse
import json

import pytest
import torch
from llms_from_scratch.ch04 import GPTModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from pipelines.formats.book import convert_book
from pipelines.commands import convert, generate
from pipelines.formats.hf_gpt2 import convert_hf_gpt2
from pipelines.runs.tokenizers import train_bpe_tokenizer
from pipelines.errors import UserError

VOCAB = 300
WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in green trees".split()


def perturb_(model, scale=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (40,), generator=g)) for _ in range(200)]
    tok = train_bpe_tokenizer(texts, VOCAB)
    assert len(tok) == VOCAB
    return tok


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory, tokenizer):
    """A random tiny GPT2LMHeadModel with a tokenizer, saved as transformers saves it."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = perturb_(GPT2LMHeadModel(config)).eval()
    folder = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_hf_gpt2_parity(tmp_path, hf_gpt2_dir, tokenizer):
    src, reference = hf_gpt2_dir
    out = convert_hf_gpt2(str(src), tmp_path / "converted")
    assert out == tmp_path / "converted"
    ours = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(ours).__name__ == "GPTScratchForCausalLM"
    assert ours.config.qkv_bias and ours.config.tie_word_embeddings
    assert ours.lm_head.weight.data_ptr() == ours.transformer.tok_emb.weight.data_ptr()
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).logits
        got = ours(ids).logits
    assert expected.abs().max() > 1.0  # the perturbation made the logits large enough to matter
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    prompt = ids[:1, :6]
    mask = torch.ones_like(prompt)
    kwargs = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    theirs = reference.generate(prompt, attention_mask=mask, **kwargs)
    mine = ours.generate(prompt, attention_mask=mask, **kwargs)
    assert mine.shape == (1, 26)
    assert torch.equal(mine, theirs)

    # the tokenizer came along, with pad = eos and the context as its length; the generation defaults set no length
    # (a saved one would override a caller's)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert ours.config.pad_token_id == tok.eos_token_id
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["pad_token_id"] == tok.eos_token_id
    assert "max_new_tokens" not in gen and "max_length" not in gen
    assert tok.model_max_length == ours.config.max_position_embeddings
    assert "local_files_only" not in json.loads((out / "tokenizer_config.json").read_text())


def test_hf_gpt2_untied_and_pytorch_bin(tmp_path):
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=False,
                        bos_token_id=0, eos_token_id=0)
    reference = perturb_(GPT2LMHeadModel(config), seed=1).eval()
    assert not torch.equal(reference.lm_head.weight, reference.transformer.wte.weight)
    src = tmp_path / "src"
    src.mkdir()
    config.save_pretrained(src)
    # the older format: pytorch_model.bin, no tokenizer, keys with the "transformer." prefix
    torch.save(reference.state_dict(), src / "pytorch_model.bin")
    out = convert_hf_gpt2(str(src), tmp_path / "out")
    assert not (out / "tokenizer_config.json").exists()
    ours = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert not ours.config.tie_word_embeddings
    # and the same model saved in several safetensors shards
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="8KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    sharded = AutoModelForCausalLM.from_pretrained(
        convert_hf_gpt2(str(tmp_path / "sharded"), tmp_path / "out_sharded"), trust_remote_code=True
    ).eval()
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(sharded(ids).logits, reference(ids).logits, atol=1e-4, rtol=0)


def test_hf_gpt2_original_openai_key_layout(tmp_path):
    """openai-community/gpt2 stores keys without 'transformer.' and keeps the causal-mask buffers 'h.N.attn.bias'."""
    torch.manual_seed(2)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    reference = perturb_(GPT2LMHeadModel(config), seed=2).eval()
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in reference.state_dict().items()
             if k != "lm_head.weight"}
    for layer in range(2):
        state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
    src = tmp_path / "src"
    src.mkdir()
    config.save_pretrained(src)
    save_file(state, src / "model.safetensors")
    ours = AutoModelForCausalLM.from_pretrained(convert_hf_gpt2(str(src), tmp_path / "out"), trust_remote_code=True)
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(ids).logits, reference(ids).logits, atol=1e-4, rtol=0)


def test_cli_convert_then_generate(tmp_path, hf_gpt2_dir, tokenizer, capsys):
    src, reference = hf_gpt2_dir
    parser = convert.add_arguments(argparse.ArgumentParser())
    out = tmp_path / "cli"
    assert convert.run(parser.parse_args(["--from", "hf-gpt2", "--src", str(src), "--out", str(out)])) == 0
    assert (out / "model.safetensors").is_file()
    assert str(out) in capsys.readouterr().out

    gen_parser = generate.add_arguments(argparse.ArgumentParser())
    args = gen_parser.parse_args(["--model", str(out), "--prompt", "the cat sat", "--max-new-tokens", "10",
                                  "--temperature", "0"])
    assert generate.run(args) == 0  # the CLI's exit code
    text = capsys.readouterr().out.removesuffix("\n")
    prompt = tokenizer("the cat sat", return_tensors="pt")
    expected = reference.generate(**prompt, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert text == tokenizer.decode(expected[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    # sampling with a seed repeats itself
    sample = ["--model", str(out), "--prompt", "the dog", "--temperature", "1.0", "--seed", "7",
              "--max-new-tokens", "8"]
    generate.run(gen_parser.parse_args(sample))
    first = capsys.readouterr().out
    generate.run(gen_parser.parse_args(sample))
    assert capsys.readouterr().out == first

    with pytest.raises(UserError, match="no weights"):
        (tmp_path / "empty_model").mkdir()
        (tmp_path / "empty_model" / "config.json").write_text("{}")
        generate.run(gen_parser.parse_args(["--model", str(tmp_path / "empty_model"), "--prompt", "x"]))
    with pytest.raises(UserError, match="does not exist"):
        generate.run(gen_parser.parse_args(["--model", str(tmp_path / "nowhere"), "--prompt", "x"]))


# ---------------------------------------------------------------------------------------------------------------
# the book's GPTModel
# ---------------------------------------------------------------------------------------------------------------

BOOK_CFG = {"vocab_size": 97, "context_length": 24, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0,
            "qkv_bias": True}


def book_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return perturb_(GPTModel({**BOOK_CFG, **overrides}), seed=seed).eval()


def test_book_parity_pth_with_json_config(tmp_path):
    reference = book_model()
    torch.save(reference.state_dict(), tmp_path / "model.pth")
    (tmp_path / "cfg.json").write_text(json.dumps(BOOK_CFG))
    out = convert_book(tmp_path / "model.pth", str(tmp_path / "cfg.json"), tmp_path / "out")
    ours = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert ours.config.qkv_bias and not ours.config.tie_word_embeddings
    assert ours.config.max_position_embeddings == 24 and ours.config.num_attention_heads == 4
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(ids)
        torch.testing.assert_close(ours(ids).logits, expected, atol=1e-4, rtol=0)
    assert expected.abs().max() > 1.0


def test_book_checkpoint_dict_safetensors_tied_and_inferred_config(tmp_path):
    reference = book_model(seed=1, qkv_bias=False)
    with torch.no_grad():
        reference.out_head.weight.copy_(reference.tok_emb.weight)  # as the book's load_weights_into_gpt does
    state = reference.state_dict()
    # the book's training checkpoint: model and optimizer together
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}}, tmp_path / "ckpt.pth")
    out = convert_book(tmp_path / "ckpt.pth", None, tmp_path / "from_pth")  # sizes inferred from the shapes
    ours = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert not ours.config.qkv_bias and ours.config.tie_word_embeddings
    with safe_open(out / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in set(f.keys())  # the tied head is stored once
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({**BOOK_CFG, "qkv_bias": False}))
    ours_st = AutoModelForCausalLM.from_pretrained(
        convert_book(tmp_path / "model.safetensors", str(tmp_path / "cfg.json"), tmp_path / "from_st"),
        trust_remote_code=True,
    ).eval()
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(ids)
        torch.testing.assert_close(ours(ids).logits, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours_st(ids).logits, expected, atol=1e-4, rtol=0)


def test_book_keys_that_do_not_fit_the_config(tmp_path):
    reference = book_model()
    state = reference.state_dict()
    torch.save(state, tmp_path / "model.pth")
    # three layers expected, two present: the first missing keys are those of layer 2
    (tmp_path / "three.json").write_text(json.dumps({**BOOK_CFG, "n_layers": 3}))
    with pytest.raises(UserError, match=r"missing trf_blocks\.2\.") as info:
        convert_book(tmp_path / "model.pth", str(tmp_path / "three.json"), tmp_path / "out")
    assert "three.json" in str(info.value)
    # wider context in the config than in the weights: the shape mismatch with both numbers
    (tmp_path / "ctx.json").write_text(json.dumps({**BOOK_CFG, "context_length": 32}))
    with pytest.raises(UserError, match=r"pos_emb\.weight: checkpoint \(24, 64\) vs config \(32, 64\)"):
        convert_book(tmp_path / "model.pth", str(tmp_path / "ctx.json"), tmp_path / "out")
    # a key the book's model does not have, and a missing one
    broken = dict(state)
    broken["trf_blocks.0.att.W_gate.weight"] = torch.zeros(2)
    del broken["trf_blocks.1.ff.layers.2.bias"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(UserError, match=r"unexpected trf_blocks\.0\.att\.W_gate\.weight"):
        convert_book(tmp_path / "broken.pth", None, tmp_path / "out")
    del broken["trf_blocks.0.att.W_gate.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(UserError, match=r"missing trf_blocks\.1\.ff\.layers\.2\.bias"):
        convert_book(tmp_path / "broken.pth", None, tmp_path / "out")
    # a config whose qkv_bias contradicts the weights
    (tmp_path / "nobias.json").write_text(json.dumps({**BOOK_CFG, "qkv_bias": False}))
    with pytest.raises(UserError, match=r"qkv_bias=False.*has query/key/value biases"):
        convert_book(tmp_path / "model.pth", str(tmp_path / "nobias.json"), tmp_path / "out")
    # a preset whose sizes differ from the weights
    with pytest.raises(UserError, match=r"tok_emb\.weight: checkpoint \(97, 64\) vs config \(50257, 64\)"):
        convert_book(tmp_path / "model.pth", "tiny", tmp_path / "out")
    # an unknown preset or missing file
    with pytest.raises(UserError, match="neither a preset"):
        convert_book(tmp_path / "model.pth", "gpt2-tiniest", tmp_path / "out")
    with pytest.raises(UserError, match="is not a file"):
        convert_book(tmp_path / "absent.pth", None, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written is left behind


def test_existing_output_needs_overwrite(tmp_path):
    reference = book_model()
    torch.save(reference.state_dict(), tmp_path / "model.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match=r"out.*not empty.*--overwrite"):
        convert_book(tmp_path / "model.pth", None, out)
    assert (out / "keep.txt").read_text() == "user data"
    convert_book(tmp_path / "model.pth", None, out, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary folders left next to the output
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_book(tmp_path / "model.pth", None, empty)  # an existing empty folder is fine
    assert (empty / "config.json").is_file()


def test_hf_source_errors(tmp_path, hf_gpt2_dir):
    src, _ = hf_gpt2_dir
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(UserError, match=r"no_weights has no weights: expected model\.safetensors"):
        convert_hf_gpt2(str(no_weights), tmp_path / "out")
    with pytest.raises(UserError, match="no config.json"):
        convert_hf_gpt2(str(tmp_path), tmp_path / "out2")
    # not a gpt2 checkpoint
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="'llama' checkpoint, not 'gpt2'"):
        convert_hf_gpt2(str(other), tmp_path / "out3")
    # a Hub id while offline (tests run with HF_HUB_OFFLINE=1)
    with pytest.raises(UserError, match="needs the network.*local folder"):
        convert_hf_gpt2("gpt-scratch-tests/no-such-model", tmp_path / "out4")
    # the source itself as the output
    with pytest.raises(UserError, match="source folder itself"):
        convert_hf_gpt2(str(src), src, overwrite=True)
    # a missing tensor in an HF checkpoint is named
    state = {}
    with safe_open(src / "model.safetensors", "pt") as f:
        for key in f.keys():
            state[key] = f.get_tensor(key)
    del state["transformer.h.1.mlp.c_fc.bias"]
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((src / "config.json").read_text())
    save_file(state, partial / "model.safetensors")
    with pytest.raises(UserError, match=r"missing transformer\.blocks\.1\.ff\.fc_in\.bias"):
        convert_hf_gpt2(str(partial), tmp_path / "out5")
