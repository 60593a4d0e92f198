"""Streaming text generation with stop strings: the one helper behind ``gpt-scratch chat`` and ``gpt-scratch serve``.

The pieces, each usable on its own:

* ``generate_token_ids`` -- a decoding loop over the model's key/value cache: one forward pass over the prompt,
  then one token at a time; greedy at temperature 0, otherwise temperature / top-k / top-p (nucleus, Holtzman et al.,
  2020) sampling from a seeded ``torch.Generator``; stops at an end-of-text token.
* ``decode_incrementally`` -- token ids in, text pieces out.  Byte-level BPE splits a multi-byte character (é, emoji)
  across tokens; a piece is released only once the bytes decode to whole characters, so no piece carries a broken
  character (U+FFFD) and the pieces join to exactly ``tokenizer.decode(all ids)``.
* ``cut_at_stop_strings`` -- text pieces in, text pieces out, ending just before the first stop string.  Text that
  could still become a stop string (a trailing ``"\\nUs"`` when the stop is ``"\\nUser:"``) is held back until the
  next piece decides, so nothing of a stop string is ever streamed.
* ``trim_whitespace`` -- drops leading whitespace and holds back trailing whitespace, so a chat reply streams the
  same text that is stored.
* ``StreamingGeneration`` -- all of it for one prompt: iterate for the pieces; afterwards ``text``,
  ``finish_reason`` ("stop" or "length"), ``prompt_tokens`` and ``completion_tokens``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

# ----------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------


def load_model(folder, device: str | None = None):
    """``(model, tokenizer)`` from a model folder, in eval mode, on the GPU when there is one (or ``device``)."""
    import torch

    from .generate import load_model_and_tokenizer

    return load_model_and_tokenizer(folder, device or ("cuda" if torch.cuda.is_available() else "cpu"))


def is_instruct(tokenizer) -> bool:
    """An instruct model's tokenizer carries a chat template; a base model's does not."""
    return bool(getattr(tokenizer, "chat_template", None))


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


# ----------------------------------------------------------------------------------------------------------------
# tokens
# ----------------------------------------------------------------------------------------------------------------


def make_generator(seed: int | None = None):
    """A ``torch.Generator`` for sampling: seeded when ``seed`` is given, otherwise from fresh entropy."""
    import torch

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def sample_next_token(logits, temperature: float = 0.0, top_p: float = 1.0, top_k: int | None = None, generator=None):
    """The next token id from one row of logits: argmax at temperature 0, else a draw after top-k/top-p filtering."""
    import torch

    logits = logits.detach().float().cpu()
    if not temperature or temperature <= 0 or (top_p is not None and top_p <= 0):
        return int(torch.argmax(logits))
    logits = logits / float(temperature)
    if top_k and 0 < top_k < logits.numel():
        threshold = torch.topk(logits, int(top_k)).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_token_ids(
    model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator=None,
    eos_ids: Iterable[int] = (),
    state: dict | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids, reusing the key/value cache; stop before an end-of-text token.

    ``state["finish_reason"]`` becomes "stop" (end-of-text) or "length" (the budget is spent).
    """
    import torch

    state = {} if state is None else state
    eos_ids = set(eos_ids)
    device = next(model.parameters()).device
    step_input = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    past = None
    for _ in range(max_new_tokens):
        with torch.inference_mode():
            out = model(input_ids=step_input, past_key_values=past, use_cache=True, return_dict=True)
        past = out.past_key_values
        token = sample_next_token(out.logits[0, -1], temperature, top_p, top_k, generator)
        if token in eos_ids:
            state["finish_reason"] = "stop"
            return
        yield token
        step_input = torch.tensor([[token]], dtype=torch.long, device=device)
    state["finish_reason"] = "length"


# ----------------------------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------------------------


def decode_incrementally(tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Text pieces for a stream of token ids, never splitting a multi-byte character.

    Each new token is decoded together with the tokens since the last released boundary; the new text is released
    only when it does not end in U+FFFD (an incomplete UTF-8 sequence).  What is still held at the end is released
    as it decodes.
    """

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    ids: list[int] = []
    start = 0  # tokens before `start` are released and no longer decoded
    released = 0  # tokens in ids[start:released] are released; their text is `done`
    done = ""
    for token in token_ids:
        ids.append(int(token))
        text = decode(ids[start:])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            yield text[len(done):]
            start, released = released, len(ids)
            done = decode(ids[start:released])
    if released < len(ids):
        text = decode(ids[start:])
        if len(text) > len(done):
            yield text[len(done):]


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the beginning of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def cut_at_stop_strings(pieces: Iterable[str], stops: Sequence[str], state: dict | None = None) -> Iterator[str]:
    """Stream ``pieces`` up to (not including) the first occurrence of any of ``stops``.

    Sets ``state["stop"]`` to the stop string found (the upstream iterator is then closed, ending generation).
    """
    stops = [s for s in stops if s]
    if not stops:
        yield from pieces
        return
    state = {} if state is None else state
    longest = max(len(s) for s in stops)
    pending = ""  # text received but not yet released
    iterator = iter(pieces)
    try:
        for piece in iterator:
            pending += piece
            hits = [(pending.find(s), s) for s in stops if s in pending]
            if hits:
                index, stop = min(hits)
                if index:
                    yield pending[:index]
                state["stop"] = stop
                return
            keep = _held_back(pending[-longest:], stops)
            release = pending[: len(pending) - keep]
            if release:
                yield release
            pending = pending[len(release):]
        if pending:
            yield pending
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def trim_whitespace(pieces: Iterable[str]) -> Iterator[str]:
    """Stream ``pieces`` without leading whitespace, holding back whitespace until non-space text follows it."""
    started = False
    held = ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        text = held + piece
        body = text.rstrip()
        held = text[len(body):]
        if body:
            yield body


# ----------------------------------------------------------------------------------------------------------------
# one generation
# ----------------------------------------------------------------------------------------------------------------


class StreamingGeneration:
    """Generate from ``prompt`` (text, or a list of token ids); iterate for the text pieces as they are decoded.

    After iterating: ``text`` (the whole reply), ``finish_reason`` ("stop": end-of-text or a stop string;
    "length": ``max_new_tokens`` reached), ``prompt_tokens`` (tokens the model saw), ``completion_tokens``,
    ``truncated`` (prompt tokens dropped from the left to fit the context).  ``run()`` does it all and returns text.

    The model's context bounds prompt + reply: the reply gets at most ``context - 1`` tokens, and a prompt too long to
    leave room for ``min(max_new_tokens, context // 4)`` new tokens loses its oldest tokens.  ``trim`` strips
    whitespace around the reply (chat); ``generator`` (a ``torch.Generator``) wins over ``seed``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        prompt,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        generator=None,
        stop: Sequence[str] = (),
        trim: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
        else:
            ids = [int(t) for t in prompt]
        eos = eos_token_ids(model, tokenizer)
        if not ids:  # GPT-2's convention: an empty prompt starts after an end-of-text token
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else min(eos, default=0)
            ids = [start]
        context = context_length(model)
        new = max(1, min(int(max_new_tokens), context - 1))
        self.truncated = 0
        if len(ids) + new > context:
            reserve = min(new, max(1, context // 4))
            if len(ids) > context - reserve:
                self.truncated = len(ids) - (context - reserve)
                ids = ids[self.truncated:]
            new = context - len(ids)
        self.prompt_ids = ids
        self.max_new_tokens = new
        self.temperature = temperature
        self.top_p = 1.0 if top_p is None else top_p
        self.top_k = top_k
        self.generator = generator if generator is not None else make_generator(seed)
        self.stop = [s for s in (stop or ()) if s]
        self.trim = trim
        self.eos_ids = eos
        self.prompt_tokens = len(ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.text = ""

    def _counted(self, tokens):
        for token in tokens:
            self.completion_tokens += 1
            yield token

    def __iter__(self) -> Iterator[str]:
        token_state, stop_state = {}, {}
        tokens = generate_token_ids(
            self.model,
            self.prompt_ids,
            self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            generator=self.generator,
            eos_ids=self.eos_ids,
            state=token_state,
        )
        pieces = cut_at_stop_strings(decode_incrementally(self.tokenizer, self._counted(tokens)), self.stop, stop_state)
        if self.trim:
            pieces = trim_whitespace(pieces)
        try:
            for piece in pieces:
                self.text += piece
                yield piece
        finally:
            pieces.close()
        self.finish_reason = "stop" if stop_state.get("stop") else token_state.get("finish_reason", "stop")

    def run(self) -> str:
        for _ in self:
            pass
        return self.text


__all__ = [
    "load_model",
    "is_instruct",
    "context_length",
    "make_generator",
    "sample_next_token",
    "generate_token_ids",
    "decode_incrementally",
    "cut_at_stop_strings",
    "trim_whitespace",
    "StreamingGeneration",
]
