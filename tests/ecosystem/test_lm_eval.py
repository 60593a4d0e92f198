"""lm-evaluation-harness (latest) runs local tasks on the tied folder: loglikelihood (multiple choice),
loglikelihood_rolling and generate_until, with inputs at and past the model's 128-token context."""

import json
import math

import pytest
import torch
from .conftest import check
from .fixtures import CONTEXT, corpus

LENGTHS = [100, 120, 126, 127, 128, 140]  # context tokens: up to the edge of the 128 positions, and past it
CHOICES = ["the", "a", "of", "is"]
MAX_GEN = 16
TASKS = ["eco_choice", "eco_rolling", "eco_generate"]


def _cut(tokenizer, ids, n):
    """Text of about ``n`` tokens, without trailing whitespace (lm-eval moves it into the continuation)."""
    return tokenizer.decode(ids[:n]).rstrip()


def write_tasks(folder, tokenizer):
    folder.mkdir(parents=True, exist_ok=True)
    stream = tokenizer(" ".join(corpus()[50:70])).input_ids
    choice, generate = [], []
    for i, n in enumerate(LENGTHS):
        text = _cut(tokenizer, stream[i * 200:], n)
        choice.append({"context": text, "choices": CHOICES, "label": i % len(CHOICES)})
        generate.append({"prompt": text, "answer": "x"})
    rolling = [{"text": tokenizer.decode(stream[3000 + i * 400: 3000 + i * 400 + n])} for i, n in enumerate((40, 300, 390))]
    for name, rows in (("choice", choice), ("generate", generate), ("rolling", rolling)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def task(name, body):
        data = folder / f"{name}.jsonl"
        (folder / f"eco_{name}.yaml").write_text(
            f"task: eco_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}metadata:\n  version: 1.0\n"
        )

    task("choice", 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
         'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n')
    task("rolling", 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
         "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    task("generate", 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
         f'generation_kwargs:\n  until: ["\\n\\n"]\n  max_gen_toks: {MAX_GEN}\n  do_sample: false\n'
         "metric_list:\n  - metric: exact_match\n")
    return choice


@torch.no_grad()
def reference_logliks(model, tokenizer, docs):
    """log P(" " + choice | context) as a causal LM scores it: the last CONTEXT + 1 tokens, the final one dropped."""
    out = []
    for doc in docs:
        row = []
        for choice in doc["choices"]:
            context_ids = tokenizer(doc["context"]).input_ids
            whole = tokenizer(doc["context"] + " " + choice).input_ids
            cont = whole[len(context_ids):]
            inp = (context_ids + cont)[-(CONTEXT + 1):][:-1]
            logprobs = model(torch.tensor([inp])).logits[0].log_softmax(-1)
            picked = logprobs[-len(cont):].gather(-1, torch.tensor(cont)[:, None])
            row.append(float(picked.sum()))
        out.append(row)
    return out


@pytest.fixture(scope="module")
def lm_eval_run(fx, clients, tmp_path_factory):
    tokenizer = fx.tokenizer
    tasks = tmp_path_factory.mktemp("lm-eval-tasks")
    docs = write_tasks(tasks, tokenizer)
    model = fx.models["tied"]
    spec = fx.spec(lm_eval={"include_path": str(tasks), "tasks": TASKS})
    report = clients.result("lmeval", "lmeval_client.py", spec)
    return report, docs, reference_logliks(model, tokenizer, docs), tokenizer


def test_prompts_reach_the_context(lm_eval_run):
    _, docs, _, tokenizer = lm_eval_run
    lengths = [len(tokenizer(d["context"] + " the").input_ids) for d in docs]
    assert max(lengths) > CONTEXT + 1 and any(CONTEXT - 8 <= n <= CONTEXT + 1 for n in lengths), lengths


def test_simple_evaluate_returns_every_task(lm_eval_run):
    report, docs, _, _ = lm_eval_run
    got = check(report, "simple_evaluate")
    assert set(TASKS) <= set(got["results"]), got["results"].keys()
    acc = got["results"]["eco_choice"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        value = got["results"]["eco_rolling"][metric]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (metric, value)
    assert 0.0 <= got["results"]["eco_generate"]["exact_match,none"] <= 1.0
    assert [len(got["samples"][t]) for t in TASKS] == [len(docs), 3, len(docs)]


def test_loglikelihood_matches_main_venv(lm_eval_run):
    """lm-eval's batched, left-truncated scoring gives the main venv's numbers, also for inputs that fill all
    128 positions."""
    report, _, want, _ = lm_eval_run
    samples = check(report, "simple_evaluate")["samples"]["eco_choice"]
    got = [[float(resp[0][0]) for resp in s["resps"]] for s in samples]
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=0), (got, want)


def test_rolling_loglikelihood_is_finite(lm_eval_run):
    report, _, _, _ = lm_eval_run
    for sample in check(report, "simple_evaluate")["samples"]["eco_rolling"]:
        value = sample["resps"][0][0]
        value = value[0] if isinstance(value, list) else value
        assert isinstance(value, float) and math.isfinite(value) and value < 0, sample


def test_generate_until_produces_text(lm_eval_run):
    report, docs, _, _ = lm_eval_run
    samples = check(report, "simple_evaluate")["samples"]["eco_generate"]
    assert len(samples) == len(docs)
    texts = [s["resps"][0][0] for s in samples]
    assert all(isinstance(t, str) for t in texts), texts
    assert any(t.strip() for t in texts), f"every generation is empty: {texts}"
