"""The saved folders the clients load, and the main venv's answers they are compared with.

Built in the main venv with gpt-scratch's own code: ``train_bpe_tokenizer`` for the tokenizer,
``make_generation_config`` for the generation defaults and ``write_model_folder`` (what every training workflow calls
to write its run folder) for the models, so each folder is what a user gets from a run.  Three tiny random models
at the "tiny" preset (context 128):

* ``tied``        -- output head tied to the token embedding, biases on the query/key/value projection (GPT-2's layout)
* ``untied``      -- a separate output head, no QKV bias (the book's follow-up 163M layout)
* ``classifier``  -- ``GPTScratchForSequenceClassification`` with three named labels

Every parameter is redrawn at a larger scale (biases and LayerNorm gains included) so that the greedy paths have
clear margins and a conversion that dropped a bias or a gain could not go unnoticed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

CONTEXT = 128  # the "tiny" preset's max_position_embeddings
VOCAB = 512
MAX_NEW_TOKENS = 16
SAMPLE_SEED = 1234
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
CAUSAL = {
    "tied": dict(tie_word_embeddings=True, qkv_bias=True),
    "untied": dict(tie_word_embeddings=False, qkv_bias=False),
}


def corpus() -> list[str]:
    """Text every CPython ships (the demo's embedded corpus): the tokenizer's training data and the prompts."""
    import pydoc_data.topics

    return [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]


def build_tokenizer():
    """The package's byte-level BPE trainer, as a run folder gets it (GPT-2's tokenizer class, pad = eos, max length =
    context); the tests check those properties, so nothing is adjusted here."""
    from pipelines.runs.tokenizers import train_bpe_tokenizer

    return train_bpe_tokenizer(corpus(), VOCAB, model_max_length=CONTEXT)


def randomise(model, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
            elif "norm" in name and name.endswith("weight"):
                param.normal_(1.0, 0.1)
            else:
                param.normal_(0.0, 0.1)
    return model.eval()


def model_config(tokenizer, **overrides):
    from modeling_gpt_scratch import GPTScratchConfig

    eos = tokenizer.eos_token_id
    return GPTScratchConfig.from_preset(
        "tiny", vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def generation_config(model, tokenizer):
    """The run folder's generation defaults, as pretraining writes them (sampling, no fixed length)."""
    from pipelines.runs.folders import make_generation_config

    return make_generation_config(model.config, tokenizer.pad_token_id, temperature=0.8)


def save_run_folder(out: Path, model, tokenizer, workflow: str, generation=None) -> Path:
    from pipelines.runs.run_folder import write_model_folder

    return write_model_folder(
        out, model, tokenizer, metrics={"final": {}}, run_config={"preset": "tiny", "ecosystem_fixture": True},
        workflow=workflow, generation_config=generation,
    )


def prompts(tokenizer) -> list[str]:
    """Three prompts of different token lengths (5, 12 and 23 tokens: a padded batch has work to do)."""
    text = corpus()[3]
    ids = tokenizer(text).input_ids
    out = []
    for start, length in ((0, 5), (40, 12), (90, 23)):
        out.append(tokenizer.decode(ids[start: start + length]))
    return out


def long_text(tokenizer, at_least: int = 3 * CONTEXT) -> str:
    text = " ".join(corpus()[5:12])[:3000]
    assert len(tokenizer(text).input_ids) >= at_least
    return text


@torch.no_grad()
def manual_greedy(model, ids: list[int], steps: int) -> list[int]:
    """Argmax of a full forward pass, token by token: no cache, no GenerationMixin."""
    seq = list(ids)
    for _ in range(steps):
        logits = model(torch.tensor([seq]), use_cache=False).logits
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(ids):]


@torch.no_grad()
def causal_reference(model, tokenizer, texts: list[str], logits_input: list[list[int]]) -> dict:
    ref = {"prompt_ids": [tokenizer(t).input_ids for t in texts]}
    ref["logits"] = model(torch.tensor(logits_input), use_cache=False).logits.tolist()
    greedy = []
    for ids in ref["prompt_ids"]:
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        greedy.append(out[0, len(ids):].tolist())
    ref["greedy"] = greedy
    ref["manual_greedy"] = [manual_greedy(model, ids, MAX_NEW_TOKENS) for ids in ref["prompt_ids"]]
    ref["pipeline_text"] = [t + tokenizer.decode(g) for t, g in zip(texts, greedy)]
    return ref


@torch.no_grad()
def classifier_reference(model, tokenizer, texts: list[str], long: str) -> dict:
    ids = tokenizer(long).input_ids[:CONTEXT]  # truncation=True keeps the first `model_max_length` tokens
    probs = model(torch.tensor([ids])).logits.softmax(-1)[0]
    single = [model(torch.tensor([tokenizer(t).input_ids])).logits[0].tolist() for t in texts]
    return {
        "long_ids_len": len(tokenizer(long).input_ids),
        "long_probs": {LABELS[i]: float(p) for i, p in enumerate(probs)},
        "long_label": LABELS[int(probs.argmax())],
        "logits": single,
    }


@dataclass
class Fixtures:
    root: Path
    folders: dict  # name -> Path: "tied", "untied", "classifier"
    reference: dict
    tokenizer: object = None  # the tokenizer saved in every folder
    models: dict = field(default_factory=dict)  # name -> the in-memory model that was saved (main venv only)

    def spec(self, **extra) -> dict:
        """What every client needs: the folders and the inputs (never the expected answers)."""
        ref = self.reference
        return {
            "folders": {k: str(v) for k, v in self.folders.items()},
            "causal": list(CAUSAL),
            "prompts": ref["prompts"],
            "logits_input": ref["logits_input"],
            "long_text": ref["long_text"],
            "train_texts": ref["train_texts"],
            "max_new_tokens": MAX_NEW_TOKENS,
            "sample_seed": SAMPLE_SEED,
            "context": CONTEXT,
            **extra,
        }


def build(root: Path) -> Fixtures:
    from modeling_gpt_scratch import GPTScratchForCausalLM, GPTScratchForSequenceClassification

    root = Path(root)
    tokenizer = build_tokenizer()
    texts = prompts(tokenizer)
    long = long_text(tokenizer)
    stream = tokenizer(" ".join(corpus()[20:24])).input_ids
    logits_input = [stream[:24], stream[100:124]]
    train_texts = [text[:300] for text in corpus()[30:46]]
    reference = {
        "prompts": texts, "logits_input": logits_input, "long_text": long, "labels": LABELS, "train_texts": train_texts,
    }
    folders, models = {}, {}
    for seed, (name, overrides) in enumerate(CAUSAL.items()):
        model = randomise(GPTScratchForCausalLM(model_config(tokenizer, **overrides)), seed)
        folders[name] = save_run_folder(root / name, model, tokenizer, "pretrain", generation_config(model, tokenizer))
        reference[name] = causal_reference(model, tokenizer, texts, logits_input)
        models[name] = model
    config = model_config(
        tokenizer, num_labels=len(LABELS), id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()}
    )
    classifier = randomise(GPTScratchForSequenceClassification(config), 7)
    folders["classifier"] = save_run_folder(root / "classifier", classifier, tokenizer, "finetune-classifier")
    reference["classifier"] = classifier_reference(classifier, tokenizer, texts, long)
    models["classifier"] = classifier
    (root / "reference.json").write_text(json.dumps(reference))
    return Fixtures(root, folders, reference, tokenizer, models)
