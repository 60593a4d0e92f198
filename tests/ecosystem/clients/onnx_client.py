"""ONNX: ``torch.onnx.export`` (the dynamo exporter) of the causal LM loaded with trust_remote_code, with dynamic
batch and sequence, with and without an attention mask; onnxruntime runs it and is compared with PyTorch."""

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _client import Client
from transformers import AutoModelForCausalLM

client = Client(packages=("torch", "transformers", "onnx", "onnxscript", "onnxruntime"))
spec = client.spec
work = Path(tempfile.mkdtemp(prefix="onnx-", dir="."))
SHAPES = [(1, 5), (2, 17), (3, spec["context"])]  # the last fills every learned position
torch.set_num_threads(1)
OPTIONS = ort.SessionOptions()
OPTIONS.intra_op_num_threads = OPTIONS.inter_op_num_threads = 1


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def inputs(batch, seq, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 512, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch):  # left padding of different widths on every row but the first
        mask[row, : min(seq - 1, 3 * row)] = 0
    return ids, mask


for name in spec["causal"]:
    for with_mask in (False, True):
        label = f"{name}/{'mask' if with_mask else 'no_mask'}"

        @client.check(label)
        def _():
            model = Logits(AutoModelForCausalLM.from_pretrained(spec["folders"][name], trust_remote_code=True).eval())
            batch, seq = torch.export.Dim("batch", min=1, max=16), torch.export.Dim("seq", min=2, max=spec["context"])
            ids, mask = inputs(2, 8, 0)
            args = (ids, mask) if with_mask else (ids,)
            dynamic = {"input_ids": {0: batch, 1: seq}}
            if with_mask:
                dynamic["attention_mask"] = {0: batch, 1: seq}
            path = work / f"{label.replace('/', '-')}.onnx"
            program = torch.onnx.export(
                model, args, dynamo=True, dynamic_shapes=dynamic,
                input_names=list(dynamic), output_names=["logits"],
            )
            program.save(str(path))
            session = ort.InferenceSession(str(path), OPTIONS, providers=["CPUExecutionProvider"])
            results = []
            for i, (b, s) in enumerate(SHAPES):
                ids, mask = inputs(b, s, i + 1)
                feed = {"input_ids": ids.numpy()}
                if with_mask:
                    feed["attention_mask"] = mask.numpy()
                with torch.no_grad():
                    want = model(ids, mask if with_mask else None).numpy()
                (got,) = session.run(["logits"], feed)
                real = mask.numpy().astype(bool) if with_mask else np.ones((b, s), dtype=bool)
                results.append({
                    "shape": [b, s],
                    "out_shape": list(got.shape),
                    "max_diff_real": float(np.abs(got - want)[real].max()),
                    "max_diff_all": float(np.abs(got - want).max()),
                    "finite_onnx": bool(np.isfinite(got[real]).all()),
                    "finite_torch": bool(np.isfinite(want[real]).all()),
                })
            return {"inputs": [i.name for i in session.get_inputs()], "shapes": results}
