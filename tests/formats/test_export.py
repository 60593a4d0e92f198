"""Export to plain transformers GPT-2 (``gpt-scratch convert --to hf-gpt2``), checked against transformers' own classes.

Every parameter is perturbed with noise (LayerNorms and biases too), so a swapped, untransposed or dropped tensor moves
the logits far beyond the 1e-4 tolerance."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification
from pipelines.formats.hf_gpt2 import convert_hf_gpt2
from pipelines.runs.tokenizers import train_bpe_tokenizer
from pipelines.cli import main as cli_main
from pipelines.errors import UserError
from pipelines.formats.gpt2_export import export_hf_gpt2
from tests.formats.test_convert import VOCAB, WORDS, perturb_

EXPORTED_FILES = {
    "config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"
}


@pytest.fixture(scope="module")
def tokenizer():
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (40,), generator=g)) for _ in range(200)]
    return train_bpe_tokenizer(texts, VOCAB)


def tiny_config(tokenizer, **overrides):
    eos = tokenizer.eos_token_id
    return GPTScratchConfig(
        vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **overrides,
    )


def save_run(model, tokenizer, folder):
    """A run folder as the workflows write it: the model with its code, the tokenizer, and files of the run."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "metrics.json").write_text("{}")
    return folder


def safetensors_keys(folder):
    with safe_open(folder / "model.safetensors", "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize(
    "variant", [dict(qkv_bias=True, tie_word_embeddings=True), dict(qkv_bias=False, tie_word_embeddings=False)],
    ids=["tied+qkv-bias", "untied+no-qkv-bias"],
)
def test_causal_lm_exports_to_plain_gpt2(tmp_path, tokenizer, variant):
    torch.manual_seed(0)
    ours = perturb_(GPTScratchForCausalLM(tiny_config(tokenizer, **variant))).eval()
    src = save_run(ours, tokenizer, tmp_path / "run")
    result = export_hf_gpt2(src, tmp_path / "gpt2")
    out = result.out
    assert out == tmp_path / "gpt2" and result.architecture == "GPT2LMHeadModel" and result.max_abs_diff <= 1e-4
    assert {p.name for p in out.iterdir()} == EXPORTED_FILES  # no code, no run files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["activation_function"] == "gelu_new"
    assert config["n_ctx"] == config["n_positions"] == 64  # as OpenAI's config.json: llama.cpp's converter reads it
    assert config["tie_word_embeddings"] is variant["tie_word_embeddings"]
    assert ("lm_head.weight" in safetensors_keys(out)) is not variant["tie_word_embeddings"]
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2TokenizerFast"

    theirs = GPT2LMHeadModel.from_pretrained(out).eval()  # transformers' own class, no remote code
    tied = theirs.lm_head.weight.data_ptr() == theirs.transformer.wte.weight.data_ptr()
    assert tied is variant["tie_word_embeddings"]
    if not variant["qkv_bias"]:
        assert all(not torch.count_nonzero(block.attn.c_attn.bias) for block in theirs.transformer.h)
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ours(ids).logits
        got = theirs(ids).logits
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok("the cat sat on", return_tensors="pt")
    assert prompt["input_ids"].tolist() == tokenizer("the cat sat on", return_tensors="pt")["input_ids"].tolist()
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    mine = ours.generate(**prompt, **kwargs)
    assert torch.equal(theirs.generate(**prompt, **kwargs), mine)
    assert mine.shape[1] == prompt["input_ids"].shape[1] + 8

    # and back: ours -> gpt2 -> ours gives the same weights (plus zero q/k/v biases where ours had none)
    back = GPTScratchForCausalLM.from_pretrained(convert_hf_gpt2(str(out), tmp_path / "back")).eval()
    original, returned = ours.state_dict(), back.state_dict()
    for key, tensor in original.items():
        assert torch.equal(returned[key], tensor), key
    extra = set(returned) - set(original)
    assert extra == (set() if variant["qkv_bias"] else {f"transformer.blocks.{i}.att.qkv_proj.bias" for i in range(2)})
    assert all(not torch.count_nonzero(returned[k]) for k in extra)
    for name in ("hidden_size", "intermediate_size", "num_attention_heads", "max_position_embeddings",
                 "tie_word_embeddings", "layer_norm_epsilon", "pad_token_id", "eos_token_id"):
        assert getattr(back.config, name) == getattr(ours.config, name), name


def classifier(tokenizer, seed=0, zero_bias=False):
    torch.manual_seed(seed)
    labels = {0: "ham", 1: "spam", 2: "eggs"}
    config = tiny_config(tokenizer, id2label=labels, label2id={name: i for i, name in labels.items()})
    model = perturb_(GPTScratchForSequenceClassification(config), seed=seed).eval()
    if zero_bias:
        with torch.no_grad():
            model.score.bias.zero_()
    return model


def rows(tokenizer):
    texts = ("the cat sat on a mat", "dog", "birds sang in the green trees and")
    return [tokenizer(text, return_tensors="pt")["input_ids"] for text in texts]


def test_classifier_with_zero_bias(tmp_path, tokenizer):
    ours = classifier(tokenizer, zero_bias=True)
    src = save_run(ours, tokenizer, tmp_path / "run")
    result = export_hf_gpt2(src, tmp_path / "gpt2")
    assert result.architecture == "GPT2ForSequenceClassification"
    assert any("pad_token_id" in note for note in result.caveats)  # the pooling difference is spelled out
    assert {p.name for p in result.out.iterdir()} == EXPORTED_FILES - {"generation_config.json"}
    theirs = GPT2ForSequenceClassification.from_pretrained(result.out).eval()
    assert theirs.score.bias is None
    assert theirs.config.id2label == {0: "ham", 1: "spam", 2: "eggs"} and theirs.config.label2id["eggs"] == 2
    assert theirs.config.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        for ids in rows(tokenizer):
            expected = ours(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            torch.testing.assert_close(theirs(ids).logits, expected, atol=1e-4, rtol=0)
        # right-padded batch: GPT-2 finds the last non-pad token, ours follows the mask; same for texts without eos
        batch = tokenizer(["the cat sat on a mat", "dog"], return_tensors="pt", padding=True)
        torch.testing.assert_close(theirs(batch["input_ids"]).logits, ours(**batch).logits, atol=1e-4, rtol=0)


def test_classifier_bias_is_refused_or_folded(tmp_path, tokenizer):
    ours = classifier(tokenizer, seed=1)
    assert torch.count_nonzero(ours.score.bias)
    src = save_run(ours, tokenizer, tmp_path / "run")
    with pytest.raises(UserError, match=r"score bias .* GPT-2 cannot hold.*--fold-score-bias") as info:
        export_hf_gpt2(src, tmp_path / "refused")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "refused").exists()

    result = export_hf_gpt2(src, tmp_path / "folded", fold_score_bias=True)
    assert any("folded" in note for note in result.caveats)
    theirs = GPT2ForSequenceClassification.from_pretrained(result.out).eval()
    with torch.no_grad():
        for ids in rows(tokenizer):
            expected = ours(input_ids=ids).logits
            assert expected.abs().max() > 0.5
            torch.testing.assert_close(theirs(ids).logits, expected, atol=1e-4, rtol=0)


def test_cli_export_and_bad_calls(tmp_path, tokenizer, capsys):
    torch.manual_seed(2)
    src = save_run(perturb_(GPTScratchForCausalLM(tiny_config(tokenizer)), seed=2), tokenizer, tmp_path / "run")
    out = tmp_path / "exported"
    assert cli_main(["convert", "--to", "hf-gpt2", "--src", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out} (GPT2LMHeadModel" in printed
    assert {p.name for p in out.iterdir()} == EXPORTED_FILES

    def refused(argv, pattern):
        assert cli_main(["convert", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("gpt-scratch convert: error: "), err
        assert pattern in err, err

    bad_out = tmp_path / "bad"
    refused(["--from", "hf-gpt2", "--to", "hf-gpt2", "--src", str(src), "--out", str(bad_out)], "exclude each other")
    refused(["--src", str(src), "--out", str(bad_out)], "give --from")
    (tmp_path / "not_a_model").mkdir()
    refused(["--to", "hf-gpt2", "--src", str(tmp_path / "not_a_model"), "--out", str(bad_out)], "no config.json")
    refused(["--to", "hf-gpt2", "--src", str(tmp_path / "absent"), "--out", str(bad_out)], "does not exist")
    refused(["--to", "hf-gpt2", "--src", str(out), "--out", str(bad_out)], "already is a plain gpt2 folder")
    refused(["--to", "hf-gpt2", "--src", str(src), "--out", str(bad_out), "--config", "tiny"], "--config applies")
    refused(["--from", "book", "--src", str(src), "--out", str(bad_out), "--fold-score-bias"], "--fold-score-bias")
    assert not bad_out.exists()
    # an existing, non-empty --out: refused and left as it was; --overwrite replaces it
    (out / "config.json").write_text("keep")
    refused(["--to", "hf-gpt2", "--src", str(src), "--out", str(out)], "--overwrite")
    assert (out / "config.json").read_text() == "keep"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    assert cli_main(["convert", "--to", "hf-gpt2", "--src", str(src), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
