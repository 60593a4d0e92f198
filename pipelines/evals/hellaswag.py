"""HellaSwag (Zellers et al., 2019) as completion scoring: ``gpt-scratch evaluate --task hellaswag``.

Data: HellaSwag JSONL as published (``hellaswag_val.jsonl`` of github.com/rowanz/hellaswag) or any file
``pipelines.data`` reads as records (.jsonl/.json/.csv/.parquet), or a Hub dataset (its ``validation`` split); the
default is the Hub dataset ``Rowan/hellaswag``, validation split (10,042 items), which needs the network.  A record
has ``ctx`` (or ``ctx_a`` and ``ctx_b``: ``ctx`` is ``ctx_a + " " + ctx_b``, or ``ctx_a`` when ``ctx_b`` is
empty), ``endings`` (a list of the candidate endings, 4 in HellaSwag) and ``label`` (the index of the right one, an
int or a numeric string).

Scoring, for every item and every ending (the llm.c / lm-evaluation-harness "completion" style):

* the context is the record's ``ctx`` as published (no activity-label prefix and no WikiHow bracket clean-up, as in
  llm.c's ``hellaswag.py``; lm-eval's own ``hellaswag`` task adds both, so run ``--task lm-eval:hellaswag`` for
  numbers comparable to its table);
* the context and ``" " + ending`` are tokenised separately (the ending with its leading space, GPT-2 BPE's
  convention) and concatenated; an empty context becomes the end-of-text token;
* a sequence longer than the model's context is cut from the left: the ending is always kept whole;
* the score of an ending is the sum of the log-likelihoods of its tokens given everything before them.

Reported: ``acc`` -- argmax of the summed log-likelihood; ``acc_norm`` -- argmax of the log-likelihood divided by
the ending's length in UTF-8 bytes, without the leading space (lm-evaluation-harness's ``acc_norm`` divides by the
ending's length in characters, the same for HellaSwag's ASCII text, and its ``acc_bytes`` by bytes); and
``acc_norm_tokens`` -- argmax of the mean log-likelihood per ending token (llm.c's ``acc_norm``: its
``hellaswag.py`` gets 0.2955 for OpenAI's GPT-2 124M on the 10,042 validation items, and acc 0.2859).

The candidates of ``--batch-size`` items go through the model as one right-padded batch with an attention mask
(items sorted by length, so little is padding).
"""

from __future__ import annotations

import json
import math
import os

import torch

from ..data.sources import iter_records, resolve_source
from ..errors import UserError
from ..hub import offline_flag
from ..progress import Progress
from ..runs.folders import open_model, quiet_hf

HUB_ID = "Rowan/hellaswag"
HUB_SPLIT = "validation"
DOWNLOAD_HINT = (
    "download hellaswag_val.jsonl from https://github.com/rowanz/hellaswag/tree/master/data and pass it with "
    "--data hellaswag_val.jsonl"
)


def _hub_records(hub_id: str):
    """The ``validation`` split of a Hub dataset (``owner/name`` or ``owner/name:config``), streamed."""
    flag = offline_flag()
    if flag:
        raise UserError(
            f"HellaSwag data '{hub_id}' is a Hugging Face Hub dataset, which needs the network ({flag} is set): "
            + DOWNLOAD_HINT
        )
    import datasets  # only Hub and Parquet data need it

    repo, _, config = hub_id.partition(":")
    try:
        rows = datasets.load_dataset(repo, config or None, split=HUB_SPLIT, streaming=True)
        for index, record in enumerate(rows):
            yield f"record index {index}", record
    except ConnectionError as exc:
        raise UserError(f"the Hub could not be reached for '{hub_id}' ({exc}): " + DOWNLOAD_HINT) from None
    except (datasets.exceptions.DatasetNotFoundError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"Hub dataset '{hub_id}' ({HUB_SPLIT} split) could not be read: {first}") from None


def _records(spec: str | None):
    if spec is None:
        return HUB_ID, _hub_records(HUB_ID)
    kind, target = resolve_source(str(spec))
    if kind == "hub":
        return target, _hub_records(target)
    if target.is_dir():
        raise UserError(f"--data {target} is a folder: pass the HellaSwag JSONL file (e.g. hellaswag_val.jsonl)")
    return iter_records(str(target))


def parse_item(source: str, where: str, record) -> dict:
    """``{"ctx", "endings", "label"}`` from one HellaSwag record; a malformed one is a one-line ``UserError``."""

    def bad(what: str) -> UserError:
        return UserError(f"{source} {where}: {what} (a HellaSwag record has ctx or ctx_a+ctx_b, endings, label)")

    if not isinstance(record, dict):
        raise bad(f"expected an object, got {type(record).__name__}")
    ctx = record.get("ctx")
    if not isinstance(ctx, str):
        ctx_a, ctx_b = record.get("ctx_a"), record.get("ctx_b") or ""
        if not isinstance(ctx_a, str) or not isinstance(ctx_b, str):
            raise bad("no 'ctx' text (nor 'ctx_a' and 'ctx_b')")
        ctx = f"{ctx_a} {ctx_b}" if ctx_b else ctx_a
    endings = record.get("endings")
    if isinstance(endings, str):  # a CSV cell holding a JSON list

        try:
            endings = json.loads(endings)
        except ValueError:
            pass
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) and e for e in endings):
        raise bad("'endings' must be a list of at least two non-empty strings")
    label = record.get("label")
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int):
        raise bad(f"'label' must be the index of the right ending, got {label!r} (the test split has no labels)")
    if not 0 <= label < len(endings):
        raise bad(f"'label' {label} is not an index of the {len(endings)} endings")
    return {"ctx": ctx, "endings": endings, "label": label}


def read_items(spec: str | None, limit: int = 0) -> tuple[str, list[dict]]:
    """``(source name, items)``: the first ``limit`` items (all for 0)."""
    source, records = _records(spec)
    items = []
    for where, record in records:
        items.append(parse_item(source, where, record))
        if limit and len(items) >= limit:
            break
    if not items:
        raise UserError(f"{source} holds no HellaSwag items")
    return source, items


def encode_item(tokenizer, item: dict, context: int) -> tuple[list[tuple[list[int], int]], bool]:
    """``([(token ids, number of ending tokens at the end)] per ending, whether a context was cut)``; each sequence
    holds at most ``context + 1`` tokens (the model reads all but the last)."""
    ctx_ids = list(tokenizer(item["ctx"], add_special_tokens=False)["input_ids"])
    if not ctx_ids:
        ctx_ids = [tokenizer.eos_token_id]
    rows, cut = [], False
    for ending in item["endings"]:
        end_ids = list(tokenizer(" " + ending, add_special_tokens=False)["input_ids"])
        if len(end_ids) > context:
            raise UserError(
                f"a HellaSwag ending is {len(end_ids)} tokens long, more than the model's context ({context}): "
                "it cannot be scored whole"
            )
        seq = ctx_ids + end_ids
        cut = cut or len(seq) > context + 1
        rows.append((seq[-(context + 1) :], len(end_ids)))  # cut from the left, the ending kept
    return rows, cut


@torch.no_grad()
def score_rows(model, rows: list[tuple[list[int], int]], pad_id: int, device) -> list[float]:
    """Summed log-likelihood of the last ``n`` tokens of each sequence, all rows in one right-padded batch."""
    width = max(len(seq) for seq, _ in rows) - 1
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    row_idx, pos_idx, targets = [], [], []
    for r, (seq, n) in enumerate(rows):
        length = len(seq) - 1
        input_ids[r, :length] = torch.tensor(seq[:-1])
        mask[r, :length] = 1
        # token seq[j] is predicted by the logits at position j - 1
        for j in range(len(seq) - n, len(seq)):
            row_idx.append(r)
            pos_idx.append(j - 1)
            targets.append(seq[j])
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    row_t = torch.tensor(row_idx, device=device)
    picked = logits[row_t, torch.tensor(pos_idx, device=device)].float().log_softmax(-1)
    token_ll = picked.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
    sums = torch.zeros(len(rows), dtype=torch.float64, device=device).index_add_(0, row_t, token_ll.double())
    return sums.tolist()


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def evaluate_hellaswag(model_dir, data=None, limit: int = 0, batch_size: int = 8) -> dict:
    """Score a causal LM folder on HellaSwag items (see the module docstring); per-item results under
    ``per_item``."""
    source, items = read_items(data, limit)
    model, tokenizer = open_model(model_dir)
    device = next(model.parameters()).device
    context = model.config.max_position_embeddings
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with quiet_hf():  # long contexts are cut on purpose: no "longer than the maximum" warning
        encoded, cut = zip(*(encode_item(tokenizer, item, context) for item in items))
    order = sorted(range(len(items)), key=lambda i: -max(len(s) for s, _ in encoded[i]))
    logliks: list[list[float] | None] = [None] * len(items)
    batches = range(0, len(order), batch_size)
    bar = Progress(len(batches), "hellaswag", unit="batch", every=max(1, len(batches) // 20))
    for start in batches:
        chunk = order[start : start + batch_size]
        rows = [row for i in chunk for row in encoded[i]]
        sums = score_rows(model, rows, pad, device)
        first_row = 0  # each item's endings are consecutive rows of the batch
        for i in chunk:
            k = len(encoded[i])
            logliks[i] = sums[first_row : first_row + k]
            first_row += k
        bar.update()
    bar.close()
    results = []
    for item, enc, was_cut, lls in zip(items, encoded, cut, logliks):
        n_bytes = [len(e.encode("utf-8")) for e in item["endings"]]
        n_tokens = [n for _, n in enc]
        results.append(
            {
                "label": item["label"],
                "logliks": lls,
                "ending_bytes": n_bytes,
                "ending_tokens": n_tokens,
                "pred": _argmax(lls),
                "pred_norm": _argmax([ll / b for ll, b in zip(lls, n_bytes)]),
                "pred_norm_tokens": _argmax([ll / n for ll, n in zip(lls, n_tokens)]),
                "context_cut": was_cut,
            }
        )
    n = len(results)

    def accuracy(key: str) -> float:
        return sum(r[key] == r["label"] for r in results) / n

    acc = accuracy("pred")
    return {
        "kind": "hellaswag",
        "model": str(model_dir),
        "data": source,
        "split": HUB_SPLIT if data is None or not os.path.exists(str(data)) else None,
        "items": n,
        "contexts_cut": sum(r["context_cut"] for r in results),
        "acc": acc,
        "acc_stderr": math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else None,
        "acc_norm": accuracy("pred_norm"),
        "acc_norm_tokens": accuracy("pred_norm_tokens"),
        "acc_norm_convention": "log-likelihood / UTF-8 bytes of the ending (without its leading space)",
        "per_item": results,
    }
