"""A plain load + generate in a fresh interpreter, recording every Python warning and every transformers log record
(from ``from_pretrained`` on: importing torch and transformers themselves is the environment's business)."""

import logging
import warnings

import torch
import transformers
from _client import Client
from transformers import AutoModelForCausalLM, AutoTokenizer

client = Client(packages=("torch", "transformers"))
folder = client.spec["folders"]["tied"]


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append({"logger": record.name, "level": record.levelname, "message": record.getMessage()})


@client.check("plain_load_generate")
def _():
    transformers.logging.set_verbosity_info()  # see info-level notes too; the test judges warnings and above
    recorder = Recorder()
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(recorder)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
            enc = tokenizer("The with statement", return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=8)
            text = tokenizer.decode(out[0])
    finally:
        library_logger.removeHandler(recorder)
    return {
        "text": text,
        "warnings": [
            {"category": w.category.__name__, "message": str(w.message), "file": f"{w.filename}:{w.lineno}"}
            for w in caught
        ],
        "logs": recorder.records,
        "torch": torch.__version__,
    }
