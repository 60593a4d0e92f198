"""PEFT on a folder loaded with trust_remote_code: LoRA (train, save, reload, merge), prompt tuning and prefix
tuning (generation through the adapted model)."""

import tempfile
from pathlib import Path

import torch
from _client import Client
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft import LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

client = Client(packages=("torch", "transformers", "peft", "accelerate"))
spec = client.spec
folder = spec["folders"]["tied"]
N = spec["max_new_tokens"]
work = Path(tempfile.mkdtemp(prefix="peft-", dir="."))
torch.set_num_threads(1)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
logits_input = torch.tensor(spec["logits_input"])
prompt = tokenizer(spec["prompts"][2], return_tensors="pt")
prompt_len = prompt.input_ids.shape[1]


def load():
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()


@torch.no_grad()
def logits(model):
    return model(input_ids=logits_input).logits.float()


def diff(a, b):
    return float((a - b).abs().max())


@torch.no_grad()
def greedy(model, **kwargs):
    out = model.generate(**prompt, max_new_tokens=N, do_sample=False, **kwargs)
    return {"shape": list(out.shape), "new": out[0, -N:].tolist()}


@torch.no_grad()
def manual_greedy(model):
    """Argmax of the adapted model's own forward (it adds the virtual tokens), no cache, one token at a time."""
    seq = prompt.input_ids
    for _ in range(N):
        out = model(input_ids=seq, attention_mask=torch.ones_like(seq))
        seq = torch.cat([seq, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[0, prompt_len:].tolist()


@client.check("lora")
def _():
    torch.manual_seed(0)
    base = load()
    before = logits(base)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["qkv_proj", "out_proj", "fc_in", "fc_out"],
    )
    model = get_peft_model(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    batch = tokenizer(spec["train_texts"][:8], padding=True, truncation=True, max_length=64, return_tensors="pt")
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    adapter = logits(model)
    model.save_pretrained(work / "lora")
    saved = sorted(p.name for p in (work / "lora").iterdir())

    reloaded = PeftModel.from_pretrained(load(), work / "lora").eval()
    reloaded_logits = logits(reloaded)
    merged = reloaded.merge_and_unload().eval()
    merged_logits = logits(merged)
    merged.save_pretrained(work / "merged")
    tokenizer.save_pretrained(work / "merged")
    merged_folder = AutoModelForCausalLM.from_pretrained(work / "merged", trust_remote_code=True).eval()
    return {
        "trainable": trainable,
        "total": total,
        "losses": losses,
        "saved_files": saved,
        "merged_class": type(merged).__name__,
        "adapter_vs_base": diff(adapter, before),
        "reloaded_vs_adapter": diff(reloaded_logits, adapter),
        "merged_vs_adapter": diff(merged_logits, reloaded_logits),
        "merged_folder_vs_merged": diff(logits(merged_folder), merged_logits),
        "merged_folder_files": sorted(p.name for p in (work / "merged").iterdir()),
    }


def gpt2_control():
    """transformers' own GPT-2 at the same size, randomised the same way: tells a PEFT/transformers problem from ours."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=spec["context"], n_embd=64, n_layer=2, n_head=4,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
            elif "ln" in name and name.endswith("weight"):
                param.normal_(1.0, 0.1)
            else:
                param.normal_(0.0, 0.1)
    return model.eval()


def prompt_learning(make_base, config):
    base = make_base()
    base_new = greedy(base)["new"]
    torch.manual_seed(0)
    model = get_peft_model(base, config).eval()
    generated = greedy(model)
    return {"generate": generated, "manual": manual_greedy(model), "base": base_new, "prompt_len": prompt_len}


def prompt_config():
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=8, prompt_tuning_init="RANDOM")


def prefix_config():
    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=8)


for label, make_base in (("", load), ("gpt2_control/", gpt2_control)):
    client.check(f"{label}prompt_tuning")(lambda: prompt_learning(make_base, prompt_config()))
    client.check(f"{label}prefix_tuning")(lambda: prompt_learning(make_base, prefix_config()))
