"""`gpt-scratch experiments`: the baseline and each variant share data, tokenizer, seed and budget."""

import json

import yaml

from pipelines.cli import main
from tests.commands.test_pretrain import write_corpus


def test_experiments_table_and_shared_setup(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=200)
    base = {
        "data": str(corpus), "preset": "tiny", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "context_length": 32, "vocab_size": 300, "batch_size": 8, "max_steps": 12, "eval_every": 6,
        "learning_rate": 0.003, "mixed_precision": "no", "sample_tokens": 4, "seed": 3,
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    experiments_yaml = {
        "base": str(tmp_path / "base.yaml"),
        "out": str(tmp_path / "exp"),
        "baseline": {"grad_clip": 0.0, "weight_decay": 0.01},
        "variants": {"gradient-clipping": {"grad_clip": 1.0}, "weight-decay-0.1": {"weight_decay": 0.1}},
    }
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump(experiments_yaml))
    assert main(["experiments", "--config", str(tmp_path / "experiments.yaml")]) == 0
    out = tmp_path / "exp"
    results = json.loads((out / "results.json").read_text())
    rows = {r["run"]: r for r in results["runs"]}
    assert set(rows) == {"baseline", "gradient-clipping", "weight-decay-0.1"}
    assert results["changes"]["gradient-clipping"] == {"grad_clip": 1.0}
    for name, row in rows.items():
        metrics = json.loads((out / name / "metrics.json").read_text())["final"]
        assert row["test_loss"] == metrics["test_loss"]
        if name != "baseline":
            assert abs(row["delta"] - (row["test_loss"] - rows["baseline"]["test_loss"])) < 1e-12
    configs = {n: yaml.safe_load((out / n / "run_config.yaml").read_text()) for n in rows}
    # same data, tokenizer, seed and budget everywhere
    assert len({c["corpus_tokens"] for c in configs.values()}) == 1
    assert len({c["tokenizer"] for c in configs.values()}) == 1
    assert {c["seed"] for c in configs.values()} == {3} and {c["max_steps"] for c in configs.values()} == {12}
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + 3 and "gradient-clipping" in table and "grad_clip=1.0" in table
    assert (out / "val_loss.png").stat().st_size > 1000


def test_experiments_unknown_key(tmp_path, capsys):
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump({"variants": {"x": {"grad_clp": 1.0}}}))
    assert main(["experiments", "--config", str(tmp_path / "experiments.yaml")]) == 2
    err = capsys.readouterr().err
    assert "grad_clip" in err and "Traceback" not in err
