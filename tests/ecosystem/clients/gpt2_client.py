"""Plain transformers GPT-2 classes on folders written by ``gpt-scratch convert --to hf-gpt2``: no remote code, no
trust_remote_code; logits and greedy tokens are compared with the main venv's (gpt-scratch) numbers by the test."""

from pathlib import Path

import torch
from _client import Client, tolist
from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

client = Client(packages=("torch", "transformers"))
spec = client.spec
exports = spec["exports"]
N = spec["max_new_tokens"]
torch.set_num_threads(1)


def folder_facts(folder, model):
    return {
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "model_type": model.config.model_type,
        "auto_map": getattr(model.config, "auto_map", None),
        "python_files": sorted(p.name for p in Path(folder).glob("*.py")),
        "tie": model.get_output_embeddings() is not None
        and model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr(),
    }


for name in spec["causal"]:
    folder = exports[name]

    @client.check(f"{name}/causal")
    @torch.no_grad()
    def _():
        model = GPT2LMHeadModel.from_pretrained(folder).eval()
        out = folder_facts(folder, model)
        out["logits"] = tolist(model(torch.tensor(spec["logits_input"])).logits)
        greedy = []
        for ids in spec["prompt_ids"][name]:
            x = torch.tensor([ids])
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False)
            greedy.append(tolist(gen[0, len(ids):]))
        out["greedy"] = greedy
        return out

    @client.check(f"{name}/tokenizer")
    def _():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return {"class": type(tokenizer).__name__, "ids": [tokenizer(p).input_ids for p in spec["prompts"]]}


@client.check("classifier/classifier")
@torch.no_grad()
def _():
    folder = exports["classifier"]
    model = GPT2ForSequenceClassification.from_pretrained(folder).eval()
    out = folder_facts(folder, model)
    out["id2label"] = {str(k): v for k, v in model.config.id2label.items()}
    out["logits"] = [tolist(model(torch.tensor([ids])).logits[0]) for ids in spec["prompt_ids"]["classifier"]]
    return out
