"""The decoding engine: every workflow that writes text (``generate``, ``chat``, ``respond``, ``serve``, the samples
printed during training) decodes through :class:`Engine`.

One call decodes a batch of requests together:

* **prefill** -- the prompts, left-padded into one batch, in one forward pass that fills a preallocated key/value
  buffer (:class:`KVBuffer`: one (batch, heads, length, head_dim) tensor per layer, written in place -- no
  concatenation per step as in ``DynamicCache``);
* **decode** -- one token per running row and step, through the model's own ``forward`` with an explicit 4-D mask
  and ``position_ids`` (so each row's positions count from its own first token, whatever the padding);
* **one sampler** (:func:`sample_next_token`): greedy at temperature 0, else temperature, then top-k, then top-p
  (nucleus sampling, Holtzman et al., 2020), the order ``GenerationMixin`` applies them in, from each request's own
  seeded ``torch.Generator``;
* **per-row stop** -- a row ends at an end-of-text token, at its own ``max_new_tokens``, or when its text reaches
  one of its stop strings; finished rows leave the batch (their cache rows are dropped), the others go on;
* **streaming** -- ``on_text(request, piece)`` receives each request's text as it is decoded, never splitting a
  multi-byte character and never showing any part of a stop string.

Greedy tokens equal ``GenerationMixin.generate``'s on the same model, left padding included (tested).  The model
file stays free of speed work: what makes this fast is here -- one batch for many requests, a buffer written in
place, masks and positions computed once per call, and no per-step logits processors or stopping criteria.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

# transformers 5.24 renamed forward's cache argument from ``past_key_values`` to ``cache``.
CACHE_ARGUMENT = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


# ----------------------------------------------------------------------------------------------------------------
# the sampler
# ----------------------------------------------------------------------------------------------------------------


def sample_next_token(logits, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, generator=None):
    """The next token of each row of ``logits`` (batch, vocab): argmax at ``temperature`` 0, else one draw.

    The distribution is ``GenerationMixin``'s: logits divided by ``temperature``, then only the ``top_k`` largest
    kept (0: all), then the smallest set of the likeliest tokens whose probability reaches ``top_p``.  With top-k the
    nucleus is found among the k candidates alone, so no step sorts the whole vocabulary.  A temperature below 1e-5
    or ``top_p <= 0`` leaves one candidate: the argmax (rather than overflowing logits or an empty nucleus).
    """
    logits = logits.float()
    if not temperature or temperature < 1e-5 or top_k == 1 or top_p <= 0:  # no spread left: the likeliest token
        return logits.argmax(-1)
    logits = logits / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        values, indices = torch.topk(logits, top_k)  # sorted, largest first
    elif top_p < 1.0:
        values, indices = torch.sort(logits, descending=True)
    else:
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
    if top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the likelier candidates; 0 for the first
        values = values.masked_fill(mass_before >= top_p, float("-inf"))
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)
    return indices.gather(-1, choice).squeeze(-1)


def make_generator(seed: int | None = None, device="cpu"):
    """A ``torch.Generator`` for sampling: seeded when ``seed`` is given, otherwise from fresh entropy."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


# ----------------------------------------------------------------------------------------------------------------
# the key/value buffer
# ----------------------------------------------------------------------------------------------------------------


class KVBuffer:
    """A key/value cache preallocated for a whole call: one (batch, heads, length, head_dim) buffer per layer.

    It offers what the model's attention uses -- ``update(keys, values, layer_idx)`` stores the new entries and
    returns the filled part, ``get_seq_length()`` -- and :meth:`keep_rows` drops finished rows.  The engine always
    passes a 4-D mask, so transformers' mask builder never needs more of a cache than this.
    """

    def __init__(self, num_layers: int, length: int):
        self.length = length
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.filled = [0] * num_layers

    def update(self, keys, values, layer_idx: int, *args, **kwargs):
        start = self.filled[layer_idx]
        end = start + keys.shape[-2]
        if end > self.length:
            raise ValueError(f"KVBuffer holds {self.length} positions; this step would fill {end}")
        if self.keys[layer_idx] is None:  # allocated on first use, in the model's dtype and device
            shape = (*keys.shape[:-2], self.length, keys.shape[-1])
            self.keys[layer_idx], self.values[layer_idx] = keys.new_empty(shape), values.new_empty(shape)
        key_buffer, value_buffer = self.keys[layer_idx], self.values[layer_idx]
        key_buffer.narrow(-2, start, end - start).copy_(keys)
        value_buffer.narrow(-2, start, end - start).copy_(values)
        self.filled[layer_idx] = end
        return key_buffer.narrow(-2, 0, end), value_buffer.narrow(-2, 0, end)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.filled[layer_idx]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (an index tensor), in that order."""
        for i, (keys, values) in enumerate(zip(self.keys, self.values)):
            if keys is not None:
                self.keys[i], self.values[i] = keys.index_select(0, rows), values.index_select(0, rows)


# ----------------------------------------------------------------------------------------------------------------
# text, pushed one token at a time
# ----------------------------------------------------------------------------------------------------------------


class IncrementalDecoder:
    """Token ids in, text pieces out, never splitting a multi-byte character.

    Byte-level BPE splits a character (é, an emoji) across tokens: each new token is decoded together with the
    tokens since the last released boundary, and the new text is released only when it does not end in U+FFFD (an
    incomplete UTF-8 sequence).  The pieces join to exactly ``tokenizer.decode(all ids)``.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # tokens before `start` are released and no longer decoded
        self.released = 0  # tokens in ids[start:released] are released; their text is `done`
        self.done = ""

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self._decode(self.ids[self.start :])
        if len(text) > len(self.done) and not text.endswith("\ufffd"):
            piece = text[len(self.done) :]
            self.start, self.released = self.released, len(self.ids)
            self.done = self._decode(self.ids[self.start : self.released])
            return piece
        return ""

    def flush(self) -> str:
        """What is still held at the end, as it decodes."""
        if self.released < len(self.ids):
            text = self._decode(self.ids[self.start :])
            self.released = len(self.ids)
            if len(text) > len(self.done):
                return text[len(self.done) :]
        return ""


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the beginning of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class StopStringFilter:
    """Text pieces in, text pieces out, ending just before the first of ``stops``.

    Text that could still become a stop string (a trailing ``"\\nUs"`` when the stop is ``"\\nUser:"``) is held back
    until the next piece decides, so nothing of a stop string is ever released.  ``stopped`` is the stop string found.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.pending = ""
        self.stopped: str | None = None

    def push(self, piece: str) -> str:
        if self.stopped is not None:
            return ""
        if not self.stops:
            return piece
        self.pending += piece
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            index, self.stopped = min(hits)
            released, self.pending = self.pending[:index], ""
            return released
        keep = _held_back(self.pending[-self.longest :], self.stops)
        released = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(released) :]
        return released

    def flush(self) -> str:
        released, self.pending = ("" if self.stopped is not None else self.pending), ""
        return released


class WhitespaceTrimmer:
    """Drops leading whitespace and holds back trailing whitespace until non-space text follows it, so a chat reply
    streams exactly the text that is stored."""

    def __init__(self):
        self.started = False
        self.held = ""

    def push(self, piece: str) -> str:
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self.started = True
        text = self.held + piece
        body = text.rstrip()
        self.held = text[len(body) :]
        return body

    def flush(self) -> str:
        return ""


def _pull(stage, pieces: Iterable) -> Iterator[str]:
    for piece in pieces:
        out = stage.push(piece)
        if out:
            yield out
    tail = stage.flush()
    if tail:
        yield tail


def decode_incrementally(tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """:class:`IncrementalDecoder` over an iterable of token ids."""
    return _pull(IncrementalDecoder(tokenizer), token_ids)


def cut_at_stop_strings(pieces: Iterable[str], stops: Sequence[str], state: dict | None = None) -> Iterator[str]:
    """:class:`StopStringFilter` over an iterable of pieces; ``state["stop"]`` is set to the stop string found."""
    stage = StopStringFilter(stops)
    for piece in pieces:
        out = stage.push(piece)
        if out:
            yield out
        if stage.stopped is not None:
            if state is not None:
                state["stop"] = stage.stopped
            return
    tail = stage.flush()
    if tail:
        yield tail


def trim_whitespace(pieces: Iterable[str]) -> Iterator[str]:
    """:class:`WhitespaceTrimmer` over an iterable of pieces."""
    return _pull(WhitespaceTrimmer(), pieces)


# ----------------------------------------------------------------------------------------------------------------
# requests and the engine
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Request:
    """One prompt to continue, its decoding settings, and (after :meth:`Engine.run`) its result.

    ``prompt_ids`` must fit the context with room for one new token; ``max_new_tokens`` is cut to the room left.
    ``temperature`` 0 decodes greedily.  ``stop`` strings end the text before them; ``trim`` strips whitespace
    around it (chat).  Results: ``tokens`` (new token ids, end-of-text excluded), ``text``, ``finish_reason``
    ("stop": end-of-text or a stop string; "length": ``max_new_tokens`` reached; "cancelled": ``cancelled`` was set
    while it ran -- a server's client went away -- and its row left the batch at the next step).
    """

    prompt_ids: list[int]
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    generator: torch.Generator | None = None
    stop: Sequence[str] = ()
    trim: bool = False
    tokens: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    truncated: int = 0  # prompt tokens dropped from the left to fit the context (see Engine.request)
    cancelled: bool = False

    def _start_text(self, tokenizer) -> None:
        self._stages = [IncrementalDecoder(tokenizer), StopStringFilter(self.stop)]
        if self.trim:
            self._stages.append(WhitespaceTrimmer())

    def _push_text(self, token: int | None) -> str:
        """Run one token through the text stages (``None``: the end, releasing what they hold); returns the piece
        that comes out."""
        first, *rest = self._stages
        piece = first.push(token) if token is not None else first.flush()
        for stage in rest:
            piece = stage.push(piece) if piece else ""
            if token is None:
                piece += stage.flush()
        self.text += piece
        return piece

    @property
    def stopped_by_string(self) -> bool:
        return self._stages[1].stopped is not None


class Engine:
    """Decodes batches of :class:`Request` on ``model`` (any causal LM of transformers with learned or rotary
    positions that takes ``position_ids`` and a 4-D mask; built for gpt-scratch's).

    ``tokenizer`` turns tokens into streamed text; ``eos_ids`` end a row (default: the model's and tokenizer's
    end-of-text ids).
    """

    def __init__(self, model, tokenizer, eos_ids: Iterable[int] | None = None):
        self.model = getattr(model, "module", model)
        self.tokenizer = tokenizer
        self.context = context_length(self.model)
        self.eos_ids = set(eos_token_ids(self.model, tokenizer) if eos_ids is None else eos_ids)
        pad = tokenizer.pad_token_id if tokenizer is not None else None
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def request(self, prompt, **settings) -> Request:
        """A :class:`Request` for ``prompt`` (text or token ids) that fits the context: an empty prompt starts after
        end-of-text (GPT-2's convention), and a prompt too long to leave room for ``min(max_new_tokens, context //
        4)`` new tokens loses its oldest tokens (``request.truncated`` says how many)."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            bos = self.tokenizer.bos_token_id if self.tokenizer is not None else None
            ids = [bos if bos is not None else min(self.eos_ids, default=0)]
        new = max(1, min(int(settings.pop("max_new_tokens", 128)), self.context - 1))
        truncated = 0
        if len(ids) + new > self.context:
            reserve = min(new, max(1, self.context // 4))
            if len(ids) > self.context - reserve:
                truncated = len(ids) - (self.context - reserve)
                ids = ids[truncated:]
            new = self.context - len(ids)
        return Request(prompt_ids=ids, max_new_tokens=new, truncated=truncated, **settings)

    @torch.no_grad()
    def run(self, requests: Sequence[Request], on_text: Callable[[Request, str], None] | None = None) -> list[Request]:
        """Decode ``requests`` together; returns them, filled in.  ``on_text(request, piece)`` streams the text."""
        requests = list(requests)
        if not requests:
            return requests
        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        try:
            self._run(requests, on_text, model, device)
        finally:
            if was_training:
                model.train()
        return requests

    def _run(self, requests, on_text, model, device) -> None:
        for request in requests:
            if not request.prompt_ids or len(request.prompt_ids) >= self.context:
                raise ValueError(
                    f"a prompt of {len(request.prompt_ids)} tokens does not leave room for one new token in the "
                    f"model's context of {self.context}: use Engine.request() to fit it"
                )
            request.max_new_tokens = max(1, min(request.max_new_tokens, self.context - len(request.prompt_ids)))
            request.tokens, request.text, request.finish_reason = [], "", None
            if request.generator is None and request.temperature and request.temperature > 0:
                request.generator = make_generator(request.seed)
            request._start_text(self.tokenizer)

        # prefill: left-padded prompts; each row's positions count from its own first real token
        width = max(len(r.prompt_ids) for r in requests)
        batch = len(requests)
        length = width + max(r.max_new_tokens for r in requests)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        real = torch.zeros(batch, length, dtype=torch.bool)  # the keys each row may see: real prompt + generated
        for row, request in enumerate(requests):
            input_ids[row, width - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids)
            real[row, width - len(request.prompt_ids) :] = True
        input_ids, real = input_ids.to(device), real.to(device)
        positions = (real[:, :width].long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        prefill_mask = (causal[None] & real[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=device)
        cache = KVBuffer(model.config.num_hidden_layers, length)
        logits = self._forward(input_ids, prefill_mask[:, None], positions, cache)
        next_position = positions[:, -1] + 1

        running = list(range(batch))  # request index of each batch row
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=device) if self.eos_ids else None
        filled = width
        while True:
            tokens = self._choose(logits, [requests[i] for i in running])
            keep = []
            for row, index in enumerate(running):
                request, token = requests[index], int(tokens[row])
                if request.cancelled:
                    request.finish_reason = "cancelled"
                elif eos is not None and token in self.eos_ids:
                    request.finish_reason = "stop"
                else:
                    request.tokens.append(token)
                    piece = request._push_text(token)
                    if piece and on_text is not None:
                        on_text(request, piece)
                    if request.stopped_by_string:
                        request.finish_reason = "stop"
                    elif len(request.tokens) >= request.max_new_tokens:
                        request.finish_reason = "length"
                if request.finish_reason is None:
                    keep.append(row)
                else:
                    tail = request._push_text(None)
                    if tail and on_text is not None:
                        on_text(request, tail)
            if not keep:
                return
            if len(keep) < len(running):  # finished rows leave the batch
                rows = torch.tensor(keep, device=device)
                cache.keep_rows(rows)
                tokens, next_position, real = tokens[rows], next_position[rows], real[rows]
                running = [running[row] for row in keep]
            filled += 1
            real[:, filled - 1] = True
            mask = real[:, None, None, :filled]
            logits = self._forward(tokens[:, None], mask, next_position[:, None], cache)
            next_position = next_position + 1

    def _forward(self, input_ids, mask, positions, cache):
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
            **{CACHE_ARGUMENT: cache},
        )
        return out.logits[:, -1]

    @staticmethod
    def _choose(logits, requests: list[Request]):
        """One token per row: a greedy batch in one argmax; sampled rows each from their own generator."""
        if all(not r.temperature or r.temperature <= 0 for r in requests):
            return logits.argmax(-1)
        tokens = logits.argmax(-1)
        for row, r in enumerate(requests):
            if r.temperature and r.temperature > 0:
                tokens[row] = sample_next_token(
                    logits[row : row + 1], r.temperature, r.top_k or 0, 1.0 if r.top_p is None else r.top_p,
                    r.generator,
                )[0]
        return tokens

    def complete(self, prompt, on_text=None, **settings) -> Request:
        """One prompt, decoded alone: ``engine.complete("Once", max_new_tokens=20).text``."""
        return self.run([self.request(prompt, **settings)], on_text)[0]


# ----------------------------------------------------------------------------------------------------------------
# model facts the engine needs
# ----------------------------------------------------------------------------------------------------------------


def context_length(model) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids
