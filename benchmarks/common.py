"""Shared helpers of the side-by-side benchmarks: machine description, model pairs with identical weights, and an
interleaved timer.

Every benchmark times *our* code and its *peer* in the same process, on the same inputs, alternating which goes first
(ABBA order) so that slow drift of the machine (thermal state, other processes, allocator warm-up) hits both alike.
The figure reported for each side is the median over the repeats; the ratio is ours / peer for throughputs (higher is
better for us) and peer / ours for times.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Model sizes the benchmarks use.  "small" is a 6-layer, 384-wide GPT with GPT-2's vocabulary: big enough that the
# matrix multiplications are real work, small enough that every benchmark ends in minutes on 2 CPU cores.
# "gpt2-small" is OpenAI's 124M shape (12 layers, 768 wide), "gpt2-small-untied" the 163M preset.
SIZES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6),
    "gpt2-small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "gpt2-small-untied": dict(  # the 163M preset: untied head, no query/key/value bias
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, tie_word_embeddings=False, qkv_bias=False
    ),
}
VOCAB_SIZE = 50257
CONTEXT = 1024
EOS_ID = 50256


def machine() -> dict:
    """What the numbers were measured on."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores other processes kept busy during the last ``seconds`` (this process sleeps meanwhile).  The
    load average is no measure here: it still counts the benchmark that ran just before."""
    first = _cpu_ticks()
    time.sleep(seconds)
    second = _cpu_ticks()
    if first is None or second is None or second[1] == first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1)


def print_header(title: str) -> None:
    m = machine()
    busy = busy_cores()
    print(f"== {title}")
    print(
        f"   machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; "
        f"python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; "
        f"cores busy with other work: {'?' if busy is None else f'{busy:.2f}'}"
    )
    if busy is not None and busy > 0.25:
        # with other processes on the cores, every parallel op waits for a descheduled thread: figures become noise
        print("   WARNING: other processes are using the CPU: timings are unreliable (run again on an idle machine)")


# ----------------------------------------------------------------------------------------------------------------
# Models with identical weights
# ----------------------------------------------------------------------------------------------------------------


def our_config(size: str, **overrides):
    from modeling_gpt_scratch import GPTScratchConfig

    cfg = dict(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=CONTEXT,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        **SIZES[size],
    )
    cfg.update(overrides)
    return GPTScratchConfig(**cfg)


def peer_config(ours, activation: str = "gelu_new"):
    """The ``transformers.GPT2Config`` of the same architecture (``gpt-scratch convert --to hf-gpt2``'s), dropouts off.

    ``activation="gelu_new"`` is what OpenAI's GPT-2 checkpoints ship with (the tanh approximation written out in
    Python); ``"gelu_pytorch_tanh"`` is the same function through PyTorch's fused kernel.
    """
    from pipelines.formats.gpt2_export import CAUSAL_LM, gpt2_config_from_ours

    config = gpt2_config_from_ours(ours, CAUSAL_LM, ours.pad_token_id)
    config.update({"activation_function": activation, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    return config


def ours_to_peer_state_dict(state: dict, config) -> dict:
    """Our parameters in ``GPT2LMHeadModel``'s names and layout (the export's mapping), the head included."""
    from pipelines.formats.gpt2_export import map_to_hf_gpt2_state_dict

    mapped, unknown = map_to_hf_gpt2_state_dict(state, config)
    assert not unknown, unknown
    mapped["lm_head.weight"] = state["lm_head.weight"]
    return mapped


def model_pair(size: str = "small", seed: int = 0, activation: str = "gelu_new", check: bool = True):
    """``(ours, peer)``: a ``GPTScratchForCausalLM`` and a ``GPT2LMHeadModel`` holding the same weights, both in eval
    mode.  With ``check`` their logits on a random batch must agree to 1e-4."""
    from transformers import GPT2LMHeadModel

    from modeling_gpt_scratch import GPTScratchForCausalLM

    torch.manual_seed(seed)
    ours = GPTScratchForCausalLM(our_config(size)).eval()
    peer = GPT2LMHeadModel(peer_config(ours.config, activation)).eval()
    missing, unexpected = peer.load_state_dict(
        ours_to_peer_state_dict(ours.state_dict(), ours.config), strict=False
    )
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"weight copy incomplete: missing {missing}, unexpected {unexpected}")
    if ours.config.tie_word_embeddings:
        assert peer.lm_head.weight.data_ptr() == peer.transformer.wte.weight.data_ptr(), "peer head not tied"
    if check:
        ids = torch.randint(0, ours.config.vocab_size, (2, 33), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            a, b = ours(ids).logits, peer(ids).logits
        diff = (a - b).abs().max().item()
        if diff > 1e-4:
            raise RuntimeError(f"ours and the peer disagree: max |logit difference| {diff:.2e} > 1e-4")
    return ours, peer


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def interleaved(runs: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Call each function of ``runs`` (name -> no-argument callable) ``warmup`` times, then ``repeats`` times in
    alternating order (A B, B A, A B, ...); returns name -> list of wall-clock seconds, one per repeat."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs) -> float:
    return statistics.median(xs)


def spread(xs) -> str:
    """min-max as a percentage of the median: how noisy a figure is."""
    m = median(xs)
    return f"±{50 * (max(xs) - min(xs)) / m:.0f}%" if m else "n/a"


ROWS: list[dict] = []
"""Result rows collected by :func:`report` (``run_all`` prints them as one table)."""


def report(benchmark: str, peer_name: str, peer: float, ours: float, unit: str, higher_is_better: bool = True, note=""):
    """Print one result line: the peer's figure, ours and the ratio (>1 means we are faster)."""
    ratio = ours / peer if higher_is_better else peer / ours
    row = dict(benchmark=benchmark, peer_name=peer_name, peer=peer, ours=ours, unit=unit, ratio=ratio, note=note)
    ROWS.append(row)
    print(f"   {benchmark:<34} peer ({peer_name}) {peer:>10.4g} {unit:<8} ours {ours:>10.4g} {unit:<8} "
          f"ratio {ratio:5.2f}x{('  ' + note) if note else ''}", flush=True)
    return row


def run_main_or_peer_child(main, peer_main) -> None:
    """The ``__main__`` of a user-level benchmark: the benchmark itself, or (``--peer-child``) its peer's side,
    which the benchmark starts as a process of its own."""
    if "--peer-child" in sys.argv:
        sys.argv.remove("--peer-child")
        peer_main(sys.argv[1:])
    else:
        main()
