"""transformers alone (4.57 or the latest 5.x): the saved folders through the Auto classes and pipelines, with
``trust_remote_code=True``, as a user of the Hub would load them."""

import torch
from _client import Client, tolist
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

client = Client(packages=("torch", "transformers", "tokenizers", "huggingface_hub"))
spec = client.spec
folders = spec["folders"]
N = spec["max_new_tokens"]
torch.set_num_threads(1)


def load(name):
    model = AutoModelForCausalLM.from_pretrained(folders[name], trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folders[name], trust_remote_code=True)
    return model, tokenizer


def new_tokens(out, prompt_len):
    return tolist(out[:, prompt_len:])


for name in spec["causal"]:
    loaded = {}

    @client.check(f"{name}/load")
    def _():
        model, tokenizer = loaded["model"], loaded["tokenizer"] = load(name)
        return {
            "model_class": type(model).__name__,
            "model_module": type(model).__module__,
            "model_type": model.config.model_type,
            "tokenizer_class": type(tokenizer).__name__,
            "model_max_length": tokenizer.model_max_length,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie": model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr(),
            "qkv_bias": model.config.qkv_bias,
        }

    if "model" not in loaded:
        continue
    model, tokenizer = loaded["model"], loaded["tokenizer"]

    @client.check(f"{name}/tokenize")
    def _():
        return [tokenizer(p).input_ids for p in spec["prompts"]]

    @client.check(f"{name}/logits")
    @torch.no_grad()
    def _():
        return tolist(model(torch.tensor(spec["logits_input"])).logits)

    @client.check(f"{name}/greedy")
    @torch.no_grad()
    def _():
        out = []
        for prompt in spec["prompts"]:
            enc = tokenizer(prompt, return_tensors="pt")
            gen = model.generate(**enc, max_new_tokens=N, do_sample=False)
            out.append(new_tokens(gen, enc.input_ids.shape[1])[0])
        return out

    @client.check(f"{name}/sampled")
    @torch.no_grad()
    def _():
        enc = tokenizer(spec["prompts"][1], return_tensors="pt")
        runs = []
        for _ in range(2):
            torch.manual_seed(spec["sample_seed"])
            # the folder's generation_config.json asks for sampling (top-k 50, temperature 0.8)
            gen = model.generate(**enc, max_new_tokens=N)
            runs.append(new_tokens(gen, enc.input_ids.shape[1])[0])
        torch.manual_seed(spec["sample_seed"] + 1)
        other = new_tokens(model.generate(**enc, max_new_tokens=N), enc.input_ids.shape[1])[0]
        return {"runs": runs, "other_seed": other, "do_sample": bool(model.generation_config.do_sample)}

    @client.check(f"{name}/left_padded")
    @torch.no_grad()
    def _():
        tokenizer.padding_side = "left"
        enc = tokenizer(spec["prompts"], padding=True, return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=N, do_sample=False)
        return {"batch": new_tokens(gen, enc.input_ids.shape[1]), "mask": tolist(enc.attention_mask)}

    @client.check(f"{name}/pipeline")
    def _():
        pipe = pipeline("text-generation", model=folders[name], trust_remote_code=True)
        return [pipe(p, max_new_tokens=N, do_sample=False)[0]["generated_text"] for p in spec["prompts"]]


@client.check("classifier/load")
def _():
    model = AutoModelForSequenceClassification.from_pretrained(folders["classifier"], trust_remote_code=True)
    return {
        "model_class": type(model).__name__,
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "label2id": dict(model.config.label2id),
        "num_labels": model.config.num_labels,
    }


@client.check("classifier/logits")
@torch.no_grad()
def _():
    model = AutoModelForSequenceClassification.from_pretrained(folders["classifier"], trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folders["classifier"], trust_remote_code=True)
    single = [tolist(model(**tokenizer(p, return_tensors="pt")).logits[0]) for p in spec["prompts"]]
    out = {"single": single}
    for side in ("right", "left"):
        tokenizer.padding_side = side
        enc = tokenizer(spec["prompts"], padding=True, return_tensors="pt")
        if side == "left":  # positions count real tokens only, as generate() does for a left-padded batch
            enc["position_ids"] = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out[f"batch_{side}"] = tolist(model(**enc).logits)
    return out


@client.check("classifier/pipeline")
def _():
    pipe = pipeline("text-classification", model=folders["classifier"], trust_remote_code=True)
    top = pipe(spec["long_text"], truncation=True)
    everything = pipe(spec["long_text"], truncation=True, top_k=None)
    if everything and isinstance(everything[0], list):  # some versions nest one list per input
        everything = everything[0]
    return {"top": top, "all": {d["label"]: d["score"] for d in everything}}
