"""lm-evaluation-harness: local tasks (YAML + jsonl written by the test) through ``simple_evaluate`` with
``model="hf"``, ``pretrained=<folder>``, ``trust_remote_code=True``."""

import math

from _client import Client

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

client = Client(packages=("torch", "transformers", "lm_eval", "datasets"))
spec = client.spec
ev = spec["lm_eval"]


def jsonable(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return repr(value)


@client.check("simple_evaluate")
def _():
    manager = TaskManager(include_path=ev["include_path"], include_defaults=False)
    out = simple_evaluate(
        model="hf",
        model_args={"pretrained": spec["folders"]["tied"], "trust_remote_code": True, "dtype": "float32"},
        tasks=ev["tasks"],
        task_manager=manager,
        batch_size=4,
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = {}
    for task, records in out["samples"].items():
        samples[task] = [
            {"doc_id": r["doc_id"], "resps": jsonable(r["resps"]), "filtered_resps": jsonable(r["filtered_resps"])}
            for r in sorted(records, key=lambda r: r["doc_id"])
        ]
    return {"results": jsonable(out["results"]), "samples": samples, "n_samples": jsonable(out.get("n-samples"))}
