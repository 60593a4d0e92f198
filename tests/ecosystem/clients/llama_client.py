"""llama.cpp (through llama-cpp-python, built from source) on GGUF files: the ones ``gpt-scratch convert --to gguf``
wrote, and one that llama.cpp's own ``convert_hf_to_gguf.py`` made from a ``convert --to hf-gpt2`` export.

Reports token ids, logits and greedy continuations; the test compares them with the main venv's numbers.  Greedy here
is the argmax of llama.cpp's logits, token by token, through its KV cache (no sampler settings involved).
"""

import os
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
from _client import Client
from llama_cpp import Llama

client = Client(packages=("llama-cpp-python", "torch", "transformers", "numpy"))
spec = client.spec
N = spec["max_new_tokens"]


def load(path, n_ctx, full_precision=False):
    """The model, computing logits for every position.  ``full_precision``: keys and values cached in f32 (llama.cpp
    caches them in f16 by default, which alone moves these logits by several 1e-3), for the f32 comparisons."""
    cache = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if full_precision else {}
    return Llama(
        model_path=path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=1, verbose=False, seed=0, **cache
    )


def logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(llm, ids, steps):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def facts(llm):
    meta = llm.metadata
    return {
        "n_vocab": llm.n_vocab(),
        "n_ctx_train": llm._model.n_ctx_train(),
        "n_embd": llm.n_embd(),
        "bos": llm.token_bos(),
        "eos": llm.token_eos(),
        "meta": {k: meta.get(k) for k in ("general.architecture", "tokenizer.ggml.pre", "tokenizer.ggml.model",
                                           "general.file_type", "tokenizer.ggml.add_bos_token")},
    }


for key, path in spec["ggufs"].items():  # key: "<model>/<outtype>"
    state = {}

    @client.check(f"{key}/load")
    def _():
        state["llm"] = load(path, spec["context"], full_precision=key.endswith("/f32"))
        return facts(state["llm"])

    @client.check(f"{key}/tokenize")
    def _():
        llm = state["llm"]
        plain = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in spec["texts"]]
        special = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in spec["special_texts"]]
        return {"ids": plain, "special_ids": special}

    @client.check(f"{key}/logits")
    def _():
        return [logits(state["llm"], row).tolist() for row in spec["logits_input"]]

    @client.check(f"{key}/greedy")
    def _():
        return [greedy(state["llm"], ids, N) for ids in spec["prompt_ids"][key.split("/")[0]]]

    state.clear()  # frees the model before the next one loads


chat = spec.get("chat")
if chat:

    @client.check("chat/template")
    def _():
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = load(chat["gguf"], spec["context"])
        template = llm.metadata["tokenizer.chat_template"]
        eos = llm._model.token_get_text(llm.token_eos())
        prompt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=eos)(messages=chat["messages"]).prompt
        # the whole chat path once (greedy, a few tokens): the template renders inside create_chat_completion too
        reply = llm.create_chat_completion(messages=chat["messages"], max_tokens=4, temperature=0.0)
        return {
            "chat_format": llm.chat_format,
            "prompt": prompt,
            "ids": llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True),
            "reply_role": reply["choices"][0]["message"]["role"],
            "finish_reason": reply["choices"][0]["finish_reason"],
        }


stock = spec.get("stock")
if stock:
    out = Path(stock["gguf"])

    @client.check("stock/convert")
    def _():
        # llama.cpp's own converter (it puts its bundled gguf-py first on sys.path), in this venv
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
        proc = subprocess.run(
            [sys.executable, stock["converter"], "--outtype", "f32", "--outfile", str(out), stock["export"]],
            capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL,
        )
        log = (proc.stdout + proc.stderr)[-6000:]
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"convert_hf_to_gguf.py failed (exit {proc.returncode}):\n{log}")
        return {"log_tail": log[-1500:]}

    @client.check("stock/run")
    def _():
        llm = load(str(out), stock["context"], full_precision=True)
        result = facts(llm)
        result["ids"] = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in stock["texts"]]
        result["greedy"] = [greedy(llm, ids, N) for ids in stock["prompt_ids"]]
        result["logits"] = [logits(llm, ids).tolist() for ids in stock["prompt_ids"]]
        return result
