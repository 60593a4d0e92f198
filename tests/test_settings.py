"""Every shipped config parses against the schema, so a typo in a preset fails here and not after hours of setup."""

from pathlib import Path

import pytest
import yaml

from pipelines import settings as schema
from pipelines.commands.experiments import load_experiment_runs
from pipelines.settings import PretrainSettings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["tiny-cpu.yaml", "gpt2-small-3090.yaml", "gpt2-small-8xa100.yaml"])
def test_pretrain_configs_parse(name):
    values = schema.load_yaml(CONFIGS / name)
    cfg = schema.build(PretrainSettings, values)
    assert cfg.max_steps > 0 and cfg.out


def test_gpu_recipes_budget():
    small = schema.build(PretrainSettings, schema.load_yaml(CONFIGS / "gpt2-small-3090.yaml"))
    # ~3.2B tokens at context 1024: accumulation = global tokens / (micro batch x context)
    accum = small.global_batch_tokens // (small.batch_size * 1024)
    assert accum * small.batch_size * 1024 == small.global_batch_tokens
    assert 3.0e9 < small.max_steps * small.global_batch_tokens < 3.4e9


def test_experiments_config_parses():
    experiment = load_experiment_runs(str(CONFIGS / "experiments-tiny-cpu.yaml"))
    assert "baseline" in experiment["runs"] and len(experiment["runs"]) == 8
    assert experiment["changes"]["amp-bf16"] == {"mixed_precision": "bf16"}


def test_accelerate_configs_are_yaml():
    for name in ("accelerate-ddp-8gpu.yaml", "accelerate-fsdp.yaml"):
        data = yaml.safe_load((CONFIGS / name).read_text())
        assert data["num_processes"] == 8 and data["mixed_precision"] == "bf16"
