"""llama.cpp runs gpt-scratch models: GGUF files written by ``gpt-scratch convert --to gguf`` (f32, f16 and q8_0, for
the tied and the untied fixture) load in llama-cpp-python built from source, tokenize text as our tokenizer does, and
compute our logits (f32: greedy tokens identical, logits within 5e-3; f16 and q8_0: the same next token).  And
llama.cpp's own converter, ``convert_hf_to_gguf.py``, takes a ``convert --to hf-gpt2`` export of a model with OpenAI's
GPT-2 tokenizer, whose GGUF then continues prompts exactly as transformers does.

Why 5e-3 for f32 and not less: llama.cpp's CPU backend computes GELU through a table of f16 values indexed by the
input rounded to f16 (``GGML_GELU_FP16`` in ggml-cpu's ``vec.h``, fixed at compile time), a relative error of about
5e-4 at every activation.  On these fixtures (random weights at 10x the usual scale, logits up to about 8) that alone
gives 3.0e-3 (tied) and 3.2e-3 (untied); our model with its GELU rounded the same way comes within 2e-4 and 9e-4 of
llama.cpp.  A conversion error (a dropped bias or gain, a transposed matrix) moves logits by far more.  The
f32 runs cache keys and values in f32: llama.cpp's default f16 cache adds another 5e-3 or so.

The llama venv and the wheel it installs are described in ``envs.py`` and ``llama_build.py``; the GPT-2 tokenizer
files come from ``../shared/data/gpt2-tokenizer`` (``$GPT_SCRATCH_SHARED_DATA`` names another data folder)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from . import envs, llama_build
from .conftest import check
from .fixtures import CAUSAL, CONTEXT, MAX_NEW_TOKENS, generation_config, randomise, save_run_folder

CLI = Path(sys.executable).with_name("gpt-scratch")
OUTTYPES = ("f32", "f16", "q8_0")
LOGITS_TOL = 5e-3  # see the module docstring
SHARED_DATA = Path(os.environ.get("GPT_SCRATCH_SHARED_DATA", envs.REPO.parent / "shared" / "data"))
GPT2_TOKENIZER = SHARED_DATA / "gpt2-tokenizer"
END_OF_TEXT = "<|endoftext|>"

# Unicode (accents, CJK, emoji with modifiers and joiners), code, and runs of whitespace: where a pre-tokenizer that
# differed from GPT-2's would split differently
TEXTS = [
    "Caf\u00e9 na\u00efve fa\u00e7ade \u00fcber se\u00f1or \u2014 \u201cquotes\u201d and \u2018apostrophes\u2019",
    "\u4e2d\u6587\u5b57\u7b26 \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\uff0c\ud55c\uad6d\uc5b4 "
    "\u0928\u092e\u0938\u094d\u0924\u0947",
    "emoji \U0001f600\U0001f44d\U0001f3fd flags \U0001f1eb\U0001f1f7 family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "def f(x):\n\treturn {'a': [1, 2, 3]} if x else None  # comment\n\nclass A(B): pass\r\n",
    "tabs\t\tand\nnewlines\n\n\nand   multiple    spaces   \n \t \n end",
    "   leading and trailing spaces   ",
    "numbers 1234567 3.14159 1e-5; contractions: don't it's we're I'll you've 'RE",
    " ",
    "\n\n",
    "",
]
SPECIAL_TEXTS = [f"text{END_OF_TEXT}after the end-of-text token", END_OF_TEXT]
STOCK_PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a test of",
    "In 1998, researchers at",
]


def _cli(*argv) -> str:
    proc = subprocess.run(
        [str(CLI), *map(str, argv)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def ggufs(fx, tmp_path_factory):
    """Every fixture causal LM at every outtype, written by the CLI (one summary line each)."""
    out_root = tmp_path_factory.mktemp("ggufs")
    files = {}
    for name in CAUSAL:
        for outtype in OUTTYPES:
            out = out_root / f"{name}-{outtype}.gguf"
            printed = _cli("convert", "--to", "gguf", "--src", fx.folders[name], "--out", out, "--outtype", outtype)
            assert printed.count("\n") == 1 and f"-> {out} (GGUF" in printed, printed
            files[f"{name}/{outtype}"] = str(out)
    return files


def gpt2_tokenizer():
    """OpenAI's GPT-2 tokenizer from its two files (see ../shared/data/gpt2-tokenizer/README.md), as a run folder
    keeps it (GPT2TokenizerFast, end-of-text as bos = eos = pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    from pipelines.runs.tokenizers import wrap_tokenizer

    backend = Tokenizer(
        models.BPE.from_file(str(GPT2_TOKENIZER / "vocab.json"), str(GPT2_TOKENIZER / "merges.txt"))
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([END_OF_TEXT])
    tokenizer = wrap_tokenizer(backend, model_max_length=CONTEXT)
    assert tokenizer("Hello world").input_ids == [15496, 995] and tokenizer.eos_token_id == 50256
    return tokenizer


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """A small random model with GPT-2's vocabulary, saved as a run folder, exported with ``--to hf-gpt2``; and
    transformers' answers on it (GPT2LMHeadModel, main venv).  ``None`` when ../shared is absent."""
    if not (GPT2_TOKENIZER / "vocab.json").is_file() or not (GPT2_TOKENIZER / "merges.txt").is_file():
        return None
    from transformers import GPT2LMHeadModel

    from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM

    root = tmp_path_factory.mktemp("stock")
    tokenizer = gpt2_tokenizer()
    eos = tokenizer.eos_token_id
    config = GPTScratchConfig.from_preset(
        "tiny", vocab_size=50257, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos
    )
    model = randomise(GPTScratchForCausalLM(config), 11)
    run = save_run_folder(root / "run", model, tokenizer, "pretrain", generation_config(model, tokenizer))
    export = root / "hf-gpt2"
    _cli("convert", "--to", "hf-gpt2", "--src", run, "--out", export)

    theirs = GPT2LMHeadModel.from_pretrained(str(export)).eval()
    prompt_ids = [tokenizer(t).input_ids for t in STOCK_PROMPTS]
    greedy, logits = [], []
    with torch.no_grad():
        for ids in prompt_ids:
            x = torch.tensor([ids])
            out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            greedy.append(out[0, len(ids):].tolist())
            logits.append(theirs(x).logits[0].tolist())
    return {
        "spec": {
            "export": str(export),
            "gguf": str(root / "stock-f32.gguf"),
            "converter": str(llama_build.converter(envs.TIMINGS)),
            "texts": TEXTS + STOCK_PROMPTS,
            "prompt_ids": prompt_ids,
            "context": CONTEXT,
        },
        "ids": [tokenizer(t).input_ids for t in TEXTS + STOCK_PROMPTS],
        "greedy": greedy,
        "logits": logits,
    }


CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Rewrite the sentence in the passive voice: the cat caught the mouse."},
]


@pytest.fixture(scope="module")
def chat(fx, tmp_path_factory):
    """The tied fixture with the chat template finetune-instruct saves, its GGUF, and the prompt transformers
    renders."""
    from transformers import AutoTokenizer

    from pipelines.data.instructions import ALPACA_CHAT_TEMPLATE

    root = tmp_path_factory.mktemp("chat")
    folder = shutil.copytree(fx.folders["tied"], root / "instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(folder))
    out = root / "instruct-f16.gguf"
    _cli("convert", "--to", "gguf", "--src", folder, "--out", out)
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    return {"spec": {"gguf": str(out), "messages": CHAT}, "prompt": prompt, "ids": tokenizer(prompt).input_ids}


@pytest.fixture(scope="module")
def llama(fx, ggufs, stock, chat, clients):
    ids = {name: fx.reference[name]["prompt_ids"] for name in CAUSAL}
    spec = fx.spec(
        ggufs=ggufs, texts=fx.reference["prompts"] + TEXTS, special_texts=SPECIAL_TEXTS, prompt_ids=ids,
        stock=stock["spec"] if stock else None, chat=chat["spec"],
    )
    return clients.result("llama", "llama_client.py", spec)


CASES = [f"{name}/{outtype}" for name in CAUSAL for outtype in OUTTYPES]


@pytest.mark.parametrize("case", CASES)
def test_gguf_loads_as_gpt2(llama, fx, case):
    info = check(llama, f"{case}/load")
    eos = fx.tokenizer.eos_token_id
    assert info["meta"]["general.architecture"] == "gpt2" and info["meta"]["tokenizer.ggml.pre"] == "gpt-2"
    assert info["n_vocab"] == len(fx.tokenizer) and info["n_ctx_train"] == CONTEXT
    assert info["n_embd"] == fx.models[case.split("/")[0]].config.hidden_size
    assert info["bos"] == info["eos"] == eos
    assert info["meta"]["tokenizer.ggml.add_bos_token"] == "false"


@pytest.mark.parametrize("case", CASES)
def test_llama_cpp_tokenizes_as_our_tokenizer(llama, fx, case):
    got = check(llama, f"{case}/tokenize")
    texts = fx.reference["prompts"] + TEXTS
    expected = [fx.tokenizer(t).input_ids for t in texts]
    for text, ours, theirs in zip(texts, expected, got["ids"]):
        assert theirs == ours, f"{text!r}: llama.cpp {theirs} vs ours {ours}"
    # with special-token parsing on, end-of-text inside a text is the one token, as our tokenizer always reads it
    assert got["special_ids"] == [fx.tokenizer(t).input_ids for t in SPECIAL_TEXTS]


@pytest.mark.parametrize("model", list(CAUSAL))
def test_f32_matches_our_logits_and_greedy_tokens(llama, fx, model):
    logits = np.array(check(llama, f"{model}/f32/logits"))
    reference = np.array(fx.reference[model]["logits"])
    assert logits.shape == reference.shape
    gap = float(np.abs(logits - reference).max())
    assert gap <= LOGITS_TOL, f"llama.cpp's logits differ from ours by {gap:.3g}"
    greedy = check(llama, f"{model}/f32/greedy")
    assert all(len(g) == MAX_NEW_TOKENS for g in greedy)
    assert greedy == fx.reference[model]["greedy"]


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
@pytest.mark.parametrize("model", list(CAUSAL))
def test_reduced_precision_picks_the_same_next_token(llama, fx, model, outtype):
    logits = np.array(check(llama, f"{model}/{outtype}/logits"))
    reference = np.array(fx.reference[model]["logits"])
    assert logits.shape == reference.shape
    assert (logits[:, -1].argmax(-1) == reference[:, -1].argmax(-1)).all()
    first = [g[0] for g in check(llama, f"{model}/{outtype}/greedy")]
    assert first == [g[0] for g in fx.reference[model]["greedy"]]


def test_chat_template_renders_as_in_transformers(llama, chat):
    info = check(llama, "chat/template")
    assert info["chat_format"] == "chat_template.default"  # llama-cpp-python took the file's template
    assert info["prompt"] == chat["prompt"]
    assert info["ids"] == chat["ids"]
    assert info["reply_role"] == "assistant" and info["finish_reason"] in ("stop", "length")


def test_stock_converter_takes_the_hf_gpt2_export(llama, stock):
    if stock is None:
        pytest.skip(
            f"{GPT2_TOKENIZER} is absent (../shared beside the checkout holds OpenAI's GPT-2 tokenizer files): "
            "the stock converter's check needs GPT-2's vocabulary"
        )
    check(llama, "stock/convert")
    info = check(llama, "stock/run")
    assert info["meta"]["general.architecture"] == "gpt2"
    assert info["meta"]["tokenizer.ggml.pre"] == "gpt-2"  # the converter recognised GPT-2's tokenizer
    assert info["n_vocab"] == 50257 and info["n_ctx_train"] == CONTEXT
    assert info["ids"] == stock["ids"]
    assert info["greedy"] == stock["greedy"]
    for ours, theirs in zip(stock["logits"], info["logits"]):
        gap = float(np.abs(np.array(ours) - np.array(theirs)).max())
        assert gap <= LOGITS_TOL, f"llama.cpp's logits differ from transformers' by {gap:.3g}"
