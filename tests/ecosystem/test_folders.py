"""The fixture folders themselves, in the main venv: what every client test relies on."""

import json

import pytest

from .fixtures import CAUSAL, CONTEXT


@pytest.mark.parametrize("name", [*CAUSAL, "classifier"])
def test_folder_carries_its_code_and_tokenizer(fx, name):
    folder = fx.folders[name]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt_scratch"
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModelForCausalLM", "AutoModelForSequenceClassification"}
    for file in ("configuration_gpt_scratch.py", "modeling_gpt_scratch.py", "model.safetensors", "tokenizer.json"):
        assert (folder / file).is_file(), file
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"].startswith("GPT2Tokenizer"), tokenizer["tokenizer_class"]
    assert tokenizer["model_max_length"] == CONTEXT
    assert tokenizer["pad_token"] == tokenizer["eos_token"]
    assert "local_files_only" not in tokenizer


@pytest.mark.parametrize("name", list(CAUSAL))
def test_generation_config_has_no_length(fx, name):
    generation = json.loads((fx.folders[name] / "generation_config.json").read_text())
    assert "max_new_tokens" not in generation and "max_length" not in generation, generation


@pytest.mark.parametrize("name", list(CAUSAL))
def test_reference_generate_equals_a_manual_greedy_loop(fx, name):
    """The main venv's greedy tokens (GenerationMixin, with the cache) are the argmax of plain forward passes."""
    assert fx.reference[name]["greedy"] == fx.reference[name]["manual_greedy"]
