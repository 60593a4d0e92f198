"""The programs ``gpt-scratch publish`` runs in a clean Python to prove that exactly the files it sends load and run
through ``trust_remote_code`` (:func:`pipelines.publish.verify_remote_code` runs them and reads their result line).

They run with ``python -I`` in an empty working folder: no PYTHONPATH, no user site, no working folder on
``sys.path``, and the installed model package blocked, so only the folder's own code can be what loads.
"""

VERIFY_MARK = "GPT_SCRATCH_VERIFY "

# a causal model must generate; the result is printed on one line that starts with VERIFY_MARK
_VERIFY_SCRIPTS_END = r"""    else:
        enc = tokenizer("Every effort moves you", return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:]
        if new.numel() == 0:
            raise RuntimeError("generate produced no new tokens")
        result["generated"] = tokenizer.decode(new)
""" + f"print({VERIFY_MARK!r} + json.dumps(result))\n"

VERIFY_SCRIPT = r"""
import json, sys
sys.modules["modeling_gpt_scratch"] = None
sys.modules["pipelines"] = None
folder, kind = sys.argv[1], sys.argv[2]
import torch
from transformers import AutoConfig, AutoTokenizer
torch.manual_seed(0)
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
if kind == "classifier":
    from transformers import AutoModelForSequenceClassification as Auto
else:
    from transformers import AutoModelForCausalLM as Auto
model = Auto.from_pretrained(folder, trust_remote_code=True)
for obj in (config, model):
    if not type(obj).__module__.startswith("transformers_modules"):
        raise RuntimeError(f"{type(obj).__name__} came from {type(obj).__module__}, not from the folder's code")
result = {"model_class": type(model).__name__, "config_class": type(config).__name__}
texts = ["Congratulations, you won a free prize! Call now.", "Are we still meeting for lunch tomorrow?"]
with torch.no_grad():
    if kind == "classifier":
        enc = tokenizer(texts[:1], return_tensors="pt")
        label = model.config.id2label[int(model(**enc).logits.argmax(-1)[0])]
        from transformers import pipeline
        classify = pipeline("text-classification", model=folder, trust_remote_code=True)
        predictions = classify(texts)
        labels = set(model.config.id2label.values())
        if not all(p["label"] in labels for p in predictions):
            raise RuntimeError(f"the pipeline returned labels {predictions} outside {sorted(labels)}")
        result["predictions"] = [label] + [p["label"] for p in predictions]
""" + _VERIFY_SCRIPTS_END


# the same for a LoRA adapter: the base folder through remote code, then the adapter through PEFT.
VERIFY_ADAPTER_SCRIPT = r"""
import json, sys
sys.modules["modeling_gpt_scratch"] = None
sys.modules["pipelines"] = None
folder, kind, base, labels = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import torch
from peft import PeftModel
from transformers import AutoTokenizer
torch.manual_seed(0)
if kind == "classifier":
    from transformers import AutoModelForSequenceClassification as Auto
    extra = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                 label2id={name: i for i, name in enumerate(labels)})
else:
    from transformers import AutoModelForCausalLM as Auto
    extra = {}
base_model = Auto.from_pretrained(base, trust_remote_code=True, **extra)
if not type(base_model).__module__.startswith("transformers_modules"):
    raise RuntimeError(f"{type(base_model).__name__} came from {type(base_model).__module__}, not the base's code")
model = PeftModel.from_pretrained(base_model, folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
with open(folder + "/adapter_config.json", encoding="utf-8") as f:
    named = json.load(f)["base_model_name_or_path"]
result = {"model_class": type(base_model).__name__, "adapter_class": type(model).__name__, "base": named}
texts = ["Congratulations, you won a free prize! Call now.", "Are we still meeting for lunch tomorrow?"]
with torch.no_grad():
    if kind == "classifier":
        model.config.pad_token_id = tokenizer.pad_token_id
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        predictions = [labels[int(i)] for i in model(**enc).logits.argmax(-1)]
        result["predictions"] = predictions
""" + _VERIFY_SCRIPTS_END
