"""transformers 4.57 (the last 4.x) and the latest 5.x load the folders with ``trust_remote_code=True`` and give the
main venv's numbers: logits, greedy tokens, padded batches, pipelines, labels."""

import re

import pytest
import torch

from .conftest import check
from .fixtures import CAUSAL, CONTEXT, MAX_NEW_TOKENS, VOCAB

CLIENTS = ["hf4", "hf5"]
LATEST = "hf5"


@pytest.fixture(scope="module", params=CLIENTS)
def hf(request, clients):
    return request.param, clients.result(request.param, "hf_client.py")


@pytest.fixture(scope="module")
def latest_warnings(clients):
    return clients.result(LATEST, "hf_warnings_client.py")


def test_versions(hf):
    name, report = hf
    version = report["env"]["versions"]["transformers"]
    assert version.startswith({"hf4": "4.57.", "hf5": "5."}[name]), version
    assert report["env"]["versions"]["torch"].startswith("2.13.0")


@pytest.mark.parametrize("model", list(CAUSAL))
def test_load_remote_code(hf, model):
    _, report = hf
    info = check(report, f"{model}/load")
    assert info["model_class"] == "GPTScratchForCausalLM"
    assert info["model_module"].startswith("transformers_modules."), info["model_module"]  # the folder's own code
    assert info["model_type"] == "gpt_scratch"
    assert info["tokenizer_class"].startswith("GPT2Tokenizer"), info["tokenizer_class"]
    assert info["model_max_length"] == CONTEXT
    assert info["pad_token_id"] == info["eos_token_id"] is not None
    assert info["tie"] is CAUSAL[model]["tie_word_embeddings"]
    assert info["qkv_bias"] is CAUSAL[model]["qkv_bias"]


@pytest.mark.parametrize("model", list(CAUSAL))
def test_tokenizer_matches(hf, fx, model):
    _, report = hf
    assert check(report, f"{model}/tokenize") == fx.reference[model]["prompt_ids"]


@pytest.mark.parametrize("model", list(CAUSAL))
def test_logits_match_main_venv(hf, fx, model):
    _, report = hf
    got = torch.tensor(check(report, f"{model}/logits"))
    want = torch.tensor(fx.reference[model]["logits"])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", list(CAUSAL))
def test_greedy_generate_matches_main_venv(hf, fx, model):
    _, report = hf
    got = check(report, f"{model}/greedy")
    assert all(len(tokens) == MAX_NEW_TOKENS for tokens in got)
    assert got == fx.reference[model]["greedy"]


@pytest.mark.parametrize("model", list(CAUSAL))
def test_sampled_generate_runs_with_a_seed(hf, fx, model):
    _, report = hf
    got = check(report, f"{model}/sampled")
    assert got["do_sample"] is True  # the folder's generation_config.json samples
    first, second = got["runs"]
    assert len(first) == MAX_NEW_TOKENS and all(0 <= t < VOCAB for t in first)
    assert first == second, "the same seed gave different samples"
    assert got["other_seed"] != first, "a different seed gave the same 16 samples: is it sampling at all?"


def _until_eos(tokens, eos):
    """Up to the first end-of-text: a row alone stops there, a row of a batch goes on with padding."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.parametrize("model", list(CAUSAL))
def test_left_padded_batch_equals_each_prompt_alone(hf, fx, model):
    _, report = hf
    got = check(report, f"{model}/left_padded")
    assert [sum(row) for row in got["mask"]] == [len(ids) for ids in fx.reference[model]["prompt_ids"]]
    assert 0 in got["mask"][0], "the batch was not padded"
    alone, eos = fx.reference[model]["greedy"], fx.tokenizer.eos_token_id
    assert [_until_eos(row, eos) for row in got["batch"]] == [_until_eos(row, eos) for row in alone]


@pytest.mark.parametrize("model", list(CAUSAL))
def test_text_generation_pipeline(hf, fx, model):
    _, report = hf
    assert check(report, f"{model}/pipeline") == fx.reference[model]["pipeline_text"]


def test_classifier_labels(hf, fx):
    _, report = hf
    info = check(report, "classifier/load")
    assert info["model_class"] == "GPTScratchForSequenceClassification"
    assert info["num_labels"] == 3
    assert info["id2label"] == {str(k): v for k, v in fx.reference["labels"].items()}
    assert info["label2id"] == {v: k for k, v in fx.reference["labels"].items()}


def test_classifier_logits_single_and_padded(hf, fx):
    _, report = hf
    got = check(report, "classifier/logits")
    want = torch.tensor(fx.reference["classifier"]["logits"])
    torch.testing.assert_close(torch.tensor(got["single"]), want, atol=1e-5, rtol=0)
    # the pooled token is the last real one, whichever side the padding is on (left: with position_ids from the mask)
    for side in ("right", "left"):
        torch.testing.assert_close(torch.tensor(got[f"batch_{side}"]), want, atol=1e-5, rtol=0, msg=side)


def test_text_classification_pipeline_truncates_long_text(hf, fx):
    _, report = hf
    ref = fx.reference["classifier"]
    assert ref["long_ids_len"] > 3 * CONTEXT
    got = check(report, "classifier/pipeline")
    top = got["top"][0]
    assert top["label"] == ref["long_label"]
    assert set(got["all"]) == set(ref["long_probs"])
    for label, prob in ref["long_probs"].items():
        assert got["all"][label] == pytest.approx(prob, abs=1e-5), label


DEPRECATION = re.compile(r"deprecat", re.I)
MODEL_TYPE = re.compile(r"model of type", re.I)  # "You are using a model of type X to instantiate a model of type ``"


def test_latest_plain_load_and_generate_is_quiet(latest_warnings):
    got = check(latest_warnings, "plain_load_generate")
    assert got["text"]
    bad = [
        w for w in got["warnings"]
        if w["category"] in ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")
        or DEPRECATION.search(w["message"]) or MODEL_TYPE.search(w["message"])
    ]
    bad += [
        r for r in got["logs"]
        if r["level"] in ("WARNING", "ERROR", "CRITICAL")
        and (DEPRECATION.search(r["message"]) or MODEL_TYPE.search(r["message"]))
    ]
    assert not bad, "warnings on a plain load + generate:\n" + "\n".join(map(str, bad))
