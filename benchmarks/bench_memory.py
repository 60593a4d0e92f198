"""Peak memory of one training step (forward with labels, backward, AdamW step): ours vs ``GPT2LMHeadModel``.

Method.  ``tracemalloc`` does not see PyTorch's allocations, and PyTorch keeps no allocator statistics for the CPU, so
each side is measured in a fresh child process (no allocator cache or freed-but-kept memory of the other side), after
one warm-up step (AdamW's moment buffers exist), in two ways:

* **RSS**: the process's resident set before the step (``VmRSS``), and its high-water mark during the step
  (``VmHWM`` from ``/proc/self/status``, reset just before the step by writing ``5`` to ``/proc/self/clear_refs``).
  Reported: the peak increase, high-water mark minus resident set before.  It counts everything the process touches
  (tensors, allocator slack, library buffers).
* **Tensors**: ``torch.profiler`` with ``profile_memory=True``, ``export_memory_timeline(device="cpu")``: the largest
  total of tensor bytes allocated during the step and alive at one time (activations, gradients, temporaries).

Reported: both peaks in MB, and peer / ours (above 1: we use less).

    python benchmarks/bench_memory.py                      # 6-layer 384-wide GPT, batch 8 x 256
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import common  # noqa: F401  (sets the environment and sys.path)
import torch
from common import model_pair, print_header, report


def proc_status() -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {key: int(re.search(key + r":\s+(\d+) kB", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(side: str, size: str, batch: int, seq: int, activation: str) -> dict:
    """Runs in a fresh process: builds one side, warms up, measures one step."""
    from bench_train import make_step

    ours, peer = model_pair(size, activation=activation, check=False)
    model = peer if side == "peer" else ours
    del ours, peer
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    step = make_step(model, ids, pipeline_loss=side == "ours")  # "ours-model": the model's own loss
    step()  # warm-up: optimizer state, allocator, lazy initialisation

    before = proc_status()["VmRSS"]
    can_reset = reset_peak()
    step()
    rss_peak = proc_status()["VmHWM"] - before if can_reset else None

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        _, sizes = json.load(open(path))
    tensor_peak = max(sum(row) for row in sizes)
    return {"rss_peak": rss_peak, "tensor_peak": tensor_peak, "rss_before": before}


def measure(side: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--size", args.size, "--batch", str(args.batch),
           "--seq", str(args.seq), "--peer-activation", args.peer_activation]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {side} failed:\n{out.stderr[-2000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "gpt2-small"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--peer-activation", default="gelu_new")
    p.add_argument("--model-loss", action="store_true",
                   help="also measure ours with the model's own (transformers') loss instead of the workflows'")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = child(args.child, args.size, args.batch, args.seq, args.peer_activation)
        print("RESULT " + json.dumps(result))
        return result

    print_header(f"training-step peak memory: {args.size}, batch {args.batch} x {args.seq}, AdamW (fresh process each)")
    sides = ["peer", "ours"] + (["ours-model"] if args.model_loss else [])
    res = {side: measure(side, args) for side in sides}
    mb = 1e6
    for side, r in res.items():
        rss = "n/a" if r["rss_peak"] is None else f"{r['rss_peak'] / mb:.0f} MB"
        print(f"   {side:<12} RSS before the step {r['rss_before'] / mb:.0f} MB; peak increase during the step {rss}; "
              f"peak tensor bytes allocated in the step {r['tensor_peak'] / mb:.0f} MB")
    label = f"train-step memory {args.size} b{args.batch}x{args.seq}"
    if res["peer"]["rss_peak"] and res["ours"]["rss_peak"]:
        report(label + " (RSS peak increase)", f"GPT2LMHeadModel/{args.peer_activation}", res["peer"]["rss_peak"] / mb,
               res["ours"]["rss_peak"] / mb, "MB", higher_is_better=False)
    report(label + " (tensor peak)", f"GPT2LMHeadModel/{args.peer_activation}", res["peer"]["tensor_peak"] / mb,
           res["ours"]["tensor_peak"] / mb, "MB", higher_is_better=False)
    if args.model_loss:
        model = res["ours-model"]
        print(f"   ours with the model's own loss: RSS peak increase {model['rss_peak'] / mb:.0f} MB, "
              f"tensor peak {model['tensor_peak'] / mb:.0f} MB")
    return res


if __name__ == "__main__":
    main()
