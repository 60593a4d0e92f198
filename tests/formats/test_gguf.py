"""GGUF export (``gpt-scratch convert --to gguf``), read back with the format's own reader (``gguf.GGUFReader``).

Tiny models; llama.cpp itself runs the files in tests/ecosystem/test_llama_cpp.py.  Here: the gpt2 keys, the tensor
names, shapes, types and values (tied and untied heads, with and without a QKV bias), the tokenizer as llama.cpp reads
it, Q8_0 blocks that dequantise to the weights, and every refusal as one line that leaves no file behind."""

import json
import shutil

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from modeling_gpt_scratch import (  # noqa: E402
    GPTScratchConfig, GPTScratchForCausalLM, GPTScratchForSequenceClassification,
)
from pipelines.cli import main as cli_main
from pipelines.errors import UserError
from pipelines.formats import gguf as gguf_export  # noqa: E402
from pipelines.formats.gguf import export_gguf  # noqa: E402
from pipelines.runs.tokenizers import train_bpe_tokenizer
from tests.formats.test_convert import perturb_  # noqa: E402

Q = gguf.GGMLQuantizationType
VOCAB = 300
TEXTS = [
    "the cat sat on a mat and the dog ran to the park while birds sang in green trees",
    "caf\u00e9 \u00fcber na\u00efve \u4e2d\u6587 \U0001f600 -- def f(x):\n\treturn x  +  1\n\n",
]


@pytest.fixture(scope="module")
def tokenizer():
    g = torch.Generator().manual_seed(0)
    words = " ".join(TEXTS).split(" ")
    texts = [" ".join(words[i] for i in torch.randint(0, len(words), (40,), generator=g)) for _ in range(200)]
    return train_bpe_tokenizer(texts + TEXTS, VOCAB)


def tiny_config(tokenizer, **overrides):
    eos = tokenizer.eos_token_id
    settings = dict(
        vocab_size=VOCAB, max_position_embeddings=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )
    return GPTScratchConfig(**{**settings, **overrides})


def save_run(model, tokenizer, folder):
    """A run folder as the workflows write it: the model with its code, the tokenizer, and files of the run."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "metrics.json").write_text("{}")
    return folder


def make_run(tmp_path, tokenizer, name="run", seed=0, **overrides):
    torch.manual_seed(seed)
    model = perturb_(GPTScratchForCausalLM(tiny_config(tokenizer, **overrides)), seed=seed).eval()
    return model, save_run(model, tokenizer, tmp_path / name)


def fields(reader) -> dict:
    out = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = f.contents()
        out[name] = value
    return out


def tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def as_float(t) -> np.ndarray:
    """A tensor's values as float32 in numpy's (out, in) order (dequantised when stored as Q8_0)."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(n) for n in reversed(t.shape)))


def expected_names(layers: int, tied: bool) -> set:
    names = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    for i in range(layers):
        for part in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"):
            names |= {f"blk.{i}.{part}.weight", f"blk.{i}.{part}.bias"}
    return names if tied else names | {"output.weight"}


def ours_by_gguf_name(model) -> dict:
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return {gguf_export.gguf_tensor_name(k): v for k, v in state.items() if gguf_export.gguf_tensor_name(k)}


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "variant",
    [dict(qkv_bias=True, tie_word_embeddings=True), dict(qkv_bias=False, tie_word_embeddings=False)],
    ids=["tied+qkv-bias", "untied+no-qkv-bias"],
)
def test_f32_file_holds_the_gpt2_layout_and_the_exact_weights(tmp_path, tokenizer, variant):
    model, src = make_run(tmp_path, tokenizer, intermediate_size=3 * 64, layer_norm_epsilon=1e-6, **variant)
    result = export_gguf(src, tmp_path / "model.gguf", "f32")
    assert result.out == tmp_path / "model.gguf" and result.tied is variant["tie_word_embeddings"]
    reader = gguf.GGUFReader(str(result.out))
    kv = fields(reader)
    assert kv["general.architecture"] == "gpt2" and kv["general.name"] == "run" and kv["general.type"] == "model"
    assert kv["gpt2.context_length"] == 64 and kv["gpt2.embedding_length"] == 64
    assert kv["gpt2.feed_forward_length"] == 3 * 64  # intermediate_size, not 4 x hidden
    assert kv["gpt2.block_count"] == 2 and kv["gpt2.attention.head_count"] == 4
    assert kv["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert kv["general.file_type"] == gguf.LlamaFileType.ALL_F32

    found = tensors(reader)
    assert set(found) == expected_names(2, variant["tie_word_embeddings"])
    assert all(t.tensor_type == Q.F32 for t in found.values())
    ours = ours_by_gguf_name(model)
    for name, t in found.items():
        if name in ours:
            np.testing.assert_array_equal(as_float(t), ours[name], err_msg=name)  # (out, in): nothing transposed
    assert [int(n) for n in found["blk.0.attn_qkv.weight"].shape] == [64, 3 * 64]  # GGUF lists {in, out}
    assert [int(n) for n in found["blk.0.ffn_down.weight"].shape] == [3 * 64, 64]
    if not variant["qkv_bias"]:  # llama.cpp's gpt2 requires the bias: zeros stand for none
        for i in range(2):
            bias = as_float(found[f"blk.{i}.attn_qkv.bias"])
            assert bias.shape == (3 * 64,) and not bias.any()
    else:
        np.testing.assert_array_equal(as_float(found["blk.1.attn_qkv.bias"]), ours["blk.1.attn_qkv.bias"])


def test_tokenizer_is_written_as_llama_cpp_reads_gpt2(tmp_path, tokenizer):
    _, src = make_run(tmp_path, tokenizer)
    reader = gguf.GGUFReader(str(export_gguf(src, tmp_path / "m.gguf").out))
    kv = fields(reader)
    eos = tokenizer.eos_token_id
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "gpt-2"
    assert kv["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(VOCAB)))
    types = kv["tokenizer.ggml.token_type"]
    assert types[eos] == gguf.TokenType.CONTROL
    assert all(t == gguf.TokenType.NORMAL for i, t in enumerate(types) if i != eos)
    merges = json.loads((src / "tokenizer.json").read_text())["model"]["merges"]
    assert kv["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert kv["tokenizer.ggml.bos_token_id"] == kv["tokenizer.ggml.eos_token_id"] == eos
    assert kv["tokenizer.ggml.padding_token_id"] == eos
    assert kv["tokenizer.ggml.add_bos_token"] is False


def test_padded_embedding_table_gets_unused_tokens(tmp_path, tokenizer):
    _, src = make_run(tmp_path, tokenizer, vocab_size=VOCAB + 20)
    kv = fields(gguf.GGUFReader(str(export_gguf(src, tmp_path / "m.gguf").out)))
    assert len(kv["tokenizer.ggml.tokens"]) == VOCAB + 20
    assert kv["tokenizer.ggml.tokens"][VOCAB] == f"[PAD{VOCAB}]"
    assert kv["tokenizer.ggml.token_type"][VOCAB:] == [gguf.TokenType.UNUSED] * 20


def test_f16_keeps_norms_biases_and_positions_f32(tmp_path, tokenizer):
    model, src = make_run(tmp_path, tokenizer, tie_word_embeddings=False)
    result = export_gguf(src, tmp_path / "m.gguf", "f16")
    reader = gguf.GGUFReader(str(result.out))
    assert fields(reader)["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    ours = ours_by_gguf_name(model)
    for name, t in tensors(reader).items():
        is_matrix = len(t.shape) == 2 and name != "position_embd.weight"
        assert t.tensor_type == (Q.F16 if is_matrix else Q.F32), name
        np.testing.assert_allclose(as_float(t), ours[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_q8_0_dequantises_close_to_the_weights(tmp_path, tokenizer):
    model, src = make_run(tmp_path, tokenizer)
    result = export_gguf(src, tmp_path / "m.gguf", "q8_0")
    reader = gguf.GGUFReader(str(result.out))
    assert fields(reader)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert not result.fallbacks
    ours = ours_by_gguf_name(model)
    quantised = 0
    for name, t in tensors(reader).items():
        if len(t.shape) == 2 and name != "position_embd.weight":
            assert t.tensor_type == Q.Q8_0, name
            quantised += 1
            # one scale per 32 values (stored as f16): the error stays within about half a step of 1/127 of the
            # largest magnitude in the block (plus what rounding the scale to f16 adds: at most 127 x 2^-11 steps)
            blocks = ours[name].reshape(-1, 32)
            step = np.abs(blocks).max(axis=1, keepdims=True) / 127
            error = np.abs(as_float(t).reshape(-1, 32) - blocks)
            assert (error <= (0.5 + 127 * 2.0**-11) * step + 1e-7).all(), name
        else:
            assert t.tensor_type == Q.F32, name
            np.testing.assert_array_equal(as_float(t), ours[name])
    assert quantised == 1 + 4 * 2  # token_embd and four matrices per block (the tied head is token_embd)


def test_q8_0_rows_not_a_multiple_of_32_fall_back_to_f16(tmp_path, tokenizer):
    # hidden 48: every matrix that reads the hidden state has 48-wide rows; ffn_down reads 96 = 3 x 32
    _, src = make_run(tmp_path, tokenizer, hidden_size=48, num_attention_heads=4, intermediate_size=96)
    result = export_gguf(src, tmp_path / "m.gguf", "q8_0")
    found = tensors(gguf.GGUFReader(str(result.out)))
    assert found["blk.0.ffn_down.weight"].tensor_type == Q.Q8_0
    for name in ("token_embd.weight", "blk.0.attn_qkv.weight", "blk.0.attn_output.weight", "blk.1.ffn_up.weight"):
        assert found[name].tensor_type == Q.F16, name
        assert name in result.fallbacks
    assert "kept F16" in result.summary("src")


def test_pre_tokenizer_in_a_one_member_sequence_is_accepted(tmp_path, tokenizer):
    _, src = make_run(tmp_path, tokenizer)
    spec = json.loads((src / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [spec["pre_tokenizer"]]}
    (src / "tokenizer.json").write_text(json.dumps(spec))
    assert fields(gguf.GGUFReader(str(export_gguf(src, tmp_path / "m.gguf").out)))["tokenizer.ggml.pre"] == "gpt-2"


def test_chat_template_is_carried_for_chat_clients(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    from pipelines.data.instructions import ALPACA_CHAT_TEMPLATE

    _, src = make_run(tmp_path, tokenizer)
    assert "tokenizer.chat_template" not in fields(gguf.GGUFReader(str(export_gguf(src, tmp_path / "base.gguf").out)))
    instruct = AutoTokenizer.from_pretrained(str(src))
    instruct.chat_template = ALPACA_CHAT_TEMPLATE  # what finetune-instruct saves
    instruct.save_pretrained(str(src))
    kv = fields(gguf.GGUFReader(str(export_gguf(src, tmp_path / "instruct.gguf").out)))
    assert kv["tokenizer.chat_template"] == ALPACA_CHAT_TEMPLATE


def test_cli_writes_one_summary_line(tmp_path, tokenizer, capsys):
    _, src = make_run(tmp_path, tokenizer)
    out = tmp_path / "exports" / "model-q8_0.gguf"
    capsys.readouterr()
    assert cli_main(["convert", "--to", "gguf", "--src", str(src), "--out", str(out), "--outtype", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and f"-> {out} (GGUF" in printed and "q8_0" in printed, printed
    assert out.is_file() and not leftovers(out.parent)
    assert gguf.GGUFReader(str(out)).get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_export_config_carries_n_ctx(tokenizer):
    from pipelines.formats.gpt2_export import gpt2_config_from_ours

    config = tiny_config(tokenizer, max_position_embeddings=48)
    exported = gpt2_config_from_ours(config, "GPTScratchForCausalLM", config.pad_token_id).to_dict()
    assert exported["n_ctx"] == exported["n_positions"] == 48


def _edit_tokenizer(src, change):
    spec = json.loads((src / "tokenizer.json").read_text())
    change(spec)
    (src / "tokenizer.json").write_text(json.dumps(spec))


UNSUPPORTED_TOKENIZERS = {
    "prefix-space": lambda s: s["pre_tokenizer"].update(add_prefix_space=True),
    "no-regex": lambda s: s["pre_tokenizer"].update(use_regex=False),
    "whitespace": lambda s: s.update(pre_tokenizer={"type": "Whitespace"}),
    "two-step": lambda s: s.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, s["pre_tokenizer"]]}),
    "normalizer": lambda s: s.update(normalizer={"type": "NFKC"}),
    "ignore-merges": lambda s: s["model"].update(ignore_merges=True),
}


def test_refusals_are_one_line_and_leave_no_file(tmp_path, tokenizer, capsys):
    _, src = make_run(tmp_path, tokenizer)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.gguf"

    def refused(argv, *patterns):
        capsys.readouterr()  # what saving the fixtures printed
        assert cli_main(["convert", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("gpt-scratch convert: error: "), err
        for pattern in patterns:
            assert pattern in err, err
        assert not out.exists() and not leftovers(out_dir)
        return err

    def gguf_args(folder, *extra):
        return ["--to", "gguf", "--src", str(folder), "--out", str(out), *extra]

    # the source folder
    refused(gguf_args(tmp_path / "absent"), "does not exist")
    refused(gguf_args(src / "model.safetensors"), "is a file")
    (tmp_path / "empty").mkdir()
    refused(gguf_args(tmp_path / "empty"), "no config.json")
    torch.manual_seed(0)
    classifier = GPTScratchForSequenceClassification(tiny_config(tokenizer, num_labels=2))
    refused(gguf_args(save_run(classifier, tokenizer, tmp_path / "classifier")), "classifier", "causal LM")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    refused(gguf_args(adapter), "LoRA adapter", "--merge")
    shutil.copytree(src, adapter / "merged")
    refused(gguf_args(adapter), "LoRA adapter", f"--src {adapter / 'merged'}")
    other = shutil.copytree(src, tmp_path / "other")
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    refused(gguf_args(other), "LlamaForCausalLM", "not a gpt-scratch causal LM")
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    refused(gguf_args(other), "Hugging Face GPT-2", "convert_hf_to_gguf.py")
    for missing, pattern in (("model.safetensors", "no model.safetensors"), ("tokenizer.json", "no tokenizer.json")):
        partial = shutil.copytree(src, tmp_path / f"without-{missing}")
        (partial / missing).unlink()
        refused(gguf_args(partial), pattern)
    wrong = shutil.copytree(src, tmp_path / "wrong-shapes")
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    refused(gguf_args(wrong), "do not fit its config.json", "missing transformer.blocks.2")
    small = shutil.copytree(src, tmp_path / "small-vocab")
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": VOCAB - 10}))
    refused(gguf_args(small), "do not belong together")  # the tokenizer has more ids than the model has rows

    # the tokenizer
    for name, change in UNSUPPORTED_TOKENIZERS.items():
        folder = shutil.copytree(src, tmp_path / f"tokenizer-{name}")
        _edit_tokenizer(folder, change)
        err = refused(gguf_args(folder), "GGUF export supports only GPT-2's byte-level BPE")
        assert "is a tokenizer with model BPE" in err

    # the flags and the destination
    refused(["--to", "gguf", "--src", str(src), "--out", str(out_dir)], "is a folder", "writes one file")
    refused(gguf_args(src, "--outtype", "q4_0"), "invalid choice")
    refused(["--to", "hf-gpt2", "--src", str(src), "--out", str(tmp_path / "hf"), "--outtype", "f16"],
            "--outtype applies only to --to gguf")
    refused(gguf_args(src, "--fold-score-bias"), "--fold-score-bias applies only")
    with pytest.raises(UserError, match="--outtype q4_0 is not supported"):
        export_gguf(src, out, "q4_0")
    assert not out.exists()
    # an existing file is kept unless --overwrite
    out.write_bytes(b"keep")
    capsys.readouterr()
    assert cli_main(["convert", *gguf_args(src)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert cli_main(["convert", *gguf_args(src, "--overwrite")]) == 0
    assert out.read_bytes()[:4] == b"GGUF" and not leftovers(out_dir)


def test_tokenizer_larger_than_the_model_is_refused(tmp_path, tokenizer):
    _, src = make_run(tmp_path, tokenizer)
    _edit_tokenizer(src, lambda s: s["added_tokens"].append(
        {"id": VOCAB, "content": "<|extra|>", "special": True, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False}))
    with pytest.raises(UserError, match=f"ids up to {VOCAB} but the model only {VOCAB} embeddings"):
        export_gguf(src, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_failure_while_writing_leaves_nothing(tmp_path, tokenizer, monkeypatch):
    _, src = make_run(tmp_path, tokenizer)
    real, calls = gguf_export.encode_tensor, []

    def failing(name, data, outtype):
        calls.append(name)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(name, data, outtype)

    monkeypatch.setattr(gguf_export, "encode_tensor", failing)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(src, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists() and not leftovers(tmp_path)
